//! Requests in the ledger: accepting one (with its first tasks, outbox messages and audit
//! event, atomically), reading, listing, cancelling and extending.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use lethe_common::ids::{RequestId, TenantId};
use lethe_common::messages::{Event, Identities, TaskKind, TaskMessage};
use lethe_common::nats::{Names, Traceparent};
use lethe_common::privacy::IdentityHasher;
use serde_json::json;
use sqlx::types::Json;
use sqlx::{PgPool, Postgres, Transaction};

use crate::closure::Closure;
use crate::deadlines;
use crate::error::ApiError;
use crate::model::{Accepted, RequestKind, RequestStatus, TaskStatus};
use crate::outbox::OutboxSignal;
use crate::plan::{Phase, PlannedTask, Planner};
use crate::tenants::TenantNames;
use crate::validate::ValidRequest;

/// A request as the ledger holds it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RequestRow {
    /// Id.
    pub id: RequestId,
    /// Tenant.
    pub tenant_id: TenantId,
    /// Kind. Like status and phase, a ledger value this version does not know fails the read
    /// rather than passing for another.
    pub kind: RequestKind,
    /// Status.
    pub status: RequestStatus,
    /// Phase.
    pub phase: Phase,
    /// Identities, until minimised.
    pub identities: Option<Json<Identities>>,
    /// Keyed hash of the identities.
    pub identity_hash: String,
    /// Task parameters (rectification changes, ...).
    pub params: Json<serde_json::Value>,
    /// Trace context.
    pub traceparent: String,
    /// Webhook target.
    pub callback_url: Option<String>,
    /// Why it failed.
    pub failure: Option<String>,
    /// Received.
    pub received_at: DateTime<Utc>,
    /// Target.
    pub target_at: DateTime<Utc>,
    /// Legal deadline.
    pub due_at: DateTime<Utc>,
    /// When extended.
    pub extended_at: Option<DateTime<Utc>>,
    /// Why extended.
    pub extension_reason: Option<String>,
    /// Completed.
    pub completed_at: Option<DateTime<Utc>>,
    /// The identity closure: resolve rounds, kinds and counts (none for older requests).
    pub closure: Option<Json<Closure>>,
    /// Whether any store held anything of the subject (set on completion).
    pub found: Option<bool>,
}

impl RequestRow {
    /// The kind.
    pub fn kind(&self) -> RequestKind {
        self.kind
    }

    /// The status.
    pub fn status(&self) -> RequestStatus {
        self.status
    }

    /// The phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The answer clients get for it.
    pub fn accepted(&self) -> Accepted {
        Accepted {
            id: self.id,
            kind: self.kind(),
            status: self.status(),
            received_at: self.received_at,
            target_at: self.target_at,
            due_at: self.due_at,
        }
    }

    /// Fields the rectification changes, if any.
    pub fn changed_fields(&self) -> BTreeSet<String> {
        self.params
            .0
            .get("changes")
            .and_then(|c| c.as_object())
            .map(|c| c.keys().cloned().collect())
            .unwrap_or_default()
    }
}

/// Columns of [`RequestRow`], for `SELECT`s.
pub const REQUEST_COLUMNS: &str = "id, tenant_id, kind, status, phase, identities, identity_hash, params, \
     traceparent, callback_url, failure, received_at, target_at, due_at, extended_at, \
     extension_reason, completed_at, closure, found";

/// The keyed hash standing for a subject's identities.
pub fn identity_hash(hasher: &IdentityHasher, identities: &Identities) -> String {
    let mut parts: Vec<Vec<u8>> = Vec::new();
    for (name, values) in identities {
        for value in values {
            parts.push(format!("{name}\0{value}\0").into_bytes());
        }
    }
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    hex::encode(hasher.mac(&refs))
}

/// Outgoing messages, as the outbox stores them.
#[derive(Debug, Default)]
pub struct Outgoing {
    subjects: Vec<String>,
    message_ids: Vec<String>,
    traceparents: Vec<Option<String>>,
    payloads: Vec<String>,
}

/// What every task of one request shares.
#[derive(Debug, Clone, Copy)]
pub struct TaskContext<'a> {
    /// The request.
    pub request: RequestId,
    /// The subject's identities.
    pub identities: &'a Identities,
    /// The filing tenant's name.
    pub tenant: &'a str,
    /// The request's parameters.
    pub params: &'a serde_json::Value,
    /// The tasks' generation.
    pub generation: u32,
    /// The request's trace.
    pub trace: &'a Traceparent,
}

impl Outgoing {
    /// Adds the messages for `tasks`.
    pub fn tasks(
        &mut self,
        names: &Names,
        context: TaskContext<'_>,
        tasks: &[PlannedTask],
    ) -> Result<(), ApiError> {
        for task in tasks {
            let message = TaskMessage {
                request_id: context.request,
                task: task.kind,
                store: task.store.clone(),
                identities: context.identities.clone(),
                tenant: Some(context.tenant.to_owned()),
                params: context.params.clone(),
                generation: context.generation,
                issued_at: Utc::now(),
            };
            self.subjects
                .push(names.task_subject(task.kind, task.store.as_ref()));
            self.message_ids.push(message.message_id());
            self.traceparents
                .push(Some(context.trace.child().to_string()));
            self.payloads
                .push(serde_json::to_string(&message).map_err(anyhow::Error::from)?);
        }
        Ok(())
    }

    /// Adds an event for outside consumers.
    pub fn event(&mut self, names: &Names, event: &Event) -> Result<(), ApiError> {
        self.subjects.push(names.event_subject(&event.kind));
        self.message_ids.push(event.message_id());
        self.traceparents.push(None);
        self.payloads
            .push(serde_json::to_string(event).map_err(anyhow::Error::from)?);
        Ok(())
    }

    /// Writes the messages to the outbox within `tx`; wake the relay after the commit.
    pub async fn write(self, tx: &mut Transaction<'_, Postgres>) -> sqlx::Result<()> {
        if self.subjects.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO outbox (subject, message_id, traceparent, payload)
             SELECT s, m, t, p::jsonb FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[]) AS x(s, m, t, p)",
        )
        .bind(&self.subjects)
        .bind(&self.message_ids)
        .bind(&self.traceparents)
        .bind(&self.payloads)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

/// Inserts `tasks` of `phase` as queued.
pub async fn insert_tasks(
    tx: &mut Transaction<'_, Postgres>,
    request: RequestId,
    phase: Phase,
    tasks: &[PlannedTask],
    generation: u32,
) -> sqlx::Result<()> {
    let stores: Vec<String> = tasks.iter().map(|t| store_key(t.store.as_ref())).collect();
    let kinds: Vec<&str> = tasks.iter().map(|t| t.kind.as_str()).collect();
    sqlx::query(
        "INSERT INTO task (request_id, store, kind, phase, status, generation)
         SELECT $1, s, k, $3, 'queued', $5 FROM UNNEST($2::text[], $4::text[]) AS x(s, k)
         ON CONFLICT (request_id, kind, store)
         DO UPDATE SET status = 'queued', phase = EXCLUDED.phase, generation = EXCLUDED.generation,
                       updated_at = now(), error = NULL",
    )
    .bind(request)
    .bind(&stores)
    .bind(phase.as_str())
    .bind(&kinds)
    .bind(i32::try_from(generation).unwrap_or(i32::MAX))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The ledger's key for a task's store (`all` for assemble).
pub fn store_key(store: Option<&lethe_common::ids::StoreName>) -> String {
    store.map_or_else(|| "all".to_owned(), |s| s.as_str().to_owned())
}

/// Everything needed to accept requests.
pub struct Intake<'a> {
    /// The ledger.
    pub pool: &'a PgPool,
    /// NATS names.
    pub names: &'a Names,
    /// The planner.
    pub planner: &'a Planner,
    /// Keyed hashing.
    pub hasher: &'a IdentityHasher,
    /// Wakes the outbox relay.
    pub outbox: &'a OutboxSignal,
    /// Tenant names, which every task carries.
    pub tenants: &'a TenantNames,
}

impl Intake<'_> {
    /// Accepts `request` for `tenant`. With an idempotency key already used by this tenant,
    /// answers as the first time (or 409 if the body differs).
    pub async fn accept(
        &self,
        tenant: TenantId,
        request: ValidRequest,
        idempotency_key: Option<&str>,
        fingerprint: Option<[u8; 32]>,
    ) -> Result<(Accepted, bool), ApiError> {
        let id = RequestId::new();
        // The ledger keeps microseconds; answering with the same precision makes a retried
        // POST's answer identical to the first.
        let now = Utc::now();
        let received = DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now);
        let trace = Traceparent::new_root();
        let changes: BTreeSet<String> = request.changes.keys().cloned().collect();
        let params = if request.changes.is_empty() {
            json!({})
        } else {
            json!({ "changes": request.changes })
        };
        let (phase, tasks) = self
            .planner
            .start(request.kind, &request.identities, &changes);
        let tenant_name = self.tenants.get(self.pool, tenant).await?;
        let mut outgoing = Outgoing::default();
        let context = TaskContext {
            request: id,
            identities: &request.identities,
            tenant: &tenant_name,
            params: &params,
            generation: 0,
            trace: &trace,
        };
        outgoing.tasks(self.names, context, &tasks)?;
        outgoing.event(
            self.names,
            &Event {
                kind: "request.received".into(),
                request_id: Some(id),
                tenant_id: Some(tenant),
                counts: [("tasks".to_owned(), tasks.len() as u64)].into(),
                detail: Some(request.kind.as_str().to_owned()),
                at: received,
            },
        )?;
        let task_stores: Vec<String> = tasks.iter().map(|t| store_key(t.store.as_ref())).collect();
        let task_kinds: Vec<&str> = tasks.iter().map(|t| t.kind.as_str()).collect();
        let status = if tasks.is_empty() {
            RequestStatus::Completed
        } else {
            RequestStatus::Received
        };
        let hash = identity_hash(self.hasher, &request.identities);
        let resolving: Vec<PlannedTask> = if phase == Phase::Resolve {
            tasks.clone()
        } else {
            Vec::new()
        };
        let closure = Closure::start(self.planner, &request.identities, &resolving);
        let audit =
            json!({ "kind": request.kind.as_str(), "tasks": tasks.len(), "phase": phase.as_str() });

        // One statement, so accepting costs one round trip and is atomic: the request, its
        // first tasks, their outbox messages and the audit event exist together or not at all.
        let inserted: Option<RequestId> = sqlx::query_scalar(
            "WITH r AS (
                INSERT INTO request (id, tenant_id, kind, status, identities, identity_hash, params,
                    reason, callback_url, traceparent, phase, idempotency_key, idempotency_fingerprint,
                    received_at, target_at, due_at, completed_at, closure)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16,
                    CASE WHEN $4 = 'completed' THEN $14 END, $24)
                ON CONFLICT (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
                RETURNING id
             ), t AS (
                INSERT INTO task (request_id, store, kind, phase, status)
                SELECT r.id, s, k, $11, 'queued' FROM r, UNNEST($17::text[], $18::text[]) AS x(s, k)
             ), o AS (
                INSERT INTO outbox (subject, message_id, traceparent, payload)
                SELECT s, m, tp, p::jsonb FROM r, UNNEST($19::text[], $20::text[], $21::text[], $22::text[]) AS x(s, m, tp, p)
             ), a AS (
                INSERT INTO audit_event (tenant_id, request_id, kind, detail, at)
                SELECT $2, r.id, 'request.received', $23, $14 FROM r
             )
             SELECT r.id FROM r",
        )
        .bind(id)
        .bind(tenant)
        .bind(request.kind.as_str())
        .bind(status.as_str())
        .bind(Json(&request.identities))
        .bind(&hash)
        .bind(Json(&params))
        .bind(&request.reason)
        .bind(&request.callback_url)
        .bind(trace.to_string())
        .bind(phase.as_str())
        .bind(idempotency_key)
        .bind(fingerprint.map(|f| f.to_vec()))
        .bind(received)
        .bind(deadlines::target_at(received))
        .bind(deadlines::due_at(received))
        .bind(&task_stores)
        .bind(&task_kinds)
        .bind(&outgoing.subjects)
        .bind(&outgoing.message_ids)
        .bind(&outgoing.traceparents)
        .bind(&outgoing.payloads)
        .bind(Json(&audit))
        .bind(Json(&closure))
        .fetch_optional(self.pool)
        .await?;

        if inserted.is_some() {
            self.outbox.wake();
            return Ok((
                Accepted {
                    id,
                    kind: request.kind,
                    status,
                    received_at: received,
                    target_at: deadlines::target_at(received),
                    due_at: deadlines::due_at(received),
                },
                true,
            ));
        }
        // The idempotency key was used before: answer as the first time.
        let Some(key) = idempotency_key else {
            return Err(ApiError::Internal(anyhow::anyhow!(
                "insert returned no row without a conflict"
            )));
        };
        let existing: (RequestId, Option<Vec<u8>>) = sqlx::query_as(
            "SELECT id, idempotency_fingerprint FROM request WHERE tenant_id = $1 AND idempotency_key = $2",
        )
        .bind(tenant)
        .bind(key)
        .fetch_one(self.pool)
        .await?;
        // A request filed before fingerprints were keyed has none left (the migration cleared
        // the unkeyed ones): its key alone identifies the retry.
        if existing
            .1
            .as_deref()
            .is_some_and(|stored| Some(stored) != fingerprint.as_ref().map(|f| f.as_slice()))
        {
            return Err(ApiError::Conflict {
                code: "idempotency_key_reused",
                detail: "this Idempotency-Key was used with a different body".to_owned(),
            });
        }
        let row = fetch(self.pool, tenant, existing.0)
            .await?
            .ok_or(ApiError::NotFound)?;
        Ok((row.accepted(), false))
    }
}

/// The keyed fingerprint of a body, for idempotency checks: HMAC-SHA256 with the privacy key,
/// never a plain hash, because a body holds the subject's identifiers and anyone with the
/// ledger could otherwise confirm a guessed address by hashing it.
pub fn fingerprint(hasher: &IdentityHasher, body: &[u8]) -> [u8; 32] {
    hasher.mac(&[b"lethe.idempotency\0", body])
}

/// A tenant's request, or `None` (also when it is another tenant's).
pub async fn fetch(
    pool: &PgPool,
    tenant: TenantId,
    id: RequestId,
) -> sqlx::Result<Option<RequestRow>> {
    sqlx::query_as(&format!(
        "SELECT {REQUEST_COLUMNS} FROM request WHERE id = $1 AND tenant_id = $2"
    ))
    .bind(id)
    .bind(tenant)
    .fetch_optional(pool)
    .await
}

/// A task as the ledger holds it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TaskRow {
    /// Store (`all` for assemble).
    pub store: String,
    /// Kind.
    pub kind: TaskKind,
    /// Phase.
    pub phase: Phase,
    /// Status.
    pub status: TaskStatus,
    /// Deliveries the worker reported.
    pub attempts: i32,
    /// Counts by collection.
    pub counts: Json<std::collections::BTreeMap<String, u64>>,
    /// Matches left after erasure.
    pub remaining: Option<i64>,
    /// Why it failed.
    pub error: Option<String>,
    /// Finished.
    pub finished_at: Option<DateTime<Utc>>,
}

/// A request's tasks, in phase order.
pub async fn tasks(pool: &PgPool, id: RequestId) -> sqlx::Result<Vec<TaskRow>> {
    sqlx::query_as(
        "SELECT store, kind, phase, status, attempts, counts, remaining, error, finished_at
         FROM task WHERE request_id = $1 ORDER BY created_at, store, kind",
    )
    .bind(id)
    .fetch_all(pool)
    .await
}

/// An audit event of a request.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct AuditRow {
    /// What happened.
    pub kind: String,
    /// Details (ids and counts only).
    #[schema(value_type = Object)]
    pub detail: Json<serde_json::Value>,
    /// When.
    pub at: DateTime<Utc>,
}

/// A request's audit trail.
pub async fn audit_trail(pool: &PgPool, id: RequestId) -> sqlx::Result<Vec<AuditRow>> {
    sqlx::query_as("SELECT kind, detail, at FROM audit_event WHERE request_id = $1 ORDER BY seq")
        .bind(id)
        .fetch_all(pool)
        .await
}

/// Filters of `GET /v1/requests`.
#[derive(Debug, Default, Clone)]
pub struct ListFilter {
    /// Only this status.
    pub status: Option<RequestStatus>,
    /// Only this kind.
    pub kind: Option<RequestKind>,
    /// Only open requests past their legal deadline.
    pub overdue: bool,
    /// Only requests due before this time.
    pub due_before: Option<DateTime<Utc>>,
    /// Only requests older than this id (the cursor).
    pub before: Option<RequestId>,
    /// Page size.
    pub limit: i64,
}

/// A page of a tenant's requests, newest first.
pub async fn list(
    pool: &PgPool,
    tenant: TenantId,
    filter: &ListFilter,
) -> sqlx::Result<Vec<RequestRow>> {
    sqlx::query_as(&format!(
        "SELECT {REQUEST_COLUMNS} FROM request
         WHERE tenant_id = $1
           AND ($2::text IS NULL OR status = $2)
           AND ($3::text IS NULL OR kind = $3)
           AND (NOT $4 OR (due_at < now() AND status IN ('received', 'verifying', 'in_progress')))
           AND ($5::timestamptz IS NULL OR due_at < $5)
           AND ($6::uuid IS NULL OR id < $6)
         ORDER BY id DESC LIMIT $7"
    ))
    .bind(tenant)
    .bind(filter.status.map(RequestStatus::as_str))
    .bind(filter.kind.map(RequestKind::as_str))
    .bind(filter.overdue)
    .bind(filter.due_before)
    .bind(filter.before)
    .bind(filter.limit)
    .fetch_all(pool)
    .await
}

/// Appends an audit event within `tx` (the sealer chains it).
pub async fn audit(
    tx: &mut Transaction<'_, Postgres>,
    tenant: Option<TenantId>,
    request: Option<RequestId>,
    kind: &str,
    detail: serde_json::Value,
) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO audit_event (tenant_id, request_id, kind, detail, at) VALUES ($1, $2, $3, $4, now())")
        .bind(tenant)
        .bind(request)
        .bind(kind)
        .bind(Json(detail))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Refuses to change a request that has finished.
fn ensure_open(row: &RequestRow) -> Result<(), ApiError> {
    if row.status().is_terminal() {
        return Err(ApiError::Conflict {
            code: "request_finished",
            detail: format!("the request is already {}", row.status().as_str()),
        });
    }
    Ok(())
}

/// Locks a tenant's request for an update within `tx`.
async fn lock_owned(
    tx: &mut Transaction<'_, Postgres>,
    tenant: TenantId,
    id: RequestId,
) -> Result<RequestRow, ApiError> {
    let row: Option<RequestRow> = sqlx::query_as(&format!(
        "SELECT {REQUEST_COLUMNS} FROM request WHERE id = $1 AND tenant_id = $2 FOR UPDATE"
    ))
    .bind(id)
    .bind(tenant)
    .fetch_optional(&mut **tx)
    .await?;
    row.ok_or(ApiError::NotFound)
}

/// Cancels a tenant's open request; returns it as it is afterwards.
pub async fn cancel(
    pool: &PgPool,
    names: &Names,
    outbox: &OutboxSignal,
    tenant: TenantId,
    id: RequestId,
) -> Result<RequestRow, ApiError> {
    let mut tx = pool.begin().await?;
    let row = lock_owned(&mut tx, tenant, id).await?;
    ensure_open(&row)?;
    sqlx::query(
        "UPDATE request SET status = 'cancelled', phase = 'done', updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE task SET status = 'cancelled', updated_at = now() WHERE request_id = $1 AND status IN ('pending', 'queued')")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    audit(
        &mut tx,
        Some(tenant),
        Some(id),
        "request.cancelled",
        json!({}),
    )
    .await?;
    let mut outgoing = Outgoing::default();
    outgoing.event(
        names,
        &Event {
            kind: "request.cancelled".into(),
            request_id: Some(id),
            tenant_id: Some(tenant),
            counts: Default::default(),
            detail: None,
            at: Utc::now(),
        },
    )?;
    outgoing.write(&mut tx).await?;
    tx.commit().await?;
    outbox.wake();
    metrics::counter!("lethe_requests_total", "kind" => row.kind().as_str(), "status" => "cancelled").increment(1);
    fetch(pool, tenant, id).await?.ok_or(ApiError::NotFound)
}

/// Extends an open request's legal deadline once, by one or two months, with a reason.
pub async fn extend(
    pool: &PgPool,
    tenant: TenantId,
    id: RequestId,
    months: u32,
    reason: &str,
) -> Result<RequestRow, ApiError> {
    let mut tx = pool.begin().await?;
    let row = lock_owned(&mut tx, tenant, id).await?;
    if row.extended_at.is_some() {
        return Err(ApiError::Conflict {
            code: "already_extended",
            detail: "a request's deadline can be extended only once".to_owned(),
        });
    }
    ensure_open(&row)?;
    let due = deadlines::extended(row.due_at, months);
    sqlx::query(
        "UPDATE request SET due_at = $2, extended_at = now(), extension_reason = $3, updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(due)
    .bind(reason)
    .execute(&mut *tx)
    .await?;
    audit(
        &mut tx,
        Some(tenant),
        Some(id),
        "request.extended",
        json!({ "months": months, "due_at": due }),
    )
    .await?;
    tx.commit().await?;
    fetch(pool, tenant, id).await?.ok_or(ApiError::NotFound)
}
