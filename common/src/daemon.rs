//! The start-up and run sequence shared by the worker daemons: connect to NATS, provision the
//! streams and this daemon's durable consumers, serve the operations endpoints, run the worker
//! loops until SIGTERM, drain.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{AckKind, Message};
use futures::StreamExt as _;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{Settings, WorkerSettings};
use crate::nats::{self, ConsumerSpec, Durable, Names, Publisher};
use crate::ops::{self, Readiness};
use crate::worker::{Handler, LoopSettings, NoTasks, RunMode, WorkerLoop};

/// A worker daemon between start-up and run: NATS connected, streams provisioned, the
/// operations port bound.
pub struct WorkerDaemon {
    name: &'static str,
    settings: Settings,
    worker: WorkerSettings,
    publisher: Publisher,
    listener: TcpListener,
}

impl WorkerDaemon {
    /// Connects and provisions. `worker` is this daemon's section of the settings.
    pub async fn start(
        name: &'static str,
        settings: &Settings,
        worker: &WorkerSettings,
    ) -> anyhow::Result<Self> {
        let names = Names::new(&settings.nats.prefix)?;
        let client = nats::connect(&settings.nats, &format!("lethe-{name}")).await?;
        let publisher = Publisher::new(client, names.clone());
        nats::provision_streams(publisher.jetstream(), &names, &settings.nats).await?;
        let listener = ops::bind(worker.listen)
            .await
            .with_context(|| format!("{name}.listen"))?;
        Ok(Self {
            name,
            settings: settings.clone(),
            worker: worker.clone(),
            publisher,
            listener,
        })
    }

    /// The publisher (and through it, the JetStream context and names).
    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    /// The bound operations address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Creates or binds the durable consumer.
    pub async fn consumer(&self, durable: Durable) -> anyhow::Result<PullConsumer> {
        let spec = ConsumerSpec { durable };
        Ok(nats::provision_consumer(
            self.publisher.jetstream(),
            self.publisher.names(),
            &self.settings.nats,
            &spec,
        )
        .await?)
    }

    /// The loop settings this daemon's configuration implies.
    pub fn loop_settings(&self, mode: RunMode) -> LoopSettings {
        LoopSettings {
            concurrency: self.worker.concurrency,
            drain_timeout: self.worker.drain_timeout,
            max_deliver: self.settings.nats.max_deliver,
            ack_wait: self.settings.nats.ack_wait,
            poll: poll_interval(mode),
            batch_size: self.worker.batch_size,
        }
    }

    /// A loop on `durable` handing tasks to `handler`.
    pub async fn worker_loop<H: Handler>(
        &self,
        durable: Durable,
        handler: std::sync::Arc<H>,
        mode: RunMode,
    ) -> anyhow::Result<WorkerLoop<H>> {
        let name = self.publisher.names().durable_name(&durable);
        let consumer = self.consumer(durable).await?;
        let mut settings = self.loop_settings(mode);
        if !H::BATCHES {
            // Each of its tasks takes a slot: a bigger pull would only hold tasks unstarted.
            settings.batch_size = 1;
        }
        Ok(WorkerLoop::new(
            name,
            consumer,
            handler,
            self.publisher.clone(),
            settings,
        ))
    }

    /// Serves the operations endpoints and runs `loops` until `shutdown` (or, in
    /// [`RunMode::UntilIdle`], until every loop is idle), then drains.
    pub async fn run<H: Handler>(
        self,
        loops: Vec<WorkerLoop<H>>,
        readiness: Readiness,
        shutdown: CancellationToken,
        mode: RunMode,
    ) -> anyhow::Result<()> {
        let address = self.listener.local_addr()?;
        let ops_stop = CancellationToken::new();
        let ops_server = tokio::spawn(ops::serve(
            self.listener,
            ops::router(self.name, readiness),
            ops_stop.clone(),
        ));
        tracing::info!(daemon = self.name, loops = loops.len(), ops.address = %address, "running");
        let mut running = JoinSet::new();
        if loops.is_empty() && mode == RunMode::UntilShutdown {
            let shutdown = shutdown.clone();
            running.spawn(async move {
                shutdown.cancelled().await;
                Ok(())
            });
        }
        for worker_loop in loops {
            running.spawn(worker_loop.run(shutdown.clone(), mode));
        }
        let mut failure = None;
        while let Some(joined) = running.join_next().await {
            match joined {
                Ok(Ok(())) => {}
                Ok(Err(error)) => failure = Some(anyhow::Error::new(error)),
                Err(error) => failure = Some(anyhow::Error::new(error)),
            }
            if failure.is_some() {
                shutdown.cancel();
            }
        }
        ops_stop.cancel();
        if let Ok(Err(error)) = ops_server.await {
            tracing::warn!(error = %error, "operations server ended with an error");
        }
        tracing::info!(daemon = self.name, "stopped");
        failure.map_or(Ok(()), Err)
    }

    /// Serves the operations endpoints (with `readiness`) while `work` runs, and stops them
    /// when it ends: for a daemon whose loop is its own rather than [`WorkerLoop`]s. `work`'s
    /// error comes first, then the server's.
    pub async fn serve_during(
        self,
        readiness: Readiness,
        work: impl Future<Output = anyhow::Result<()>>,
    ) -> anyhow::Result<()> {
        let ops_stop = CancellationToken::new();
        let loops: Vec<WorkerLoop<NoTasks>> = Vec::new();
        let ops = self.run(loops, readiness, ops_stop.clone(), RunMode::UntilShutdown);
        let work = async {
            let result = work.await;
            ops_stop.cancel();
            result
        };
        let (ops, work) = tokio::join!(ops, work);
        work?;
        ops
    }
}

/// How long one pull waits for work: shorter when the daemon stops once idle, so that it
/// notices sooner.
pub fn poll_interval(mode: RunMode) -> Duration {
    match mode {
        RunMode::UntilShutdown => Duration::from_secs(1),
        RunMode::UntilIdle => Duration::from_millis(250),
    }
}

/// Opens (and migrates) the ledger and checks Lethe's bucket: what a daemon or command that
/// owns part of the ledger (backup, retention) needs first.
pub async fn open_ledger_and_bucket(
    settings: &Settings,
) -> anyhow::Result<(sqlx::PgPool, aws_sdk_s3::Client)> {
    let pool = crate::ledger::connect_and_migrate(settings.require_ledger()?).await?;
    let s3_settings = settings.require_s3()?;
    let s3 = crate::s3::client(s3_settings);
    crate::s3::ensure_bucket(&s3, &s3_settings.bucket).await?;
    Ok((pool, s3))
}

/// Pulls one batch of up to `max` run commands from `consumer`, waiting at most `poll`; its
/// commands come from [`Commands::next`] as they arrive. A failed pull is logged and waited out
/// for a second (or until `shutdown`), and gives no command. `what` names the commands in the
/// log ("backup", "retention").
pub async fn pull_commands<'a>(
    consumer: &PullConsumer,
    max: usize,
    poll: Duration,
    shutdown: &'a CancellationToken,
    what: &'static str,
) -> Commands<'a> {
    let batch = consumer
        .batch()
        .max_messages(max)
        .expires(poll)
        .messages()
        .await;
    let batch = match batch {
        Ok(batch) => Some(batch),
        Err(error) => {
            tracing::warn!(error = %error, "cannot pull {what} commands; retrying");
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                () = shutdown.cancelled() => {}
            }
            None
        }
    };
    Commands {
        batch,
        shutdown,
        what,
        received: 0,
    }
}

/// One pulled batch of run commands (see [`pull_commands`]).
pub struct Commands<'a> {
    batch: Option<async_nats::jetstream::consumer::pull::Batch>,
    shutdown: &'a CancellationToken,
    what: &'static str,
    received: usize,
}

impl Commands<'_> {
    /// The next command, or `None` once the batch ends, is interrupted (logged) or `shutdown`
    /// is cancelled.
    pub async fn next(&mut self) -> Option<Message> {
        let batch = self.batch.as_mut()?;
        let next = tokio::select! {
            next = batch.next() => next,
            () = self.shutdown.cancelled() => None,
        };
        match next {
            Some(Ok(message)) => {
                self.received += 1;
                Some(message)
            }
            Some(Err(error)) => {
                tracing::warn!(error = %error, "pulling {} commands was interrupted", self.what);
                self.batch = None;
                None
            }
            None => {
                self.batch = None;
                None
            }
        }
    }

    /// How many commands [`Commands::next`] has given.
    pub fn received(&self) -> usize {
        self.received
    }
}

/// Acknowledges run command `message` with `kind`. A failure is only logged: the command comes
/// back, and runs are idempotent. `what` names it in the log ("backup", "retention").
pub async fn acknowledge_command(message: &Message, kind: AckKind, what: &str) {
    if let Err(error) = message.ack_with(kind).await {
        tracing::warn!(error = %error, "cannot acknowledge a {what} run command; it will come back");
    }
}

/// Whether `consumer` has nothing left: no command pending or awaiting acknowledgement. An
/// error reading its state is logged and counts as not drained.
pub async fn consumer_drained(consumer: &mut PullConsumer) -> bool {
    match consumer.info().await {
        Ok(info) => info.num_pending == 0 && info.num_ack_pending == 0,
        Err(error) => {
            tracing::warn!(error = %error, "cannot read the consumer's state");
            false
        }
    }
}

/// A worker daemon that also owns part of the ledger (backup, retention): the ledger opened
/// and migrated, Lethe's bucket checked, NATS connected and the daemon's durable bound.
pub struct LedgerWorker {
    /// The daemon.
    pub daemon: WorkerDaemon,
    /// The ledger.
    pub pool: sqlx::PgPool,
    /// Lethe's bucket.
    pub s3: aws_sdk_s3::Client,
    /// Readiness: the ledger answers.
    pub readiness: Readiness,
}

impl LedgerWorker {
    /// Starts daemon `name` with its `worker` section, binding `durable`.
    pub async fn start(
        name: &'static str,
        settings: &Settings,
        worker: &WorkerSettings,
        durable: Durable,
    ) -> anyhow::Result<Self> {
        let (pool, s3) = open_ledger_and_bucket(settings).await?;
        let daemon = WorkerDaemon::start(name, settings, worker).await?;
        daemon.consumer(durable).await?;
        let readiness = Readiness::new().ledger(pool.clone());
        Ok(Self {
            daemon,
            pool,
            s3,
            readiness,
        })
    }
}
