#![doc = include_str!("../README.md")]

pub mod catalog;
pub mod daemon;
pub mod keys;
pub mod ledger;
pub mod manifest;
pub mod manifests;
pub mod pipeline;
pub mod replay;
pub mod restore;
pub mod runner;
pub mod schedule;
pub mod settings;
pub mod source;
pub mod tombstones;
pub mod tools;
pub mod upload;

use std::sync::Arc;

use lethe_common::Settings;
use lethe_common::daemon::{LedgerWorker, poll_interval};
use lethe_common::nats::Durable;
use lethe_common::worker::RunMode;
use lethe_stores::{self as stores, ServedStore};
use tokio_util::sync::CancellationToken;

pub use keys::{KeyError, Recipients};
pub use restore::{Decrypt, Ledger, RedisScratch, RestoreReport, Target, VerifyReport};
pub use runner::{Backups, Outcome, Plan, Summary};

/// The backup daemon, built and ready to run.
pub struct App {
    worker: LedgerWorker,
    backups: Arc<Backups>,
    stores: Vec<ServedStore>,
    consumer: async_nats::jetstream::consumer::PullConsumer,
    config: daemon::LoopConfig,
    mode: RunMode,
}

impl App {
    /// Checks the configuration first (the recipients' certificates, the data map, the stores'
    /// credentials, the schedule: the daemon refuses to start, saying why, before connecting to
    /// anything), then opens (and migrates) the ledger, checks Lethe's bucket, connects to NATS
    /// and binds the `backup` durable consumer.
    pub async fn build(settings: &Settings, mode: RunMode) -> anyhow::Result<Self> {
        let plan = Plan::load(settings)?;
        let stores = plan.stores.clone();
        let drain_timeout = plan.worker.drain_timeout;
        let worker = LedgerWorker::start("backup", settings, &plan.worker, Durable::Backup).await?;
        let consumer = worker.daemon.consumer(Durable::Backup).await?;
        let bucket = settings.require_s3()?.bucket.clone();
        let backups = Arc::new(Backups::new(
            plan,
            worker.pool.clone(),
            worker.s3.clone(),
            bucket,
            Some(worker.daemon.publisher().clone()),
        ));
        let config = daemon::LoopConfig {
            prefix: settings.nats.prefix.clone(),
            ack_wait: settings.nats.ack_wait,
            max_deliver: settings.nats.max_deliver,
            drain_timeout,
            poll: poll_interval(mode),
        };
        Ok(Self {
            worker,
            backups,
            stores,
            consumer,
            config,
            mode,
        })
    }

    /// The backup runner, shared with the loop.
    pub fn backups(&self) -> Arc<Backups> {
        self.backups.clone()
    }

    /// Address of `/healthz`, `/readyz` and `/metrics`.
    pub fn ops_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.worker.daemon.local_addr()
    }

    /// Serves the operations endpoints and runs the schedule and the run commands until
    /// `shutdown` is cancelled (or, in [`RunMode::UntilIdle`], until no command is left), then
    /// drains: running backups get `backup.drain_timeout` to finish, then are interrupted.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let readiness = stores::readiness(&self.stores, self.worker.readiness);
        let work = daemon::run(
            self.backups,
            self.consumer,
            self.config,
            shutdown,
            self.mode,
        );
        self.worker.daemon.serve_during(readiness, work).await
    }
}
