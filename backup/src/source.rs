//! What a backup reads: each store's dump, by the field's own tool, streamed.
//!
//! - PostgreSQL: `pg_dump --format=custom --compress=0` (zstd compresses instead: pg_dump's own
//!   zlib is single-threaded and dominates a conventional backup's time).
//! - MariaDB / MySQL: `mariadb-dump --single-transaction` (one consistent snapshot of InnoDB
//!   tables without locking them), routines and triggers included, binary columns as hex.
//! - Redis: `redis-cli --rdb -`, the server's RDB snapshot (every database of the server).
//! - S3: a tar of every object of the bucket (GNU format, names longer than 100 bytes as
//!   `././@LongLink` entries), built here as a stream: objects are read a few at a time and
//!   their bodies passed on chunk by chunk.

use std::io;
use std::path::PathBuf;

use aws_sdk_s3::Client;
use aws_sdk_s3::error::DisplayErrorContext;
use bytes::Bytes;
use futures::StreamExt as _;
use lethe_common::datamap::Store;
use lethe_stores::{ServedStore, StoreConnection};
use secrecy::SecretString;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::pipeline::Chunk;
use crate::settings::BackupTools;
use crate::tools;

/// Objects fetched ahead of the one being archived.
const PREFETCH: usize = 16;
/// Keys listed ahead of the objects being fetched.
const LISTED_AHEAD: usize = 1_000;

/// The kind of a store, and what backing it up takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// PostgreSQL.
    Postgres,
    /// MariaDB or MySQL.
    Mysql,
    /// Redis.
    Redis,
    /// An S3 bucket.
    S3,
}

impl Kind {
    /// The kind of a data-map store; a processor reached over HTTP is not backed up (its data
    /// is the processor's to keep).
    pub fn of(store: &Store) -> anyhow::Result<Self> {
        Ok(match store {
            Store::Postgres(_) => Kind::Postgres,
            Store::Mysql(_) => Kind::Mysql,
            Store::Redis(_) => Kind::Redis,
            Store::S3(_) => Kind::S3,
            Store::Http(_) => anyhow::bail!("a processor reached over HTTP is not backed up"),
        })
    }

    /// As the data map writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Postgres => "postgres",
            Kind::Mysql => "mysql",
            Kind::Redis => "redis",
            Kind::S3 => "s3",
        }
    }

    /// The dump tool's name.
    pub fn tool(self) -> &'static str {
        match self {
            Kind::Postgres => "pg_dump",
            Kind::Mysql => "mariadb-dump",
            Kind::Redis => "redis-cli",
            Kind::S3 => "tar",
        }
    }

    /// The dump tool's program.
    pub fn program(self, tools: &BackupTools) -> Option<PathBuf> {
        match self {
            Kind::Postgres => Some(tools.pg_dump.clone()),
            Kind::Mysql => Some(tools.mariadb_dump.clone()),
            Kind::Redis => Some(tools.redis_cli.clone()),
            Kind::S3 => None,
        }
    }

    /// The dump's file extension, before `.zst.gpg`.
    pub fn extension(self) -> &'static str {
        match self {
            Kind::Postgres => "dump",
            Kind::Mysql => "sql",
            Kind::Redis => "rdb",
            Kind::S3 => "tar",
        }
    }

    /// What the dump is, for the manifest.
    pub fn dump_format(self) -> &'static str {
        match self {
            Kind::Postgres => "pg_dump custom format (pg_restore reads it)",
            Kind::Mysql => "SQL (mariadb reads it)",
            Kind::Redis => "Redis RDB (dump.rdb)",
            Kind::S3 => "tar (GNU), one entry per object, named by its key",
        }
    }
}

/// The URL of a SQL or Redis store, as it was served.
fn store_url(served: &ServedStore) -> anyhow::Result<&SecretString> {
    served
        .url
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("store `{}` has no URL to dump from", served.name))
}

/// Starts the dump of `served` into `tx`; the handle returns the dump's size.
pub fn start(
    served: &ServedStore,
    tools: &BackupTools,
    tx: mpsc::Sender<Chunk>,
) -> anyhow::Result<JoinHandle<anyhow::Result<u64>>> {
    let kind = Kind::of(&served.store)?;
    match kind {
        Kind::Postgres => {
            let invocation = tools::postgres(store_url(served)?)?;
            let mut command = invocation.command(&tools.pg_dump);
            command.args(["--format=custom", "--compress=0", "--no-password"]);
            tools::spawn_source("pg_dump".into(), command, tx)
        }
        Kind::Mysql => {
            let (invocation, database) = tools::mysql(store_url(served)?)?;
            let mut command = invocation.command(&tools.mariadb_dump);
            command
                .args([
                    "--single-transaction",
                    "--routines",
                    "--triggers",
                    "--hex-blob",
                    "--default-character-set=utf8mb4",
                ])
                // Not --databases: the dump then restores into whichever database it is given.
                .arg("--")
                .arg(database);
            tools::spawn_source("mariadb-dump".into(), command, tx)
        }
        Kind::Redis => {
            let invocation = tools::redis(store_url(served)?)?;
            let mut command = invocation.command(&tools.redis_cli);
            command.args(["--rdb", "-"]);
            tools::spawn_source("redis-cli".into(), command, tx)
        }
        Kind::S3 => {
            let (StoreConnection::S3(client), Store::S3(spec)) =
                (&served.connection, &served.store)
            else {
                anyhow::bail!("store `{}` is not an S3 store", served.name);
            };
            Ok(spawn_tar(client.clone(), spec.bucket.clone(), tx))
        }
    }
}

/// Streams a tar of every object of `bucket` into `tx`; the handle returns its size.
pub fn spawn_tar(
    client: Client,
    bucket: String,
    tx: mpsc::Sender<Chunk>,
) -> JoinHandle<anyhow::Result<u64>> {
    tokio::spawn(async move {
        let result = tar_bucket(&client, &bucket, &tx).await;
        if let Err(error) = &result {
            let _ = tx.send(Err(io::Error::other(format!("{error:#}")))).await;
        }
        result
    })
}

async fn tar_bucket(
    client: &Client,
    bucket: &str,
    tx: &mpsc::Sender<Chunk>,
) -> anyhow::Result<u64> {
    let (keys_tx, keys_rx) = mpsc::channel::<anyhow::Result<String>>(LISTED_AHEAD);
    let lister = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(list_bucket(
        client.clone(),
        bucket.to_owned(),
        keys_tx,
    )));
    let keys = futures::stream::unfold(keys_rx, |mut rx| async move {
        rx.recv().await.map(|key| (key, rx))
    });
    let objects = keys
        .map(|key| async move {
            let key = key?;
            let object = client
                .get_object()
                .bucket(bucket)
                .key(&key)
                .send()
                .await
                // Object keys name subjects: errors never quote them.
                .map_err(|e| {
                    anyhow::anyhow!(
                        "cannot read an object of bucket {bucket}: {}",
                        DisplayErrorContext(e)
                    )
                })?;
            Ok::<_, anyhow::Error>((key, object))
        })
        .buffered(PREFETCH);
    let mut objects = std::pin::pin!(objects);
    let mut total = 0u64;
    let send = |bytes: Bytes| async move {
        tx.send(Ok(bytes))
            .await
            .map_err(|_| anyhow::Error::new(crate::pipeline::StageStopped))
    };
    while let Some(object) = objects.next().await {
        let (key, object) = object?;
        let size = u64::try_from(object.content_length().unwrap_or(0)).unwrap_or(0);
        let mtime = object
            .last_modified()
            .map_or(0, |t| u64::try_from(t.secs()).unwrap_or(0));
        let header = tar_header(key.as_bytes(), size, mtime)?;
        total += header.len() as u64;
        send(Bytes::from(header)).await?;
        let mut body = object.body;
        let mut written = 0u64;
        while let Some(chunk) = body
            .try_next()
            .await
            .map_err(|e| anyhow::anyhow!("cannot read an object of bucket {bucket}: {e}"))?
        {
            written += chunk.len() as u64;
            if written > size {
                break;
            }
            send(chunk).await?;
        }
        if written != size {
            anyhow::bail!(
                "an object of bucket {bucket} changed while it was read ({written} bytes instead of {size})"
            );
        }
        let padding = padding(size);
        total += size + padding as u64;
        if padding > 0 {
            send(Bytes::from(vec![0u8; padding])).await?;
        }
    }
    // Two zero blocks end a tar archive.
    send(Bytes::from(vec![0u8; 1024])).await?;
    lister.await??;
    Ok(total + 1024)
}

/// Every key of `bucket`, streamed page by page as one flat listing, so the key list of a
/// large bucket never sits in memory (and a server's transient "folder" entries, which only a
/// delimited listing shows, never become archive entries).
async fn list_bucket(
    client: Client,
    bucket: String,
    tx: mpsc::Sender<anyhow::Result<String>>,
) -> anyhow::Result<()> {
    let mut pages = client
        .list_objects_v2()
        .bucket(&bucket)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = match page {
            Ok(page) => page,
            Err(error) => {
                let error = anyhow::anyhow!(
                    "cannot list bucket {bucket}: {}",
                    DisplayErrorContext(error)
                );
                let _ = tx.send(Err(anyhow::anyhow!("{error:#}"))).await;
                return Err(error);
            }
        };
        for key in page.contents().iter().filter_map(|o| o.key()) {
            if tx.send(Ok(key.to_owned())).await.is_err() {
                // The archive stopped reading.
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Zero bytes that complete an entry of `size` bytes to a 512-byte block.
pub fn padding(size: u64) -> usize {
    ((512 - size % 512) % 512) as usize
}

/// The tar header block(s) of a regular file: a GNU header, preceded by a `././@LongLink`
/// entry when the name does not fit its 100 bytes. Names are written as they are (an S3 key
/// may hold `..` or a leading `/`, which the tar crate's path checks would refuse).
pub fn tar_header(name: &[u8], size: u64, mtime: u64) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(1536);
    let mut header = tar::Header::new_gnu();
    let gnu = header
        .as_gnu_mut()
        .ok_or_else(|| io::Error::other("not a GNU tar header"))?;
    if name.len() > gnu.name.len() {
        let mut long = tar::Header::new_gnu();
        let link = b"././@LongLink";
        if let Some(g) = long.as_gnu_mut() {
            g.name[..link.len()].copy_from_slice(link);
        }
        long.set_mode(0o644);
        long.set_uid(0);
        long.set_gid(0);
        long.set_mtime(0);
        long.set_size(name.len() as u64 + 1);
        long.set_entry_type(tar::EntryType::GNULongName);
        long.set_cksum();
        out.extend_from_slice(long.as_bytes());
        out.extend_from_slice(name);
        out.push(0);
        out.resize(out.len() + padding(name.len() as u64 + 1), 0);
        let n = gnu.name.len();
        gnu.name.copy_from_slice(&name[..n]);
    } else {
        gnu.name[..name.len()].copy_from_slice(name);
    }
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_size(size);
    header.set_mtime(mtime);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    out.extend_from_slice(header.as_bytes());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    #[test]
    fn the_tar_stream_reads_back_with_every_name_and_body_intact() {
        let long = format!("attachments/42/{}/report.pdf", "x".repeat(150));
        let entries: Vec<(String, Vec<u8>)> = vec![
            ("avatars/1/a.png".into(), b"png".to_vec()),
            (long, vec![7u8; 1000]),
            ("empty".into(), Vec::new()),
            ("../odd//key".into(), b"odd".to_vec()),
        ];
        let mut archive = Vec::new();
        for (name, body) in &entries {
            archive.extend(tar_header(name.as_bytes(), body.len() as u64, 1_700_000_000).unwrap());
            archive.extend(body);
            archive.resize(archive.len() + padding(body.len() as u64), 0);
        }
        archive.extend([0u8; 1024]);

        let mut read = Vec::new();
        let mut tar = tar::Archive::new(archive.as_slice());
        for entry in tar.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = String::from_utf8(entry.path_bytes().into_owned()).unwrap();
            let mut body = Vec::new();
            entry.read_to_end(&mut body).unwrap();
            read.push((name, body));
        }
        assert_eq!(read, entries);
    }
}
