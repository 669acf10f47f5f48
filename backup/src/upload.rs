//! Small objects read and written whole, and the streaming, hashing download of a backup.
//! (Backups are written with the workspace's one multipart writer, `lethe_common::s3::ObjectWriter`.)

use aws_sdk_s3::Client;
use aws_sdk_s3::error::DisplayErrorContext;
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;

use crate::pipeline::Chunk;

pub use lethe_common::s3::{get_small, put};

/// What a download saw.
#[derive(Debug, Clone)]
pub struct Downloaded {
    /// Bytes read.
    pub bytes: u64,
    /// Hex SHA-256 of them.
    pub sha256: String,
    /// The object's ETag, to make a second read fail if the object changed in between.
    pub etag: Option<String>,
}

/// Streams object `key` into `tx` (if given) while hashing it. With `if_match`, the read fails
/// if the object is no longer the one with that ETag.
pub async fn download(
    client: &Client,
    bucket: &str,
    key: &str,
    if_match: Option<&str>,
    tx: Option<mpsc::Sender<Chunk>>,
) -> anyhow::Result<Downloaded> {
    download_expecting(client, bucket, key, if_match, tx, None).await
}

/// What a download must turn out to be: bytes and hex SHA-256.
pub type Expected<'a> = (u64, &'a str);

/// [`download`], and with `expected`, a mismatch fails the download before the end of the data
/// reaches `tx`: the next stage sees an error instead of the end, so nothing downstream can
/// finish (commit) on bytes that are not the recorded object.
pub async fn download_expecting(
    client: &Client,
    bucket: &str,
    key: &str,
    if_match: Option<&str>,
    tx: Option<mpsc::Sender<Chunk>>,
    expected: Option<Expected<'_>>,
) -> anyhow::Result<Downloaded> {
    let result = download_inner(client, bucket, key, if_match, tx.as_ref())
        .await
        .and_then(|seen| match expected {
            Some((bytes, sha256)) if seen.bytes != bytes || seen.sha256 != sha256 => {
                Err(anyhow::anyhow!(
                    "{key} has {} bytes with SHA-256 {}, not the {bytes} bytes with SHA-256 \
                     {sha256} recorded",
                    seen.bytes,
                    seen.sha256
                ))
            }
            _ => Ok(seen),
        });
    if let (Err(error), Some(tx)) = (&result, &tx) {
        let _ = tx
            .send(Err(std::io::Error::other(format!("{error:#}"))))
            .await;
    }
    result
}

async fn download_inner(
    client: &Client,
    bucket: &str,
    key: &str,
    if_match: Option<&str>,
    tx: Option<&mpsc::Sender<Chunk>>,
) -> anyhow::Result<Downloaded> {
    let object = client
        .get_object()
        .bucket(bucket)
        .key(key)
        .set_if_match(if_match.map(str::to_owned))
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("cannot read {key}: {}", DisplayErrorContext(e)))?;
    let etag = object.e_tag().map(str::to_owned);
    let mut body = object.body;
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    while let Some(chunk) = body
        .try_next()
        .await
        .map_err(|e| anyhow::anyhow!("cannot read {key}: {e}"))?
    {
        hasher.update(&chunk);
        bytes += chunk.len() as u64;
        if let Some(tx) = tx {
            tx.send(Ok(chunk))
                .await
                .map_err(|_| anyhow::Error::new(crate::pipeline::StageStopped))?;
        }
    }
    Ok(Downloaded {
        bytes,
        sha256: hex::encode(hasher.finalize()),
        etag,
    })
}
