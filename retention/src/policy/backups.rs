//! Backups older than `retention.backups_max_age`: their objects, then their catalog rows.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::report::{BackupItem, Section};
use super::{Retention, before, bytes};
use crate::catalog;

impl Retention {
    pub(super) async fn backups(&self, now: DateTime<Utc>, dry: bool) -> Section<BackupItem> {
        let mut section = Section::default();
        let cutoff = before(now, self.plan.settings.backups_max_age);
        let expired = match catalog::expired_backups(&self.pool, cutoff, now).await {
            Ok(expired) => expired,
            Err(error) => {
                section.error("cannot read the backup catalog", error);
                return section;
            }
        };
        let prefix = &self.plan.backups_prefix;
        for backup in expired {
            if !backup.object_key.starts_with(prefix.as_str())
                || !backup.manifest_key.starts_with(prefix.as_str())
            {
                section.errors.push(format!(
                    "backup {}: its objects are outside backups.prefix `{prefix}`; not deleted",
                    backup.id
                ));
                continue;
            }
            if !dry {
                let keys = [backup.object_key.clone(), backup.manifest_key.clone()];
                let mark = catalog::mark_backup_deleted(&self.pool, &backup, now);
                let what = format!("backup {}", backup.id);
                let counted = self
                    .delete_catalogued(&mut section, &what, "objects are", &keys, mark)
                    .await;
                if !counted {
                    continue;
                }
                tracing::info!(backup.id = %backup.id, store = %backup.store, started_at = %backup.started_at, "backup deleted");
            }
            section.deleted += 1;
            section.bytes += bytes(backup.bytes);
            section.items.push(BackupItem {
                backup_id: backup.id,
                store: backup.store,
                status: backup.status,
                object_key: backup.object_key,
                started_at: backup.started_at,
                bytes: bytes(backup.bytes),
            });
        }
        let excluded: Vec<Uuid> = if dry {
            section.items.iter().map(|b| b.backup_id).collect()
        } else {
            Vec::new()
        };
        match catalog::oldest_backup(&self.pool, &excluded).await {
            Ok(oldest) => section.oldest_left = oldest,
            Err(error) => section.error("cannot read the backup catalog", error),
        }
        section
    }
}
