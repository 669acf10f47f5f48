#![doc = include_str!("../README.md")]

pub mod catalog;
pub mod daemon;
pub mod policy;
pub mod schedule;
pub mod settings;

use std::sync::Arc;

use lethe_common::Settings;
use lethe_common::daemon::{LedgerWorker, poll_interval};
use lethe_common::nats::{Durable, Names};
use lethe_common::worker::RunMode;
use tokio_util::sync::CancellationToken;

use crate::settings::RetentionSettings;

pub use policy::{Mode, Outcome, Plan, Report, Retention};

/// The retention daemon, built and ready to run.
pub struct App {
    worker: LedgerWorker,
    retention: Arc<Retention>,
    consumer: async_nats::jetstream::consumer::PullConsumer,
    config: daemon::LoopConfig,
    mode: RunMode,
}

impl App {
    /// Checks the configuration first (the ledger and bucket sections, the policies, the
    /// schedule, the data map and the credentials of the stores whose log tables it prunes),
    /// then opens (and migrates) the ledger, checks Lethe's bucket, connects to NATS and binds
    /// the `retention` durable consumer.
    pub async fn build(settings: &Settings, mode: RunMode) -> anyhow::Result<Self> {
        // The policies first: a refused policy is the error an operator must see, whatever
        // else is missing.
        settings.section::<RetentionSettings>()?;
        settings.require_ledger()?;
        settings.require_s3()?;
        let plan = Plan::load(settings)?;
        let drain_timeout = plan.settings.drain_timeout;
        let worker = LedgerWorker::start(
            "retention",
            settings,
            &plan.settings.worker(),
            Durable::Retention,
        )
        .await?;
        let consumer = worker.daemon.consumer(Durable::Retention).await?;
        let bucket = settings.require_s3()?.bucket.clone();
        let retention = Arc::new(Retention::new(
            plan,
            worker.pool.clone(),
            worker.s3.clone(),
            bucket,
            Some(worker.daemon.publisher().clone()),
        ));
        let names = Names::new(&settings.nats.prefix)?;
        let config = daemon::LoopConfig {
            run_subject: names.retention_run_subject(),
            ack_wait: settings.nats.ack_wait,
            max_deliver: settings.nats.max_deliver,
            drain_timeout,
            poll: poll_interval(mode),
        };
        Ok(Self {
            worker,
            retention,
            consumer,
            config,
            mode,
        })
    }

    /// The retention runner, shared with the loop.
    pub fn retention(&self) -> Arc<Retention> {
        self.retention.clone()
    }

    /// Address of `/healthz`, `/readyz` and `/metrics`.
    pub fn ops_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.worker.daemon.local_addr()
    }

    /// Serves the operations endpoints and runs the schedule and the run commands until
    /// `shutdown` is cancelled (or, in [`RunMode::UntilIdle`], until no command is left).
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let work = daemon::run(
            self.retention,
            self.consumer,
            self.config,
            shutdown,
            self.mode,
        );
        self.worker
            .daemon
            .serve_during(self.worker.readiness, work)
            .await
    }
}
