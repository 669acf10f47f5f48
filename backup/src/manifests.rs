//! Backups found by their manifests in the bucket, without the ledger's catalog: after the
//! ledger is lost, or to find the ledger's own backup to restore it.

use lethe_common::s3::{self as s3util, Client};
use uuid::Uuid;

use crate::catalog::BackupRow;
use crate::manifest::Manifest;
use crate::upload;

const SUFFIX: &str = ".manifest.json";

async fn manifest_keys(s3: &Client, bucket: &str, prefix: &str) -> anyhow::Result<Vec<String>> {
    let keys = s3util::list_keys_under(s3, bucket, prefix)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot list the backups: {}",
                s3util::TransferError::from_sdk("listing backups", &e)
            )
        })?;
    Ok(keys.into_iter().filter(|k| k.ends_with(SUFFIX)).collect())
}

async fn read(s3: &Client, bucket: &str, key: &str) -> anyhow::Result<Manifest> {
    let bytes = upload::get_small(s3, bucket, key).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| anyhow::anyhow!("the manifest {key} is not valid: {e}"))
}

/// The key and manifest of backup `id` under `prefix`, if the bucket holds it.
pub async fn find(
    s3: &Client,
    bucket: &str,
    prefix: &str,
    id: Uuid,
) -> anyhow::Result<Option<(String, Manifest)>> {
    let ending = format!("-{id}{SUFFIX}");
    let Some(key) = manifest_keys(s3, bucket, prefix)
        .await?
        .into_iter()
        .find(|k| k.ends_with(&ending))
    else {
        return Ok(None);
    };
    let manifest = read(s3, bucket, &key).await?;
    if manifest.backup_id != id {
        anyhow::bail!("the manifest {key} names another backup; refusing it");
    }
    Ok(Some((key, manifest)))
}

/// Every backup whose manifest is under `prefix` (of `store`, if given), newest first.
pub async fn list(
    s3: &Client,
    bucket: &str,
    prefix: &str,
    store: Option<&str>,
) -> anyhow::Result<Vec<BackupRow>> {
    let mut rows = Vec::new();
    for key in manifest_keys(s3, bucket, prefix).await? {
        if let Some(store) = store
            && !key
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with(&format!("{store}/")))
        {
            continue;
        }
        let manifest = read(s3, bucket, &key).await?;
        rows.push(row_of(&manifest, &key));
    }
    rows.sort_by_key(|r| std::cmp::Reverse(r.started_at));
    Ok(rows)
}

/// The catalog row a manifest (at `key`) stands for: a backup whose manifest was written
/// completed.
pub fn row_of(manifest: &Manifest, key: &str) -> BackupRow {
    BackupRow {
        id: manifest.backup_id,
        store: manifest.store.clone(),
        object_key: manifest.object_key.clone(),
        manifest_key: key.to_owned(),
        tool: manifest.tool_version.clone(),
        plaintext_bytes: i64::try_from(manifest.plaintext_bytes).ok(),
        bytes: i64::try_from(manifest.ciphertext_bytes).ok(),
        sha256: Some(manifest.ciphertext_sha256.clone()),
        recipients: manifest.recipients.clone(),
        erasure_seq: manifest.erasure_seq,
        status: "completed".into(),
        error: None,
        started_at: manifest.started_at,
        finished_at: Some(manifest.finished_at),
        expires_at: manifest.expires_at,
    }
}
