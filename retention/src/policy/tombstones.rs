//! Tombstones no backup can need any more. A restore of a backup replays the tombstones
//! completed since its start (less `REPLAY_MARGIN`), so a tombstone can go once every backup
//! still held started more than that margin after it. The backups held are read from both the
//! catalog (running and completed rows) and the bucket (every manifest left under
//! `backups.prefix`): after the ledger is lost or restored from an older backup, the catalog
//! alone would miss backups a restore can still use.

use chrono::{DateTime, NaiveDateTime, Utc};
use lethe_common::s3 as s3util;
use lethe_common::tombstone::{self, REPLAY_MARGIN};
use uuid::Uuid;

use super::identities::SETTLE;
use super::report::{Section, TombstoneItem};
use super::{Retention, before, earliest};
use crate::catalog;

const MANIFEST_SUFFIX: &str = ".manifest.json";

/// The start time and id in a manifest's key, `<prefix><store>/<start>-<id>.manifest.json`.
fn manifest_parts(key: &str, prefix: &str) -> Option<(DateTime<Utc>, Uuid)> {
    let rest = key.strip_prefix(prefix)?.strip_suffix(MANIFEST_SUFFIX)?;
    let name = rest.rsplit('/').next()?;
    let (time, id) = name.split_once('-')?;
    let time = NaiveDateTime::parse_from_str(time, "%Y%m%dT%H%M%SZ").ok()?;
    Some((time.and_utc(), Uuid::parse_str(id).ok()?))
}

impl Retention {
    /// When the oldest backup a restore could still use started, from the catalog and the
    /// bucket, leaving out `excluded` (the backups a dry run would delete).
    async fn oldest_held_backup(&self, excluded: &[Uuid]) -> anyhow::Result<Option<DateTime<Utc>>> {
        let catalogued = catalog::oldest_held_backup(&self.pool, excluded).await?;
        let prefix = &self.plan.backups_prefix;
        let keys = s3util::list_keys_under(&self.s3, &self.bucket, prefix)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot list the backups: {}",
                    s3util::TransferError::from_sdk("listing backups", &e)
                )
            })?;
        let in_bucket = keys
            .iter()
            .filter_map(|key| manifest_parts(key, prefix))
            .filter(|(_, id)| !excluded.contains(id))
            .map(|(started, _)| started)
            .min();
        Ok(earliest(catalogued, in_bucket))
    }

    pub(super) async fn tombstones(
        &self,
        now: DateTime<Utc>,
        dry: bool,
        would_delete: &[Uuid],
    ) -> Section<TombstoneItem> {
        let mut section = Section::default();
        let oldest = match self.oldest_held_backup(would_delete).await {
            Ok(oldest) => oldest,
            Err(error) => {
                // Without knowing the backups, nothing can be known to be unneeded.
                section.error("cannot tell which backups remain", format!("{error:#}"));
                return section;
            }
        };
        // Nothing recent goes (a backup may be starting), and nothing a held backup replays.
        let cutoff = before(
            oldest.map_or(now, |o| o.min(now)).min(before(now, SETTLE)),
            REPLAY_MARGIN,
        );
        let objects =
            match s3util::list_objects_modified_under(&self.s3, &self.bucket, tombstone::PREFIX)
                .await
            {
                Ok(objects) => objects,
                Err(error) => {
                    section.error(
                        "cannot list the tombstones",
                        s3util::TransferError::from_sdk("listing tombstones", &error),
                    );
                    return section;
                }
            };
        let mut doomed = Vec::new();
        for object in objects {
            let Some((completed_at, request_id)) = tombstone::key_parts(&object.key) else {
                continue;
            };
            if completed_at < cutoff {
                section.bytes += object.size;
                section.items.push(TombstoneItem {
                    request_id,
                    completed_at,
                });
                doomed.push(object.key);
            } else {
                section.oldest_left = earliest(section.oldest_left, Some(completed_at));
            }
        }
        if doomed.is_empty() {
            return section;
        }
        if !dry {
            if let Err(error) = s3util::delete_keys(&self.s3, &self.bucket, &doomed).await {
                section.error("cannot delete tombstones", error);
                section.items.clear();
                section.bytes = 0;
                return section;
            }
            let recorded = catalog::record_objects_deleted(
                &self.pool,
                "retention.tombstones_deleted",
                None,
                None,
                serde_json::json!({ "tombstones": doomed.len(), "before": cutoff }),
                now,
            )
            .await;
            if let Err(error) = recorded {
                section.error("cannot record the deletion of tombstones", error);
            }
            tracing::info!(tombstones = doomed.len(), before = %cutoff, "tombstones no backup needs deleted");
        }
        section.deleted = doomed.len() as u64;
        section
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_key_gives_its_backups_start_and_id() {
        let id = Uuid::now_v7();
        let key = format!("backups/accounts/20261206T101500Z-{id}.manifest.json");
        let (started, parsed) = manifest_parts(&key, "backups/").unwrap_or_default();
        assert_eq!(parsed, id);
        assert_eq!(started.to_rfc3339(), "2026-12-06T10:15:00+00:00");
        assert_eq!(
            manifest_parts(
                &format!("backups/accounts/20261206T101500Z-{id}.dump.zst.gpg"),
                "backups/"
            ),
            None
        );
    }
}
