//! The ledger side of one batch of results. The requests are locked and their tasks read with
//! one statement each, the results are applied to that state in memory, and every change is
//! written back with one statement per table before the transaction commits. A batch thus
//! costs a handful of statements whatever its size, instead of about ten per result: at
//! hundreds of subjects a second, the ledger's round trips were what the coordinator waited on.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use lethe_common::ids::{RequestId, TenantId};
use serde_json::Value;
use sqlx::types::Json;
use sqlx::{Postgres, Transaction};

use crate::model::TaskStatus;
use crate::plan::{Phase, PlannedTask};
use crate::requests::{Outgoing, REQUEST_COLUMNS, RequestRow, store_key};

/// A task as the coordinator reads and writes it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(super) struct TaskRow {
    pub store: String,
    pub kind: String,
    pub phase: Phase,
    pub status: TaskStatus,
    pub generation: i32,
    pub attempts: i32,
    pub counts: Json<Value>,
    pub remaining: Option<i64>,
    pub error: Option<String>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Changed by this batch (written back by [`flush`]).
    #[sqlx(skip)]
    pub changed: bool,
}

impl TaskRow {
    /// Records counted by the task: every count but an export's `bytes`.
    fn records(&self) -> impl Iterator<Item = u64> + '_ {
        self.counts
            .0
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(name, _)| name.as_str() != "bytes")
            .filter_map(|(_, count)| count.as_u64())
    }
}

/// A request locked by the batch, with its tasks.
pub(super) struct Held {
    pub row: RequestRow,
    pub tasks: Vec<TaskRow>,
    /// Changed by this batch (written back by [`flush`]).
    pub changed: bool,
}

impl Held {
    /// The task `kind` in `store` (`all` for none).
    pub fn task_mut(&mut self, kind: &str, store: &str) -> Option<&mut TaskRow> {
        self.tasks
            .iter_mut()
            .find(|t| t.kind == kind && t.store == store)
    }

    /// Tasks of `phase` not done yet.
    pub fn open_in(&self, phase: Phase) -> usize {
        self.tasks
            .iter()
            .filter(|t| t.phase == phase && t.status != TaskStatus::Done)
            .count()
    }

    /// The generation of a new round of `kind` tasks: one above any issued so far.
    pub fn next_generation(&self, kind: &str) -> i32 {
        self.tasks
            .iter()
            .filter(|t| t.kind == kind)
            .map(|t| t.generation.saturating_add(1))
            .max()
            .unwrap_or(0)
    }

    /// Queues `tasks` in `phase` with `generation`: new tasks are added; a task issued before
    /// is queued again, its error cleared and its counts kept.
    pub fn queue(&mut self, phase: Phase, tasks: &[PlannedTask], generation: i32) {
        for planned in tasks {
            let kind = planned.kind.as_str();
            let store = store_key(planned.store.as_ref());
            match self.task_mut(kind, &store) {
                Some(task) => {
                    task.status = TaskStatus::Queued;
                    task.phase = phase;
                    task.generation = generation;
                    task.error = None;
                    task.changed = true;
                }
                None => self.tasks.push(TaskRow {
                    store,
                    kind: kind.to_owned(),
                    phase,
                    status: TaskStatus::Queued,
                    generation,
                    attempts: 0,
                    counts: Json(Value::Object(Default::default())),
                    remaining: None,
                    error: None,
                    finished_at: None,
                    changed: true,
                }),
            }
        }
    }

    /// Cancels the tasks still pending or queued (the request ended before they ran).
    pub fn cancel_open(&mut self) {
        for task in &mut self.tasks {
            if matches!(task.status, TaskStatus::Pending | TaskStatus::Queued) {
                task.status = TaskStatus::Cancelled;
                task.changed = true;
            }
        }
    }

    /// Whether a done task counted records (an export's `bytes` are no records).
    pub fn counted(&self) -> bool {
        self.tasks
            .iter()
            .filter(|t| t.status == TaskStatus::Done)
            .any(|t| t.records().any(|n| n > 0))
    }

    /// Records per store of the done tasks.
    pub fn totals(&self) -> BTreeMap<String, u64> {
        let mut totals: BTreeMap<String, u64> = BTreeMap::new();
        for task in self.tasks.iter().filter(|t| t.status == TaskStatus::Done) {
            *totals.entry(task.store.clone()).or_default() += task.records().sum::<u64>();
        }
        totals
    }
}

/// The requests of a batch, locked in id order (so two coordinators never deadlock), with
/// their tasks.
pub(super) struct Locked {
    requests: BTreeMap<RequestId, Held>,
}

impl Locked {
    /// Locks the requests `ids` that exist and reads their tasks: two statements.
    pub async fn lock(tx: &mut Transaction<'_, Postgres>, ids: &[RequestId]) -> sqlx::Result<Self> {
        let mut ids: Vec<uuid::Uuid> = ids.iter().map(|id| id.0).collect();
        ids.sort();
        ids.dedup();
        let rows: Vec<RequestRow> = sqlx::query_as(&format!(
            "SELECT {REQUEST_COLUMNS} FROM request WHERE id = ANY($1) ORDER BY id FOR UPDATE"
        ))
        .bind(&ids)
        .fetch_all(&mut **tx)
        .await?;
        let tasks: Vec<(RequestId, TaskRow)> = sqlx::query_as::<_, TaskWithRequest>(
            "SELECT request_id, store, kind, phase, status, generation, attempts, counts,
                    remaining, error, finished_at
             FROM task WHERE request_id = ANY($1)",
        )
        .bind(&ids)
        .fetch_all(&mut **tx)
        .await?
        .into_iter()
        .map(|t| (t.request_id, t.task))
        .collect();
        let mut requests: BTreeMap<RequestId, Held> = rows
            .into_iter()
            .map(|row| {
                let held = Held {
                    row,
                    tasks: Vec::new(),
                    changed: false,
                };
                (held.row.id, held)
            })
            .collect();
        for (request, task) in tasks {
            if let Some(held) = requests.get_mut(&request) {
                held.tasks.push(task);
            }
        }
        Ok(Self { requests })
    }

    /// The locked request `id`, if it exists.
    pub fn get_mut(&mut self, id: RequestId) -> Option<&mut Held> {
        self.requests.get_mut(&id)
    }
}

#[derive(sqlx::FromRow)]
struct TaskWithRequest {
    request_id: RequestId,
    #[sqlx(flatten)]
    task: TaskRow,
}

/// What a batch appends to the ledger besides its requests and tasks.
#[derive(Default)]
pub(super) struct Appends {
    audit: Vec<(Option<TenantId>, Option<RequestId>, String, Value)>,
    /// Messages for the outbox.
    pub outgoing: Outgoing,
    erasures: Vec<RequestRow>,
}

impl Appends {
    /// An audit event, appended in the order recorded.
    pub fn audit(
        &mut self,
        tenant: Option<TenantId>,
        request: Option<RequestId>,
        kind: &str,
        detail: Value,
    ) {
        self.audit.push((tenant, request, kind.to_owned(), detail));
    }

    /// An erasure record of `request`, which a restore replays.
    pub fn erasure(&mut self, request: &RequestRow) {
        self.erasures.push(request.clone());
    }
}

/// Writes back what the batch changed and appended: one statement per table.
pub(super) async fn flush(
    tx: &mut Transaction<'_, Postgres>,
    locked: &Locked,
    appends: Appends,
) -> anyhow::Result<()> {
    write_requests(tx, locked).await?;
    write_tasks(tx, locked).await?;
    write_audit(tx, &appends.audit).await?;
    appends.outgoing.write(tx).await?;
    write_erasures(tx, &appends.erasures).await?;
    Ok(())
}

async fn write_requests(tx: &mut Transaction<'_, Postgres>, locked: &Locked) -> anyhow::Result<()> {
    let changed: Vec<&RequestRow> = locked
        .requests
        .values()
        .filter(|held| held.changed)
        .map(|held| &held.row)
        .collect();
    if changed.is_empty() {
        return Ok(());
    }
    let mut identities: Vec<Option<String>> = Vec::with_capacity(changed.len());
    let mut closures: Vec<Option<String>> = Vec::with_capacity(changed.len());
    for row in &changed {
        identities.push(
            row.identities
                .as_ref()
                .map(|j| serde_json::to_string(&j.0))
                .transpose()?,
        );
        closures.push(
            row.closure
                .as_ref()
                .map(|j| serde_json::to_string(&j.0))
                .transpose()?,
        );
    }
    sqlx::query(
        "UPDATE request AS r
         SET status = u.status, phase = u.phase, identities = u.identities::jsonb,
             closure = u.closure::jsonb, failure = u.failure, completed_at = u.completed_at,
             found = u.found, updated_at = now()
         FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                     $7::timestamptz[], $8::bool[])
              AS u(id, status, phase, identities, closure, failure, completed_at, found)
         WHERE r.id = u.id",
    )
    .bind(changed.iter().map(|r| r.id.0).collect::<Vec<_>>())
    .bind(
        changed
            .iter()
            .map(|r| r.status.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(changed.iter().map(|r| r.phase.as_str()).collect::<Vec<_>>())
    .bind(identities)
    .bind(closures)
    .bind(
        changed
            .iter()
            .map(|r| r.failure.clone())
            .collect::<Vec<_>>(),
    )
    .bind(changed.iter().map(|r| r.completed_at).collect::<Vec<_>>())
    .bind(changed.iter().map(|r| r.found).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn write_tasks(tx: &mut Transaction<'_, Postgres>, locked: &Locked) -> anyhow::Result<()> {
    let changed: Vec<(RequestId, &TaskRow)> = locked
        .requests
        .values()
        .flat_map(|held| {
            held.tasks
                .iter()
                .filter(|t| t.changed)
                .map(|t| (held.row.id, t))
        })
        .collect();
    if changed.is_empty() {
        return Ok(());
    }
    let counts: Vec<String> = changed
        .iter()
        .map(|(_, t)| serde_json::to_string(&t.counts.0))
        .collect::<Result<_, _>>()?;
    sqlx::query(
        "INSERT INTO task (request_id, store, kind, phase, status, generation, attempts, counts,
                           remaining, error, finished_at)
         SELECT r, s, k, p, st, g, a, c::jsonb, rem, e, f
         FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int[],
                     $7::int[], $8::text[], $9::int8[], $10::text[], $11::timestamptz[])
              AS x(r, s, k, p, st, g, a, c, rem, e, f)
         ON CONFLICT (request_id, kind, store) DO UPDATE
         SET phase = EXCLUDED.phase, status = EXCLUDED.status, generation = EXCLUDED.generation,
             attempts = EXCLUDED.attempts, counts = EXCLUDED.counts,
             remaining = EXCLUDED.remaining, error = EXCLUDED.error,
             finished_at = EXCLUDED.finished_at, updated_at = now()",
    )
    .bind(changed.iter().map(|(r, _)| r.0).collect::<Vec<_>>())
    .bind(
        changed
            .iter()
            .map(|(_, t)| t.store.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        changed
            .iter()
            .map(|(_, t)| t.kind.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        changed
            .iter()
            .map(|(_, t)| t.phase.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        changed
            .iter()
            .map(|(_, t)| t.status.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        changed
            .iter()
            .map(|(_, t)| t.generation)
            .collect::<Vec<_>>(),
    )
    .bind(changed.iter().map(|(_, t)| t.attempts).collect::<Vec<_>>())
    .bind(counts)
    .bind(changed.iter().map(|(_, t)| t.remaining).collect::<Vec<_>>())
    .bind(
        changed
            .iter()
            .map(|(_, t)| t.error.clone())
            .collect::<Vec<_>>(),
    )
    .bind(
        changed
            .iter()
            .map(|(_, t)| t.finished_at)
            .collect::<Vec<_>>(),
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Appends the audit events in the order recorded (their `seq` follows it; the sealer chains
/// them in that order).
async fn write_audit(
    tx: &mut Transaction<'_, Postgres>,
    events: &[(Option<TenantId>, Option<RequestId>, String, Value)],
) -> anyhow::Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let details: Vec<String> = events
        .iter()
        .map(|(_, _, _, detail)| serde_json::to_string(detail))
        .collect::<Result<_, _>>()?;
    sqlx::query(
        "INSERT INTO audit_event (tenant_id, request_id, kind, detail, at)
         SELECT t, r, k, d::jsonb, now()
         FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[]) WITH ORDINALITY
              AS x(t, r, k, d, n)
         ORDER BY n",
    )
    .bind(events.iter().map(|e| e.0.map(|t| t.0)).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.1.map(|r| r.0)).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.2.as_str()).collect::<Vec<_>>())
    .bind(details)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn write_erasures(
    tx: &mut Transaction<'_, Postgres>,
    erased: &[RequestRow],
) -> anyhow::Result<()> {
    if erased.is_empty() {
        return Ok(());
    }
    let identities: Vec<Option<String>> = erased
        .iter()
        .map(|r| {
            r.identities
                .as_ref()
                .map(|j| serde_json::to_string(&j.0))
                .transpose()
        })
        .collect::<Result<_, _>>()?;
    sqlx::query(
        "INSERT INTO erasure_log (request_id, tenant_id, identities, identity_hash)
         SELECT r, t, i::jsonb, h FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[])
              AS x(r, t, i, h)
         ON CONFLICT (request_id) DO NOTHING",
    )
    .bind(erased.iter().map(|r| r.id.0).collect::<Vec<_>>())
    .bind(erased.iter().map(|r| r.tenant_id.0).collect::<Vec<_>>())
    .bind(identities)
    .bind(
        erased
            .iter()
            .map(|r| r.identity_hash.as_str())
            .collect::<Vec<_>>(),
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use serde_json::json;

    use super::*;
    use crate::model::{RequestKind, RequestStatus};
    use lethe_common::ids::StoreName;

    fn task(kind: &str, store: &str, phase: Phase, status: TaskStatus, counts: Value) -> TaskRow {
        TaskRow {
            store: store.to_owned(),
            kind: kind.to_owned(),
            phase,
            status,
            generation: 0,
            attempts: 1,
            counts: Json(counts),
            remaining: None,
            error: None,
            finished_at: None,
            changed: false,
        }
    }

    fn held(tasks: Vec<TaskRow>) -> Held {
        let now = Utc::now();
        Held {
            row: RequestRow {
                id: RequestId::new(),
                tenant_id: TenantId::new(),
                kind: RequestKind::Erasure,
                status: RequestStatus::InProgress,
                phase: Phase::Act,
                identities: None,
                identity_hash: String::new(),
                params: Json(json!({})),
                traceparent: String::new(),
                callback_url: None,
                failure: None,
                received_at: now,
                target_at: now,
                due_at: now,
                extended_at: None,
                extension_reason: None,
                completed_at: None,
                closure: None,
                found: None,
                dry_run: false,
            },
            tasks,
            changed: false,
        }
    }

    #[test]
    fn a_task_queued_again_gets_the_new_generation_and_keeps_what_it_counted() {
        let mut failed = task(
            "resolve",
            "accounts",
            Phase::Resolve,
            TaskStatus::Failed,
            json!({"users": 2}),
        );
        failed.error = Some("store_error: down".to_owned());
        let mut held = held(vec![failed]);
        let generation = held.next_generation("resolve");
        held.queue(
            Phase::Resolve,
            &[PlannedTask {
                kind: lethe_common::messages::TaskKind::Resolve,
                store: Some(StoreName::try_from("accounts".to_owned()).unwrap()),
            }],
            generation,
        );
        let requeued = &held.tasks[0];
        assert_eq!(
            (
                requeued.status,
                requeued.generation,
                requeued.error.as_deref()
            ),
            (TaskStatus::Queued, 1, None)
        );
        assert_eq!(requeued.counts.0, json!({"users": 2}));
        assert!(requeued.changed);
        assert_eq!(held.open_in(Phase::Resolve), 1);
    }

    #[test]
    fn an_exports_bytes_are_no_records() {
        let held = held(vec![
            task(
                "assemble",
                "all",
                Phase::Finalize,
                TaskStatus::Done,
                json!({"bytes": 4096}),
            ),
            task(
                "erase",
                "chat",
                Phase::Act,
                TaskStatus::Failed,
                json!({"messages": 3}),
            ),
        ]);
        assert!(!held.counted(), "bytes and failed tasks count nothing");
        assert_eq!(held.totals(), BTreeMap::from([("all".to_owned(), 0)]));
    }

    #[test]
    fn a_request_ending_cancels_only_what_has_not_run() {
        let mut held = held(vec![
            task(
                "erase",
                "chat",
                Phase::Act,
                TaskStatus::Done,
                json!({"messages": 3}),
            ),
            task("erase", "files", Phase::Act, TaskStatus::Queued, json!({})),
            task(
                "erase",
                "accounts",
                Phase::ActLast,
                TaskStatus::Pending,
                json!({}),
            ),
        ]);
        held.cancel_open();
        let statuses: Vec<TaskStatus> = held.tasks.iter().map(|t| t.status).collect();
        assert_eq!(
            statuses,
            [
                TaskStatus::Done,
                TaskStatus::Cancelled,
                TaskStatus::Cancelled
            ]
        );
        assert!(held.counted());
        assert_eq!(held.totals()["chat"], 3);
    }
}
