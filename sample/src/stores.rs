//! Connections to the four sample stores, and counting what they hold.

use std::time::Duration;

use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use futures::future::try_join4;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use sqlx::mysql::{MySqlPool, MySqlPoolOptions};
use sqlx::postgres::{PgPool, PgPoolOptions};

use crate::counts::Counts;
use crate::error::{Result, StoreContext};

/// The `accounts` store's tables, parents first.
pub const ACCOUNTS_TABLES: &[&str] = &["users", "invoices", "access_log"];
/// The `chat` store's tables, parents first.
pub const CHAT_TABLES: &[&str] = &["conversations", "messages", "visits"];
/// The `sessions` store's key families: `session:{user_id}`, `last_seen:{email}`,
/// `visits:{user_id}`.
pub const SESSION_KEY_FAMILIES: &[&str] = &["session", "last_seen", "visits"];
/// The `files` store's top-level folders: `avatars/{user_id}/`, `attachments/{user_id}/`.
pub const FILE_FOLDERS: &[&str] = &["avatars", "attachments"];

/// The `sessions` store: a Redis connection and the prefix of every sample key.
#[derive(Clone)]
pub struct SessionsStore {
    /// Multiplexed, reconnecting connection.
    pub connection: ConnectionManager,
    /// Prepended to every key (`""` in production-like setups, `"<test>:"` in tests).
    pub prefix: String,
}

/// The `files` store: an S3 client, the bucket and the prefix of every sample key.
#[derive(Clone, Debug)]
pub struct FilesStore {
    /// S3 client.
    pub client: aws_sdk_s3::Client,
    /// Bucket.
    pub bucket: String,
    /// Prepended to every object key (`""` by default).
    pub prefix: String,
}

/// The four stores of the sample SaaS application.
#[derive(Clone)]
pub struct SampleStores {
    /// PostgreSQL: users, invoices, access_log.
    pub accounts: PgPool,
    /// MariaDB: conversations, messages, visits.
    pub chat: MySqlPool,
    /// Redis: sessions, last-seen times, recent page visits.
    pub sessions: SessionsStore,
    /// S3: avatars and attachments.
    pub files: FilesStore,
}

/// How to reach an S3-compatible service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Options {
    /// Endpoint URL, e.g. `http://127.0.0.1:9000`.
    pub endpoint: String,
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// Region, e.g. `us-east-1`.
    pub region: String,
}

impl Default for S3Options {
    fn default() -> Self {
        Self {
            endpoint: "http://127.0.0.1:9000".into(),
            access_key_id: "lethe".into(),
            secret_access_key: "lethe-local-secret".into(),
            region: "us-east-1".into(),
        }
    }
}

/// How to reach the four stores.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectOptions {
    /// PostgreSQL URL of the accounts database.
    pub accounts_url: String,
    /// MariaDB URL of the chat database.
    pub chat_url: String,
    /// Redis URL of the sessions store.
    pub sessions_url: String,
    /// Prefix of every sample Redis key.
    pub redis_prefix: String,
    /// The S3 service of the files store.
    pub s3: S3Options,
    /// Bucket of the files store.
    pub files_bucket: String,
    /// Prefix of every sample object key.
    pub files_prefix: String,
}

/// An S3 client for a local or remote S3-compatible service: static credentials, path-style
/// addressing, and checksums only where the API requires them (not every S3-compatible server
/// accepts the SDK's default trailing checksums; Lethe's own client does the same by default).
pub fn s3_client(options: &S3Options) -> aws_sdk_s3::Client {
    let credentials = Credentials::new(
        &options.access_key_id,
        &options.secret_access_key,
        None,
        None,
        "lethe-static",
    );
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(options.region.clone()))
        .endpoint_url(&options.endpoint)
        .credentials_provider(credentials)
        .force_path_style(true)
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// A Redis connection manager with timeouts suited to bulk work (the client's default
/// response timeout of 500 ms is too short for large pipelines on a busy machine).
pub async fn redis_connection(url: &str) -> Result<ConnectionManager> {
    let client = redis::Client::open(url).store("sessions", "parsing the Redis URL")?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(10)))
        .set_response_timeout(Some(Duration::from_secs(60)));
    client
        .get_connection_manager_with_config(config)
        .await
        .store("sessions", "connecting")
}

impl SampleStores {
    /// Connects to the four stores (the bucket and the tables need not exist yet).
    pub async fn connect(options: &ConnectOptions) -> Result<Self> {
        let accounts = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(30))
            .connect(&options.accounts_url)
            .await
            .store("accounts", "connecting")?;
        let chat = MySqlPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(30))
            .connect(&options.chat_url)
            .await
            .store("chat", "connecting")?;
        let connection = redis_connection(&options.sessions_url).await?;
        Ok(Self {
            accounts,
            chat,
            sessions: SessionsStore {
                connection,
                prefix: options.redis_prefix.clone(),
            },
            files: FilesStore {
                client: s3_client(&options.s3),
                bucket: options.files_bucket.clone(),
                prefix: options.files_prefix.clone(),
            },
        })
    }
}

/// What the stores hold now, per collection of [`crate::COLLECTIONS`]: rows per table, Redis
/// keys per key family under the prefix, objects per folder under the prefix.
pub async fn count_in_stores(stores: &SampleStores) -> Result<Counts> {
    let (accounts, chat, sessions, files) = try_join4(
        count_accounts(&stores.accounts),
        count_chat(&stores.chat),
        count_sessions(&stores.sessions),
        count_files(&stores.files),
    )
    .await?;
    let mut counts = Counts::zero();
    for part in [accounts, chat, sessions, files] {
        for (store, collection, n) in part {
            counts.set(store, collection, n);
        }
    }
    Ok(counts)
}

type Part = Vec<(&'static str, &'static str, u64)>;

async fn count_accounts(pool: &PgPool) -> Result<Part> {
    let mut part = Vec::new();
    for table in ACCOUNTS_TABLES {
        // Table names are constants of this crate, never input.
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(pool)
            .await
            .store("accounts", "counting rows")?;
        part.push(("accounts", *table, n as u64));
    }
    Ok(part)
}

async fn count_chat(pool: &MySqlPool) -> Result<Part> {
    let mut part = Vec::new();
    for table in CHAT_TABLES {
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM `{table}`"))
            .fetch_one(pool)
            .await
            .store("chat", "counting rows")?;
        part.push(("chat", *table, n as u64));
    }
    Ok(part)
}

async fn count_sessions(store: &SessionsStore) -> Result<Part> {
    let mut conn = store.connection.clone();
    let mut part = Vec::new();
    for family in SESSION_KEY_FAMILIES {
        let pattern = format!("{}{family}:*", escape_glob(&store.prefix));
        let keys = scan(&mut conn, &pattern).await?;
        part.push(("sessions", *family, keys.len() as u64));
    }
    Ok(part)
}

async fn count_files(store: &FilesStore) -> Result<Part> {
    let mut part = Vec::new();
    for folder in FILE_FOLDERS {
        let prefix = format!("{}{folder}/", store.prefix);
        let keys = list_keys(&store.client, &store.bucket, &prefix).await?;
        part.push(("files", *folder, keys.len() as u64));
    }
    Ok(part)
}

/// Escapes Redis glob metacharacters so that a prefix matches only itself.
pub fn escape_glob(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Every key matching a glob `pattern`, by SCAN (never KEYS, which blocks the server).
pub async fn scan(conn: &mut ConnectionManager, pattern: &str) -> Result<Vec<String>> {
    let mut keys = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .cursor_arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await
            .store("sessions", "scanning keys")?;
        keys.extend(batch);
        if next == 0 {
            return Ok(keys);
        }
        cursor = next;
    }
}

/// Deletes every key matching a glob `pattern` (SCAN + UNLINK); returns how many.
pub async fn unlink_matching(conn: &mut ConnectionManager, pattern: &str) -> Result<u64> {
    let keys = scan(conn, pattern).await?;
    for batch in keys.chunks(1000) {
        let _: u64 = redis::cmd("UNLINK")
            .arg(batch)
            .query_async(conn)
            .await
            .store("sessions", "deleting keys")?;
    }
    Ok(keys.len() as u64)
}

/// Every object key under `prefix` in `bucket`.
pub async fn list_keys(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
) -> Result<Vec<String>> {
    let mut keys = Vec::new();
    let mut pages = client
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.store("files", "listing objects")?;
        keys.extend(
            page.contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_string)),
        );
    }
    Ok(keys)
}

/// Deletes every object under `prefix` in `bucket` (1,000 per request); returns how many.
pub async fn delete_prefix(client: &aws_sdk_s3::Client, bucket: &str, prefix: &str) -> Result<u64> {
    let keys = list_keys(client, bucket, prefix).await?;
    lethe_common::s3::delete_keys(client, bucket, &keys)
        .await
        .map_err(|failure| crate::Error::Store {
            store: "files",
            action: "deleting objects",
            source: failure.detail.into(),
        })?;
    Ok(keys.len() as u64)
}
