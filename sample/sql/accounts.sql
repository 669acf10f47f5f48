-- The `accounts` store of the sample SaaS application (PostgreSQL).
-- Applied by `lethe-seed` before seeding; every statement is idempotent.

-- The application's customers: account and profile information.
CREATE TABLE IF NOT EXISTS users (
    id          bigint      PRIMARY KEY,
    email       text        NOT NULL UNIQUE,
    phone       text,
    first_name  text        NOT NULL,
    last_name   text        NOT NULL,
    company     text,
    avatar_key  text,                               -- key of the avatar in the files store
    country     text        NOT NULL,               -- ISO 3166-1 alpha-2
    created_at  timestamptz NOT NULL,
    -- Set by Lethe on a restriction (Art. 18) or objection (Art. 21) request: the
    -- application must stop processing the user's data while the flag is set.
    restricted  boolean     NOT NULL DEFAULT false,
    objected    boolean     NOT NULL DEFAULT false
);
CREATE INDEX IF NOT EXISTS users_phone_idx ON users (phone);
-- Lethe compares emails as `lower(email)` and phones by their digits (the data map's
-- `normalize`): these expression indexes serve exactly those comparisons.
CREATE INDEX IF NOT EXISTS users_email_lower_idx ON users (lower(email));
CREATE INDEX IF NOT EXISTS users_phone_digits_idx
    ON users (regexp_replace(phone, '[^0-9+]', '', 'g'));

-- Invoices are kept for tax law after the customer is gone: erasure masks their personal
-- fields, then deletes the user, and ON DELETE SET NULL cuts the link instead of taking the
-- invoice with it (CASCADE would destroy records the law requires; RESTRICT would block the
-- erasure).
CREATE TABLE IF NOT EXISTS invoices (
    id              bigint      PRIMARY KEY,
    user_id         bigint      REFERENCES users (id) ON DELETE SET NULL,
    billing_name    text,                           -- nullable: erasure may mask it to NULL
    billing_address text,
    country         text        NOT NULL,
    amount_cents    bigint      NOT NULL,
    issued_at       timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS invoices_user_id_idx ON invoices (user_id);

-- System log of the application: who requested which page from where. Kept at most one year
-- (the `at` column drives retention). No foreign key: logs are append-only, written by
-- another component, and must not slow down or block changes to `users`.
CREATE TABLE IF NOT EXISTS access_log (
    id          bigserial   PRIMARY KEY,
    user_id     bigint      NOT NULL,
    ip          text        NOT NULL,
    user_agent  text,
    page        text        NOT NULL,
    referrer    text,
    country     text,
    city        text,
    at          timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS access_log_user_id_idx ON access_log (user_id);
CREATE INDEX IF NOT EXISTS access_log_at_idx ON access_log (at);
