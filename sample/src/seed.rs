//! Writing the sample data into the stores, fast: PostgreSQL by `COPY`, MariaDB by large
//! multi-row `INSERT`s in one transaction, Redis by pipelines, S3 by concurrent puts, and the
//! four stores at the same time.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::future::try_join4;
use futures::{StreamExt, TryStreamExt};
use sqlx::{MySql, MySqlConnection, PgConnection, QueryBuilder};

use crate::counts::Counts;
use crate::error::{Error, Result, StoreContext};
use crate::generate::{
    Conversation, FileKind, Generator, MAX_SUBJECTS, Message, Visit, default_anchor,
};
use crate::stores::{
    FILE_FOLDERS, FilesStore, SESSION_KEY_FAMILIES, SampleStores, SessionsStore, delete_prefix,
    escape_glob, scan, unlink_matching,
};

/// Schema of the accounts store (PostgreSQL), idempotent.
pub const ACCOUNTS_SQL: &str = include_str!("../sql/accounts.sql");
/// Schema of the chat store (MariaDB), idempotent.
pub const CHAT_SQL: &str = include_str!("../sql/chat.sql");

/// Subjects generated per round trip to the SQL stores and per Redis pipeline.
const CHUNK: u64 = 2_000;
/// MariaDB's limit of placeholders in one prepared statement.
const MYSQL_MAX_PLACEHOLDERS: usize = 65_535;
/// Upper bound of rows per `INSERT`, to keep packets well under `max_allowed_packet`.
const MYSQL_MAX_ROWS: usize = 5_000;
/// Bytes buffered before a `COPY` chunk is sent to PostgreSQL.
const COPY_BUFFER: usize = 1 << 20;

/// What to seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedOptions {
    /// Subjects `1..=subjects` are written.
    pub subjects: u64,
    /// Same seed, same data, byte for byte.
    pub seed: u64,
    /// Delete the sample data a store already holds instead of refusing to seed it.
    pub reset: bool,
    /// Every timestamp lies within about three years before this instant.
    pub anchor: DateTime<Utc>,
    /// Every attachment has exactly this many bytes (for benchmarks), instead of 64 B to 8 KiB.
    pub attachment_bytes: Option<u64>,
    /// S3 puts in flight at once.
    pub s3_concurrency: usize,
}

impl Default for SeedOptions {
    fn default() -> Self {
        Self {
            subjects: 1_000,
            seed: 1,
            reset: false,
            anchor: default_anchor(),
            attachment_bytes: None,
            s3_concurrency: 32,
        }
    }
}

impl SeedOptions {
    /// `subjects` subjects under `seed`, everything else by default.
    pub fn new(subjects: u64, seed: u64) -> Self {
        Self {
            subjects,
            seed,
            ..Self::default()
        }
    }

    /// The generator these options describe.
    pub fn generator(&self) -> Generator {
        Generator::new(self.seed)
            .with_anchor(self.anchor)
            .with_attachment_bytes(self.attachment_bytes)
    }
}

/// What a seeding run wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedReport {
    /// Subjects written.
    pub subjects: u64,
    /// The seed.
    pub seed: u64,
    /// Records written per store and collection, as the stores acknowledged them.
    pub counts: Counts,
    /// Wall time of the whole run.
    pub elapsed: Duration,
    /// Wall time of each store's writer (they run at the same time).
    pub store_elapsed: BTreeMap<&'static str, Duration>,
}

/// How far each store's writer has got, in subjects; shared with a progress display.
#[derive(Debug, Default)]
pub struct Progress {
    accounts: AtomicU64,
    chat: AtomicU64,
    sessions: AtomicU64,
    files: AtomicU64,
}

impl Progress {
    /// Subjects written so far, per store.
    pub fn snapshot(&self) -> [(&'static str, u64); 4] {
        [
            ("accounts", self.accounts.load(Ordering::Relaxed)),
            ("chat", self.chat.load(Ordering::Relaxed)),
            ("sessions", self.sessions.load(Ordering::Relaxed)),
            ("files", self.files.load(Ordering::Relaxed)),
        ]
    }
}

/// Seeds subjects `1..=options.subjects` into the four stores.
///
/// Creates the tables and the bucket if missing. A store that already holds sample data is an
/// [`Error::NotEmpty`] unless `options.reset`, in which case its sample data is deleted first;
/// either way the stores end up holding exactly the data for `(subjects, seed)`.
pub async fn seed(stores: &SampleStores, options: &SeedOptions) -> Result<SeedReport> {
    seed_with_progress(stores, options, &Progress::default()).await
}

/// [`seed`], reporting progress into `progress` as it goes.
pub async fn seed_with_progress(
    stores: &SampleStores,
    options: &SeedOptions,
    progress: &Progress,
) -> Result<SeedReport> {
    if options.subjects > MAX_SUBJECTS {
        return Err(Error::Options(format!(
            "at most {MAX_SUBJECTS} subjects, not {}",
            options.subjects
        )));
    }
    if options.s3_concurrency == 0 {
        return Err(Error::Options("s3_concurrency must be at least 1".into()));
    }
    let started = Instant::now();
    prepare(stores).await?;
    if options.reset {
        reset(stores).await?;
    } else {
        ensure_empty(stores).await?;
    }

    let generator = options.generator();
    let n = options.subjects;
    let (a, b, c, d) = try_join4(
        timed(
            "accounts",
            seed_accounts(stores, &generator, n, &progress.accounts),
        ),
        timed("chat", seed_chat(stores, &generator, n, &progress.chat)),
        timed(
            "sessions",
            seed_sessions(&stores.sessions, &generator, n, &progress.sessions),
        ),
        timed(
            "files",
            seed_files(
                &stores.files,
                &generator,
                n,
                options.s3_concurrency,
                &progress.files,
            ),
        ),
    )
    .await?;

    let mut counts = Counts::zero();
    let mut store_elapsed = BTreeMap::new();
    for (name, part, elapsed) in [a, b, c, d] {
        counts.merge(&part);
        store_elapsed.insert(name, elapsed);
    }
    Ok(SeedReport {
        subjects: n,
        seed: options.seed,
        counts,
        elapsed: started.elapsed(),
        store_elapsed,
    })
}

async fn timed(
    store: &'static str,
    writer: impl Future<Output = Result<Counts>>,
) -> Result<(&'static str, Counts, Duration)> {
    let started = Instant::now();
    let counts = writer.await?;
    Ok((store, counts, started.elapsed()))
}

/// Creates the sample tables and the files bucket if they do not exist.
pub async fn prepare(stores: &SampleStores) -> Result<()> {
    sqlx::raw_sql(ACCOUNTS_SQL)
        .execute(&stores.accounts)
        .await
        .store("accounts", "creating the schema")?;
    sqlx::raw_sql(CHAT_SQL)
        .execute(&stores.chat)
        .await
        .store("chat", "creating the schema")?;
    ensure_bucket(&stores.files.client, &stores.files.bucket).await
}

/// Creates `bucket` unless it exists.
pub async fn ensure_bucket(client: &aws_sdk_s3::Client, bucket: &str) -> Result<()> {
    if client.head_bucket().bucket(bucket).send().await.is_ok() {
        return Ok(());
    }
    match client.create_bucket().bucket(bucket).send().await {
        Ok(_) => Ok(()),
        Err(e) => {
            let exists = e.as_service_error().is_some_and(|s| {
                s.is_bucket_already_owned_by_you() || s.is_bucket_already_exists()
            });
            if exists {
                Ok(())
            } else {
                Err(e).store("files", "creating the bucket")
            }
        }
    }
}

/// Deletes the sample data of every store: truncates the tables, unlinks the Redis keys of
/// the sample's key families under the prefix, deletes the objects under the sample's folders.
pub async fn reset(stores: &SampleStores) -> Result<()> {
    sqlx::raw_sql("TRUNCATE users, invoices, access_log RESTART IDENTITY")
        .execute(&stores.accounts)
        .await
        .store("accounts", "truncating")?;
    // InnoDB refuses to truncate a table that a foreign key references unless checks are off;
    // raw_sql runs the statements on one connection.
    sqlx::raw_sql(
        "SET SESSION foreign_key_checks = 0; \
         TRUNCATE TABLE messages; TRUNCATE TABLE conversations; TRUNCATE TABLE visits; \
         SET SESSION foreign_key_checks = 1;",
    )
    .execute(&stores.chat)
    .await
    .store("chat", "truncating")?;
    let mut conn = stores.sessions.connection.clone();
    for family in SESSION_KEY_FAMILIES {
        let pattern = format!("{}{family}:*", escape_glob(&stores.sessions.prefix));
        unlink_matching(&mut conn, &pattern).await?;
    }
    for folder in FILE_FOLDERS {
        let prefix = format!("{}{folder}/", stores.files.prefix);
        delete_prefix(&stores.files.client, &stores.files.bucket, &prefix).await?;
    }
    Ok(())
}

async fn ensure_empty(stores: &SampleStores) -> Result<()> {
    for table in crate::stores::ACCOUNTS_TABLES {
        let any: bool = sqlx::query_scalar(&format!("SELECT EXISTS (SELECT 1 FROM {table})"))
            .fetch_one(&stores.accounts)
            .await
            .store("accounts", "checking for rows")?;
        if any {
            return Err(not_empty("accounts", format!("{table} has rows")));
        }
    }
    for table in crate::stores::CHAT_TABLES {
        let any: i64 = sqlx::query_scalar(&format!("SELECT EXISTS (SELECT 1 FROM `{table}`)"))
            .fetch_one(&stores.chat)
            .await
            .store("chat", "checking for rows")?;
        if any != 0 {
            return Err(not_empty("chat", format!("{table} has rows")));
        }
    }
    let mut conn = stores.sessions.connection.clone();
    for family in SESSION_KEY_FAMILIES {
        let pattern = format!("{}{family}:*", escape_glob(&stores.sessions.prefix));
        if !scan(&mut conn, &pattern).await?.is_empty() {
            return Err(not_empty("sessions", format!("{family}:* keys exist")));
        }
    }
    for folder in FILE_FOLDERS {
        let out = stores
            .files
            .client
            .list_objects_v2()
            .bucket(&stores.files.bucket)
            .prefix(format!("{}{folder}/", stores.files.prefix))
            .max_keys(1)
            .send()
            .await
            .store("files", "listing objects")?;
        if !out.contents().is_empty() {
            return Err(not_empty("files", format!("objects under {folder}/ exist")));
        }
    }
    Ok(())
}

fn not_empty(store: &'static str, found: String) -> Error {
    Error::NotEmpty { store, found }
}

// ---------------------------------------------------------------- accounts (PostgreSQL)

async fn seed_accounts(
    stores: &SampleStores,
    generator: &Generator,
    n: u64,
    progress: &AtomicU64,
) -> Result<Counts> {
    let mut tx = stores
        .accounts
        .begin()
        .await
        .store("accounts", "starting a transaction")?;
    let mut counts = Counts::zero();
    let mut users = String::with_capacity(COPY_BUFFER);
    let mut invoices = String::with_capacity(COPY_BUFFER);
    let mut log = String::with_capacity(COPY_BUFFER * 4);
    let mut start = 1;
    while start <= n {
        let end = (start + CHUNK - 1).min(n);
        for i in start..=end {
            let p = generator.profile(i);
            let a = generator.accounts(&p);
            let u = &a.user;
            row(
                &mut users,
                &[
                    Some(&u.id.to_string()),
                    Some(&u.email),
                    Some(&u.phone),
                    Some(&u.first_name),
                    Some(&u.last_name),
                    u.company.as_deref(),
                    u.avatar_key.as_deref(),
                    Some(&u.country),
                    Some(&pg_time(u.created_at)),
                ],
            );
            for inv in &a.invoices {
                row(
                    &mut invoices,
                    &[
                        Some(&inv.id.to_string()),
                        Some(&inv.user_id.to_string()),
                        Some(&inv.billing_name),
                        Some(&inv.billing_address),
                        Some(&inv.country),
                        Some(&inv.amount_cents.to_string()),
                        Some(&pg_time(inv.issued_at)),
                    ],
                );
            }
            for e in &a.access_log {
                row(
                    &mut log,
                    &[
                        Some(&e.id.to_string()),
                        Some(&e.user_id.to_string()),
                        Some(&e.ip),
                        Some(&e.user_agent),
                        Some(&e.page),
                        e.referrer.as_deref(),
                        Some(&e.country),
                        Some(&e.city),
                        Some(&pg_time(e.at)),
                    ],
                );
            }
        }
        // Parents first: invoices reference users.
        let written = copy(
            &mut tx,
            "COPY users (id, email, phone, first_name, last_name, company, avatar_key, country, \
             created_at) FROM STDIN",
            &mut users,
        )
        .await?;
        counts.add("accounts", "users", written);
        let written = copy(
            &mut tx,
            "COPY invoices (id, user_id, billing_name, billing_address, country, amount_cents, \
             issued_at) FROM STDIN",
            &mut invoices,
        )
        .await?;
        counts.add("accounts", "invoices", written);
        let written = copy(
            &mut tx,
            "COPY access_log (id, user_id, ip, user_agent, page, referrer, country, city, at) \
             FROM STDIN",
            &mut log,
        )
        .await?;
        counts.add("accounts", "access_log", written);
        progress.store(end, Ordering::Relaxed);
        start = end + 1;
    }
    // Ids were given explicitly; move the sequence past them so later inserts do not collide.
    sqlx::query(
        "SELECT setval(pg_get_serial_sequence('access_log', 'id'), \
         COALESCE((SELECT max(id) FROM access_log), 0) + 1, false)",
    )
    .execute(&mut *tx)
    .await
    .store("accounts", "advancing the access_log sequence")?;
    tx.commit().await.store("accounts", "committing")?;
    Ok(counts)
}

/// Sends `data` (COPY text format) in chunks of [`COPY_BUFFER`] and clears it.
async fn copy(conn: &mut PgConnection, statement: &str, data: &mut String) -> Result<u64> {
    if data.is_empty() {
        return Ok(0);
    }
    let mut copy = conn
        .copy_in_raw(statement)
        .await
        .store("accounts", "starting COPY")?;
    for chunk in data.as_bytes().chunks(COPY_BUFFER) {
        copy.send(chunk)
            .await
            .store("accounts", "sending COPY data")?;
    }
    let written = copy.finish().await.store("accounts", "finishing COPY")?;
    data.clear();
    Ok(written)
}

/// Appends one row in COPY text format: tab-separated, `\N` for NULL, backslash escapes.
fn row(out: &mut String, fields: &[Option<&str>]) {
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            out.push('\t');
        }
        match field {
            None => out.push_str("\\N"),
            Some(value) => {
                for c in value.chars() {
                    match c {
                        '\\' => out.push_str("\\\\"),
                        '\t' => out.push_str("\\t"),
                        '\n' => out.push_str("\\n"),
                        '\r' => out.push_str("\\r"),
                        c => out.push(c),
                    }
                }
            }
        }
    }
    out.push('\n');
}

fn pg_time(t: DateTime<Utc>) -> String {
    let mut s = String::with_capacity(22);
    // Writing to a String cannot fail.
    let _ = write!(s, "{}", t.format("%Y-%m-%d %H:%M:%S+00"));
    s
}

// ---------------------------------------------------------------- chat (MariaDB)

async fn seed_chat(
    stores: &SampleStores,
    generator: &Generator,
    n: u64,
    progress: &AtomicU64,
) -> Result<Counts> {
    let mut tx = stores
        .chat
        .begin()
        .await
        .store("chat", "starting a transaction")?;
    let mut counts = Counts::zero();
    let mut conversations: Vec<Conversation> = Vec::new();
    let mut messages: Vec<Message> = Vec::new();
    let mut visits: Vec<Visit> = Vec::new();
    let mut start = 1;
    while start <= n {
        let end = (start + CHUNK - 1).min(n);
        for i in start..=end {
            let p = generator.profile(i);
            let c = generator.chat(&p);
            conversations.extend(c.conversations);
            messages.extend(c.messages);
            visits.extend(c.visits);
        }
        let last = end == n;
        // Parents first: messages reference conversations. Only full statements are sent
        // until the last chunk, so every statement but the last of each table has the same
        // text and is prepared once.
        let written = insert_conversations(&mut tx, &mut conversations, last).await?;
        counts.add("chat", "conversations", written);
        // The conversations still pending are the newest ones; everything before them is in.
        let inserted_up_to = conversations.first().map_or(i64::MAX, |c| c.id - 1);
        let written = insert_messages(&mut tx, &mut messages, inserted_up_to, last).await?;
        counts.add("chat", "messages", written);
        let written = insert_visits(&mut tx, &mut visits, last).await?;
        counts.add("chat", "visits", written);
        progress.store(end, Ordering::Relaxed);
        start = end + 1;
    }
    tx.commit().await.store("chat", "committing")?;
    Ok(counts)
}

fn rows_per_insert(columns: usize) -> usize {
    (MYSQL_MAX_PLACEHOLDERS / columns).min(MYSQL_MAX_ROWS)
}

/// Inserts the first `ready` rows of `pending` in statements of as many rows as the
/// placeholder limit allows, keeping a partial statement's rows back unless `flush`; returns
/// how many rows were inserted.
async fn insert_batches<T>(
    conn: &mut MySqlConnection,
    pending: &mut Vec<T>,
    ready: usize,
    columns: usize,
    flush: bool,
    head: &'static str,
    bind: impl Fn(sqlx::query_builder::Separated<'_, '_, MySql, &'static str>, &T) + Copy,
) -> Result<u64> {
    let batch = rows_per_insert(columns);
    let mut written = 0;
    let ready = ready.min(pending.len());
    let full = if flush { ready } else { ready / batch * batch };
    for rows in pending[..full].chunks(batch) {
        let mut qb: QueryBuilder<'_, MySql> = QueryBuilder::new(head);
        qb.push_values(rows, bind);
        let done = qb
            .build()
            .execute(&mut *conn)
            .await
            .store("chat", "inserting rows")?;
        written += done.rows_affected();
    }
    pending.drain(..full);
    Ok(written)
}

async fn insert_conversations(
    conn: &mut MySqlConnection,
    rows: &mut Vec<Conversation>,
    flush: bool,
) -> Result<u64> {
    let ready = rows.len();
    insert_batches(
        conn,
        rows,
        ready,
        4,
        flush,
        "INSERT INTO conversations (id, user_id, subject, started_at) ",
        |mut b, c| {
            b.push_bind(c.id)
                .push_bind(c.user_id)
                .push_bind(c.subject.clone())
                .push_bind(c.started_at.naive_utc());
        },
    )
    .await
}

/// Messages are inserted only once their conversation is (the foreign key is checked):
/// `inserted_up_to` is the largest conversation id written so far. Pending messages are in
/// conversation id order, as generated.
async fn insert_messages(
    conn: &mut MySqlConnection,
    rows: &mut Vec<Message>,
    inserted_up_to: i64,
    flush: bool,
) -> Result<u64> {
    let ready = rows.partition_point(|m| m.conversation_id <= inserted_up_to);
    insert_batches(
        conn,
        rows,
        ready,
        5,
        flush,
        "INSERT INTO messages (id, conversation_id, author_id, body, sent_at) ",
        |mut b, m| {
            b.push_bind(m.id)
                .push_bind(m.conversation_id)
                .push_bind(m.author_id)
                .push_bind(m.body.clone())
                .push_bind(m.sent_at.naive_utc());
        },
    )
    .await
}

async fn insert_visits(
    conn: &mut MySqlConnection,
    rows: &mut Vec<Visit>,
    flush: bool,
) -> Result<u64> {
    let ready = rows.len();
    insert_batches(
        conn,
        rows,
        ready,
        9,
        flush,
        "INSERT INTO visits (id, user_id, page, ip, screen, os, browser, device, at) ",
        |mut b, v| {
            b.push_bind(v.id)
                .push_bind(v.user_id)
                .push_bind(v.page.clone())
                .push_bind(v.ip.clone())
                .push_bind(v.screen.clone())
                .push_bind(v.os.clone())
                .push_bind(v.browser.clone())
                .push_bind(v.device.clone())
                .push_bind(v.at.naive_utc());
        },
    )
    .await
}

// ---------------------------------------------------------------- sessions (Redis)

async fn seed_sessions(
    store: &SessionsStore,
    generator: &Generator,
    n: u64,
    progress: &AtomicU64,
) -> Result<Counts> {
    let chunks = (0..n.div_ceil(CHUNK)).map(|c| (c * CHUNK + 1, ((c + 1) * CHUNK).min(n)));
    let done = AtomicU64::new(0);
    let parts: Vec<Counts> = futures::stream::iter(chunks)
        .map(|(start, end)| {
            let mut conn = store.connection.clone();
            let prefix = store.prefix.as_str();
            let done = &done;
            async move {
                let mut pipe = redis::pipe();
                let mut counts = Counts::zero();
                for i in start..=end {
                    let p = generator.profile(i);
                    let s = generator.sessions(&p);
                    let id = p.identities.user_id;
                    if let Some(session) = &s.session {
                        pipe.cmd("HSET")
                            .arg(format!("{prefix}session:{id}"))
                            .arg("token")
                            .arg(&session.token)
                            .arg("created")
                            .arg(redis_time(session.created))
                            .arg("ip")
                            .arg(&session.ip)
                            .ignore();
                        counts.add("sessions", "session", 1);
                    }
                    pipe.cmd("SET")
                        .arg(format!("{prefix}last_seen:{}", p.identities.email))
                        .arg(redis_time(s.last_seen))
                        .ignore();
                    pipe.cmd("RPUSH")
                        .arg(format!("{prefix}visits:{id}"))
                        .arg(&s.page_visits)
                        .ignore();
                    counts.add("sessions", "last_seen", 1);
                    counts.add("sessions", "visits", 1);
                }
                pipe.query_async::<()>(&mut conn)
                    .await
                    .store("sessions", "writing keys")?;
                let total = done.fetch_add(end - start + 1, Ordering::Relaxed) + end - start + 1;
                progress.store(total, Ordering::Relaxed);
                Ok::<_, Error>(counts)
            }
        })
        .buffer_unordered(4)
        .try_collect()
        .await?;
    let mut counts = Counts::zero();
    for part in &parts {
        counts.merge(part);
    }
    Ok(counts)
}

/// Timestamps in Redis values: RFC 3339, UTC, seconds.
fn redis_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

// ---------------------------------------------------------------- files (S3)

async fn seed_files(
    store: &FilesStore,
    generator: &Generator,
    n: u64,
    concurrency: usize,
    progress: &AtomicU64,
) -> Result<Counts> {
    // One future per subject putting its objects one after the other: at most `concurrency`
    // puts are in flight, and a subject is done when its future is.
    let mut subjects = futures::stream::iter(1..=n)
        .map(|i| async move {
            let p = generator.profile(i);
            let mut counts = Counts::zero();
            for file in generator.files(&p) {
                let body = file.content();
                store
                    .client
                    .put_object()
                    .bucket(&store.bucket)
                    .key(format!("{}{}", store.prefix, file.key))
                    .content_type(file.content_type)
                    .content_length(body.len() as i64)
                    .body(body.into())
                    .send()
                    .await
                    .store("files", "putting an object")?;
                let folder = match file.kind {
                    FileKind::Avatar => "avatars",
                    FileKind::Attachment => "attachments",
                };
                counts.add("files", folder, 1);
            }
            Ok::<_, Error>(counts)
        })
        .buffer_unordered(concurrency);
    let mut counts = Counts::zero();
    let mut done = 0;
    while let Some(part) = subjects.next().await {
        counts.merge(&part?);
        done += 1;
        if done % 256 == 0 || done == n {
            progress.store(done, Ordering::Relaxed);
        }
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    /// Compiles only if seeding can run on a spawned task.
    #[allow(dead_code)]
    fn seeding_can_be_spawned(stores: &SampleStores, options: &SeedOptions) {
        assert_send(&seed(stores, options));
        assert_send(&crate::count_in_stores(stores));
        assert_send(&reset(stores));
    }

    #[test]
    fn copy_rows_escape_what_the_text_format_reserves() {
        let mut out = String::new();
        row(&mut out, &[Some("a\tb"), None, Some("c\\d\ne\r")]);
        assert_eq!(out, "a\\tb\t\\N\tc\\\\d\\ne\\r\n");
    }

    #[test]
    fn inserts_respect_the_placeholder_limit() {
        for columns in 1..=20 {
            assert!(rows_per_insert(columns) * columns <= MYSQL_MAX_PLACEHOLDERS);
        }
    }
}
