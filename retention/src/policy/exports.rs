//! Export archives older than `retention.exports_max_age`: those the catalog names, then
//! orphaned archives by their own age.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use lethe_common::s3 as s3util;

use super::keys::{EXPORTS_PREFIX, key_prefix, request_in};
use super::report::{ExportItem, Section};
use super::{Retention, before, bytes, earliest};
use crate::catalog;

impl Retention {
    pub(super) async fn exports(&self, now: DateTime<Utc>, dry: bool) -> Section<ExportItem> {
        let mut section = Section::default();
        let cutoff = before(now, self.plan.settings.exports_max_age);
        let expired = match catalog::expired_exports(&self.pool, cutoff, now).await {
            Ok(expired) => expired,
            Err(error) => {
                section.error("cannot read the export catalog", error);
                return section;
            }
        };
        let mut handled = BTreeSet::new();
        for export in expired {
            handled.insert(export.object_key.clone());
            if !export.object_key.starts_with(EXPORTS_PREFIX) {
                section.errors.push(format!(
                    "export of request {}: its archive is outside `{EXPORTS_PREFIX}`; not deleted",
                    export.request_id
                ));
                continue;
            }
            if !dry {
                let keys = [export.object_key.clone()];
                let mark = catalog::mark_export_deleted(&self.pool, &export, now);
                let what = format!("export of request {}", export.request_id);
                let counted = self
                    .delete_catalogued(&mut section, &what, "archive is", &keys, mark)
                    .await;
                if !counted {
                    continue;
                }
                tracing::info!(request.id = %export.request_id, created_at = %export.created_at, "export deleted");
            }
            section.deleted += 1;
            section.bytes += bytes(Some(export.bytes));
            section.items.push(ExportItem {
                request_id: Some(export.request_id),
                object_key: export.object_key,
                created_at: Some(export.created_at),
                bytes: bytes(Some(export.bytes)),
                in_catalog: true,
            });
        }
        // Archives no catalog row names (an assembly whose result never reached the ledger),
        // by their own age.
        let live: BTreeSet<String> = match catalog::live_export_keys(&self.pool).await {
            Ok(keys) => keys.into_iter().collect(),
            Err(error) => {
                section.error("cannot read the export catalog", error);
                return section;
            }
        };
        match s3util::list_objects_modified_under(&self.s3, &self.bucket, EXPORTS_PREFIX).await {
            Ok(objects) => {
                let mut oldest: Option<DateTime<Utc>> = None;
                for object in objects {
                    if handled.contains(&object.key) {
                        continue;
                    }
                    let old = object.last_modified.is_some_and(|t| t <= cutoff);
                    if !old || live.contains(&object.key) {
                        oldest = earliest(oldest, object.last_modified);
                        continue;
                    }
                    let request = request_in(&object.key, EXPORTS_PREFIX);
                    if !dry {
                        let keys = [object.key.clone()];
                        if let Err(error) = s3util::delete_keys(&self.s3, &self.bucket, &keys).await
                        {
                            section.error("orphaned archive", error);
                            continue;
                        }
                        let recorded = catalog::record_objects_deleted(
                            &self.pool,
                            "retention.export_orphan_deleted",
                            None,
                            request,
                            serde_json::json!({ "prefix": key_prefix(&object.key), "bytes": object.size, "last_modified": object.last_modified }),
                            now,
                        )
                        .await;
                        if let Err(error) = recorded {
                            section.errors.push(format!(
                                "cannot record an orphaned archive's deletion: {error}"
                            ));
                        }
                    }
                    section.deleted += 1;
                    section.bytes += object.size;
                    section.items.push(ExportItem {
                        request_id: request,
                        object_key: key_prefix(&object.key),
                        created_at: object.last_modified,
                        bytes: object.size,
                        in_catalog: false,
                    });
                }
                section.oldest_left = oldest;
            }
            Err(error) => section.errors.push(format!(
                "cannot list `{EXPORTS_PREFIX}`: {}",
                s3util::TransferError::from_sdk("listing exports", &error)
            )),
        }
        section
    }
}
