//! The dashboard: what is open, due within 48 hours and overdue, and the last 30 days' chart.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use chrono::NaiveDate;
use lethe_common::ids::TenantId;
use maud::html;
use sqlx::PgPool;

use crate::AppState;
use crate::console::chart::{self, Day};
use crate::console::session::Operator;
use crate::pages::error::PageError;
use crate::pages::layout;

/// Open, due within 48 h, overdue: of one tenant, or of all (`None`).
async fn counts(pool: &PgPool, tenant: Option<TenantId>) -> sqlx::Result<(i64, i64, i64)> {
    sqlx::query_as(
        "SELECT count(*),
                count(*) FILTER (WHERE due_at >= now() AND due_at < now() + interval '48 hours'),
                count(*) FILTER (WHERE due_at < now())
         FROM request
         WHERE status IN ('received', 'verifying', 'in_progress') AND ($1::uuid IS NULL OR tenant_id = $1)",
    )
    .bind(tenant)
    .fetch_one(pool)
    .await
}

/// The last 30 days, oldest first.
async fn days(pool: &PgPool, tenant: Option<TenantId>) -> sqlx::Result<Vec<Day>> {
    let rows: Vec<(NaiveDate, i64, Option<f64>)> = sqlx::query_as(
        "SELECT d::date, count(r.id),
                percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM r.completed_at - r.received_at)::float8)
                    FILTER (WHERE r.completed_at IS NOT NULL)
         FROM generate_series(date_trunc('day', now() AT TIME ZONE 'UTC') - interval '29 days',
                              date_trunc('day', now() AT TIME ZONE 'UTC'), interval '1 day') AS d
         LEFT JOIN request r ON r.received_at >= d AT TIME ZONE 'UTC'
                            AND r.received_at < (d + interval '1 day') AT TIME ZONE 'UTC'
                            AND ($1::uuid IS NULL OR r.tenant_id = $1)
         GROUP BY d ORDER BY d",
    )
    .bind(tenant)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(day, received, median_secs)| Day {
            day,
            received,
            median_secs,
        })
        .collect())
}

/// `GET /console`.
pub async fn show(State(state): State<AppState>, op: Operator) -> Result<Response, PageError> {
    let scope = (!op.is_admin()).then_some(op.principal.tenant_id);
    let (open, due_soon, overdue) = counts(&state.pool, scope).await?;
    let days = days(&state.pool, scope).await?;
    let total: i64 = days.iter().map(|d| d.received).sum();
    let body = html! {
        div.cards {
            a.card #open href="/console/requests" { div.n { (open) } "open" }
            div.card.warn #due-soon { div.n { (due_soon) } "due within 48 h" }
            a.card.bad #overdue href="/console/requests?overdue=true" { div.n { (overdue) } "overdue" }
            div.card { div.n { (total) } "received in 30 days" }
        }
        h2 { "Requests per day and median time to completion (30 days)" }
        (chart::render(&days))
        p.muted { "Bars: requests received per day. Line: the median time from receipt to completion of that day's requests." }
    };
    Ok((
        op.csrf.headers(),
        layout::console("Dashboard", &op.label(), &op.csrf.token, body),
    )
        .into_response())
}
