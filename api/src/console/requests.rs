//! The requests list: filterable by status, kind and overdue, paged, with each request's
//! deadline countdown. Rows come from the API's own listing, called once per tenant an admin
//! sees and merged newest first. Above it, the privacy center's requests still `verifying`:
//! filed by a person whose emailed link has not been followed yet.

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use lethe_common::ids::{RequestId, TenantId};
use maud::html;
use serde::Deserialize;

use crate::AppState;
use crate::console::session::Operator;
use crate::model::{RequestKind, RequestStatus};
use crate::pages::error::PageError;
use crate::pages::layout;
use crate::routes::{self, ListQuery, RequestSummary};

/// Requests per page.
const PAGE: i64 = 25;

const STATUSES: [&str; 7] = [
    "received",
    "verifying",
    "in_progress",
    "completed",
    "failed",
    "rejected",
    "cancelled",
];
const KINDS: [&str; 8] = [
    "access",
    "portability",
    "erasure",
    "rectification",
    "restriction",
    "lift_restriction",
    "objection",
    "lift_objection",
];

/// The list's filters, as the form sends them (empty means any).
#[derive(Debug, Default, Deserialize)]
pub struct Filters {
    #[serde(default)]
    status: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    overdue: Option<String>,
    #[serde(default)]
    cursor: Option<String>,
}

fn parse<T: serde::de::DeserializeOwned>(value: &str) -> Option<T> {
    if value.is_empty() {
        return None;
    }
    serde_json::from_value(serde_json::Value::String(value.to_owned())).ok()
}

/// The tenants an operator sees: every one for an admin, else their own.
pub async fn visible_tenants(
    state: &AppState,
    op: &Operator,
) -> Result<Vec<(TenantId, String)>, PageError> {
    if op.is_admin() {
        Ok(sqlx::query_as("SELECT id, name FROM tenant ORDER BY name")
            .fetch_all(&state.pool)
            .await?)
    } else {
        Ok(vec![(op.principal.tenant_id, op.tenant_name.clone())])
    }
}

/// A privacy-center request waiting for its link to be followed: no request exists yet, and
/// its address is not shown (the operator needs the count and the expiry, not the person).
type Verifying = (uuid::Uuid, String, String, DateTime<Utc>, DateTime<Utc>);

/// The unexpired, unverified privacy-center requests of `tenants`, newest first.
async fn verifying(
    state: &AppState,
    tenants: &[(TenantId, String)],
) -> Result<Vec<Verifying>, PageError> {
    let ids: Vec<TenantId> = tenants.iter().map(|(id, _)| *id).collect();
    Ok(sqlx::query_as(
        "SELECT v.id, t.name, v.kind, v.created_at, v.expires_at
         FROM privacy_verification v JOIN tenant t ON t.id = v.tenant_id
         WHERE v.verified_at IS NULL AND v.expires_at > now() AND v.tenant_id = ANY($1)
         ORDER BY v.created_at DESC LIMIT $2",
    )
    .bind(&ids)
    .bind(PAGE)
    .fetch_all(&state.pool)
    .await?)
}

/// `GET /console/requests`.
pub async fn list(
    State(state): State<AppState>,
    op: Operator,
    Query(filters): Query<Filters>,
) -> Result<Response, PageError> {
    let status: Option<RequestStatus> = parse(&filters.status);
    let kind: Option<RequestKind> = parse(&filters.kind);
    let overdue = filters
        .overdue
        .as_deref()
        .is_some_and(|v| v == "true" || v == "on");
    let tenants = visible_tenants(&state, &op).await?;
    // Shown on the first page of an unfiltered or `verifying` listing only.
    let show_verifying = filters.cursor.is_none()
        && matches!(status, None | Some(RequestStatus::Verifying))
        && kind.is_none()
        && !overdue;
    let pending = if show_verifying {
        verifying(&state, &tenants).await?
    } else {
        Vec::new()
    };
    let mut rows: Vec<(RequestSummary, &str)> = Vec::new();
    for (tenant, name) in &tenants {
        let query = ListQuery {
            status,
            kind,
            overdue,
            due_before: None,
            cursor: filters.cursor.clone(),
            limit: Some(PAGE + 1),
        };
        let page = routes::list(
            State(state.clone()),
            op.caller_in(*tenant),
            Ok(Query(query)),
        )
        .await?;
        rows.extend(page.0.items.into_iter().map(|item| (item, name.as_str())));
    }
    rows.sort_by_key(|r| std::cmp::Reverse(r.0.id.0));
    let more = rows.len() as i64 > PAGE;
    rows.truncate(PAGE as usize);
    let next: Option<RequestId> = more.then(|| rows.last().map(|r| r.0.id)).flatten();
    let now = Utc::now();
    let body = html! {
        form.filters method="get" action="/console/requests" {
            label { "Status" select name="status" {
                option value="" { "any" }
                @for s in STATUSES { option value=(s) selected[filters.status == s] { (s) } }
            } }
            label { "Kind" select name="kind" {
                option value="" { "any" }
                @for k in KINDS { option value=(k) selected[filters.kind == k] { (k) } }
            } }
            label { "Overdue only" input type="checkbox" name="overdue" value="true" checked[overdue]; }
            button type="submit" { "Filter" }
        }
        @if !pending.is_empty() {
            h2 { "Verifying" }
            p.muted { "Filed in the privacy center; they become requests when the person follows the emailed link, and are purged unfiled when it expires." }
            table #verifying {
                thead { tr {
                    th { "Verification" } @if op.is_admin() { th { "Tenant" } }
                    th { "Kind" } th { "Status" } th { "Received" } th { "Link expires" }
                } }
                tbody {
                    @for (id, tenant, kind, created, expires) in &pending {
                        tr data-id=(id) {
                            td { code { (id) } }
                            @if op.is_admin() { td { (tenant) } }
                            td { (kind) }
                            td { span class="status verifying" { "verifying" } }
                            td { (layout::when(*created)) }
                            td { (layout::countdown(*expires, now)) }
                        }
                    }
                }
            }
            h2 { "Requests" }
        }
        table #requests {
            thead { tr {
                th { "Request" } @if op.is_admin() { th { "Tenant" } }
                th { "Kind" } th { "Status" } th { "Received" } th { "Deadline" }
            } }
            tbody {
                @for (r, tenant) in &rows {
                    tr data-id=(r.id) {
                        td { a href={"/console/requests/" (r.id)} { code { (r.id) } } }
                        @if op.is_admin() { td { (tenant) } }
                        td { (r.kind.as_str()) }
                        td { span class={"status " (r.status.as_str())} { (r.status.as_str()) } }
                        td { (layout::when(r.received_at)) }
                        td {
                            @if r.status.is_terminal() {
                                span.muted { "done " @if let Some(at) = r.completed_at { (layout::when(at)) } }
                            } @else {
                                span class=(if r.overdue { "overdue" } else { "" }) { "due " (layout::countdown(r.due_at, now)) }
                            }
                        }
                    }
                }
                @if rows.is_empty() { tr { td colspan="6" .muted { "No request matches." } } }
            }
        }
        div.pager {
            @if filters.cursor.is_some() { a href="/console/requests" { "First page" } }
            @if let Some(next) = next {
                a #next href={"/console/requests?status=" (filters.status) "&kind=" (filters.kind)
                    @if overdue { "&overdue=true" } "&cursor=" (next) } { "Next page" }
            }
        }
    };
    Ok((
        op.csrf.headers(),
        layout::console("Requests", &op.label(), &op.csrf.token, body),
    )
        .into_response())
}
