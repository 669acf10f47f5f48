//! The notification deadlines of an incident and whether they are missed.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::model::{Deadlines, IncidentStatus};
use super::store::INFORMED;
use super::{AUTHORITY_NOTICE_HOURS, TENANT_NOTICE_HOURS};

/// The deadlines of an incident detected at `detected_at`.
pub fn due_dates(detected_at: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
    (
        detected_at + chrono::Duration::hours(TENANT_NOTICE_HOURS),
        detected_at + chrono::Duration::hours(AUTHORITY_NOTICE_HOURS),
    )
}

pub(super) fn deadlines(
    status: IncidentStatus,
    detected_at: DateTime<Utc>,
    authority_notified_at: Option<DateTime<Utc>>,
    uninformed_tenants: bool,
    now: DateTime<Utc>,
) -> Deadlines {
    let (tenants_due_at, authority_due_at) = due_dates(detected_at);
    let open = status != IncidentStatus::Closed;
    Deadlines {
        tenants_due_at,
        authority_due_at,
        tenants_overdue: open && uninformed_tenants && now > tenants_due_at,
        authority_overdue: open && authority_notified_at.is_none() && now > authority_due_at,
        authority_notified_at,
    }
}

/// Counts of open incidents and of missed deadlines at `now`.
pub async fn overdue_counts(pool: &PgPool, now: DateTime<Utc>) -> sqlx::Result<(i64, i64, i64)> {
    sqlx::query_as(&format!(
        "SELECT
             count(*) FILTER (WHERE i.detected_at + make_interval(hours => {TENANT_NOTICE_HOURS}) < $1
                 AND EXISTS (SELECT 1 FROM incident_tenant it
                             WHERE it.incident_id = i.id AND NOT {INFORMED})),
             count(*) FILTER (WHERE i.detected_at + make_interval(hours => {AUTHORITY_NOTICE_HOURS}) < $1
                 AND i.authority_notified_at IS NULL),
             count(*)
         FROM incident i WHERE i.status <> 'closed'"
    ))
    .bind(now)
    .fetch_one(pool)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_run_from_detection_and_are_missed_only_while_open() {
        let detected: DateTime<Utc> = "2026-11-01T10:00:00Z".parse().unwrap();
        let later = detected + chrono::Duration::hours(25);
        let d = deadlines(IncidentStatus::Open, detected, None, true, later);
        assert_eq!(d.tenants_due_at, detected + chrono::Duration::hours(24));
        assert_eq!(d.authority_due_at, detected + chrono::Duration::hours(72));
        assert!(d.tenants_overdue && !d.authority_overdue);
        assert!(!deadlines(IncidentStatus::Open, detected, None, false, later).tenants_overdue);
        assert!(!deadlines(IncidentStatus::Closed, detected, None, true, later).tenants_overdue);
        let much_later = detected + chrono::Duration::hours(73);
        assert!(
            deadlines(IncidentStatus::Contained, detected, None, false, much_later)
                .authority_overdue
        );
        assert!(
            !deadlines(
                IncidentStatus::Open,
                detected,
                Some(later),
                false,
                much_later
            )
            .authority_overdue
        );
    }
}
