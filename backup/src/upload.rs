//! S3 multipart upload of a stream of unknown length, and streaming download.
//!
//! Parts are cut from the stream as it arrives. S3 allows at most 10,000 parts of at most
//! 5 GiB, all but the last at least 5 MiB; a stream's length is unknown in advance, so part
//! sizes grow: the first 900 parts have the configured size, each following 900 twice the size
//! of the previous 900 (capped at 5 GiB). Whatever the configured size (at least 5 MiB),
//! 10,000 parts then hold more than S3's 5 TiB object limit, while a backup of up to 7 GiB (with
//! 8 MiB parts) never holds more than `upload_concurrency + 1` parts of 8 MiB in memory.

use aws_sdk_s3::Client;
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::{Bytes, BytesMut};
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::pipeline::Chunk;

/// S3's largest part.
pub const MAX_PART: u64 = 5 << 30;
/// S3's smallest part (except the last).
pub const MIN_PART: u64 = 5 << 20;
/// S3's most parts in one upload.
pub const MAX_PARTS: u32 = 10_000;
/// Parts of one size before the size doubles.
const PARTS_PER_STEP: u32 = 900;

/// The size of part `number` (1-based) when the first parts have `base` bytes.
pub fn part_size(base: u64, number: u32) -> u64 {
    let step = number.saturating_sub(1) / PARTS_PER_STEP;
    base.max(MIN_PART)
        .checked_shl(step)
        .unwrap_or(MAX_PART)
        .min(MAX_PART)
}

/// One multipart upload, started; to be completed or aborted by its owner.
#[derive(Clone)]
pub struct Multipart {
    client: Client,
    bucket: String,
    key: String,
    upload_id: String,
}

impl Multipart {
    /// Starts a multipart upload of `key`.
    pub async fn start(client: &Client, bucket: &str, key: &str) -> anyhow::Result<Self> {
        let created = client
            .create_multipart_upload()
            .bucket(bucket)
            .key(key)
            .content_type("application/octet-stream")
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot start the upload of {key}: {}",
                    DisplayErrorContext(e)
                )
            })?;
        let upload_id = created
            .upload_id()
            .ok_or_else(|| anyhow::anyhow!("S3 returned no upload id for {key}"))?
            .to_owned();
        Ok(Self {
            client: client.clone(),
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            upload_id,
        })
    }

    /// Uploads what arrives on `rx` as parts (at most `concurrency` at once) until the channel
    /// ends; fails on an error item. Returns the parts, for [`Multipart::complete`].
    pub async fn upload(
        &self,
        mut rx: mpsc::Receiver<Chunk>,
        base_part: u64,
        concurrency: usize,
    ) -> anyhow::Result<Vec<CompletedPart>> {
        let mut running: JoinSet<anyhow::Result<CompletedPart>> = JoinSet::new();
        let mut parts = Vec::new();
        let mut number: u32 = 1;
        let mut target = part_size(base_part, number) as usize;
        let mut buffer = BytesMut::with_capacity(target);
        while let Some(chunk) = rx.recv().await {
            let mut chunk = chunk.map_err(|e| anyhow::anyhow!("{e}"))?;
            while !chunk.is_empty() {
                let take = chunk.len().min(target - buffer.len());
                buffer.extend_from_slice(&chunk.split_to(take));
                if buffer.len() == target {
                    let part = std::mem::replace(&mut buffer, BytesMut::new()).freeze();
                    while running.len() >= concurrency.max(1) {
                        parts.push(joined(running.join_next().await)?);
                    }
                    self.spawn_part(&mut running, number, part)?;
                    number += 1;
                    target = part_size(base_part, number) as usize;
                    buffer = BytesMut::with_capacity(target);
                }
            }
        }
        if !buffer.is_empty() || number == 1 {
            self.spawn_part(&mut running, number, buffer.freeze())?;
        }
        while let Some(result) = running.join_next().await {
            parts.push(joined(Some(result))?);
        }
        parts.sort_by_key(|p| p.part_number());
        Ok(parts)
    }

    fn spawn_part(
        &self,
        running: &mut JoinSet<anyhow::Result<CompletedPart>>,
        number: u32,
        body: Bytes,
    ) -> anyhow::Result<()> {
        if number > MAX_PARTS {
            anyhow::bail!("the backup needs more than S3's {MAX_PARTS} parts");
        }
        let client = self.client.clone();
        let bucket = self.bucket.clone();
        let key = self.key.clone();
        let upload_id = self.upload_id.clone();
        running.spawn(async move {
            let length = body.len() as i64;
            let number = number as i32;
            let uploaded = client
                .upload_part()
                .bucket(&bucket)
                .key(&key)
                .upload_id(&upload_id)
                .part_number(number)
                .content_length(length)
                .body(ByteStream::from(body))
                // The SHA-256 of the whole object is recorded in the catalog and checked by
                // verify and restore, end to end; hashing every part again only to sign it
                // costs a second pass over the ciphertext here and another in the server.
                .customize()
                .disable_payload_signing()
                .send()
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "cannot upload part {number} of {key}: {}",
                        DisplayErrorContext(e)
                    )
                })?;
            Ok(CompletedPart::builder()
                .part_number(number)
                .set_e_tag(uploaded.e_tag().map(str::to_owned))
                .build())
        });
        Ok(())
    }

    /// Completes the upload: the object appears.
    pub async fn complete(&self, parts: Vec<CompletedPart>) -> anyhow::Result<()> {
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot complete the upload of {}: {}",
                    self.key,
                    DisplayErrorContext(e)
                )
            })?;
        Ok(())
    }

    /// Aborts the upload, so S3 frees its parts. Failure to abort is logged, not returned:
    /// the caller is already handling the error that made it abort.
    pub async fn abort(&self) {
        if let Err(error) = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .send()
            .await
        {
            tracing::warn!(
                object.key = %self.key,
                error = %DisplayErrorContext(error),
                "cannot abort the multipart upload; a bucket lifecycle rule for incomplete uploads removes its parts"
            );
        }
    }
}

fn joined(
    result: Option<Result<anyhow::Result<CompletedPart>, tokio::task::JoinError>>,
) -> anyhow::Result<CompletedPart> {
    match result {
        Some(Ok(part)) => part,
        Some(Err(error)) => Err(anyhow::anyhow!("a part upload stopped: {error}")),
        None => Err(anyhow::anyhow!("no part upload was running")),
    }
}

/// Uploads a small object in one request.
pub async fn put(client: &Client, bucket: &str, key: &str, body: Bytes) -> anyhow::Result<()> {
    client
        .put_object()
        .bucket(bucket)
        .key(key)
        .content_length(body.len() as i64)
        .body(ByteStream::from(body))
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("cannot write {key}: {}", DisplayErrorContext(e)))?;
    Ok(())
}

/// Reads a small object whole.
pub async fn get_small(client: &Client, bucket: &str, key: &str) -> anyhow::Result<Bytes> {
    let object = client
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("cannot read {key}: {}", DisplayErrorContext(e)))?;
    Ok(object
        .body
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("cannot read {key}: {e}"))?
        .into_bytes())
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_sizes_start_at_the_configured_size_and_double_every_900_parts() {
        let base = 8 << 20;
        assert_eq!(part_size(base, 1), base);
        assert_eq!(part_size(base, 900), base);
        assert_eq!(part_size(base, 901), 2 * base);
        assert_eq!(part_size(base, 1_801), 4 * base);
        assert_eq!(part_size(1, 1), MIN_PART, "never below S3's minimum");
    }

    #[test]
    fn ten_thousand_parts_hold_more_than_the_largest_s3_object_and_no_part_is_too_big() {
        for base in [MIN_PART, 8 << 20, 64 << 20, 1 << 30] {
            let mut total = 0u64;
            for number in 1..=MAX_PARTS {
                let size = part_size(base, number);
                assert!(size <= MAX_PART, "part {number} of base {base}: {size}");
                total += size;
            }
            assert!(total >= 5 << 40, "base {base}: only {total} bytes");
        }
    }
}
