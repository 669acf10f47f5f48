-- The ledger: tenants and their keys, requests and their per-store tasks, the audit chain,
-- the outbox, the export and backup catalogs, and the erasure log that restores replay.

CREATE TABLE tenant (
    id              uuid PRIMARY KEY,
    name            text NOT NULL UNIQUE,
    -- Where completion webhooks go, and the key they are signed with.
    webhook_url     text,
    webhook_secret  text,
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_key (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenant (id),
    name        text NOT NULL,
    -- The first characters of the key, shown in listings; the secret itself is never stored.
    prefix      text NOT NULL UNIQUE,
    secret_sha256 bytea NOT NULL,
    scopes      text[] NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

CREATE TABLE request (
    id              uuid PRIMARY KEY,
    tenant_id       uuid NOT NULL REFERENCES tenant (id),
    kind            text NOT NULL,
    status          text NOT NULL,
    -- The subject's identifiers, kept only while a restore could need them (retention
    -- reduces them to identity_hash); NULL once minimised.
    identities      jsonb,
    identity_hash   text NOT NULL,
    params          jsonb NOT NULL DEFAULT '{}'::jsonb,
    reason          text,
    callback_url    text,
    traceparent     text NOT NULL,
    phase           text NOT NULL,
    failure         text,
    idempotency_key text,
    -- SHA-256 of the first body sent with the idempotency key: a different body with the same
    -- key is a client bug, answered with 409 rather than silently with the first answer.
    idempotency_fingerprint bytea,
    received_at     timestamptz NOT NULL,
    target_at       timestamptz NOT NULL,
    due_at          timestamptz NOT NULL,
    extended_at     timestamptz,
    extension_reason text,
    completed_at    timestamptz,
    minimised_at    timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT request_kind_check CHECK (kind IN (
        'access', 'portability', 'erasure', 'rectification', 'restriction',
        'lift_restriction', 'objection', 'lift_objection')),
    CONSTRAINT request_status_check CHECK (status IN (
        'received', 'verifying', 'in_progress', 'completed', 'failed', 'rejected', 'cancelled'))
);

CREATE UNIQUE INDEX request_idempotency ON request (tenant_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX request_tenant_listing ON request (tenant_id, id DESC);
CREATE INDEX request_open_due ON request (due_at)
    WHERE status IN ('received', 'verifying', 'in_progress');

CREATE TABLE task (
    request_id  uuid NOT NULL REFERENCES request (id) ON DELETE CASCADE,
    store       text NOT NULL,
    kind        text NOT NULL,
    phase       text NOT NULL,
    status      text NOT NULL,
    generation  integer NOT NULL DEFAULT 0,
    attempts    integer NOT NULL DEFAULT 0,
    counts      jsonb NOT NULL DEFAULT '{}'::jsonb,
    remaining   bigint,
    error       text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    PRIMARY KEY (request_id, kind, store),
    CONSTRAINT task_status_check CHECK (status IN ('pending', 'queued', 'done', 'failed', 'cancelled'))
);

-- Append-only. Rows are written with the state change they record; the sealer then chains
-- them in the order it sees them (chain_pos), each row's hash covering the previous row's
-- hash, so tampering with any sealed row breaks the chain. Sealing apart from writing keeps
-- intake from serialising on one lock.
CREATE TABLE audit_event (
    seq         bigserial PRIMARY KEY,
    tenant_id   uuid,
    request_id  uuid,
    kind        text NOT NULL,
    detail      jsonb NOT NULL DEFAULT '{}'::jsonb,
    at          timestamptz NOT NULL,
    chain_pos   bigint UNIQUE,
    prev_hash   bytea,
    hash        bytea UNIQUE
);
CREATE INDEX audit_event_request ON audit_event (request_id, seq);
CREATE INDEX audit_event_unsealed ON audit_event (seq) WHERE chain_pos IS NULL;

-- Messages written in the same transaction as the state change and relayed to NATS, so a
-- request accepted while NATS is down is never lost.
CREATE TABLE outbox (
    id          bigserial PRIMARY KEY,
    subject     text NOT NULL,
    message_id  text NOT NULL,
    traceparent text,
    payload     jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    attempts    integer NOT NULL DEFAULT 0,
    last_error  text
);

CREATE TABLE export (
    request_id  uuid PRIMARY KEY REFERENCES request (id) ON DELETE CASCADE,
    object_key  text NOT NULL,
    bytes       bigint NOT NULL,
    sha256      text NOT NULL,
    encrypted   boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    deleted_at  timestamptz
);

CREATE TABLE backup (
    id              uuid PRIMARY KEY,
    store           text NOT NULL,
    object_key      text NOT NULL,
    manifest_key    text NOT NULL,
    tool            text NOT NULL,
    plaintext_bytes bigint,
    bytes           bigint,
    sha256          text,
    recipients      text[] NOT NULL,
    -- The last erasure_log.seq this backup may still contain data from: a restore replays
    -- every erasure after it.
    erasure_seq     bigint NOT NULL,
    status          text NOT NULL,
    error           text,
    started_at      timestamptz NOT NULL,
    finished_at     timestamptz,
    expires_at      timestamptz NOT NULL,
    deleted_at      timestamptz,
    CONSTRAINT backup_status_check CHECK (status IN ('running', 'completed', 'failed', 'deleted'))
);
CREATE INDEX backup_store_started ON backup (store, started_at DESC);

-- Every completed erasure, in order; a restore replays those recorded after its backup.
CREATE TABLE erasure_log (
    seq         bigserial PRIMARY KEY,
    request_id  uuid NOT NULL UNIQUE REFERENCES request (id),
    tenant_id   uuid NOT NULL REFERENCES tenant (id),
    -- NULL once minimised; identity_hash stays.
    identities  jsonb,
    identity_hash text NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);

-- Webhook calls to make, retried with backoff; every attempt is recorded.
CREATE TABLE webhook_delivery (
    id              bigserial PRIMARY KEY,
    tenant_id       uuid NOT NULL REFERENCES tenant (id),
    request_id      uuid,
    url             text NOT NULL,
    event           text NOT NULL,
    payload         jsonb NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    attempts        integer NOT NULL DEFAULT 0,
    delivered_at    timestamptz,
    abandoned_at    timestamptz
);
CREATE INDEX webhook_delivery_due ON webhook_delivery (next_attempt_at)
    WHERE delivered_at IS NULL AND abandoned_at IS NULL;

CREATE TABLE webhook_attempt (
    delivery_id bigint NOT NULL REFERENCES webhook_delivery (id) ON DELETE CASCADE,
    attempt     integer NOT NULL,
    at          timestamptz NOT NULL DEFAULT now(),
    status      integer,
    error       text,
    PRIMARY KEY (delivery_id, attempt)
);
