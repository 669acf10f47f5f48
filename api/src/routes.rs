//! The HTTP API's handlers (DESIGN §8). Every route that names a request answers 404 for
//! another tenant's request, exactly as for one that does not exist, so ids leak nothing.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use lethe_common::ids::RequestId;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::closure::Closure;
use crate::error::{ApiError, Problem};
use crate::extract::{Caller, StrictJson};
use crate::keys::Scope;
use crate::model::{Accepted, NewRequest, RequestKind, RequestStatus};
use crate::receipt::{PublicKey, Receipt, Signed};
use crate::requests::{self, AuditRow, Intake, ListFilter, RequestRow, TaskRow};
use crate::validate;

/// Header that makes a retried POST return the first answer.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// File a data-subject request.
#[utoipa::path(
    post, path = "/v1/requests", tag = "requests",
    request_body = NewRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Retry-safe key: the same key returns the first answer")),
    responses(
        (status = 202, description = "Accepted", body = Accepted),
        (status = 200, description = "Already accepted under this Idempotency-Key", body = Accepted),
        (status = 400, description = "Malformed JSON", body = Problem),
        (status = 409, description = "Idempotency-Key reused with another body", body = Problem),
        (status = 413, description = "Body too large", body = Problem),
        (status = 415, description = "Not JSON", body = Problem),
        (status = 422, description = "Invalid field", body = Problem),
    ),
    security(("bearer" = []))
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Scope::RequestsWrite)?;
    let body = body.map_err(|_| ApiError::TooLarge(state.body_limit.0))?;
    let is_json = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("application/json")
        });
    if !is_json {
        return Err(ApiError::UnsupportedMediaType);
    }
    let idempotency_key = match headers.get(IDEMPOTENCY_KEY) {
        Some(value) => {
            let key = value
                .to_str()
                .ok()
                .filter(|k| !k.is_empty() && k.len() <= 255)
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_idempotency_key",
                        Some("Idempotency-Key".into()),
                        "the Idempotency-Key header must be 1 to 255 visible characters",
                    )
                })?;
            Some(key.to_owned())
        }
        None => None,
    };
    let parsed: NewRequest = crate::extract::parse(&body)?;
    let valid = validate::validate(parsed, state.planner.map())?;
    validate::check_callback(&valid, &state.outbound).await?;
    let intake = Intake {
        pool: &state.pool,
        names: &state.names,
        planner: &state.planner,
        hasher: &state.hasher,
        outbox: &state.outbox,
        tenants: &state.tenants,
    };
    let fingerprint = idempotency_key
        .as_ref()
        .map(|_| requests::fingerprint(&state.hasher, &body));
    let (accepted, created) = intake
        .accept(
            caller.0.tenant_id,
            valid,
            idempotency_key.as_deref(),
            fingerprint,
        )
        .await?;
    if created {
        metrics::counter!("lethe_requests_total", "kind" => accepted.kind.as_str(), "status" => "received").increment(1);
        tracing::info!(request.id = %accepted.id, request.kind = accepted.kind.as_str(), tenant.id = %caller.0.tenant_id, "request accepted");
    }
    let status = if created {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(accepted)))
}

/// A request's status, per-store progress, deadlines and audit trail.
#[derive(Debug, Serialize, ToSchema)]
pub struct RequestView {
    /// Id.
    #[schema(value_type = String, format = Uuid)]
    pub id: RequestId,
    /// Kind.
    pub kind: RequestKind,
    /// Status.
    pub status: RequestStatus,
    /// Current phase: resolve, act, act_last, finalize or done.
    pub phase: String,
    /// The identity names given or derived (never their values).
    pub identities: Vec<String>,
    /// Received.
    pub received_at: DateTime<Utc>,
    /// Lethe's target (received + 7 days).
    pub target_at: DateTime<Utc>,
    /// The legal deadline.
    pub due_at: DateTime<Utc>,
    /// Whether the deadline is past while the request is open.
    pub overdue: bool,
    /// When the deadline was extended, and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extension: Option<Extension>,
    /// Completed.
    pub completed_at: Option<DateTime<Utc>>,
    /// Why it failed.
    pub failure: Option<String>,
    /// Once completed: whether any store held anything of the subject (`false`: the
    /// identities matched nothing anywhere, even through the closure).
    pub found: Option<bool>,
    /// The identity closure: resolve rounds across stores, kinds and counts only.
    pub closure: Option<Closure>,
    /// Per-store tasks.
    pub tasks: Vec<TaskView>,
    /// The audit trail.
    pub audit: Vec<AuditRow>,
}

/// A deadline extension.
#[derive(Debug, Serialize, ToSchema)]
pub struct Extension {
    /// When.
    pub at: DateTime<Utc>,
    /// Why.
    pub reason: Option<String>,
}

/// One store's task.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskView {
    /// Store (`all` for assemble).
    pub store: String,
    /// Task kind.
    pub task: String,
    /// Phase.
    pub phase: String,
    /// queued, done, failed or cancelled.
    pub status: String,
    /// Deliveries to a worker.
    pub attempts: i32,
    /// Rows, keys or objects per collection.
    pub counts: BTreeMap<String, u64>,
    /// After erasure: matches still found (0 certifies the erasure).
    pub remaining: Option<i64>,
    /// Why it failed.
    pub error: Option<String>,
    /// Finished.
    pub finished_at: Option<DateTime<Utc>>,
}

impl From<TaskRow> for TaskView {
    fn from(row: TaskRow) -> Self {
        Self {
            store: row.store,
            task: row.kind.as_str().to_owned(),
            phase: row.phase.as_str().to_owned(),
            status: row.status.as_str().to_owned(),
            attempts: row.attempts,
            counts: row.counts.0,
            remaining: row.remaining,
            error: row.error,
            finished_at: row.finished_at,
        }
    }
}

fn is_overdue(row: &RequestRow) -> bool {
    !row.status().is_terminal() && row.due_at < Utc::now()
}

async fn owned(state: &AppState, caller: &Caller, id: &str) -> Result<RequestRow, ApiError> {
    let id: RequestId = id.parse().map_err(|_| ApiError::NotFound)?;
    requests::fetch(&state.pool, caller.0.tenant_id, id)
        .await?
        .ok_or(ApiError::NotFound)
}

/// A request's status.
#[utoipa::path(
    get, path = "/v1/requests/{id}", tag = "requests",
    params(("id" = String, Path, description = "Request id")),
    responses((status = 200, body = RequestView), (status = 404, body = Problem)),
    security(("bearer" = []))
)]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<RequestView>, ApiError> {
    caller.require(Scope::RequestsRead)?;
    let row = owned(&state, &caller, &id).await?;
    let tasks = requests::tasks(&state.pool, row.id).await?;
    let audit = requests::audit_trail(&state.pool, row.id).await?;
    Ok(Json(RequestView {
        id: row.id,
        kind: row.kind(),
        status: row.status(),
        phase: row.phase().as_str().to_owned(),
        identities: row
            .identities
            .as_ref()
            .map(|j| j.0.keys().cloned().collect())
            .unwrap_or_default(),
        received_at: row.received_at,
        target_at: row.target_at,
        due_at: row.due_at,
        overdue: is_overdue(&row),
        extension: row.extended_at.map(|at| Extension {
            at,
            reason: row.extension_reason.clone(),
        }),
        completed_at: row.completed_at,
        failure: row.failure.clone(),
        found: row.found,
        closure: row.closure.as_ref().map(|j| j.0.clone()),
        tasks: tasks.into_iter().map(TaskView::from).collect(),
        audit,
    }))
}

/// Filters of the listing.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only this status.
    pub status: Option<RequestStatus>,
    /// Only this kind.
    pub kind: Option<RequestKind>,
    /// Only open requests past their legal deadline.
    #[serde(default)]
    pub overdue: bool,
    /// Only requests due before this time (RFC 3339).
    pub due_before: Option<DateTime<Utc>>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Page size, 1 to 200 (default 50).
    pub limit: Option<i64>,
}

/// A request in a listing.
#[derive(Debug, Serialize, ToSchema)]
pub struct RequestSummary {
    /// Id.
    #[schema(value_type = String, format = Uuid)]
    pub id: RequestId,
    /// Kind.
    pub kind: RequestKind,
    /// Status.
    pub status: RequestStatus,
    /// Received.
    pub received_at: DateTime<Utc>,
    /// Legal deadline.
    pub due_at: DateTime<Utc>,
    /// Past the deadline while open.
    pub overdue: bool,
    /// Completed.
    pub completed_at: Option<DateTime<Utc>>,
}

/// A page of requests.
#[derive(Debug, Serialize, ToSchema)]
pub struct Page {
    /// The requests, newest first.
    pub items: Vec<RequestSummary>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// The tenant's requests, newest first.
#[utoipa::path(
    get, path = "/v1/requests", tag = "requests",
    params(ListQuery),
    responses((status = 200, body = Page), (status = 422, body = Problem)),
    security(("bearer" = []))
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Page>, ApiError> {
    caller.require(Scope::RequestsRead)?;
    let Query(query) = query.map_err(|rejection| {
        ApiError::unprocessable("invalid_query", "query", rejection.body_text())
    })?;
    let limit = query.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::unprocessable(
            "invalid_value",
            "limit",
            "limit is 1 to 200",
        ));
    }
    let before = match &query.cursor {
        Some(cursor) => Some(cursor.parse::<RequestId>().map_err(|_| {
            ApiError::unprocessable(
                "invalid_cursor",
                "cursor",
                "not a cursor returned by this API",
            )
        })?),
        None => None,
    };
    let rows = requests::list(
        &state.pool,
        caller.0.tenant_id,
        &ListFilter {
            status: query.status,
            kind: query.kind,
            overdue: query.overdue,
            due_before: query.due_before,
            before,
            limit: limit + 1,
        },
    )
    .await?;
    let more = rows.len() as i64 > limit;
    let items: Vec<RequestSummary> = rows
        .iter()
        .take(usize::try_from(limit).unwrap_or(50))
        .map(|row| RequestSummary {
            id: row.id,
            kind: row.kind(),
            status: row.status(),
            received_at: row.received_at,
            due_at: row.due_at,
            overdue: is_overdue(row),
            completed_at: row.completed_at,
        })
        .collect();
    let next_cursor = if more {
        items.last().map(|i| i.id.to_string())
    } else {
        None
    };
    Ok(Json(Page { items, next_cursor }))
}

/// Cancel an open request. Tasks a worker already took may still finish; no further phase runs.
#[utoipa::path(
    post, path = "/v1/requests/{id}/cancel", tag = "requests",
    params(("id" = String, Path, description = "Request id")),
    responses((status = 200, body = Accepted), (status = 404, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = []))
)]
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Accepted>, ApiError> {
    caller.require(Scope::RequestsWrite)?;
    let row = owned(&state, &caller, &id).await?;
    let row = requests::cancel(
        &state.pool,
        &state.names,
        &state.outbox,
        caller.0.tenant_id,
        row.id,
    )
    .await?;
    Ok(Json(row.accepted()))
}

/// The body of a deadline extension.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtendBody {
    /// One or two further months.
    pub months: u32,
    /// Why (Art. 12(3): complexity or number of requests); recorded.
    pub reason: String,
}

/// Extend a request's legal deadline once, by up to two months (admin).
#[utoipa::path(
    post, path = "/v1/requests/{id}/extend", tag = "requests",
    params(("id" = String, Path, description = "Request id")),
    request_body = ExtendBody,
    responses((status = 200, body = Accepted), (status = 404, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = []))
)]
pub async fn extend(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    StrictJson(body): StrictJson<ExtendBody>,
) -> Result<Json<Accepted>, ApiError> {
    caller.require(Scope::Admin)?;
    let row = owned(&state, &caller, &id).await?;
    if !(1..=crate::deadlines::MAX_EXTENSION_MONTHS).contains(&body.months) {
        return Err(ApiError::unprocessable(
            "invalid_value",
            "months",
            "extend by 1 or 2 months",
        ));
    }
    if body.reason.trim().is_empty() || body.reason.chars().count() > 2000 {
        return Err(ApiError::unprocessable(
            "invalid_value",
            "reason",
            "give a reason of at most 2000 characters",
        ));
    }
    let row = requests::extend(
        &state.pool,
        caller.0.tenant_id,
        row.id,
        body.months,
        body.reason.trim(),
    )
    .await?;
    Ok(Json(row.accepted()))
}

/// The signed receipt of a completed erasure: whether anything was found, the identity closure
/// (rounds and hops, kinds and counts), per store the identity kinds it was searched with,
/// what it erased and that re-querying it found nothing left, and what was kept and why.
#[utoipa::path(
    get, path = "/v1/requests/{id}/receipt", tag = "requests",
    params(("id" = String, Path, description = "Request id")),
    responses((status = 200, body = Signed), (status = 404, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = []))
)]
pub async fn receipt(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Signed>, ApiError> {
    caller.require(Scope::RequestsRead)?;
    let row = owned(&state, &caller, &id).await?;
    if row.kind() != RequestKind::Erasure || row.status() != RequestStatus::Completed {
        return Err(ApiError::Conflict {
            code: "no_receipt",
            detail: "receipts exist for completed erasures only".to_owned(),
        });
    }
    let tasks = requests::tasks(&state.pool, row.id).await?;
    let receipt = Receipt::build(&row, tasks, state.planner.map(), Utc::now());
    Ok(Json(
        state.receipts.sign(&receipt).map_err(anyhow::Error::from)?,
    ))
}

/// The public key that checks receipts.
#[utoipa::path(get, path = "/v1/receipt-key", tag = "receipts", responses((status = 200, body = PublicKey)))]
pub async fn receipt_key(State(state): State<AppState>) -> Json<PublicKey> {
    Json(state.receipts.public_key())
}
