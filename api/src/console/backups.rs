//! Backups and retention: per store the last completed backup and its age against the 7-day
//! ceiling, the last retention deletions, and the audit chain's verification (admins only:
//! backups hold every tenant's data).

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
            thead { tr { th { "Store" } th { "Started" } th { "Age" } th { "Size" } th { "Expires" } } }
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
                    }
                }
                @if backups.is_empty() { tr { td colspan="5" .muted { "No completed backup yet." } } }
            }
        }
        p.muted { "Next runs follow the backup daemon's [backups] schedule and the retention daemon's [retention] schedule." }
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
                // Only `audit verify` given checkpoints reports a cut; the page checks no checkpoint.
                Verification::Cut { ends_at, anchored, .. } => {
                    span.status.broken { "cut" } " at position " (ends_at) " of " (anchored)
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
