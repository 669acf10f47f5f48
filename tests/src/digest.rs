//! Digests of what stores hold, to compare two stores (or one store before and after) without
//! holding their content: SHA-256 over every row, key or object in a canonical order.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result};
use futures::{StreamExt as _, TryStreamExt as _};
use lethe_sample::SampleStores;
use redis::aio::ConnectionManager;
use sha2::{Digest as _, Sha256};
use sqlx::{MySqlPool, PgPool};

/// A digest per collection of the sample stores: `accounts.users`, ..., `chat.messages`, ...,
/// `sessions.session` (per Redis key family, prefix stripped), ..., `files.avatars` (per
/// folder, prefix stripped). Two namespaces seeded alike have equal digests.
pub async fn sample_digest(stores: &SampleStores) -> Result<BTreeMap<String, String>> {
    let mut all = BTreeMap::new();
    for (table, digest) in pg_table_digests(&stores.accounts).await? {
        all.insert(format!("accounts.{table}"), digest);
    }
    for (table, digest) in mysql_table_digests(&stores.chat).await? {
        all.insert(format!("chat.{table}"), digest);
    }
    let mut conn = stores.sessions.connection.clone();
    for (family, digest) in redis_digests(&mut conn, &stores.sessions.prefix).await? {
        all.insert(format!("sessions.{family}"), digest);
    }
    let files = &stores.files;
    for (folder, digest) in s3_digests(&files.client, &files.bucket, &files.prefix).await? {
        all.insert(format!("files.{folder}"), digest);
    }
    Ok(all)
}

/// A digest per table of the `public` schema: every row's text form, sorted.
pub async fn pg_table_digests(pool: &PgPool) -> Result<BTreeMap<String, String>> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .context("while listing PostgreSQL tables")?;
    let mut digests = BTreeMap::new();
    for table in tables {
        let quoted = format!("\"{}\"", table.replace('"', "\"\""));
        let sql = format!("SELECT t::text FROM {quoted} t ORDER BY 1");
        let mut hasher = Sha256::new();
        let mut rows = sqlx::query_scalar::<_, String>(&sql).fetch(pool);
        while let Some(row) = rows.try_next().await.context("while reading rows")? {
            hasher.update(row.as_bytes());
            hasher.update(b"\n");
        }
        digests.insert(table, hex::encode(hasher.finalize()));
    }
    Ok(digests)
}

/// A digest per table of the connection's database: every row as a JSON array of its
/// columns, sorted.
pub async fn mysql_table_digests(pool: &MySqlPool) -> Result<BTreeMap<String, String>> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT CAST(table_name AS CHAR) FROM information_schema.tables \
         WHERE table_schema = DATABASE() AND table_type = 'BASE TABLE' ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .context("while listing MariaDB tables")?;
    let mut digests = BTreeMap::new();
    for table in tables {
        let columns: Vec<String> = sqlx::query_scalar(
            "SELECT CAST(column_name AS CHAR) FROM information_schema.columns \
             WHERE table_schema = DATABASE() AND table_name = ? ORDER BY ordinal_position",
        )
        .bind(&table)
        .fetch_all(pool)
        .await
        .context("while listing MariaDB columns")?;
        let quote = |name: &str| format!("`{}`", name.replace('`', "``"));
        let list = columns
            .iter()
            .map(|c| quote(c))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT CAST(JSON_ARRAY({list}) AS CHAR) AS r FROM {} ORDER BY r",
            quote(&table)
        );
        let mut hasher = Sha256::new();
        let mut rows = sqlx::query_scalar::<_, String>(&sql).fetch(pool);
        while let Some(row) = rows.try_next().await.context("while reading rows")? {
            hasher.update(row.as_bytes());
            hasher.update(b"\n");
        }
        digests.insert(table, hex::encode(hasher.finalize()));
    }
    Ok(digests)
}

/// A digest per key family (the text up to the first `:` after `prefix`) of every key under
/// `prefix`: key (prefix stripped), type and value, with hashes and sets sorted.
pub async fn redis_digests(
    conn: &mut ConnectionManager,
    prefix: &str,
) -> Result<BTreeMap<String, String>> {
    let pattern = format!("{}*", lethe_sample::escape_glob(prefix));
    let mut keys = lethe_sample::scan(conn, &pattern).await?;
    keys.sort();
    let mut hashers: BTreeMap<String, Sha256> = BTreeMap::new();
    for key in keys {
        let short = key.strip_prefix(prefix).unwrap_or(&key).to_string();
        let family = short.split(':').next().unwrap_or_default().to_string();
        let kind: String = redis::cmd("TYPE").arg(&key).query_async(conn).await?;
        let value: Vec<String> = match kind.as_str() {
            "string" => vec![redis::cmd("GET").arg(&key).query_async(conn).await?],
            "list" => {
                redis::cmd("LRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(-1)
                    .query_async(conn)
                    .await?
            }
            "hash" => {
                let map: BTreeMap<String, String> =
                    redis::cmd("HGETALL").arg(&key).query_async(conn).await?;
                map.into_iter().flat_map(|(k, v)| [k, v]).collect()
            }
            "set" => {
                let mut members: Vec<String> =
                    redis::cmd("SMEMBERS").arg(&key).query_async(conn).await?;
                members.sort();
                members
            }
            "zset" => {
                redis::cmd("ZRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(-1)
                    .arg("WITHSCORES")
                    .query_async(conn)
                    .await?
            }
            // Gone meanwhile, or a type the sample does not use: the type alone counts.
            _ => Vec::new(),
        };
        let h = hashers.entry(family).or_default();
        h.update(short.as_bytes());
        h.update(b"\0");
        h.update(kind.as_bytes());
        for v in value {
            h.update(b"\0");
            h.update(v.as_bytes());
        }
        h.update(b"\n");
    }
    Ok(hashers
        .into_iter()
        .map(|(family, h)| (family, hex::encode(h.finalize())))
        .collect())
}

/// A digest per top-level folder (after `prefix`) of every object under `prefix`: key
/// (prefix stripped) and SHA-256 of the content.
pub async fn s3_digests(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
) -> Result<BTreeMap<String, String>> {
    let mut keys = lethe_sample::list_keys(client, bucket, prefix).await?;
    keys.sort();
    // Objects are fetched concurrently, their digests folded in key order (`buffered` keeps it).
    let mut contents = futures::stream::iter(keys)
        .map(|key| async move {
            let object = client
                .get_object()
                .bucket(bucket)
                .key(&key)
                .send()
                .await
                .context("while reading an object")?;
            let body = object
                .body
                .collect()
                .await
                .context("while reading an object")?
                .into_bytes();
            Ok::<_, anyhow::Error>((key, Sha256::digest(&body)))
        })
        .buffered(16);
    let mut hashers: BTreeMap<String, Sha256> = BTreeMap::new();
    while let Some((key, content)) = contents.try_next().await? {
        let short = key.strip_prefix(prefix).unwrap_or(&key);
        let folder = short.split('/').next().unwrap_or_default().to_string();
        let h = hashers.entry(folder).or_default();
        h.update(short.as_bytes());
        h.update(b"\0");
        h.update(content);
        h.update(b"\n");
    }
    Ok(hashers
        .into_iter()
        .map(|(folder, h)| (folder, hex::encode(h.finalize())))
        .collect())
}
