-- The privacy center: a data subject's request waits here, "verifying", until the emailed link
-- is followed. Only then is it filed as a `request`. Unverified rows are purged when they expire
-- (24 hours), so an address typed by someone else is not kept.
CREATE TABLE privacy_verification (
    id              uuid PRIMARY KEY,
    tenant_id       uuid NOT NULL REFERENCES tenant (id),
    kind            text NOT NULL,
    -- The address the link went to; needed to file the request. Deleted with the row.
    email           text NOT NULL,
    -- SHA-256 of the link's token: the ledger cannot rebuild a link.
    token_sha256    bytea NOT NULL UNIQUE,
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    verified_at     timestamptz,
    -- For rectification: the field changes the person asked for.
    changes         jsonb,
    request_id      uuid REFERENCES request (id),
    -- For access and portability: SHA-256 of the download link's token, and when it was sent.
    download_sha256 bytea UNIQUE,
    download_sent_at timestamptz,
    CONSTRAINT privacy_verification_kind_check CHECK (kind IN (
        'access', 'portability', 'erasure', 'rectification', 'restriction', 'objection'))
);
CREATE INDEX privacy_verification_expiry ON privacy_verification (expires_at) WHERE verified_at IS NULL;
CREATE INDEX privacy_verification_pending_download ON privacy_verification (request_id)
    WHERE request_id IS NOT NULL AND download_sent_at IS NULL;
