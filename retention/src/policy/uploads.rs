//! Unfinished multipart uploads no running backup or open request still writes.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use lethe_common::s3 as s3util;
use uuid::Uuid;

use super::keys::{EXPORTS_PREFIX, STAGING_PREFIX, key_prefix, request_in};
use super::report::{UploadItem, UploadsSection};
use super::{Retention, before, earliest};
use crate::catalog;

impl Retention {
    pub(super) async fn uploads(&self, now: DateTime<Utc>, dry: bool) -> UploadsSection {
        let mut report = UploadsSection::default();
        let cutoff = before(now, self.plan.settings.staging_max_age);
        let running: BTreeSet<String> = match catalog::running_backup_keys(
            &self.pool,
            before(now, self.plan.settings.backups_max_age),
        )
        .await
        {
            Ok(keys) => keys.into_iter().collect(),
            Err(error) => {
                report
                    .section
                    .error("cannot read the backup catalog", error);
                return report;
            }
        };
        let prefixes = [
            self.plan.backups_prefix.as_str(),
            EXPORTS_PREFIX,
            STAGING_PREFIX,
        ];
        let mut pending = Vec::new();
        for prefix in prefixes {
            match s3util::list_pending_uploads(&self.s3, &self.bucket, prefix).await {
                Ok(uploads) => pending.extend(uploads),
                Err(error) => {
                    report.section.errors.push(format!(
                        "cannot list unfinished uploads under `{prefix}`: {error}"
                    ));
                }
            }
        }
        let ids: Vec<Uuid> = pending
            .iter()
            .filter_map(|u| {
                request_in(&u.key, STAGING_PREFIX).or_else(|| request_in(&u.key, EXPORTS_PREFIX))
            })
            .collect();
        let open: BTreeSet<Uuid> = match catalog::request_states(&self.pool, &ids).await {
            Ok(states) => states
                .into_iter()
                .filter(|s| s.open)
                .map(|s| s.id)
                .collect(),
            Err(error) => {
                report.section.error("cannot read the requests", error);
                return report;
            }
        };
        let mut oldest: Option<DateTime<Utc>> = None;
        for upload in pending {
            let request = request_in(&upload.key, STAGING_PREFIX)
                .or_else(|| request_in(&upload.key, EXPORTS_PREFIX));
            let protected =
                running.contains(&upload.key) || request.is_some_and(|id| open.contains(&id));
            let old = upload.initiated.is_some_and(|t| t <= cutoff);
            if protected || !old {
                oldest = earliest(oldest, upload.initiated);
                continue;
            }
            let prefix = key_prefix(&upload.key);
            if !dry {
                s3util::abort_upload(&self.s3, &self.bucket, &upload.key, &upload.upload_id).await;
                let recorded = catalog::record_objects_deleted(
                    &self.pool,
                    "retention.upload_aborted",
                    None,
                    request,
                    serde_json::json!({ "prefix": prefix, "initiated": upload.initiated }),
                    now,
                )
                .await;
                if let Err(error) = recorded {
                    report
                        .section
                        .error("cannot record an aborted upload", error);
                }
            }
            report.section.deleted += 1;
            report.section.items.push(UploadItem {
                prefix,
                initiated: upload.initiated,
            });
        }
        report.section.oldest_left = oldest;
        report
    }
}
