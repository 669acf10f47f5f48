//! The worker loop's acknowledgement rules, against a real JetStream.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use chrono::Utc;
use futures::StreamExt;
use lethe_common::Settings;
use lethe_common::ids::{RequestId, StoreName};
use lethe_common::messages::{TaskKind, TaskMessage, TaskOutcome, TaskReport, TaskResult};
use lethe_common::nats::{self, ConsumerSpec, Durable, Names, Publisher, Traceparent};
use lethe_common::worker::{Handler, LoopSettings, RunMode, TaskError, WorkerLoop};
use lethe_tests::{Namespace, Services};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::support;

/// A namespace with provisioned streams, an eraser consumer for store `s1`, and a way to read
/// what reached the results and dead-letter streams.
struct Bench {
    ns: Namespace,
    settings: Settings,
    publisher: Publisher,
    store: StoreName,
}

impl Bench {
    async fn new() -> Self {
        let services = Services::from_env();
        let ns = Namespace::create(&services).await.unwrap();
        let settings = support::settings(&support::settings_toml(&services, &ns, None, None, None));
        let names = Names::new(&settings.nats.prefix).unwrap();
        let client = nats::connect(&settings.nats, "test").await.unwrap();
        let publisher = Publisher::new(client, names.clone());
        nats::provision_streams(publisher.jetstream(), &names, &settings.nats)
            .await
            .unwrap();
        Self {
            ns,
            settings,
            publisher,
            store: StoreName::parse("s1").unwrap(),
        }
    }

    async fn consumer(&self, durable: Durable) -> PullConsumer {
        nats::provision_consumer(
            self.publisher.jetstream(),
            self.publisher.names(),
            &self.settings.nats,
            &ConsumerSpec { durable },
        )
        .await
        .unwrap()
    }

    async fn worker<H: Handler>(&self, handler: Arc<H>, drain: Duration) -> WorkerLoop<H> {
        let durable = Durable::Eraser(self.store.clone());
        let consumer = self.consumer(durable.clone()).await;
        WorkerLoop::new(
            self.publisher.names().durable_name(&durable),
            consumer,
            handler,
            self.publisher.clone(),
            LoopSettings {
                concurrency: 4,
                drain_timeout: drain,
                max_deliver: self.settings.nats.max_deliver,
                ack_wait: self.settings.nats.ack_wait,
                poll: Duration::from_millis(200),
                batch_size: 1,
            },
        )
    }

    fn task(&self) -> TaskMessage {
        TaskMessage {
            request_id: RequestId::new(),
            task: TaskKind::Erase,
            store: Some(self.store.clone()),
            identities: Default::default(),
            tenant: None,
            params: serde_json::Value::Null,
            generation: 0,
            issued_at: Utc::now(),
        }
    }

    async fn publish(&self, task: &TaskMessage) {
        self.publisher
            .task(task, &Traceparent::new_root())
            .await
            .unwrap();
    }

    /// Every result on the results stream, in order (consumed).
    async fn results(&self) -> Vec<TaskResult> {
        let mut consumer = self.consumer(Durable::Coordinator).await;
        let pending = consumer.info().await.unwrap().num_pending as usize;
        if pending == 0 {
            return Vec::new();
        }
        let mut messages = consumer
            .fetch()
            .max_messages(pending)
            .messages()
            .await
            .unwrap();
        let mut results = Vec::new();
        while let Some(message) = messages.next().await {
            let message = message.unwrap();
            results.push(serde_json::from_slice(&message.payload).unwrap());
            message.ack().await.unwrap();
        }
        results
    }

    async fn stream_messages(&self, stream: String) -> u64 {
        let mut stream = self.publisher.jetstream().get_stream(stream).await.unwrap();
        stream.info().await.unwrap().state.messages
    }

    async fn cleanup(self) {
        nats::deprovision(self.publisher.jetstream(), self.publisher.names())
            .await
            .unwrap();
        self.ns.cleanup().await.unwrap();
    }
}

/// Succeeds, counting calls; optionally waits for a go-ahead first.
#[derive(Default)]
struct Succeeds {
    calls: AtomicU32,
    gate: Option<Arc<Notify>>,
}

impl Handler for Succeeds {
    async fn handle(&self, _task: TaskMessage) -> Result<TaskReport, TaskError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if let Some(gate) = &self.gate {
            gate.notified().await;
        }
        Ok(TaskReport {
            counts: [("rows".to_owned(), 3)].into(),
            ..Default::default()
        })
    }
}

/// Always fails with a passing error.
struct AlwaysTransient(AtomicU32);

impl Handler for AlwaysTransient {
    async fn handle(&self, _task: TaskMessage) -> Result<TaskReport, TaskError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Err(TaskError::Transient(anyhow::anyhow!("store unreachable")))
    }
}

#[tokio::test]
async fn a_task_is_acknowledged_only_after_its_handler_returned_and_its_result_was_stored() {
    let bench = Bench::new().await;
    let gate = Arc::new(Notify::new());
    let handler = Arc::new(Succeeds {
        gate: Some(gate.clone()),
        ..Default::default()
    });
    let task = bench.task();
    bench.publish(&task).await;
    let worker = bench.worker(handler.clone(), Duration::from_secs(10)).await;
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(worker.run(shutdown.clone(), RunMode::UntilIdle));

    // While the handler is busy the task stays on the work queue, unacknowledged.
    while handler.calls.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        bench
            .stream_messages(bench.publisher.names().tasks_stream())
            .await,
        1
    );
    assert!(bench.results().await.is_empty());

    gate.notify_one();
    running.await.unwrap().unwrap();

    assert_eq!(
        bench
            .stream_messages(bench.publisher.names().tasks_stream())
            .await,
        0
    );
    let results = bench.results().await;
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].request_id, task.request_id);
    assert!(matches!(&results[0].outcome, TaskOutcome::Done(r) if r.counts["rows"] == 3));
    bench.cleanup().await;
}

#[tokio::test]
async fn a_task_published_twice_reaches_the_worker_once() {
    let bench = Bench::new().await;
    let handler = Arc::new(Succeeds::default());
    let task = bench.task();
    bench.publish(&task).await;
    bench.publish(&task).await;

    bench
        .worker(handler.clone(), Duration::from_secs(5))
        .await
        .run(CancellationToken::new(), RunMode::UntilIdle)
        .await
        .unwrap();

    assert_eq!(handler.calls.load(Ordering::SeqCst), 1);
    assert_eq!(bench.results().await.len(), 1);
    bench.cleanup().await;
}

#[tokio::test]
async fn a_passing_failure_is_retried_and_reported_failed_on_the_last_delivery() {
    let bench = Bench::new().await;
    let handler = Arc::new(AlwaysTransient(AtomicU32::new(0)));
    let task = bench.task();
    bench.publish(&task).await;

    bench
        .worker(handler.clone(), Duration::from_secs(5))
        .await
        .run(CancellationToken::new(), RunMode::UntilIdle)
        .await
        .unwrap();

    let max_deliver = bench.settings.nats.max_deliver as u32;
    assert_eq!(handler.0.load(Ordering::SeqCst), max_deliver);
    let results = bench.results().await;
    assert_eq!(results.len(), 1, "one failure report, not one per delivery");
    assert_eq!(results[0].deliveries, max_deliver);
    match &results[0].outcome {
        TaskOutcome::Failed { code, reason } => {
            assert_eq!(code, "retries_exhausted");
            assert!(reason.contains("store unreachable"), "{reason}");
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    assert_eq!(
        bench
            .stream_messages(bench.publisher.names().tasks_stream())
            .await,
        0
    );
    bench.cleanup().await;
}

#[tokio::test]
async fn an_undecodable_task_is_dead_lettered_and_the_worker_goes_on() {
    let bench = Bench::new().await;
    let handler = Arc::new(Succeeds::default());
    let subject = bench
        .publisher
        .names()
        .task_subject(TaskKind::Erase, Some(&bench.store));
    bench
        .publisher
        .publish_raw(
            subject,
            "poison-1",
            None,
            bytes::Bytes::from_static(b"{\"request_id\": 42"),
        )
        .await
        .unwrap();
    let good = bench.task();
    bench.publish(&good).await;

    bench
        .worker(handler.clone(), Duration::from_secs(5))
        .await
        .run(CancellationToken::new(), RunMode::UntilIdle)
        .await
        .unwrap();

    assert_eq!(
        handler.calls.load(Ordering::SeqCst),
        1,
        "the good task was handled"
    );
    assert_eq!(
        bench
            .stream_messages(bench.publisher.names().dead_stream())
            .await,
        1
    );
    assert_eq!(
        bench
            .stream_messages(bench.publisher.names().tasks_stream())
            .await,
        0
    );
    let results = bench.results().await;
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].request_id, good.request_id);
    bench.cleanup().await;
}

#[tokio::test]
async fn shutdown_leaves_an_unfinished_task_unacknowledged_for_redelivery() {
    let bench = Bench::new().await;
    let gate = Arc::new(Notify::new());
    let handler = Arc::new(Succeeds {
        gate: Some(gate),
        ..Default::default()
    });
    bench.publish(&bench.task()).await;
    let worker = bench
        .worker(handler.clone(), Duration::from_millis(200))
        .await;
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(worker.run(shutdown.clone(), RunMode::UntilShutdown));
    while handler.calls.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }

    shutdown.cancel();
    running.await.unwrap().unwrap();

    assert_eq!(
        bench
            .stream_messages(bench.publisher.names().tasks_stream())
            .await,
        1,
        "still queued"
    );
    assert!(
        bench.results().await.is_empty(),
        "nothing reported for unfinished work"
    );
    // Another worker picks it up and finishes it.
    let second = Arc::new(Succeeds::default());
    tokio::time::timeout(Duration::from_secs(30), async {
        bench
            .worker(second.clone(), Duration::from_secs(5))
            .await
            .run(CancellationToken::new(), RunMode::UntilIdle)
            .await
            .unwrap();
    })
    .await
    .unwrap();
    assert_eq!(second.calls.load(Ordering::SeqCst), 1);
    assert_eq!(bench.results().await.len(), 1);
    bench.cleanup().await;
}
