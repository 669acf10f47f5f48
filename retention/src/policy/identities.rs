//! Identities of settled requests minimised to their keyed hash (with a rectification's values
//! and the free-text reasons), once no restorable backup can need them for replaying an
//! erasure.

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::report::{IdentitiesSection, IdentityItem};
use super::{Retention, before};
use crate::catalog;

/// How long a finished request's identities are kept at least (results delivered late, a
/// backup that read the erasure position just before the record was written).
pub const SETTLE: Duration = Duration::from_secs(3600);
/// Requests minimised per ledger transaction.
const MINIMISE_BATCH: i64 = 1000;

impl Retention {
    pub(super) async fn identities(
        &self,
        now: DateTime<Utc>,
        dry: bool,
        would_delete: &[Uuid],
    ) -> IdentitiesSection {
        let mut report = IdentitiesSection::default();
        let backups_cutoff = before(now, self.plan.settings.backups_max_age);
        let window = match catalog::replay_window(&self.pool, would_delete, backups_cutoff).await {
            Ok(window) => window,
            Err(error) => {
                report
                    .section
                    .error("cannot read the backup catalog", error);
                return report;
            }
        };
        report.replay_window = window;
        let settled = before(now, SETTLE);
        let bound = window.unwrap_or(i64::MAX);
        loop {
            let limit = if dry { i64::MAX } else { MINIMISE_BATCH };
            let batch = match catalog::minimisable(&self.pool, bound, settled, limit).await {
                Ok(batch) => batch,
                Err(error) => {
                    report.section.error("cannot read the requests", error);
                    break;
                }
            };
            if batch.is_empty() {
                break;
            }
            if !dry && let Err(error) = catalog::minimise(&self.pool, &batch, now).await {
                report.section.error("cannot minimise identities", error);
                break;
            }
            report.section.deleted += batch.len() as u64;
            let full = i64::try_from(batch.len()).unwrap_or(i64::MAX) >= limit;
            report
                .section
                .items
                .extend(batch.into_iter().map(|m| IdentityItem {
                    request_id: m.request_id,
                    kind: m.kind,
                    erasure_seq: m.erasure_seq,
                }));
            if dry || !full {
                break;
            }
        }
        if report.section.deleted > 0 && !dry {
            tracing::info!(requests = report.section.deleted, replay_window = ?window, "identities minimised to their keyed hash");
        }
        match catalog::oldest_identities(&self.pool).await {
            Ok(oldest) => report.section.oldest_left = oldest,
            Err(error) => report.section.error("cannot read the requests", error),
        }
        report
    }
}
