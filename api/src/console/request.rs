//! A request's page: deadlines, the per-store tasks (refreshed live by the console script while
//! the request runs), the timeline from the audit trail, the signed receipt checked on the
//! server with the command a third party runs to check it, and the cancel and extend actions.
//! Everything is read and done through the API's own handlers.

use axum::Form;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chrono::Utc;
use lethe_common::ids::{RequestId, TenantId};
use maud::{Markup, html};
use ring::signature::{ED25519, UnparsedPublicKey};
use serde::Deserialize;

use crate::AppState;
use crate::console::session::Operator;
use crate::error::ApiError;
use crate::extract::{Caller, StrictJson};
use crate::keys::Scope;
use crate::model::{RequestKind, RequestStatus};
use crate::pages::csrf;
use crate::pages::error::PageError;
use crate::pages::layout;
use crate::receipt::Signed;
use crate::routes::{self, ExtendBody, RequestView};

/// The caller that may see request `id`: the operator in the request's tenant (an admin) or in
/// their own. 404 for an id that is not a request or not the operator's to see.
async fn caller_for(state: &AppState, op: &Operator, id: &str) -> Result<Caller, PageError> {
    let id: RequestId = id.parse().map_err(|_| PageError::Api(ApiError::NotFound))?;
    if !op.is_admin() {
        return Ok(op.caller());
    }
    let tenant: Option<TenantId> =
        sqlx::query_scalar("SELECT tenant_id FROM request WHERE id = $1")
            .bind(id)
            .fetch_optional(&state.pool)
            .await?;
    Ok(op.caller_in(tenant.ok_or(PageError::Api(ApiError::NotFound))?))
}

async fn view(state: &AppState, caller: &Caller, id: &str) -> Result<RequestView, PageError> {
    Ok(
        routes::show(State(state.clone()), caller.clone(), Path(id.to_owned()))
            .await?
            .0,
    )
}

/// The receipt, and whether its signature checks against the published key.
async fn receipt(
    state: &AppState,
    caller: &Caller,
    view: &RequestView,
) -> Result<Option<(Signed, bool)>, PageError> {
    if view.kind != RequestKind::Erasure || view.status != RequestStatus::Completed {
        return Ok(None);
    }
    let signed = routes::receipt(
        State(state.clone()),
        caller.clone(),
        Path(view.id.to_string()),
    )
    .await?
    .0;
    let key = STANDARD
        .decode(state.receipts.public_key().public_key)
        .unwrap_or_default();
    let checks = match (
        STANDARD.decode(&signed.payload),
        STANDARD.decode(&signed.signature),
    ) {
        (Ok(payload), Ok(signature)) => UnparsedPublicKey::new(&ED25519, key)
            .verify(&payload, &signature)
            .is_ok(),
        _ => false,
    };
    Ok(Some((signed, checks)))
}

fn receipt_section(state: &AppState, signed: &Signed, checks: bool) -> Markup {
    let base = state
        .pages
        .settings
        .public_url
        .as_str()
        .trim_end_matches('/');
    let command = format!(
        "curl -s {base}/v1/receipt-key | jq -r .public_key_pem > lethe-receipt-key.pem\n\
         echo '{payload}' | base64 -d > receipt.json\n\
         echo '{signature}' | base64 -d > receipt.sig\n\
         openssl pkeyutl -verify -pubin -inkey lethe-receipt-key.pem -rawin -in receipt.json -sigfile receipt.sig",
        payload = signed.payload,
        signature = signed.signature,
    );
    html! {
        section #receipt {
            h2 { "Receipt" }
            p {
                @if checks {
                    span #signature.status.valid { "Signature valid" }
                } @else {
                    span #signature.status.invalid { "Signature does NOT check" }
                }
                " " (signed.algorithm) ", key id " code { (signed.key_id) }
            }
            pre #receipt-json { (serde_json::to_string_pretty(&signed.receipt).unwrap_or_default()) }
            p { "A third party checks it with the published key (OpenSSL 3):" }
            pre #verify-command { (command) }
        }
    }
}

/// The part of the page that changes while the request runs.
async fn live_part(
    state: &AppState,
    caller: &Caller,
    view: &RequestView,
) -> Result<Markup, PageError> {
    let finished = view.status.is_terminal();
    let receipt = if finished {
        receipt(state, caller, view).await?
    } else {
        None
    };
    Ok(html! {
        p { "Status: " span #status class={"status " (view.status.as_str())} { (view.status.as_str()) }
            " · phase " (view.phase)
            @if finished { span data-final="true" {} } }
        @if let Some(failure) = &view.failure { p.problem { (failure) } }
        table #tasks {
            thead { tr { th { "Store" } th { "Task" } th { "Phase" } th { "Status" } th { "Attempts" } th { "Counts" } th { "Remaining" } th { "Finished" } } }
            tbody {
                @for t in &view.tasks {
                    tr {
                        td { (t.store) } td { (t.task) } td { (t.phase) }
                        td { span class={"status " (t.status)} { (t.status) } }
                        td { (t.attempts) }
                        td { @for (c, n) in &t.counts { (c) ": " (n) " " } }
                        td { @if let Some(r) = t.remaining { (r) } }
                        td { @if let Some(at) = t.finished_at { (layout::when(at)) } }
                    }
                }
            }
        }
        @if let Some((signed, checks)) = &receipt { (receipt_section(state, signed, *checks)) }
    })
}

/// `GET /console/requests/{id}`.
pub async fn show(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let caller = caller_for(&state, &op, &id).await?;
    let view = view(&state, &caller, &id).await?;
    let now = Utc::now();
    let live = live_part(&state, &caller, &view).await?;
    let open = !view.status.is_terminal();
    let body = html! {
        p { "Kind " strong #kind { (view.kind.as_str()) } " · identities " (view.identities.join(", "))
            " · received " (layout::when(view.received_at)) }
        @if view.dry_run {
            p #dry-run.status { strong { "Dry run" } ": the counts below are what this request would change; nothing was changed, and a restore never replays it." }
        }
        p #deadline {
            "Legal deadline " (layout::when(view.due_at))
            @if open { " (" span class=(if view.overdue { "overdue" } else { "" }) { (layout::countdown(view.due_at, now)) } ")" }
            " · target " (layout::when(view.target_at))
            @if let Some(ext) = &view.extension {
                br; "Extended " (layout::when(ext.at)) @if let Some(reason) = &ext.reason { ": " em #extension-reason { (reason) } }
            }
        }
        div #live data-live=[open.then(|| format!("/console/requests/{}/live", view.id))] { (live) }
        @if open {
            h2 { "Actions" }
            @if caller.0.has(Scope::RequestsWrite) {
                form.inline #cancel method="post" action={"/console/requests/" (view.id) "/cancel"}
                    data-confirm="Cancel this request?" {
                    input type="hidden" name=(csrf::FIELD) value=(op.csrf.token);
                    button.danger type="submit" { "Cancel request" }
                }
            }
            @if caller.0.has(Scope::Admin) && view.extension.is_none() {
                form.stack #extend method="post" action={"/console/requests/" (view.id) "/extend"} {
                    input type="hidden" name=(csrf::FIELD) value=(op.csrf.token);
                    label { "Extend the deadline by"
                        select name="months" { option value="1" { "1 month" } option value="2" { "2 months" } } }
                    label { "Reason (recorded)" textarea name="reason" required maxlength="2000" {} }
                    button type="submit" { "Extend" }
                }
            }
        }
        h2 { "Timeline" }
        ol #timeline {
            @for event in &view.audit {
                li { (layout::when(event.at)) " — " strong { (event.kind) } " " span.muted { (event.detail.0) } }
            }
        }
    };
    Ok((
        op.csrf.headers(),
        layout::console(
            &format!("Request {}", view.id),
            &op.label(),
            &op.csrf.token,
            body,
        ),
    )
        .into_response())
}

/// `GET /console/requests/{id}/live`: the changing part alone, for the page's script.
pub async fn live(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<String>,
) -> Result<Markup, PageError> {
    let caller = caller_for(&state, &op, &id).await?;
    let view = view(&state, &caller, &id).await?;
    live_part(&state, &caller, &view).await
}

/// `POST /console/requests/{id}/cancel`.
pub async fn cancel(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(form): Form<csrf::TokenOnly>,
) -> Result<Response, PageError> {
    csrf::check(&state, &headers, form.csrf.as_deref())?;
    let caller = caller_for(&state, &op, &id).await?;
    let _cancelled = routes::cancel(State(state.clone()), caller, Path(id.clone())).await?;
    Ok(Redirect::to(&format!("/console/requests/{id}")).into_response())
}

/// The extension form.
#[derive(Debug, Deserialize)]
pub struct Extend {
    csrf: Option<String>,
    months: u32,
    reason: String,
}

/// `POST /console/requests/{id}/extend`.
pub async fn extend(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(form): Form<Extend>,
) -> Result<Response, PageError> {
    csrf::check(&state, &headers, form.csrf.as_deref())?;
    let caller = caller_for(&state, &op, &id).await?;
    let body = ExtendBody {
        months: form.months,
        reason: form.reason,
    };
    let _extended = routes::extend(
        State(state.clone()),
        caller,
        Path(id.clone()),
        StrictJson(body),
    )
    .await?;
    Ok(Redirect::to(&format!("/console/requests/{id}")).into_response())
}
