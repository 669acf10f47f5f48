#![doc = include_str!("../README.md")]

use lethe_common::Settings;
use lethe_common::daemon::LedgerWorker;
use lethe_common::nats::Durable;
use lethe_common::worker::{NoTasks, RunMode, WorkerLoop};
use tokio_util::sync::CancellationToken;

/// The backup daemon, built and ready to run.
pub struct App {
    worker: LedgerWorker,
    mode: RunMode,
}

impl App {
    /// Opens (and migrates) the ledger, checks Lethe's bucket, connects to NATS and binds the
    /// `backup` durable consumer.
    pub async fn build(settings: &Settings, mode: RunMode) -> anyhow::Result<Self> {
        let worker =
            LedgerWorker::start("backup", settings, &settings.backup, Durable::Backup).await?;
        Ok(Self { worker, mode })
    }

    /// Address of `/healthz`, `/readyz` and `/metrics`.
    pub fn ops_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.worker.daemon.local_addr()
    }

    /// Runs until `shutdown` is cancelled, then drains.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let loops: Vec<WorkerLoop<NoTasks>> = Vec::new();
        self.worker
            .daemon
            .run(loops, self.worker.readiness, shutdown, self.mode)
            .await
    }
}
