-- The `chat` store of the sample SaaS application (MariaDB / MySQL).
-- Applied by `lethe-seed` before seeding; every statement is idempotent.
-- DATETIME columns hold UTC.

-- Support conversations opened by end users.
CREATE TABLE IF NOT EXISTS conversations (
    id          BIGINT       NOT NULL PRIMARY KEY,
    user_id     BIGINT       NOT NULL,
    subject     VARCHAR(200) NOT NULL,
    started_at  DATETIME     NOT NULL,
    KEY conversations_user_id_idx (user_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

-- Messages of a conversation: the end user's own (author_id = their user id) and the support
-- agents' replies (author_id NULL). A conversation's messages go with it (ON DELETE CASCADE).
CREATE TABLE IF NOT EXISTS messages (
    id              BIGINT   NOT NULL PRIMARY KEY,
    conversation_id BIGINT   NOT NULL,
    author_id       BIGINT   NULL,
    body            TEXT     NOT NULL,
    sent_at         DATETIME NOT NULL,
    KEY messages_author_id_idx (author_id),
    KEY messages_conversation_id_idx (conversation_id),
    CONSTRAINT messages_conversation_fk FOREIGN KEY (conversation_id)
        REFERENCES conversations (id) ON DELETE CASCADE
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

-- Page views on customers' websites where the chat widget runs: browsed page, time,
-- technical information and IP address. A log table: kept at most one year (`at`).
CREATE TABLE IF NOT EXISTS visits (
    id       BIGINT       NOT NULL PRIMARY KEY,
    user_id  BIGINT       NOT NULL,
    page     VARCHAR(255) NOT NULL,
    ip       VARCHAR(45)  NOT NULL,
    screen   VARCHAR(20)  NULL,
    os       VARCHAR(40)  NULL,
    browser  VARCHAR(40)  NULL,
    device   VARCHAR(20)  NULL,
    at       DATETIME     NOT NULL,
    KEY visits_user_id_idx (user_id),
    KEY visits_at_idx (at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;
