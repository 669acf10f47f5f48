-- Lethe's own footprint (issue 18).
--
-- Idempotency fingerprints are now keyed (HMAC-SHA256 with privacy.hash_key). The unkeyed
-- SHA-256 of a request body let anyone holding the ledger confirm a guessed identifier: the
-- old ones go (a retry of such a request is then recognised by its key alone).
UPDATE request SET idempotency_fingerprint = NULL WHERE idempotency_fingerprint IS NOT NULL;
COMMENT ON COLUMN request.idempotency_fingerprint IS
    'HMAC-SHA256 (privacy.hash_key) of the first body sent with the idempotency key';

-- Minimisation now also clears the values of a rectification and the free-text reasons: do it for
-- the requests minimised before.
UPDATE request SET params = '{}'::jsonb, reason = NULL, extension_reason = NULL
    WHERE minimised_at IS NOT NULL;
