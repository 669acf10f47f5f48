//! The breach register: each incident with its 24-hour (tenants) and 72-hour (authority)
//! countdowns, and the notify and close actions for admins, through the API's handlers.

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use chrono::Utc;
use maud::html;

use crate::AppState;
use crate::console::session::Operator;
use crate::incidents::{self, IncidentQuery};
use crate::pages::csrf;
use crate::pages::error::PageError;
use crate::pages::layout;

/// `GET /console/incidents`.
pub async fn list(State(state): State<AppState>, op: Operator) -> Result<Response, PageError> {
    let query = IncidentQuery {
        overdue: false,
        status: None,
    };
    let list = incidents::list(State(state.clone()), op.caller(), Ok(Query(query)))
        .await?
        .0;
    let now = Utc::now();
    let body = html! {
        table #incidents {
            thead { tr { th { "Incident" } th { "Status" } th { "Detected" } th { "Tenants (24 h)" } th { "Authority (72 h)" } th { "Notified" } @if op.is_admin() { th { "Actions" } } } }
            tbody {
                @for i in &list.items {
                    @let open = i.status.as_str() != "closed";
                    tr data-id=(i.id) {
                        td { code { (i.id) } }
                        td { span class={"status " (i.status.as_str())} { (i.status.as_str()) } }
                        td { (layout::when(i.detected_at)) }
                        td { @if open { span class=(if i.deadlines.tenants_overdue { "overdue" } else { "" }) {
                            "due " (layout::countdown(i.deadlines.tenants_due_at, now)) } } @else { "—" } }
                        td { @if let Some(at) = i.deadlines.authority_notified_at { "notified " (layout::when(at)) }
                             @else if open { span class=(if i.deadlines.authority_overdue { "overdue" } else { "" }) {
                                 "due " (layout::countdown(i.deadlines.authority_due_at, now)) } } @else { "—" } }
                        td { (i.notified) " / " (i.tenants) }
                        @if op.is_admin() { td {
                            @if open {
                                form.inline method="post" action={"/console/incidents/" (i.id) "/notify"} {
                                    input type="hidden" name=(csrf::FIELD) value=(op.csrf.token);
                                    button type="submit" { "Notify tenants" } }
                                " "
                                form.inline method="post" action={"/console/incidents/" (i.id) "/close"}
                                    data-confirm="Close this incident?" {
                                    input type="hidden" name=(csrf::FIELD) value=(op.csrf.token);
                                    button.danger type="submit" { "Close" } }
                            }
                        } }
                    }
                }
                @if list.items.is_empty() { tr { td colspan="7" .muted { "No incident." } } }
            }
        }
    };
    Ok((
        op.csrf.headers(),
        layout::console("Incidents", &op.label(), &op.csrf.token, body),
    )
        .into_response())
}

/// `POST /console/incidents/{id}/notify`.
pub async fn notify(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(form): Form<csrf::TokenOnly>,
) -> Result<Response, PageError> {
    csrf::check(&state, &headers, form.csrf.as_deref())?;
    let _notified = incidents::notify(State(state.clone()), op.caller(), Path(id)).await?;
    Ok(Redirect::to("/console/incidents").into_response())
}

/// `POST /console/incidents/{id}/close`.
pub async fn close(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(form): Form<csrf::TokenOnly>,
) -> Result<Response, PageError> {
    csrf::check(&state, &headers, form.csrf.as_deref())?;
    let _closed = incidents::close(State(state.clone()), op.caller(), Path(id)).await?;
    Ok(Redirect::to("/console/incidents").into_response())
}
