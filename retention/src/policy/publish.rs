//! A run's log line, metrics and `retention` event.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use lethe_common::messages::Event;

use super::Retention;
use super::report::Report;

impl Retention {
    /// The run's log line, metrics and event.
    pub(super) async fn publish(&self, report: &Report) {
        let age =
            |t: Option<DateTime<Utc>>| t.map(|t| (report.now - t).num_seconds().max(0) as f64);
        tracing::info!(
            dry_run = report.dry_run,
            backups_deleted = report.backups.deleted,
            backups_bytes = report.backups.bytes,
            exports_deleted = report.exports.deleted,
            exports_bytes = report.exports.bytes,
            staging_deleted = report.staging.deleted,
            staging_bytes = report.staging.bytes,
            uploads_aborted = report.uploads.section.deleted,
            log_rows_deleted = report.log_rows(),
            identities_minimised = report.identities.section.deleted,
            tombstones_deleted = report.tombstones.deleted,
            oldest_backup_age_s = age(report.backups.oldest_left).unwrap_or(0.0) as u64,
            oldest_export_age_s = age(report.exports.oldest_left).unwrap_or(0.0) as u64,
            oldest_staging_age_s = age(report.staging.oldest_left).unwrap_or(0.0) as u64,
            errors = report.errors(),
            duration_ms = report.duration_ms,
            "retention run finished"
        );
        if report.dry_run {
            return;
        }
        let outcome = if report.errors() == 0 {
            "completed"
        } else {
            "partial"
        };
        metrics::counter!("lethe_retention_runs_total", "outcome" => outcome).increment(1);
        metrics::gauge!("lethe_retention_last_run_timestamp_seconds")
            .set(report.now.timestamp() as f64);
        for (target, deleted, bytes, oldest) in [
            (
                "backups",
                report.backups.deleted,
                report.backups.bytes,
                report.backups.oldest_left,
            ),
            (
                "exports",
                report.exports.deleted,
                report.exports.bytes,
                report.exports.oldest_left,
            ),
            (
                "staging",
                report.staging.deleted,
                report.staging.bytes,
                report.staging.oldest_left,
            ),
            (
                "uploads",
                report.uploads.section.deleted,
                0,
                report.uploads.section.oldest_left,
            ),
            ("log_rows", report.log_rows(), 0, None),
            (
                "identities",
                report.identities.section.deleted,
                0,
                report.identities.section.oldest_left,
            ),
            (
                "tombstones",
                report.tombstones.deleted,
                report.tombstones.bytes,
                report.tombstones.oldest_left,
            ),
        ] {
            metrics::counter!("lethe_retention_deleted_total", "target" => target)
                .increment(deleted);
            metrics::counter!("lethe_retention_deleted_bytes_total", "target" => target)
                .increment(bytes);
            if let Some(age) = age(oldest) {
                metrics::gauge!("lethe_retention_oldest_item_age_seconds", "target" => target)
                    .set(age);
            }
        }
        // Zero when no backup is left, so an alert on the ceiling never fires on stale data.
        metrics::gauge!("lethe_retention_oldest_backup_age_seconds")
            .set(age(report.backups.oldest_left).unwrap_or(0.0));
        for log in &report.logs {
            if let Some(age) = age(log.oldest_left) {
                metrics::gauge!("lethe_retention_oldest_log_row_age_seconds", "store" => log.store.clone(), "table" => log.table.clone())
                    .set(age);
            }
        }
        let Some(publisher) = &self.events else {
            return;
        };
        let counts = BTreeMap::from([
            ("backups_deleted".to_owned(), report.backups.deleted),
            ("backups_bytes".to_owned(), report.backups.bytes),
            ("exports_deleted".to_owned(), report.exports.deleted),
            ("exports_bytes".to_owned(), report.exports.bytes),
            ("staging_deleted".to_owned(), report.staging.deleted),
            ("staging_bytes".to_owned(), report.staging.bytes),
            ("uploads_aborted".to_owned(), report.uploads.section.deleted),
            ("log_rows_deleted".to_owned(), report.log_rows()),
            (
                "identities_minimised".to_owned(),
                report.identities.section.deleted,
            ),
            ("tombstones_deleted".to_owned(), report.tombstones.deleted),
            (
                "oldest_backup_age_seconds".to_owned(),
                age(report.backups.oldest_left).unwrap_or(0.0) as u64,
            ),
            ("errors".to_owned(), report.errors() as u64),
        ]);
        let event = Event {
            kind: "retention".to_owned(),
            request_id: None,
            tenant_id: None,
            counts,
            detail: Some(format!("retention run at {}", report.now.to_rfc3339())),
            at: Utc::now(),
        };
        if let Err(error) = publisher.event(&event).await {
            tracing::warn!(error = %error, "cannot publish the retention event");
        }
    }
}
