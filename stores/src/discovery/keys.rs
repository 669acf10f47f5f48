//! Redis keys and S3 object keys, sampled: `SCAN` under a key prefix, `ListObjectsV2` under an
//! object prefix, each until [`SAMPLE_KEYS`] keys or the end.

use super::{DiscoveryError, SAMPLE_KEYS, Samples};
use crate::connection::RedisHandle;

/// Keys under `prefix` (with the prefix cut off), at most [`SAMPLE_KEYS`].
pub async fn sample_redis_keys(
    handle: &RedisHandle,
    prefix: &str,
) -> Result<Samples, DiscoveryError> {
    let failed = |e: redis::RedisError| {
        DiscoveryError::other("scanning Redis keys", e.category().to_owned())
    };
    let mut connection = handle.connection().await.map_err(failed)?;
    // The pattern escapes glob characters of the prefix itself.
    let mut pattern: String = prefix
        .chars()
        .flat_map(|c| match c {
            '*' | '?' | '[' | ']' | '\\' => vec!['\\', c],
            c => vec![c],
        })
        .collect();
    pattern.push('*');
    let mut keys = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut connection)
            .await
            .map_err(failed)?;
        keys.extend(
            batch
                .into_iter()
                .filter_map(|k| k.strip_prefix(prefix).map(str::to_owned)),
        );
        cursor = next;
        if cursor == 0 || keys.len() >= SAMPLE_KEYS {
            break;
        }
    }
    keys.truncate(SAMPLE_KEYS);
    Ok(keys.into())
}

/// Object keys under `prefix` in `bucket` (with the prefix cut off), at most [`SAMPLE_KEYS`].
pub async fn sample_objects(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
) -> Result<Samples, DiscoveryError> {
    let mut keys = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .set_continuation_token(token.clone())
            .send()
            .await
            .map_err(|e| {
                let failure = lethe_common::s3::TransferError::from_sdk("listing objects", &e);
                DiscoveryError::other("listing the bucket", failure.detail)
            })?;
        keys.extend(
            page.contents()
                .iter()
                .filter_map(|o| o.key()?.strip_prefix(prefix).map(str::to_owned)),
        );
        token = page.next_continuation_token().map(str::to_owned);
        if token.is_none() || keys.len() >= SAMPLE_KEYS {
            break;
        }
    }
    keys.truncate(SAMPLE_KEYS);
    Ok(keys.into())
}
