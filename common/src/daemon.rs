//! The start-up and run sequence shared by the worker daemons: connect to NATS, provision the
//! streams and this daemon's durable consumers, serve the operations endpoints, run the worker
//! loops until SIGTERM, drain.

use std::net::SocketAddr;

use anyhow::Context as _;
use async_nats::jetstream::consumer::PullConsumer;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{Settings, WorkerSettings};
use crate::nats::{self, ConsumerSpec, Durable, Names, Publisher};
use crate::ops::{self, Readiness};
use crate::worker::{Handler, LoopSettings, RunMode, WorkerLoop};

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
            poll: match mode {
                RunMode::UntilShutdown => std::time::Duration::from_secs(1),
                RunMode::UntilIdle => std::time::Duration::from_millis(250),
            },
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
        Ok(WorkerLoop::new(
            name,
            consumer,
            handler,
            self.publisher.clone(),
            self.loop_settings(mode),
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
        let pool = crate::ledger::connect_and_migrate(settings.require_ledger()?).await?;
        let s3_settings = settings.require_s3()?;
        let s3 = crate::s3::client(s3_settings);
        crate::s3::ensure_bucket(&s3, &s3_settings.bucket).await?;
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
