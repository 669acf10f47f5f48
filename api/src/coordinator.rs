//! The coordinator: consumes task results, records them, and moves each request through its
//! phases (DESIGN §2). Every result is applied in one ledger transaction that holds the
//! request's row lock, so any number of api processes can consume results side by side, and a
//! result delivered twice (or for an older generation of a task) changes nothing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use chrono::Utc;
use lethe_common::config::NatsSettings;
use lethe_common::messages::{Event, Identities, TaskKind, TaskOutcome, TaskResult};
use lethe_common::nats::{Durable, Names, Publisher, Traceparent};
use lethe_common::worker::{BatchKey, Consume, Delivery, LoopSettings, Settle, WorkerLoop};
use serde_json::json;
use sqlx::types::Json;
use sqlx::{PgPool, Postgres, Transaction};
use tracing::Instrument as _;

use crate::closure;
use crate::model::{RequestKind, RequestStatus, TaskStatus};
use crate::outbox::OutboxSignal;
use crate::plan::{Phase, Planner};
use crate::requests::{self, Outgoing, REQUEST_COLUMNS, RequestRow, TaskContext, store_key};
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
        let mut tx = self.pool.begin().await?;
        let applied = self.apply_in(&mut tx, result).await?;
        tx.commit().await?;
        if applied == Applied::Recorded {
            self.outbox.wake();
        }
        Ok(applied)
    }

    /// Applies `results` in one ledger transaction, in the order of their requests (so two
    /// coordinators lock requests in one order and never deadlock), each under the rules of
    /// [`Coordinator::apply`]: the request's row lock, a result that is not current changes
    /// nothing. All or nothing: an error rolls every one of them back.
    pub async fn apply_all(
        &self,
        results: &[(&TaskResult, Option<Traceparent>)],
    ) -> anyhow::Result<Vec<Applied>> {
        let mut order: Vec<usize> = (0..results.len()).collect();
        order.sort_by_key(|&i| results[i].0.request_id);
        let mut applied = vec![Applied::Ignored; results.len()];
        let mut tx = self.pool.begin().await?;
        for index in order {
            let (result, trace) = &results[index];
            // Each result's step continues the trace of the task that reported it.
            let span = tracing::info_span!("coordinator.result", request.id = %result.request_id);
            if let Some(trace) = trace {
                trace.make_parent_of(&span);
            }
            applied[index] = self.apply_in(&mut tx, result).instrument(span).await?;
        }
        tx.commit().await?;
        if applied.contains(&Applied::Recorded) {
            self.outbox.wake();
        }
        Ok(applied)
    }

    /// Records `result` in `tx` (which the caller commits) and moves its request on.
    #[tracing::instrument(name = "coordinator.apply", skip_all, fields(
        request.id = %result.request_id,
        task.kind = %result.task,
        task.store = result.store.as_ref().map_or("-", |s| s.as_str()),
    ))]
    async fn apply_in(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        result: &TaskResult,
    ) -> anyhow::Result<Applied> {
        let request: Option<RequestRow> = sqlx::query_as(&format!(
            "SELECT {REQUEST_COLUMNS} FROM request WHERE id = $1 FOR UPDATE"
        ))
        .bind(result.request_id)
        .fetch_optional(&mut **tx)
        .await?;
        let Some(mut request) = request else {
            tracing::warn!(request.id = %result.request_id, "result for an unknown request; ignoring it");
            return Ok(Applied::Ignored);
        };
        let store = store_key(result.store.as_ref());
        let task: Option<(TaskStatus, i32)> = sqlx::query_as(
            "SELECT status, generation FROM task WHERE request_id = $1 AND kind = $2 AND store = $3",
        )
        .bind(result.request_id)
        .bind(result.task.as_str())
        .bind(&store)
        .fetch_optional(&mut **tx)
        .await?;
        let current = matches!(task, Some((TaskStatus::Queued, generation))
            if i64::from(generation) == i64::from(result.generation));
        if !current {
            return Ok(Applied::Ignored);
        }

        let deliveries = i32::try_from(result.deliveries).unwrap_or(i32::MAX);
        let failure = match &result.outcome {
            TaskOutcome::Done(report) => {
                let verified = match (result.task, report.remaining) {
                    (TaskKind::Erase, Some(left)) if left > 0 => Some(format!(
                        "store {store}: {left} matching item(s) remain after erasure"
                    )),
                    _ => None,
                };
                sqlx::query(
                    "UPDATE task SET status = $4, counts = $5, remaining = $6, attempts = $7,
                         error = $8, finished_at = $9, updated_at = now()
                     WHERE request_id = $1 AND kind = $2 AND store = $3",
                )
                .bind(result.request_id)
                .bind(result.task.as_str())
                .bind(&store)
                .bind(if verified.is_some() { "failed" } else { "done" })
                .bind(Json(&report.counts))
                .bind(
                    report
                        .remaining
                        .map(|r| i64::try_from(r).unwrap_or(i64::MAX)),
                )
                .bind(deliveries)
                .bind(&verified)
                .bind(result.finished_at)
                .execute(&mut **tx)
                .await?;
                if result.task == TaskKind::Assemble {
                    record_export(tx, request.id, report, result.finished_at, self.export_ttl)
                        .await?;
                }
                if result.task == TaskKind::Resolve {
                    let known = request.identities.as_ref().map(|j| &j.0);
                    let found = closure::new_values(known, &report.derived);
                    let merged = merge(known, &report.derived);
                    let mut record = request.closure.take().map(|j| j.0).unwrap_or_default();
                    record.record(&store, report.counts.values().sum(), found, &merged);
                    sqlx::query("UPDATE request SET identities = $2, closure = $3 WHERE id = $1")
                        .bind(request.id)
                        .bind(Json(&merged))
                        .bind(Json(&record))
                        .execute(&mut **tx)
                        .await?;
                    request.identities = Some(Json(merged));
                    request.closure = Some(Json(record));
                }
                requests::audit(
                    tx,
                    Some(request.tenant_id),
                    Some(request.id),
                    "task.done",
                    json!({ "task": result.task.as_str(), "store": store, "counts": report.counts, "remaining": report.remaining }),
                )
                .await?;
                verified
            }
            TaskOutcome::Failed { code, reason } => {
                let error = format!("{code}: {reason}");
                sqlx::query(
                    "UPDATE task SET status = 'failed', attempts = $4, error = $5, finished_at = $6, updated_at = now()
                     WHERE request_id = $1 AND kind = $2 AND store = $3",
                )
                .bind(result.request_id)
                .bind(result.task.as_str())
                .bind(&store)
                .bind(deliveries)
                .bind(&error)
                .bind(result.finished_at)
                .execute(&mut **tx)
                .await?;
                requests::audit(
                    tx,
                    Some(request.tenant_id),
                    Some(request.id),
                    "task.failed",
                    json!({ "task": result.task.as_str(), "store": store, "code": code }),
                )
                .await?;
                Some(format!("store {store}: {error}"))
            }
        };

        if request.status().is_terminal() {
            return Ok(Applied::Recorded);
        }
        if let Some(reason) = failure {
            self.fail(tx, &request, &reason).await?;
        } else {
            self.advance(tx, &request).await?;
        }
        Ok(Applied::Recorded)
    }

    /// Moves the request to its next phase once every task of the current one is done.
    async fn advance(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        request: &RequestRow,
    ) -> anyhow::Result<()> {
        let phase = request.phase();
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM task WHERE request_id = $1 AND phase = $2 AND status <> 'done'",
        )
        .bind(request.id)
        .bind(phase.as_str())
        .fetch_one(&mut **tx)
        .await?;
        if open > 0 {
            if request.status() == RequestStatus::Received {
                sqlx::query(
                    "UPDATE request SET status = 'in_progress', updated_at = now() WHERE id = $1",
                )
                .bind(request.id)
                .execute(&mut **tx)
                .await?;
            }
            return Ok(());
        }
        if phase == Phase::Resolve && self.next_round(tx, request).await? {
            return Ok(());
        }
        let (next, tasks) = self
            .planner
            .after(phase, request.kind(), &request.changed_fields());
        if next == Phase::Done {
            return self.complete(tx, request).await;
        }
        let identities = request
            .identities
            .as_ref()
            .map(|j| j.0.clone())
            .unwrap_or_default();
        let trace = request
            .traceparent
            .parse::<Traceparent>()
            .unwrap_or_else(|_| Traceparent::new_root());
        requests::insert_tasks(tx, request.id, next, &tasks, 0).await?;
        let tenant = self.tenants.get(&mut **tx, request.tenant_id).await?;
        let mut outgoing = Outgoing::default();
        let context = TaskContext {
            request: request.id,
            identities: &identities,
            tenant: &tenant,
            params: &request.params.0,
            generation: 0,
            trace: &trace,
        };
        outgoing.tasks(&self.names, context, &tasks)?;
        outgoing.write(tx).await?;
        sqlx::query("UPDATE request SET phase = $2, status = 'in_progress', updated_at = now() WHERE id = $1")
            .bind(request.id)
            .bind(next.as_str())
            .execute(&mut **tx)
            .await?;
        requests::audit(
            tx,
            Some(request.tenant_id),
            Some(request.id),
            "request.phase",
            json!({ "phase": next.as_str(), "tasks": tasks.len() }),
        )
        .await?;
        Ok(())
    }

    /// At the end of a resolve round: issues the next round when some store found identities
    /// another store searches with (`true`), or records the closure as complete (`false`).
    /// A closure still growing after the planner's bound fails the request.
    async fn next_round(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        request: &RequestRow,
    ) -> anyhow::Result<bool> {
        let mut record = request
            .closure
            .as_ref()
            .map(|j| j.0.clone())
            .unwrap_or_default();
        let tasks = self.planner.next_round(&record.grown());
        if tasks.is_empty() {
            record.complete = true;
            sqlx::query("UPDATE request SET closure = $2 WHERE id = $1")
                .bind(request.id)
                .bind(Json(&record))
                .execute(&mut **tx)
                .await?;
            return Ok(false);
        }
        let max = self.planner.max_rounds();
        if record.round() >= max {
            let reason = format!(
                "the identity closure still grew after {max} resolve rounds; \
                 nothing was erased or collected"
            );
            self.fail(tx, request, &reason).await?;
            return Ok(true);
        }
        let identities = request
            .identities
            .as_ref()
            .map(|j| j.0.clone())
            .unwrap_or_default();
        // A store asked again gets a new generation: its earlier result is then no longer
        // current, and the new task is not dropped as a duplicate of the earlier one.
        let generation: i32 = sqlx::query_scalar(
            "SELECT COALESCE(max(generation) + 1, 0) FROM task WHERE request_id = $1 AND kind = 'resolve'",
        )
        .bind(request.id)
        .fetch_one(&mut **tx)
        .await?;
        let generation = u32::try_from(generation).unwrap_or(0);
        record.begin_round(&self.planner, &identities, &tasks);
        let trace = request
            .traceparent
            .parse::<Traceparent>()
            .unwrap_or_else(|_| Traceparent::new_root());
        requests::insert_tasks(tx, request.id, Phase::Resolve, &tasks, generation).await?;
        let tenant = self.tenants.get(&mut **tx, request.tenant_id).await?;
        let mut outgoing = Outgoing::default();
        let context = TaskContext {
            request: request.id,
            identities: &identities,
            tenant: &tenant,
            params: &request.params.0,
            generation,
            trace: &trace,
        };
        outgoing.tasks(&self.names, context, &tasks)?;
        outgoing.write(tx).await?;
        sqlx::query(
            "UPDATE request SET closure = $2, status = 'in_progress', updated_at = now() WHERE id = $1",
        )
        .bind(request.id)
        .bind(Json(&record))
        .execute(&mut **tx)
        .await?;
        requests::audit(
            tx,
            Some(request.tenant_id),
            Some(request.id),
            "request.resolve_round",
            json!({ "round": record.round(), "tasks": tasks.len() }),
        )
        .await?;
        Ok(true)
    }

    async fn complete(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        request: &RequestRow,
    ) -> anyhow::Result<()> {
        let now = Utc::now();
        // Before the completion commits: a change is recorded completed only with its
        // tombstone in the bucket (a failed write rolls back and the result comes again).
        // A dry run changed nothing, so a restore has nothing to replay.
        if let Some(tombstones) = self.tombstones.as_ref().filter(|_| !request.dry_run) {
            let tenant = self.tenants.get(&mut **tx, request.tenant_id).await?;
            tombstones.write(request, &tenant, now).await?;
        }
        // Found: a resolve round found rows, or a task counted records (an export's `bytes`
        // are no records). A subject no store knows completes with `found = false`.
        let counted: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM task, jsonb_each_text(task.counts) AS c(name, n)
             WHERE task.request_id = $1 AND task.status = 'done' AND c.name <> 'bytes'
               AND c.n ~ '^[0-9]+$' AND c.n::numeric > 0)",
        )
        .bind(request.id)
        .fetch_one(&mut **tx)
        .await?;
        let found = counted
            || request
                .closure
                .as_ref()
                .is_some_and(|closure| closure.0.found_rows());
        sqlx::query(
            "UPDATE request SET status = 'completed', phase = 'done', completed_at = $2, found = $3, updated_at = now() WHERE id = $1",
        )
        .bind(request.id)
        .bind(now)
        .bind(found)
        .execute(&mut **tx)
        .await?;
        if request.kind() == RequestKind::Erasure && !request.dry_run {
            // The restore replay erases, after a restore, everyone recorded here after the
            // backup was taken. A dry run erased nothing: there is nothing to replay, and
            // without a record its identities are minimised as soon as it finished.
            sqlx::query(
                "INSERT INTO erasure_log (request_id, tenant_id, identities, identity_hash)
                 VALUES ($1, $2, $3, $4) ON CONFLICT (request_id) DO NOTHING",
            )
            .bind(request.id)
            .bind(request.tenant_id)
            .bind(request.identities.as_ref())
            .bind(&request.identity_hash)
            .execute(&mut **tx)
            .await?;
        }
        self.finish(tx, request, RequestStatus::Completed, None, now)
            .await?;
        let seconds = (now - request.received_at).num_milliseconds() as f64 / 1000.0;
        metrics::histogram!("lethe_request_duration_seconds", "kind" => request.kind().as_str())
            .record(seconds);
        Ok(())
    }

    async fn fail(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        request: &RequestRow,
        reason: &str,
    ) -> anyhow::Result<()> {
        sqlx::query(
            "UPDATE request SET status = 'failed', phase = 'done', failure = $2, updated_at = now() WHERE id = $1",
        )
        .bind(request.id)
        .bind(reason)
        .execute(&mut **tx)
        .await?;
        sqlx::query(
            "UPDATE task SET status = 'cancelled', updated_at = now() WHERE request_id = $1 AND status IN ('pending', 'queued')",
        )
        .bind(request.id)
        .execute(&mut **tx)
        .await?;
        self.finish(tx, request, RequestStatus::Failed, Some(reason), Utc::now())
            .await
    }

    /// What every end of a request shares: audit event, outside event, webhook, metric.
    async fn finish(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        request: &RequestRow,
        status: RequestStatus,
        reason: Option<&str>,
        at: chrono::DateTime<Utc>,
    ) -> anyhow::Result<()> {
        let event_kind = format!("request.{}", status.as_str());
        let counts: Vec<(String, Json<BTreeMap<String, u64>>)> = sqlx::query_as(
            "SELECT store, counts FROM task WHERE request_id = $1 AND status = 'done'",
        )
        .bind(request.id)
        .fetch_all(&mut **tx)
        .await?;
        let mut totals: BTreeMap<String, u64> = BTreeMap::new();
        for (store, per_collection) in counts {
            // Records only: an export task also reports its `bytes`, which are no records.
            *totals.entry(store).or_default() += per_collection
                .0
                .iter()
                .filter(|(name, _)| name.as_str() != "bytes")
                .map(|(_, count)| count)
                .sum::<u64>();
        }
        requests::audit(
            tx,
            Some(request.tenant_id),
            Some(request.id),
            &event_kind,
            json!({ "counts": totals, "reason": reason }),
        )
        .await?;
        let mut outgoing = Outgoing::default();
        outgoing.event(
            &self.names,
            &Event {
                kind: event_kind.clone(),
                request_id: Some(request.id),
                tenant_id: Some(request.tenant_id),
                counts: totals,
                detail: reason.map(str::to_owned),
                at,
            },
        )?;
        outgoing.write(tx).await?;
        if let Some(url) = &request.callback_url {
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
        metrics::counter!("lethe_requests_total", "kind" => request.kind().as_str(), "status" => status.as_str()).increment(1);
        Ok(())
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
