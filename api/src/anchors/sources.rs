//! Where `audit verify` finds checkpoints: files an operator kept, the events stream, and the
//! backups' manifests in Lethe's bucket.

use std::path::Path;

use anyhow::Context as _;
use lethe_common::Settings;
use lethe_common::anchors::{self, Checkpoint};
use lethe_common::messages::Event;
use lethe_common::nats::{self, Names};
use serde_json::Value;

/// A checkpoint and where it was found (for the report).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The checkpoint.
    pub checkpoint: Checkpoint,
    /// Where: a file, `events stream`, or a manifest's key.
    pub source: String,
}

/// Every checkpoint in `value`: a checkpoint, an `audit.checkpoint` event, a backup manifest
/// (its `audit_checkpoint`), or an array of these.
fn checkpoints_in(value: &Value) -> Vec<Checkpoint> {
    match value {
        Value::Array(items) => items.iter().flat_map(checkpoints_in).collect(),
        Value::Object(object) if object.contains_key("chain_pos") => {
            serde_json::from_value(value.clone()).into_iter().collect()
        }
        Value::Object(object) if object.contains_key("audit_checkpoint") => {
            checkpoints_in(&object["audit_checkpoint"])
        }
        Value::Object(_) => serde_json::from_value::<Event>(value.clone())
            .ok()
            .and_then(|e| Checkpoint::from_event(&e))
            .into_iter()
            .collect(),
        _ => Vec::new(),
    }
}

/// The checkpoints of a file: one JSON document (a checkpoint, an event, a manifest, or an
/// array of them) or one per line (what `lethe-api audit checkpoint >> file` appends).
pub fn from_file(path: &Path) -> anyhow::Result<Vec<Found>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let checkpoints = match serde_json::from_str::<Value>(&text) {
        Ok(value) => checkpoints_in(&value),
        Err(_) => {
            let mut all = Vec::new();
            for (number, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let value: Value = serde_json::from_str(line)
                    .with_context(|| format!("{} line {}: not JSON", path.display(), number + 1))?;
                all.extend(checkpoints_in(&value));
            }
            all
        }
    };
    anyhow::ensure!(
        !checkpoints.is_empty(),
        "{} holds no audit checkpoint",
        path.display()
    );
    Ok(checkpoints
        .into_iter()
        .map(|checkpoint| Found {
            checkpoint,
            source: path.display().to_string(),
        })
        .collect())
}

/// The latest checkpoint on the events stream (`<prefix>.event.audit.checkpoint`).
pub async fn from_events(settings: &Settings) -> anyhow::Result<Vec<Found>> {
    let names = Names::new(&settings.nats.prefix)?;
    let client = nats::connect(&settings.nats, "lethe-api-audit").await?;
    let jetstream = async_nats::jetstream::new(client);
    let latest = anchors::latest_published(&jetstream, &names)
        .await
        .map_err(anyhow::Error::msg)?;
    Ok(latest
        .into_iter()
        .map(|checkpoint| Found {
            checkpoint,
            source: format!("events stream {}", names.events_stream()),
        })
        .collect())
}

/// The checkpoint of every backup manifest under `backups.prefix` in Lethe's bucket (a
/// manifest written before anchors existed, or while no checkpoint could be had, has none).
pub async fn from_backups(settings: &Settings) -> anyhow::Result<Vec<Found>> {
    let s3 = settings.require_s3()?;
    let client = lethe_common::s3::client(s3);
    let prefix = settings.backups_prefix()?;
    let keys = lethe_common::s3::list_keys_under(&client, &s3.bucket, &prefix)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot list the backups: {}",
                aws_sdk_s3::error::DisplayErrorContext(e)
            )
        })?;
    let mut found = Vec::new();
    for key in keys.iter().filter(|k| k.ends_with(".manifest.json")) {
        let object = client
            .get_object()
            .bucket(&s3.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot read {key}: {}",
                    aws_sdk_s3::error::DisplayErrorContext(e)
                )
            })?;
        let body = object
            .body
            .collect()
            .await
            .with_context(|| format!("cannot read {key}"))?
            .into_bytes();
        let manifest: Value =
            serde_json::from_slice(&body).with_context(|| format!("{key} is not JSON"))?;
        found.extend(
            checkpoints_in(&manifest["audit_checkpoint"])
                .into_iter()
                .map(|checkpoint| Found {
                    checkpoint,
                    source: format!("s3://{}/{key}", s3.bucket),
                }),
        );
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_are_found_alone_in_events_in_manifests_and_in_arrays() {
        let checkpoint = serde_json::json!({
            "chain_pos": 3, "head_hash": "ab", "at": "2026-12-06T12:00:00Z",
            "key_id": "k", "signature": "s"
        });
        let event =
            Checkpoint::to_event(&serde_json::from_value(checkpoint.clone()).unwrap()).unwrap();
        let manifest = serde_json::json!({"format": 1, "audit_checkpoint": checkpoint});
        let none = serde_json::json!({"format": 1, "audit_checkpoint": null});
        let all = serde_json::json!([
            checkpoint,
            serde_json::to_value(&event).unwrap(),
            manifest,
            none
        ]);
        let found = checkpoints_in(&all);
        assert_eq!(found.len(), 3);
        assert!(found.iter().all(|c| c.chain_pos == 3));
    }
}
