#![doc = include_str!("../README.md")]

mod batch;
pub mod datamap;
mod handler;
mod schema;

use std::sync::Arc;

use lethe_common::Settings;
use lethe_common::coverage;
use lethe_common::daemon::WorkerDaemon;
use lethe_common::datamap::DataMap;
use lethe_common::nats::Durable;
use lethe_common::ops::Readiness;
use lethe_common::privacy::IdentityHasher;
use lethe_common::worker::{RunMode, WorkerLoop};
use lethe_stores as stores;
use tokio_util::sync::CancellationToken;

pub use handler::Eraser;
pub use schema::SchemaMismatch;

/// The eraser daemon, built and ready to run.
pub struct App {
    daemon: WorkerDaemon,
    loops: Vec<WorkerLoop<Eraser>>,
    readiness: Readiness,
    mode: RunMode,
    eraser: Arc<Eraser>,
}

/// Where `/healthz`, `/readyz` and `/metrics` listen when `[eraser]` names no address.
pub const DEFAULT_OPS_PORT: u16 = 9181;

impl App {
    /// Loads the data map, sets up the served stores, checks the data map against their live
    /// schemas (every mismatch is listed in the error; a store that is down is checked on its
    /// first task instead), connects to NATS and binds one durable consumer per store.
    pub async fn build(settings: &Settings, mode: RunMode) -> anyhow::Result<Self> {
        let map = Arc::new(DataMap::load(&settings.data_map_path()?)?);
        log_coverage(&map);
        let hasher = IdentityHasher::new(settings.require_privacy()?.hash_key.clone());
        let worker = settings.worker("eraser", DEFAULT_OPS_PORT)?;
        let served = stores::served(&map, &worker.stores, settings)?;
        let eraser = Arc::new(Eraser::new(served.clone(), map.clone(), hasher)?);
        schema::check_all(eraser.connectors()).await?;
        let daemon = WorkerDaemon::start("eraser", settings, &worker).await?;
        let mut loops = Vec::with_capacity(served.len());
        for store in &served {
            let durable = Durable::Eraser(store.name.clone());
            loops.push(daemon.worker_loop(durable, eraser.clone(), mode).await?);
        }
        let readiness = stores::readiness(&served, Readiness::new());
        Ok(Self {
            daemon,
            loops,
            readiness,
            mode,
            eraser,
        })
    }

    /// The task handler, shared by every loop (to read how many tasks it handled).
    pub fn eraser(&self) -> Arc<Eraser> {
        self.eraser.clone()
    }

    /// Address of `/healthz`, `/readyz` and `/metrics`.
    pub fn ops_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.daemon.local_addr()
    }

    /// Runs until `shutdown` is cancelled (or until idle), then drains in-flight tasks.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        self.daemon
            .run(self.loops, self.readiness, shutdown, self.mode)
            .await
    }
}

/// Warns, at start-up, of every collection, key or prefix a request may miss (see
/// `lethe-eraser coverage`). Names of stores, collections and identity kinds only.
fn log_coverage(map: &DataMap) {
    let coverage = coverage::check(map, &coverage::usually_carried(map));
    for finding in &coverage.findings {
        tracing::warn!(finding = %finding, "data map coverage: a request may miss this place");
    }
}

/// The coverage report of the data map in `settings`: per identity, what it reaches directly
/// and through the closure, then what a request may miss. `carried` names the identities
/// requests carry (default: those no collection derives).
pub fn coverage_report(
    settings: &Settings,
    carried: &[String],
) -> anyhow::Result<coverage::Coverage> {
    let map = DataMap::load(&settings.data_map_path()?)?;
    let carried = if carried.is_empty() {
        coverage::usually_carried(&map)
    } else {
        if let Some(unknown) = carried.iter().find(|k| !map.identities.contains(k)) {
            anyhow::bail!("--carried names `{unknown}`, which the data map does not declare");
        }
        carried.iter().cloned().collect()
    };
    Ok(coverage::check(&map, &carried))
}
