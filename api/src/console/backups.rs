//! Backups and retention: per store the last completed backup and its age against the 7-day
//! ceiling, the next scheduled backup and retention runs (as the daemons planned them), the
//! last retention deletions, and the audit chain's verification (admins only: backups hold
//! every tenant's data).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Duration, Utc};
use maud::html;

use crate::AppState;
use crate::audit::{self, Verification};
use crate::console::session::Operator;
use crate::error::ApiError;
use crate::pages::error::PageError;
use crate::pages::layout;

/// Backups older than this are past the retention ceiling.
const CEILING_DAYS: i64 = 7;

type LastBackup = (
    String,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    Option<i64>,
    DateTime<Utc>,
);

/// A planned run as the page shows it: `None` when no daemon has planned it yet, `Some(None)`
/// when its schedule is off.
fn planned(next: Option<Option<DateTime<Utc>>>, now: DateTime<Utc>) -> String {
    match next {
        None => "not planned".to_owned(),
        Some(None) => "off (on demand only)".to_owned(),
        Some(Some(at)) if at <= now => "due now".to_owned(),
        Some(Some(at)) => format!("{} ({})", layout::countdown(at, now), layout::when(at)),
    }
}

/// `GET /console/backups`.
pub async fn show(State(state): State<AppState>, op: Operator) -> Result<Response, PageError> {
    if !op.is_admin() {
        return Err(PageError::Api(ApiError::Forbidden("admin")));
    }
    let backups: Vec<LastBackup> = sqlx::query_as(
        "SELECT DISTINCT ON (store) store, started_at, finished_at, bytes, expires_at FROM backup
         WHERE status = 'completed' ORDER BY store, started_at DESC",
    )
    .fetch_all(&state.pool)
    .await?;
    // (daemon, item, next run or None when the schedule is off, when it was planned)
    let plans: Vec<(String, String, Option<DateTime<Utc>>, DateTime<Utc>)> = sqlx::query_as(
        "SELECT daemon, item, next_at, planned_at FROM schedule_plan ORDER BY daemon, item",
    )
    .fetch_all(&state.pool)
    .await?;
    let next_run = |daemon: &str, item: &str| {
        plans
            .iter()
            .find(|(d, i, _, _)| d == daemon && i == item)
            .map(|(_, _, next, _)| *next)
    };
    let retention: Vec<(String, serde_json::Value, DateTime<Utc>)> = sqlx::query_as(
        "SELECT kind, detail, at FROM audit_event WHERE kind LIKE 'retention.%' ORDER BY seq DESC LIMIT 20",
    )
    .fetch_all(&state.pool)
    .await?;
    let chain = audit::verify(&state.pool).await?;
    let now = Utc::now();
    let body = html! {
        h2 { "Last backup per store" }
        table #backups {
            thead { tr { th { "Store" } th { "Started" } th { "Age" } th { "Size" } th { "Expires" } th { "Next backup" } } }
            tbody {
                @for (store, started, _finished, bytes, expires) in &backups {
                    @let age = now - *started;
                    tr {
                        td { (store) }
                        td { (layout::when(*started)) }
                        td { span class=(if age > Duration::days(CEILING_DAYS) { "overdue" } else { "" }) {
                            (age.num_hours()) " h of " (CEILING_DAYS * 24) " h" } }
                        td { @if let Some(b) = bytes { (b) " bytes" } }
                        td { (layout::countdown(*expires, now)) }
                        td.next { (planned(next_run("backup", store), now)) }
                    }
                }
                @if backups.is_empty() { tr { td colspan="6" .muted { "No completed backup yet." } } }
            }
        }
        @let unbacked: Vec<&(String, String, Option<DateTime<Utc>>, DateTime<Utc>)> = plans.iter()
            .filter(|(d, i, _, _)| d == "backup" && !backups.iter().any(|b| &b.0 == i)).collect();
        @if !unbacked.is_empty() {
            p #never-backed-up { "Not backed up yet: "
                @for (_, store, next, _) in &unbacked { (store) " (next: " (planned(Some(*next), now)) ") " } }
        }
        p #next-retention { "Next retention run: " (planned(next_run("retention", "run"), now)) }
        p.muted { "Next runs are planned by the backup daemon from its [backups] schedule and by the retention daemon from its [retention] schedule; \"not planned\" means no such daemon has looked at its schedule yet." }
        h2 { "Last retention deletions" }
        ul #retention {
            @for (kind, detail, at) in &retention { li { (layout::when(*at)) " — " (kind) " " span.muted { (detail) } } }
            @if retention.is_empty() { li.muted { "Retention has not deleted anything yet." } }
        }
        h2 { "Audit chain" }
        p #audit-chain {
            @match &chain {
                Verification::Intact { sealed, unsealed } => {
                    span.status.intact { "intact" } " " (sealed) " events checked, " (unsealed) " not sealed yet"
                }
                Verification::Broken { chain_pos, seq, problem } => {
                    span.status.broken { "broken" } " at position " (chain_pos) " (event " (seq) "): " (problem)
                }
            }
        }
    };
    Ok((
        op.csrf.headers(),
        layout::console("Backups & retention", &op.label(), &op.csrf.token, body),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn planned_runs_read_as_unplanned_off_due_or_a_countdown() {
        let now = Utc::now();
        assert_eq!(planned(None, now), "not planned");
        assert_eq!(planned(Some(None), now), "off (on demand only)");
        assert_eq!(
            planned(Some(Some(now - Duration::minutes(1))), now),
            "due now"
        );
        let later = planned(Some(Some(now + Duration::hours(3))), now);
        assert!(
            later.starts_with("in 2 h") || later.starts_with("in 3 h"),
            "{later}"
        );
    }
}
