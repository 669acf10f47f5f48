//! The coordinator: consumes task results, records them, and moves each request through its
//! phases (DESIGN §2). Every result is applied in one ledger transaction that holds the
//! request's row lock, so any number of api processes can consume results side by side, and a
//! result delivered twice (or for an older generation of a task) changes nothing.

mod batch;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use chrono::Utc;
use futures::{StreamExt as _, TryStreamExt as _};
use lethe_common::config::NatsSettings;
use lethe_common::messages::{Event, Identities, TaskKind, TaskOutcome, TaskResult};
use lethe_common::nats::{Durable, Names, Publisher, Traceparent};
use lethe_common::worker::{BatchKey, Consume, Delivery, LoopSettings, Settle, WorkerLoop};
use serde_json::json;
use sqlx::types::Json;
use sqlx::{PgPool, Postgres, Transaction};
use tracing::Instrument as _;

use self::batch::{Appends, Held, Locked};

use crate::closure;
use crate::model::{RequestKind, RequestStatus, TaskStatus};
use crate::outbox::OutboxSignal;
use crate::plan::{Phase, PlannedTask, Planner};
use crate::requests::{RequestRow, TaskContext, store_key};
use crate::settings::ApiSettings;
use crate::tenants::TenantNames;
use crate::tombstones::Tombstones;

/// Applies results to the ledger.
#[derive(Clone)]
pub struct Coordinator {
    pool: PgPool,
    planner: Arc<Planner>,
    names: Names,
    outbox: OutboxSignal,
    export_ttl: Duration,
    tenants: TenantNames,
    tombstones: Option<Tombstones>,
}

/// What applying one result did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Recorded; the request may have moved on.
    Recorded,
    /// Already recorded, or for a task or request that no longer waits for it.
    Ignored,
}

impl Coordinator {
    /// A coordinator on the ledger `pool`.
    pub fn new(pool: PgPool, planner: Arc<Planner>, names: Names, outbox: OutboxSignal) -> Self {
        Self {
            pool,
            planner,
            names,
            outbox,
            export_ttl: Duration::from_secs(7 * 24 * 3600),
            tenants: TenantNames::default(),
            tombstones: None,
        }
    }

    /// Writes a tombstone of every completed change (`api.tombstones`).
    pub fn with_tombstones(mut self, tombstones: Option<Tombstones>) -> Self {
        self.tombstones = tombstones;
        self
    }

    /// How long an assembled export stays available (`api.export_ttl`; 7 days unless set).
    pub fn with_export_ttl(mut self, ttl: Duration) -> Self {
        self.export_ttl = ttl;
        self
    }

    /// The loop that applies the results `consumer` delivers, up to `api.coordinator_concurrency`
    /// at once. It is the workers' loop: a result is acknowledged only once its ledger
    /// transaction committed, a passing failure is retried with backoff, and a result that
    /// cannot be decoded (or applied within `max_deliver` deliveries) is moved to the
    /// dead-letter stream rather than dropped.
    pub fn results_loop(
        self,
        consumer: PullConsumer,
        publisher: Publisher,
        nats: &NatsSettings,
        api: &ApiSettings,
    ) -> WorkerLoop<Self> {
        let name = self.names.durable_name(&Durable::Coordinator);
        WorkerLoop::new(
            name,
            consumer,
            Arc::new(self),
            publisher,
            LoopSettings {
                concurrency: api.coordinator_concurrency.max(1),
                drain_timeout: api.drain_timeout,
                max_deliver: nats.max_deliver,
                ack_wait: nats.ack_wait,
                // How long one pull stays open; a result that arrives meanwhile is applied
                // at once, not when the pull ends, since a request's next phase waits for it.
                poll: Duration::from_secs(1),
                batch_size: api.coordinator_batch_size.max(1),
            },
        )
    }

    /// Records `result` and moves its request on.
    pub async fn apply(&self, result: &TaskResult) -> anyhow::Result<Applied> {
        let applied = self.apply_all(&[(result, None)]).await?;
        Ok(applied.into_iter().next().unwrap_or(Applied::Ignored))
    }

    /// Applies `results` in one ledger transaction, each under the rules of
    /// [`Coordinator::apply`]: the request's row lock, a result that is not current changes
    /// nothing. The requests are locked together in id order (so two coordinators never
    /// deadlock) and read with their tasks once; the results are applied to that state in
    /// arrival order, and what changed is written back with one statement per table (see
    /// `batch`). Every tombstone of a change completed by the batch is written, several at a
    /// time, before the transaction commits. All or nothing: an error rolls every one back.
    pub async fn apply_all(
        &self,
        results: &[(&TaskResult, Option<Traceparent>)],
    ) -> anyhow::Result<Vec<Applied>> {
        let mut tx = self.pool.begin().await?;
        let ids: Vec<_> = results
            .iter()
            .map(|(result, _)| result.request_id)
            .collect();
        let mut locked = Locked::lock(&mut tx, &ids).await?;
        let mut step = Step::default();
        let mut applied = Vec::with_capacity(results.len());
        for (result, trace) in results {
            // Each result's step continues the trace of the task that reported it (a result
            // applied alone already runs in its span).
            let span = match trace {
                Some(trace) => {
                    let span =
                        tracing::info_span!("coordinator.result", request.id = %result.request_id);
                    trace.make_parent_of(&span);
                    span
                }
                None => tracing::Span::current(),
            };
            let Some(held) = locked.get_mut(result.request_id) else {
                tracing::warn!(request.id = %result.request_id, "result for an unknown request; ignoring it");
                applied.push(Applied::Ignored);
                continue;
            };
            applied.push(
                self.apply_in(&mut tx, held, &mut step, result)
                    .instrument(span)
                    .await?,
            );
        }
        self.write_tombstones(std::mem::take(&mut step.tombstones))
            .await?;
        batch::flush(&mut tx, &locked, step.appends).await?;
        tx.commit().await?;
        if applied.contains(&Applied::Recorded) {
            self.outbox.wake();
        }
        Ok(applied)
    }

    /// Writes the tombstones of the changes a batch completed, [`TOMBSTONE_WRITES`] at a time.
    async fn write_tombstones(&self, completed: Vec<Completed>) -> anyhow::Result<()> {
        let Some(tombstones) = &self.tombstones else {
            return Ok(());
        };
        futures::stream::iter(completed)
            .map(|done| async move { tombstones.write(&done.request, &done.tenant, done.at).await })
            .buffer_unordered(TOMBSTONE_WRITES)
            .try_collect::<()>()
            .await
    }

    /// Records `result` in `held` (its request, locked) and moves the request on; `step`
    /// gathers what to append. Queries the ledger only for what is rare (a tenant's name not
    /// cached yet, an export, a webhook).
    #[tracing::instrument(name = "coordinator.apply", skip_all, fields(
        request.id = %result.request_id,
        task.kind = %result.task,
        task.store = result.store.as_ref().map_or("-", |s| s.as_str()),
    ))]
    async fn apply_in(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        held: &mut Held,
        step: &mut Step,
        result: &TaskResult,
    ) -> anyhow::Result<Applied> {
        let store = store_key(result.store.as_ref());
        let request_id = held.row.id;
        let Some(task) = held.task_mut(result.task.as_str(), &store) else {
            return Ok(Applied::Ignored);
        };
        let current = task.status == TaskStatus::Queued
            && i64::from(task.generation) == i64::from(result.generation);
        if !current {
            return Ok(Applied::Ignored);
        }

        let deliveries = i32::try_from(result.deliveries).unwrap_or(i32::MAX);
        task.attempts = deliveries;
        task.finished_at = Some(result.finished_at);
        task.changed = true;
        let failure = match &result.outcome {
            TaskOutcome::Done(report) => {
                let verified = match (result.task, report.remaining) {
                    (TaskKind::Erase, Some(left)) if left > 0 => Some(format!(
                        "store {store}: {left} matching item(s) remain after erasure"
                    )),
                    _ => None,
                };
                task.status = if verified.is_some() {
                    TaskStatus::Failed
                } else {
                    TaskStatus::Done
                };
                task.counts = Json(serde_json::to_value(&report.counts)?);
                task.remaining = report
                    .remaining
                    .map(|r| i64::try_from(r).unwrap_or(i64::MAX));
                task.error = verified.clone();
                if result.task == TaskKind::Assemble {
                    record_export(tx, request_id, report, result.finished_at, self.export_ttl)
                        .await?;
                }
                if result.task == TaskKind::Resolve {
                    let request = &mut held.row;
                    let known = request.identities.as_ref().map(|j| &j.0);
                    let found = closure::new_values(known, &report.derived);
                    let merged = merge(known, &report.derived);
                    let mut record = request.closure.take().map(|j| j.0).unwrap_or_default();
                    record.record(&store, report.counts.values().sum(), found, &merged);
                    request.identities = Some(Json(merged));
                    request.closure = Some(Json(record));
                    held.changed = true;
                }
                step.audit(
                    &held.row,
                    "task.done",
                    json!({ "task": result.task.as_str(), "store": store, "counts": report.counts, "remaining": report.remaining }),
                );
                verified
            }
            TaskOutcome::Failed { code, reason } => {
                let error = format!("{code}: {reason}");
                task.status = TaskStatus::Failed;
                task.error = Some(error.clone());
                step.audit(
                    &held.row,
                    "task.failed",
                    json!({ "task": result.task.as_str(), "store": store, "code": code }),
                );
                Some(format!("store {store}: {error}"))
            }
        };

        if held.row.status().is_terminal() {
            return Ok(Applied::Recorded);
        }
        if let Some(reason) = failure {
            self.fail(held, step, &reason)?;
        } else {
            self.advance(tx, held, step).await?;
        }
        Ok(Applied::Recorded)
    }

    /// Moves the request to its next phase once every task of the current one is done.
    async fn advance(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        held: &mut Held,
        step: &mut Step,
    ) -> anyhow::Result<()> {
        let phase = held.row.phase();
        if held.open_in(phase) > 0 {
            if held.row.status() == RequestStatus::Received {
                held.row.status = RequestStatus::InProgress;
                held.changed = true;
            }
            return Ok(());
        }
        if phase == Phase::Resolve && self.next_round(tx, held, step).await? {
            return Ok(());
        }
        let (next, tasks) = self
            .planner
            .after(phase, held.row.kind(), &held.row.changed_fields());
        if next == Phase::Done {
            return self.complete(tx, held, step).await;
        }
        self.issue(tx, held, step, next, &tasks, 0).await?;
        held.row.phase = next;
        held.row.status = RequestStatus::InProgress;
        held.changed = true;
        step.audit(
            &held.row,
            "request.phase",
            json!({ "phase": next.as_str(), "tasks": tasks.len() }),
        );
        Ok(())
    }

    /// Queues `tasks` of `phase` with `generation` and their outgoing messages.
    async fn issue(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        held: &mut Held,
        step: &mut Step,
        phase: Phase,
        tasks: &[PlannedTask],
        generation: i32,
    ) -> anyhow::Result<()> {
        held.queue(phase, tasks, generation);
        let request = &held.row;
        let identities = request
            .identities
            .as_ref()
            .map(|j| j.0.clone())
            .unwrap_or_default();
        let trace = request
            .traceparent
            .parse::<Traceparent>()
            .unwrap_or_else(|_| Traceparent::new_root());
        let tenant = self.tenants.get(&mut **tx, request.tenant_id).await?;
        let context = TaskContext {
            request: request.id,
            identities: &identities,
            tenant: &tenant,
            params: &request.params.0,
            generation: u32::try_from(generation).unwrap_or(0),
            trace: &trace,
        };
        step.appends
            .outgoing
            .tasks(&self.names, context, tasks)
            .map_err(|error| anyhow::anyhow!("cannot queue the tasks: {error}"))?;
        Ok(())
    }

    /// At the end of a resolve round: issues the next round when some store found identities
    /// another store searches with (`true`), or records the closure as complete (`false`).
    /// A closure still growing after the planner's bound fails the request.
    async fn next_round(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        held: &mut Held,
        step: &mut Step,
    ) -> anyhow::Result<bool> {
        let mut record = held
            .row
            .closure
            .as_ref()
            .map(|j| j.0.clone())
            .unwrap_or_default();
        let tasks = self.planner.next_round(&record.grown());
        if tasks.is_empty() {
            record.complete = true;
            held.row.closure = Some(Json(record));
            held.changed = true;
            return Ok(false);
        }
        let max = self.planner.max_rounds();
        if record.round() >= max {
            let reason = format!(
                "the identity closure still grew after {max} resolve rounds; \
                 nothing was erased or collected"
            );
            self.fail(held, step, &reason)?;
            return Ok(true);
        }
        let identities = held
            .row
            .identities
            .as_ref()
            .map(|j| j.0.clone())
            .unwrap_or_default();
        // A store asked again gets a new generation: its earlier result is then no longer
        // current, and the new task is not dropped as a duplicate of the earlier one.
        let generation = held.next_generation(TaskKind::Resolve.as_str());
        record.begin_round(&self.planner, &identities, &tasks);
        self.issue(tx, held, step, Phase::Resolve, &tasks, generation)
            .await?;
        let round = record.round();
        held.row.closure = Some(Json(record));
        held.row.status = RequestStatus::InProgress;
        held.changed = true;
        step.audit(
            &held.row,
            "request.resolve_round",
            json!({ "round": round, "tasks": tasks.len() }),
        );
        Ok(true)
    }

    async fn complete(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        held: &mut Held,
        step: &mut Step,
    ) -> anyhow::Result<()> {
        let now = Utc::now();
        // A change is recorded completed only with its tombstone in the bucket: the batch
        // writes it before it commits (a failed write rolls back and the result comes again).
        // A dry run changed nothing, so a restore has nothing to replay.
        if self.tombstones.is_some() && !held.row.dry_run {
            let tenant = self.tenants.get(&mut **tx, held.row.tenant_id).await?;
            step.tombstones.push(Completed {
                request: held.row.clone(),
                tenant,
                at: now,
            });
        }
        // Found: a resolve round found rows, or a task counted records (an export's `bytes`
        // are no records). A subject no store knows completes with `found = false`.
        let found = held.counted()
            || held
                .row
                .closure
                .as_ref()
                .is_some_and(|closure| closure.0.found_rows());
        held.row.status = RequestStatus::Completed;
        held.row.phase = Phase::Done;
        held.row.completed_at = Some(now);
        held.row.found = Some(found);
        held.changed = true;
        if held.row.kind() == RequestKind::Erasure && !held.row.dry_run {
            // The restore replay erases, after a restore, everyone recorded here after the
            // backup was taken. A dry run erased nothing: there is nothing to replay, and
            // without a record its identities are minimised as soon as it finished.
            step.appends.erasure(&held.row);
        }
        self.finish(tx, held, step, RequestStatus::Completed, None, now)
            .await?;
        let seconds = (now - held.row.received_at).num_milliseconds() as f64 / 1000.0;
        metrics::histogram!("lethe_request_duration_seconds", "kind" => held.row.kind().as_str())
            .record(seconds);
        Ok(())
    }

    fn fail(&self, held: &mut Held, step: &mut Step, reason: &str) -> anyhow::Result<()> {
        held.row.status = RequestStatus::Failed;
        held.row.phase = Phase::Done;
        held.row.failure = Some(reason.to_owned());
        held.changed = true;
        held.cancel_open();
        self.finish_appends(held, step, RequestStatus::Failed, Some(reason), Utc::now())
    }

    /// What every end of a request shares: audit event, outside event, webhook, metric.
    async fn finish(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        held: &Held,
        step: &mut Step,
        status: RequestStatus,
        reason: Option<&str>,
        at: chrono::DateTime<Utc>,
    ) -> anyhow::Result<()> {
        self.finish_appends(held, step, status, reason, at)?;
        let request = &held.row;
        if let Some(url) = &request.callback_url {
            let event_kind = format!("request.{}", status.as_str());
            let payload = json!({
                "event": event_kind,
                "request_id": request.id,
                "kind": request.kind().as_str(),
                "status": status.as_str(),
                "failure": reason,
                "at": at,
            });
            sqlx::query(
                "INSERT INTO webhook_delivery (tenant_id, request_id, url, event, payload) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(request.tenant_id)
            .bind(request.id)
            .bind(url)
            .bind(&event_kind)
            .bind(Json(payload))
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }

    /// The audit event, outside event and metric of a request's end.
    fn finish_appends(
        &self,
        held: &Held,
        step: &mut Step,
        status: RequestStatus,
        reason: Option<&str>,
        at: chrono::DateTime<Utc>,
    ) -> anyhow::Result<()> {
        let request = &held.row;
        let event_kind = format!("request.{}", status.as_str());
        // Records only: an export task also reports its `bytes`, which are no records.
        let totals = held.totals();
        step.audit(
            request,
            &event_kind,
            json!({ "counts": totals, "reason": reason }),
        );
        let event = Event {
            kind: event_kind,
            request_id: Some(request.id),
            tenant_id: Some(request.tenant_id),
            counts: totals,
            detail: reason.map(str::to_owned),
            at,
        };
        step.appends
            .outgoing
            .event(&self.names, &event)
            .map_err(|error| anyhow::anyhow!("cannot record the request's event: {error}"))?;
        metrics::counter!("lethe_requests_total", "kind" => request.kind().as_str(), "status" => status.as_str()).increment(1);
        Ok(())
    }
}

/// How many tombstones a batch writes at once.
const TOMBSTONE_WRITES: usize = 16;

/// A change completed by a batch, whose tombstone is written before the batch commits.
struct Completed {
    request: RequestRow,
    tenant: String,
    at: chrono::DateTime<Utc>,
}

/// What applying a batch gathers besides the state of its requests.
#[derive(Default)]
struct Step {
    appends: Appends,
    tombstones: Vec<Completed>,
}

impl Step {
    /// An audit event of `request`.
    fn audit(&mut self, request: &RequestRow, kind: &str, detail: serde_json::Value) {
        self.appends
            .audit(Some(request.tenant_id), Some(request.id), kind, detail);
    }
}

/// The coordinator consumes results: each is applied in its own ledger transaction, which has
/// committed by the time the loop acknowledges the result.
impl Consume for Coordinator {
    type Message = TaskResult;

    /// Every result may share a batch: the results that have arrived are applied in one
    /// ledger transaction.
    fn batch_key(&self, _result: &TaskResult) -> Option<BatchKey> {
        Some(BatchKey::new("results"))
    }

    /// Applies the batch in one transaction, acknowledged once it committed; if it cannot
    /// commit (one result's error rolls back them all), each result is applied alone, so one
    /// that cannot be applied is retried (and dead-lettered) alone.
    async fn consume_batch(&self, items: Vec<(TaskResult, Delivery<'_>)>) -> Vec<Settle> {
        let results: Vec<(&TaskResult, Option<Traceparent>)> = items
            .iter()
            .map(|(result, delivery)| (result, delivery.trace))
            .collect();
        match self.apply_all(&results).await {
            Ok(applied) => applied
                .into_iter()
                .map(|applied| match applied {
                    Applied::Recorded => Settle::Ack { outcome: "applied" },
                    Applied::Ignored => Settle::Ack { outcome: "ignored" },
                })
                .collect(),
            Err(error) => {
                tracing::warn!(
                    error = %format!("{error:#}"),
                    batch.size = items.len(),
                    "cannot apply a batch of results; applying them one by one"
                );
                let mut settles = Vec::with_capacity(items.len());
                for (result, delivery) in items {
                    settles.push(self.consume(result, &delivery).await);
                }
                settles
            }
        }
    }

    async fn consume(&self, result: TaskResult, delivery: &Delivery<'_>) -> Settle {
        // The step continues the trace of the task that reported the result; the tasks it
        // queues carry this span's context on.
        let span = tracing::info_span!("coordinator.result", request.id = %result.request_id);
        if let Some(trace) = &delivery.trace {
            trace.make_parent_of(&span);
        }
        match self.apply(&result).instrument(span).await {
            Ok(Applied::Recorded) => Settle::Ack { outcome: "applied" },
            Ok(Applied::Ignored) => Settle::Ack { outcome: "ignored" },
            Err(error) => Settle::Retry {
                outcome: "retry",
                error: error.context("cannot apply the result"),
                after: None,
            },
        }
    }
}

/// Records the archive an assemble task reported, available for `ttl` from when it was
/// assembled. Only the first result of the task gets here; a second row for the request would
/// change nothing.
async fn record_export(
    tx: &mut Transaction<'_, Postgres>,
    request: lethe_common::ids::RequestId,
    report: &lethe_common::messages::TaskReport,
    assembled_at: chrono::DateTime<Utc>,
    ttl: Duration,
) -> anyhow::Result<()> {
    let (Some(key), Some(bytes), Some(sha256)) = (&report.object_key, report.bytes, &report.sha256)
    else {
        tracing::warn!(request.id = %request, "an assemble result names no archive; no export recorded");
        return Ok(());
    };
    let expires_at = assembled_at + chrono::Duration::from_std(ttl)?;
    sqlx::query(
        "INSERT INTO export (request_id, object_key, bytes, sha256, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (request_id) DO NOTHING",
    )
    .bind(request)
    .bind(key)
    .bind(i64::try_from(bytes).unwrap_or(i64::MAX))
    .bind(sha256)
    .bind(assembled_at)
    .bind(expires_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The union of two identity sets, each value once, sorted.
fn merge(known: Option<&Identities>, derived: &Identities) -> Identities {
    let mut merged = known.cloned().unwrap_or_default();
    for (name, values) in derived {
        let entry = merged.entry(name.clone()).or_default();
        entry.extend(values.iter().cloned());
        entry.sort();
        entry.dedup();
    }
    merged
}
