#![doc = include_str!("../README.md")]

mod archive;
mod assemble;
mod census;
mod collect;
mod handler;
mod readme;
pub mod staging;

use std::sync::Arc;

use lethe_common::Settings;
use lethe_common::daemon::WorkerDaemon;
use lethe_common::datamap::DataMap;
use lethe_common::nats::Durable;
use lethe_common::ops::Readiness;
use lethe_common::privacy::IdentityHasher;
use lethe_common::s3;
use lethe_common::worker::{RunMode, WorkerLoop};
use lethe_stores as stores;
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

pub use handler::Exporter;

/// The exporter daemon, built and ready to run.
pub struct App {
    daemon: WorkerDaemon,
    loops: Vec<WorkerLoop<Exporter>>,
    readiness: Readiness,
    mode: RunMode,
    exporter: Arc<Exporter>,
    _census: census::CensusResponder,
}

/// Where `/healthz`, `/readyz` and `/metrics` listen when `[exporter]` names no address.
pub const DEFAULT_OPS_PORT: u16 = 9182;

impl App {
    /// Loads the data map, sets up the served stores and Lethe's bucket, connects to NATS and
    /// binds the collect consumers (one per store) and the assemble consumer (any exporter can
    /// assemble: it needs Lethe's bucket only).
    pub async fn build(settings: &Settings, mode: RunMode) -> anyhow::Result<Self> {
        let map = Arc::new(DataMap::load(&settings.data_map_path()?)?);
        let worker = settings.worker("exporter", DEFAULT_OPS_PORT)?;
        let served = stores::served(&map, &worker.stores, settings)?;
        let s3_settings = settings.require_s3()?;
        let bucket_client = s3::client(s3_settings);
        s3::ensure_bucket(&bucket_client, &s3_settings.bucket).await?;
        // The key only tags subjects in log lines here (collecting masks nothing): without
        // the privacy section the tags are keyed by a key of this process.
        let key = match &settings.privacy {
            Some(privacy) => privacy.hash_key.clone(),
            None => SecretString::from(format!(
                "{}{}",
                uuid::Uuid::new_v4().simple(),
                uuid::Uuid::new_v4().simple()
            )),
        };
        let exporter = Arc::new(Exporter::new(
            served.clone(),
            map.clone(),
            bucket_client.clone(),
            &s3_settings.bucket,
            IdentityHasher::new(key),
        )?);
        let daemon = WorkerDaemon::start("exporter", settings, &worker).await?;
        let mut loops = Vec::with_capacity(served.len() + 1);
        for store in &served {
            let durable = Durable::Exporter(store.name.clone());
            loops.push(daemon.worker_loop(durable, exporter.clone(), mode).await?);
        }
        loops.push(
            daemon
                .worker_loop(Durable::Assembler, exporter.clone(), mode)
                .await?,
        );
        let publisher = daemon.publisher();
        let census =
            census::start(publisher.jetstream().client(), publisher.names(), &served).await?;
        let bucket = s3_settings.bucket.clone();
        let readiness = stores::readiness(&served, Readiness::new()).check("s3", move || {
            let client = bucket_client.clone();
            let bucket = bucket.clone();
            async move {
                client
                    .head_bucket()
                    .bucket(bucket)
                    .send()
                    .await
                    .map(drop)
                    .map_err(|e| aws_sdk_s3::error::DisplayErrorContext(e).to_string())
            }
        });
        Ok(Self {
            daemon,
            loops,
            readiness,
            mode,
            exporter,
            _census: census,
        })
    }

    /// The task handler, shared by every loop (to read how many tasks it handled).
    pub fn exporter(&self) -> Arc<Exporter> {
        self.exporter.clone()
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
