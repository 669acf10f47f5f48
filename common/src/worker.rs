//! The subscription loop every consumer of Lethe's work queues shares: pull messages from a
//! durable consumer, decode each into its [`Consume`]r's message type, hand it over, and map
//! the [`Settle`] it answers onto JetStream acknowledgements. The workers consume tasks (any
//! [`Handler`] is a [`Consume`]r that publishes the task's result); the coordinator consumes
//! results (it applies them to the ledger).
//!
//! The rules it enforces:
//! - a message is acknowledged only after its consumer returned, that is, after what it did is
//!   durable: for a task, the store committed **and** its result was stored on the results
//!   stream; for a result, the ledger transaction committed. A crash anywhere before leaves the
//!   message unacknowledged, so JetStream delivers it again (consumers are idempotent);
//! - long work keeps its lease with `Progress` heartbeats;
//! - a passing failure is `Nak`ed with an exponential delay; on the last allowed delivery a
//!   task is reported failed instead, so the coordinator marks the request failed rather than
//!   losing it, and any other message is copied to the dead-letter stream;
//! - a task that cannot succeed is reported failed and `Term`inated;
//! - a message that cannot even be decoded is copied to the dead-letter stream and terminated,
//!   and the loop goes on;
//! - on shutdown it stops pulling, lets in-flight tasks finish within the drain timeout, and
//!   leaves the rest unacknowledged.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::AckKind;
use async_nats::jetstream::Message;
use async_nats::jetstream::consumer::PullConsumer;
use chrono::Utc;
use futures::{FutureExt as _, StreamExt};
use serde::de::DeserializeOwned;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::ids::{RequestId, StoreName};
use crate::messages::{TaskKind, TaskMessage, TaskOutcome, TaskReport, TaskResult};
use crate::nats::{Publisher, TRACEPARENT, Traceparent, retry_delay};

/// Why a task did not finish.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// A passing failure (store unreachable, lock timeout): deliver the task again later.
    #[error("transient: {0:#}")]
    Transient(anyhow::Error),
    /// The task cannot succeed as it stands: report it failed with this reason.
    #[error("{code}: {reason}")]
    Permanent {
        /// Stable machine-readable code.
        code: &'static str,
        /// Explanation for operators. Must never hold an identifier.
        reason: String,
    },
}

/// The delay a store asked for before it is tried again (a processor's `Retry-After`). Put in
/// the cause chain of a [`TaskError::Transient`], it replaces the loop's backoff for that
/// delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the store asked to be tried again in {} ms", .0.as_millis())]
pub struct RetryAfter(pub Duration);

/// Does the work of one task. Implementations must be idempotent: JetStream delivers a task
/// again whenever its acknowledgement did not arrive.
pub trait Handler: Send + Sync + 'static {
    /// Carries out `task`.
    fn handle(
        &self,
        task: TaskMessage,
    ) -> impl Future<Output = Result<TaskReport, TaskError>> + Send;

    /// Whether this handler carries out any tasks in batches: only then does its loop take
    /// tasks `batch_size` at a time (see [`LoopSettings::batch_size`]).
    const BATCHES: bool = false;

    /// Whether `task` may be carried out together with others of its [`TaskBatchKey`] by
    /// [`Handler::handle_batch`]. None by default.
    fn batches(&self, task: &TaskMessage) -> bool {
        let _ = task;
        false
    }

    /// Carries out `tasks`, all of one [`TaskBatchKey`], and answers one outcome per task, in
    /// order: each exactly what [`Handler::handle`] would have answered for it alone. By
    /// default one after the other.
    fn handle_batch(
        &self,
        tasks: &[TaskMessage],
    ) -> impl Future<Output = Vec<Result<TaskReport, TaskError>>> + Send {
        async move {
            let mut outcomes = Vec::with_capacity(tasks.len());
            for task in tasks {
                outcomes.push(self.handle(task.clone()).await);
            }
            outcomes
        }
    }
}

/// What tasks must share to be carried out in one batch: the same kind in the same store,
/// for the same tenant, with the same parameters (a rectification's changes, a dry run). The
/// one place that decides which tasks may share a batch: a field that scopes or changes how a
/// task is carried out belongs here, so such tasks never share one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TaskBatchKey {
    kind: TaskKind,
    store: Option<StoreName>,
    /// The filing tenant: tenant-scoped stores confine a whole transaction to one tenant.
    tenant: Option<String>,
    /// The parameters as JSON text (a rectification's changes, `dry_run`).
    params: String,
}

impl TaskBatchKey {
    /// The key of `task`.
    pub fn of(task: &TaskMessage) -> Self {
        Self {
            kind: task.task,
            store: task.store.clone(),
            tenant: task.tenant.clone(),
            params: task.params.to_string(),
        }
    }
}

/// Consumes one kind of message for the loop: the workers' tasks, the coordinator's results.
/// Implementations must be idempotent: JetStream delivers a message again whenever its
/// acknowledgement did not arrive.
pub trait Consume: Send + Sync + 'static {
    /// What the messages decode to. A body that does not decode is dead-lettered by the loop
    /// and never reaches [`Consume::consume`].
    type Message: DeserializeOwned + Envelope + Send + 'static;

    /// Acts on `message` and says how the loop settles it. Everything that must be durable
    /// before the acknowledgement (a published result, a committed ledger transaction) is
    /// done before this returns.
    fn consume(
        &self,
        message: Self::Message,
        delivery: &Delivery<'_>,
    ) -> impl Future<Output = Settle> + Send;

    /// Which messages may be consumed together by [`Consume::consume_batch`]: those with equal
    /// keys. `None` (the default): this one alone.
    fn batch_key(&self, message: &Self::Message) -> Option<BatchKey> {
        let _ = message;
        None
    }

    /// Consumes `messages` (all of one [`Consume::batch_key`]) and answers one [`Settle`] per
    /// message, in order, under the same rule as [`Consume::consume`]: what must be durable
    /// before a message's acknowledgement is durable when this returns. By default one after
    /// the other.
    fn consume_batch(
        &self,
        messages: Vec<(Self::Message, Delivery<'_>)>,
    ) -> impl Future<Output = Vec<Settle>> + Send {
        async move {
            let mut settles = Vec::with_capacity(messages.len());
            for (message, delivery) in messages {
                settles.push(self.consume(message, &delivery).await);
            }
            settles
        }
    }
}

/// Groups messages a [`Consume`]r can consume together (see [`Consume::batch_key`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BatchKey(String);

impl BatchKey {
    /// The key `name`: messages with equal names share batches.
    pub fn new(name: impl Into<String>) -> Self {
        Self(name.into())
    }
}

/// What the loop reads of every message it consumes, for its span and metrics: ids only,
/// never identifiers.
pub trait Envelope {
    /// The request the message belongs to.
    fn request_id(&self) -> RequestId;
    /// The kind of task it is or reports on.
    fn task_kind(&self) -> TaskKind;
    /// The store (`None` for assemble).
    fn store(&self) -> Option<&StoreName>;
}

impl Envelope for TaskMessage {
    fn request_id(&self) -> RequestId {
        self.request_id
    }
    fn task_kind(&self) -> TaskKind {
        self.task
    }
    fn store(&self) -> Option<&StoreName> {
        self.store.as_ref()
    }
}

impl Envelope for TaskResult {
    fn request_id(&self) -> RequestId {
        self.request_id
    }
    fn task_kind(&self) -> TaskKind {
        self.task
    }
    fn store(&self) -> Option<&StoreName> {
        self.store.as_ref()
    }
}

/// One delivery of a message, as the loop hands it to a [`Consume`]r.
pub struct Delivery<'a> {
    /// Which delivery this is (1 for the first).
    pub count: u32,
    /// Whether JetStream delivers the message no more after this (the consumer's
    /// `max_deliver`): a [`Settle::Retry`] now would end in the dead-letter stream.
    pub last: bool,
    /// The message's trace context.
    pub trace: Option<Traceparent>,
    /// For what must be published before the acknowledgement.
    pub publisher: &'a Publisher,
}

/// How the loop settles a consumed message with JetStream. `outcome` labels the
/// `lethe_tasks_total` metric and the log line.
#[derive(Debug)]
pub enum Settle {
    /// Done, durably: `Ack`.
    Ack {
        /// Metric label.
        outcome: &'static str,
    },
    /// Must not be delivered again (its failure is recorded elsewhere): `Term`.
    Term {
        /// Metric label.
        outcome: &'static str,
    },
    /// A passing failure: `Nak` with `after`, or an exponential backoff by delivery when
    /// `None`. On the last delivery the loop copies the message to the dead-letter stream
    /// instead, so it is not lost.
    Retry {
        /// Metric label.
        outcome: &'static str,
        /// Why, for the log; its outermost context must hold no identifier.
        error: anyhow::Error,
        /// A fixed delay instead of the backoff.
        after: Option<Duration>,
    },
}

/// Yields to the runtime, with nothing new arrived, before a batch is taken as it is.
const GATHER_YIELDS: u32 = 3;

/// Whether the loop runs until shutdown or returns once the consumer has nothing left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunMode {
    /// Until the shutdown token is cancelled (daemons).
    UntilShutdown,
    /// Until no task is pending or in flight (tests and one-shot runs).
    UntilIdle,
}

/// How the loop behaves.
#[derive(Debug, Clone)]
pub struct LoopSettings {
    /// Tasks handled at once.
    pub concurrency: usize,
    /// Time in-flight tasks get to finish on shutdown.
    pub drain_timeout: Duration,
    /// Deliveries before a task is reported failed (the consumer's `max_deliver`).
    pub max_deliver: i64,
    /// The consumer's ack wait; heartbeats go out at a third of it.
    pub ack_wait: Duration,
    /// How long one pull waits for tasks to arrive.
    pub poll: Duration,
    /// Most messages consumed together (1: one at a time). Messages are batched only when
    /// the [`Consume`]r gives them a [`Consume::batch_key`], and only from what has already
    /// arrived: a batch is never waited for. A batch holds one of the `concurrency` slots.
    pub batch_size: usize,
}

/// A consumer, a [`Consume`]r (for the workers, a [`Handler`]), and the rules above.
pub struct WorkerLoop<H> {
    name: String,
    consumer: PullConsumer,
    handler: Arc<H>,
    publisher: Publisher,
    settings: LoopSettings,
}

/// The loop could not go on.
#[derive(Debug, thiserror::Error)]
#[error("worker loop {name} failed: {source}")]
pub struct LoopError {
    name: String,
    source: async_nats::Error,
}

impl<H: Consume> WorkerLoop<H> {
    /// A loop named `name` (the durable's name, used in logs and metrics).
    pub fn new(
        name: impl Into<String>,
        consumer: PullConsumer,
        handler: Arc<H>,
        publisher: Publisher,
        settings: LoopSettings,
    ) -> Self {
        Self {
            name: name.into(),
            consumer,
            handler,
            publisher,
            settings,
        }
    }

    /// Runs until `shutdown` (or idleness, in [`RunMode::UntilIdle`]), then drains.
    pub async fn run(
        mut self,
        shutdown: CancellationToken,
        mode: RunMode,
    ) -> Result<(), LoopError> {
        let permits = Arc::new(Semaphore::new(self.settings.concurrency));
        let mut in_flight = JoinSet::new();
        let context = Arc::new(TaskContext {
            name: self.name.clone(),
            handler: self.handler.clone(),
            publisher: self.publisher.clone(),
            settings: self.settings.clone(),
        });
        tracing::info!(consumer = %self.name, "worker loop started");
        let mut pull_failures = 0u32;
        while !shutdown.is_cancelled() {
            while in_flight.try_join_next().is_some() {}
            let first = tokio::select! {
                permit = permits.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
                () = shutdown.cancelled() => break,
            };
            let batch_size = self.settings.batch_size.max(1);
            let wanted = (permits.available_permits() + 1) * batch_size;
            let batch = self
                .consumer
                .batch()
                .max_messages(wanted)
                .expires(self.settings.poll)
                .messages()
                .await;
            let mut batch = match batch {
                Ok(batch) => batch,
                Err(error) => {
                    drop(first);
                    tracing::warn!(consumer = %self.name, error = %error, "cannot pull tasks; retrying");
                    pause(&shutdown, Duration::from_secs(1)).await;
                    continue;
                }
            };
            let mut received = 0usize;
            let mut first = Some(first);
            let mut interrupted = None;
            let mut ended = false;
            while !ended {
                let Some(message) = batch.next().await else {
                    break;
                };
                let permit = match first.take() {
                    Some(permit) => permit,
                    None => match permits.clone().acquire_owned().await {
                        Ok(permit) => permit,
                        Err(_) => break,
                    },
                };
                // What else has already arrived joins it, up to the batch size; nothing is
                // waited for, so a lone message goes on at once. A few yields let the client
                // hand over the rest of a burst it is still reading off the socket.
                let mut arrived = vec![message];
                let mut yields = 0;
                while arrived.len() < batch_size {
                    match batch.next().now_or_never() {
                        Some(Some(message)) => {
                            arrived.push(message);
                            yields = 0;
                        }
                        Some(None) => {
                            ended = true;
                            break;
                        }
                        None if yields < GATHER_YIELDS => {
                            yields += 1;
                            tokio::task::yield_now().await;
                        }
                        None => break,
                    }
                }
                let mut messages = Vec::with_capacity(arrived.len());
                for message in arrived {
                    match message {
                        Ok(message) => messages.push(message),
                        Err(error) => {
                            // Logged (rate-limited) and backed off from after the batch.
                            interrupted = Some(error);
                            ended = true;
                        }
                    }
                }
                received += messages.len();
                let mut groups = context.group(messages).await.into_iter();
                let Some(group) = groups.next() else {
                    drop(permit);
                    continue;
                };
                in_flight.spawn(context.clone().process_group(group, permit));
                for group in groups {
                    match permits.clone().acquire_owned().await {
                        Ok(permit) => {
                            in_flight.spawn(context.clone().process_group(group, permit));
                        }
                        Err(_) => break,
                    }
                }
            }
            drop(first);
            match interrupted {
                Some(error) => {
                    // In a cluster, while the consumer's or the stream's leader is being elected,
                    // the server refuses every pull at once (status 503): pulling again at once
                    // would spin and flood the log. Back off, and log the first and every 50th.
                    pull_failures += 1;
                    if pull_failures == 1 || pull_failures.is_multiple_of(50) {
                        tracing::warn!(consumer = %self.name, error = %error, failures = pull_failures, "pull interrupted; pulling again shortly");
                    }
                    if received == 0 {
                        pause(&shutdown, pull_backoff(pull_failures)).await;
                        continue;
                    }
                }
                None => pull_failures = 0,
            }
            if received == 0 && mode == RunMode::UntilIdle && in_flight.is_empty() {
                match self.consumer.info().await {
                    Ok(info) if info.num_pending == 0 && info.num_ack_pending == 0 => break,
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(consumer = %self.name, error = %error, "cannot read consumer state");
                    }
                }
            }
        }
        self.drain(in_flight).await;
        Ok(())
    }

    async fn drain(&self, mut in_flight: JoinSet<()>) {
        if in_flight.is_empty() {
            return;
        }
        tracing::info!(consumer = %self.name, tasks = in_flight.len(), "waiting for in-flight tasks");
        let finished = tokio::time::timeout(self.settings.drain_timeout, async {
            while in_flight.join_next().await.is_some() {}
        })
        .await;
        if finished.is_err() {
            tracing::warn!(
                consumer = %self.name,
                tasks = in_flight.len(),
                "drain timeout: abandoning unfinished tasks unacknowledged; JetStream will deliver them again"
            );
            in_flight.abort_all();
        }
    }
}

/// The wait before pulling again after `failures` interrupted pulls in a row: 100 ms more each
/// time, at most 2 s (a leader election takes seconds; work should resume soon after it).
fn pull_backoff(failures: u32) -> Duration {
    Duration::from_millis(100 * u64::from(failures.min(20)))
}

async fn pause(shutdown: &CancellationToken, duration: Duration) {
    tokio::select! {
        () = tokio::time::sleep(duration) => {},
        () = shutdown.cancelled() => {},
    }
}

struct TaskContext<H> {
    name: String,
    handler: Arc<H>,
    publisher: Publisher,
    settings: LoopSettings,
}

/// A message decoded for its [`Consume`]r, with what the loop read of its delivery.
struct Decoded<M> {
    message: Message,
    body: M,
    deliveries: u32,
    trace: Option<Traceparent>,
}

/// A group of messages and the batch key they share (`None`: a message alone).
type Keyed<M> = (Option<BatchKey>, Vec<Decoded<M>>);

impl<H: Consume> TaskContext<H> {
    /// Decodes `messages` (dead-lettering those that do not decode) and groups them by their
    /// batch key, in arrival order; a message without a key is a group of its own.
    async fn group(&self, messages: Vec<Message>) -> Vec<Vec<Decoded<H::Message>>> {
        let mut groups: Vec<Keyed<H::Message>> = Vec::new();
        for message in messages {
            let Some(decoded) = self.decode(message).await else {
                continue;
            };
            let key = self.handler.batch_key(&decoded.body);
            let joined = key
                .as_ref()
                .and_then(|key| groups.iter_mut().find(|(k, _)| k.as_ref() == Some(key)));
            match joined {
                Some((_, group)) => group.push(decoded),
                None => groups.push((key, vec![decoded])),
            }
        }
        groups.into_iter().map(|(_, group)| group).collect()
    }

    async fn decode(&self, message: Message) -> Option<Decoded<H::Message>> {
        let deliveries = message
            .info()
            .map(|info| u32::try_from(info.delivered).unwrap_or(u32::MAX))
            .unwrap_or(1);
        let trace = message
            .headers
            .as_ref()
            .and_then(|h| h.get(TRACEPARENT))
            .and_then(|v| v.as_str().parse::<Traceparent>().ok());
        match serde_json::from_slice(&message.payload) {
            Ok(body) => Some(Decoded {
                message,
                body,
                deliveries,
                trace,
            }),
            Err(error) => {
                self.dead_letter(&message, &describe_decode_error(&error))
                    .await;
                None
            }
        }
    }

    /// The span of one message: ids only.
    fn span(&self, decoded: &Decoded<H::Message>) -> tracing::Span {
        let task = &decoded.body;
        let span = tracing::info_span!(
            "task",
            consumer = %self.name,
            request.id = %task.request_id(),
            task.kind = %task.task_kind(),
            task.store = task.store().map_or("-", |s| s.as_str()),
            delivery = decoded.deliveries,
            trace.id = decoded.trace.map(|t| t.trace_id()).unwrap_or_default(),
        );
        // The task's span continues the trace of whoever queued it (the api's request or the
        // coordinator's step); the result it publishes carries the task span's own context.
        if let Some(trace) = &decoded.trace {
            trace.make_parent_of(&span);
        }
        span
    }

    fn delivery(&self, decoded: &Decoded<H::Message>) -> Delivery<'_> {
        Delivery {
            count: decoded.deliveries,
            last: i64::from(decoded.deliveries) >= self.settings.max_deliver,
            trace: decoded.trace,
            publisher: &self.publisher,
        }
    }

    /// Consumes one group: alone, or as a batch when it holds more than one message.
    async fn process_group(
        self: Arc<Self>,
        mut group: Vec<Decoded<H::Message>>,
        _permit: OwnedSemaphorePermit,
    ) {
        if group.len() > 1 {
            self.process_batch(group).await;
        } else if let Some(decoded) = group.pop() {
            let span = self.span(&decoded);
            self.process_task(decoded).instrument(span).await;
        }
    }

    async fn process_task(&self, decoded: Decoded<H::Message>) {
        let kind = decoded.body.task_kind();
        let started = Instant::now();
        // A guard, so the heartbeat also stops when this future is aborted at the drain
        // timeout: otherwise it would hold the lease of an abandoned task forever.
        let heartbeat = heartbeat(&decoded.message, self.settings.ack_wait).drop_guard();
        let delivery = self.delivery(&decoded);
        let settle = self.handler.consume(decoded.body, &delivery).await;
        drop(heartbeat);
        self.settle(&decoded.message, settle, &delivery, kind, started.elapsed())
            .await;
    }

    /// Consumes a group of messages together, then settles each under its own span.
    async fn process_batch(&self, group: Vec<Decoded<H::Message>>) {
        let size = group.len();
        let batch_span = tracing::info_span!(
            "tasks",
            consumer = %self.name,
            task.kind = %group[0].body.task_kind(),
            task.store = group[0].body.store().map_or("-", |s| s.as_str()),
            batch.size = size,
        );
        let started = Instant::now();
        let heartbeats: Vec<_> = group
            .iter()
            .map(|d| heartbeat(&d.message, self.settings.ack_wait).drop_guard())
            .collect();
        let mut settled = Vec::with_capacity(size);
        let mut items = Vec::with_capacity(size);
        for decoded in group {
            let span = self.span(&decoded);
            let kind = decoded.body.task_kind();
            let delivery = self.delivery(&decoded);
            settled.push((decoded.message, span, kind, delivery.count, delivery.last));
            items.push((decoded.body, delivery));
        }
        let settles = self
            .handler
            .consume_batch(items)
            .instrument(batch_span.clone())
            .await;
        drop(heartbeats);
        let elapsed = started.elapsed();
        if settles.len() != size {
            // A consumer bug: what was not answered stays unacknowledged and comes back.
            tracing::error!(parent: &batch_span, answered = settles.len(), batch.size = size, "a batch was not answered message by message");
        }
        for ((message, span, kind, count, last), settle) in settled.into_iter().zip(settles) {
            let delivery = Delivery {
                count,
                last,
                trace: None,
                publisher: &self.publisher,
            };
            self.settle(&message, settle, &delivery, kind, elapsed)
                .instrument(span)
                .await;
        }
    }

    /// Maps what the consumer answered onto JetStream: ack, term, nak with a delay, or the
    /// dead-letter stream on the last delivery.
    async fn settle(
        &self,
        message: &Message,
        settle: Settle,
        delivery: &Delivery<'_>,
        kind: TaskKind,
        elapsed: Duration,
    ) {
        let deliveries = delivery.count;
        metrics::histogram!("lethe_task_duration_seconds", "consumer" => self.name.clone(), "kind" => kind.as_str())
            .record(elapsed.as_secs_f64());
        let (ack, label) = match settle {
            Settle::Ack { outcome } => (AckKind::Ack, outcome),
            Settle::Term { outcome } => (AckKind::Term, outcome),
            Settle::Retry { error, .. } if delivery.last => {
                // JetStream would not deliver it again: keep it where an operator sees it.
                tracing::error!(error = %format!("{error:#}"), "failed on its last delivery; moving it to the dead-letter stream");
                self.dead_letter(
                    message,
                    &format!("not settled after {deliveries} deliveries"),
                )
                .await;
                return;
            }
            Settle::Retry {
                outcome,
                error,
                after,
            } => {
                let delay = after.unwrap_or_else(|| retry_delay(deliveries));
                tracing::warn!(error = %format!("{error:#}"), retry_in_ms = delay.as_millis() as u64, "failed; will retry");
                (AckKind::Nak(Some(delay)), outcome)
            }
        };
        self.acknowledge(message, ack).await;
        metrics::counter!("lethe_tasks_total", "consumer" => self.name.clone(), "kind" => kind.as_str(), "outcome" => label).increment(1);
        tracing::info!(
            outcome = label,
            duration_ms = elapsed.as_millis() as u64,
            "task handled"
        );
    }

    async fn acknowledge(&self, message: &Message, kind: AckKind) {
        if let Err(error) = message.ack_with(kind).await {
            tracing::warn!(error = %error, "cannot acknowledge; JetStream will deliver the task again");
        }
    }

    /// Keeps a message that cannot be settled (undecodable, or out of deliveries) on the
    /// dead-letter stream for inspection, then terminates it so it stops blocking the queue.
    async fn dead_letter(&self, message: &Message, reason: &str) {
        let sequence = message.info().map(|i| i.stream_sequence).unwrap_or(0);
        tracing::error!(
            consumer = %self.name,
            stream.sequence = sequence,
            reason,
            "message moved to the dead-letter stream"
        );
        let names = self.publisher.names();
        let subject = names.dead_subject(&self.name);
        let message_id = format!("{}.{sequence}", self.name);
        if let Err(error) = self
            .publisher
            .publish_raw(subject, &message_id, None, message.payload.clone())
            .await
        {
            tracing::warn!(error = %error, "cannot store the dead letter; leaving the message for redelivery");
            return;
        }
        let event = crate::messages::Event {
            kind: "task.dead_lettered".to_owned(),
            request_id: None,
            tenant_id: None,
            counts: Default::default(),
            detail: Some(format!(
                "consumer {} stream sequence {sequence}: {reason}",
                self.name
            )),
            at: Utc::now(),
        };
        if let Err(error) = self.publisher.event(&event).await {
            tracing::warn!(error = %error, "cannot publish the dead-letter event");
        }
        metrics::counter!("lethe_tasks_total", "consumer" => self.name.clone(), "kind" => "unknown", "outcome" => "dead_lettered").increment(1);
        self.acknowledge(message, AckKind::Term).await;
    }
}

/// A worker consumes tasks: it hands each to the [`Handler`], then publishes the task's result
/// before the loop acknowledges, so a task is never acknowledged with its result unreported.
impl<H: Handler> Consume for H {
    type Message = TaskMessage;

    async fn consume(&self, task: TaskMessage, delivery: &Delivery<'_>) -> Settle {
        let outcome = self.handle(task.clone()).await;
        report(&task, outcome, delivery).await
    }

    fn batch_key(&self, task: &TaskMessage) -> Option<BatchKey> {
        self.batches(task)
            .then(|| BatchKey::new(format!("{:?}", TaskBatchKey::of(task))))
    }

    /// Carries the tasks out together, then publishes every result at once (each task is
    /// acknowledged only once its own result is stored, as for one task).
    async fn consume_batch(&self, items: Vec<(TaskMessage, Delivery<'_>)>) -> Vec<Settle> {
        let tasks: Vec<TaskMessage> = items.iter().map(|(task, _)| task.clone()).collect();
        let outcomes = self.handle_batch(&tasks).await;
        let reports = items
            .iter()
            .zip(outcomes)
            .map(|((task, delivery), outcome)| report(task, outcome, delivery));
        futures::future::join_all(reports).await
    }
}

/// Publishes what handling `task` came to (unless it is to be retried) and says how to settle
/// the task: acknowledged once its result is stored, retried when it cannot be.
async fn report(
    task: &TaskMessage,
    outcome: Result<TaskReport, TaskError>,
    delivery: &Delivery<'_>,
) -> Settle {
    let deliveries = delivery.count;
    let (result, settle) = match outcome {
        Ok(report) => (
            Some(TaskOutcome::Done(report)),
            Settle::Ack { outcome: "done" },
        ),
        Err(TaskError::Permanent { code, reason }) => {
            tracing::warn!(code, reason = %reason, "task cannot succeed; reporting it failed");
            (
                Some(TaskOutcome::Failed {
                    code: code.to_owned(),
                    reason,
                }),
                Settle::Term { outcome: "failed" },
            )
        }
        Err(TaskError::Transient(error)) => {
            if delivery.last {
                tracing::error!(error = %format!("{error:#}"), "task failed on its last delivery; reporting it failed");
                (
                    Some(TaskOutcome::Failed {
                        code: "retries_exhausted".to_owned(),
                        reason: format!(
                            "gave up after {deliveries} deliveries: {}",
                            error_summary(&error)
                        ),
                    }),
                    Settle::Term { outcome: "failed" },
                )
            } else {
                let after = error
                    .chain()
                    .find_map(|e| e.downcast_ref::<RetryAfter>())
                    .map(|r| r.0);
                (
                    None,
                    Settle::Retry {
                        outcome: "retry",
                        error,
                        after,
                    },
                )
            }
        }
    };

    if let Some(outcome) = result {
        let result = TaskResult {
            request_id: task.request_id,
            task: task.task,
            store: task.store.clone(),
            generation: task.generation,
            outcome,
            deliveries,
            finished_at: Utc::now(),
        };
        let child = delivery.trace.map(|t| t.child());
        if let Err(error) = delivery.publisher.result(&result, child.as_ref()).await {
            // The work is done but nobody knows: leave the task to be delivered again
            // (the handler is idempotent) rather than acknowledge an unreported result.
            return Settle::Retry {
                outcome: "unreported",
                error: anyhow::Error::new(error)
                    .context("cannot publish the result; the task will be delivered again"),
                after: Some(Duration::from_secs(1)),
            };
        }
    }
    settle
}

/// Sends `Progress` for `message` at a third of `ack_wait` until the returned token is
/// cancelled, so long work keeps its lease instead of being delivered to another worker.
pub fn heartbeat(message: &Message, ack_wait: Duration) -> CancellationToken {
    let stop = CancellationToken::new();
    let every = (ack_wait / 3).max(Duration::from_millis(100));
    let reply = message.reply.clone();
    let client = message.context.client();
    let token = stop.clone();
    tokio::spawn(async move {
        let Some(reply) = reply else { return };
        loop {
            tokio::select! {
                () = token.cancelled() => return,
                () = tokio::time::sleep(every) => {
                    let progress: bytes::Bytes = AckKind::Progress.into();
                    if client.publish(reply.clone(), progress).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    stop
}

/// Describes a decoding error by its class and position only: serde's own message can quote
/// the offending value, which may be an identifier.
fn describe_decode_error(error: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let class = match error.classify() {
        Category::Io => "unreadable",
        Category::Syntax => "not JSON",
        Category::Data => "JSON of the wrong shape",
        Category::Eof => "truncated JSON",
    };
    format!(
        "body is {class} (line {}, column {})",
        error.line(),
        error.column()
    )
}

/// The outermost context of an error, which handlers keep free of identifiers.
fn error_summary(error: &anyhow::Error) -> String {
    error.to_string()
}

/// The entry of `served` for the task's store, or a permanent failure naming the store: a
/// task for a store this process does not serve cannot succeed here.
pub fn served_store<'a, T>(
    served: &'a std::collections::BTreeMap<crate::ids::StoreName, T>,
    task: &TaskMessage,
    daemon: &str,
) -> Result<&'a T, TaskError> {
    task.store
        .as_ref()
        .and_then(|name| served.get(name))
        .ok_or_else(|| TaskError::Permanent {
            code: "unknown_store",
            reason: format!(
                "this {daemon} does not serve store `{}`",
                task.store.as_ref().map_or("-", |s| s.as_str())
            ),
        })
}

/// A handler for a daemon whose consumer carries run commands rather than request tasks:
/// every task is refused as unsupported.
pub struct NoTasks(pub &'static str);

impl Handler for NoTasks {
    async fn handle(&self, task: TaskMessage) -> Result<TaskReport, TaskError> {
        Err(TaskError::Permanent {
            code: "unsupported_task",
            reason: format!(
                "the {} daemon does not carry out `{}` tasks",
                self.0, task.task
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interrupted_pulls_back_off_by_100_ms_up_to_2_s() {
        assert_eq!(pull_backoff(1), Duration::from_millis(100));
        assert_eq!(pull_backoff(5), Duration::from_millis(500));
        assert_eq!(pull_backoff(1000), Duration::from_secs(2));
    }
}
