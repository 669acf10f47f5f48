//! A throwaway deployment of the real daemons, and the ledger queries the benchmarks read.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use lethe_api::keys::{self, Scope};
use lethe_tests::process::DaemonProcess;
use lethe_tests::{Namespace, Services};
use sqlx::PgPool;

use crate::report::{Percentiles, percentiles};

/// How long an interrupted benchmark may take to remove a namespace: emptying a bucket of a
/// few hundred thousand sample objects takes minutes on the local S3 server.
const INTERRUPTED_CLEANUP_TIMEOUT: Duration = Duration::from_secs(900);

/// A deployment in its own namespace: ledger, NATS prefix, configuration file, log directory.
pub struct Deployment {
    ns: Namespace,
    pub pool: PgPool,
    config: std::path::PathBuf,
    env: Vec<(String, String)>,
    dir: tempfile::TempDir,
}

impl Deployment {
    pub async fn new(
        services: &Services,
        data_map: &str,
        env: Vec<(String, String)>,
        extra: &str,
    ) -> Result<Self> {
        let ns = Namespace::create(services)
            .await?
            .with_drop_timeout(INTERRUPTED_CLEANUP_TIMEOUT);
        // The streams go with the namespace, also when the benchmark is interrupted (the
        // namespace's `Drop` runs its hooks).
        let prefix = ns.nats_prefix();
        ns.on_cleanup(move |services| async move {
            let names = lethe_common::nats::Names::new(&prefix)?;
            let client = async_nats::connect(&services.nats_url).await?;
            lethe_common::nats::deprovision(&async_nats::jetstream::new(client), &names)
                .await
                .ok();
            Ok(())
        });
        let ledger = ns.pg_database("ledger").await?;
        let dir = tempfile::tempdir()?;
        eprintln!(
            "deployment: namespace {}, files in {}",
            ns.name(),
            dir.path().display()
        );
        let map = dir.path().join("datamap.toml");
        std::fs::write(&map, data_map)?;
        let config = dir.path().join("lethe.toml");
        let bucket = ns.bucket("lethe").await?;
        let mut text =
            lethe_tests::api::settings_text(services, &ns, &ledger, &services.nats_url, &map)
                .replace("bucket = \"unused\"", &format!("bucket = {bucket:?}"))
                .replace("key_cache_ttl = \"0s\"", "key_cache_ttl = \"30s\"")
                .replace(
                    "max_deliver = 3",
                    "max_deliver = 10\nmax_ack_pending = 20000",
                );
        text.push_str("[telemetry]\nfilter = \"warn\"\n");
        text.push_str(extra);
        std::fs::write(&config, text)?;
        let pool = PgPool::connect(&ledger).await?;
        Ok(Self {
            ns,
            pool,
            config,
            env,
            dir,
        })
    }

    pub async fn start(&self, binary: &str, listen_key: &str) -> Result<DaemonProcess> {
        DaemonProcess::start(binary, &self.config, listen_key, &self.env, self.dir.path()).await
    }

    pub async fn key(&self) -> Result<String> {
        let tenant = keys::ensure_tenant(&self.pool, "bench").await?;
        Ok(keys::create(
            &self.pool,
            tenant,
            "bench",
            &[Scope::RequestsWrite, Scope::RequestsRead],
        )
        .await?
        .secret)
    }

    /// Removes the namespace: ledger, streams, bucket. An interrupted benchmark leaves this
    /// to the namespace's `Drop`, which does the same.
    pub async fn cleanup(self) -> Result<()> {
        self.pool.close().await;
        self.ns.cleanup().await
    }
}

/// Waits until `ids` are all finished; fails if any failed.
pub async fn wait_finished(pool: &PgPool, first: &str, count: i64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        let (done, failed): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE status = 'completed'), count(*) FILTER (WHERE status = 'failed')
             FROM request WHERE reason = $1",
        )
        .bind(first)
        .fetch_one(pool)
        .await?;
        if failed > 0 {
            let why: Option<String> =
                sqlx::query_scalar("SELECT failure FROM request WHERE status = 'failed' LIMIT 1")
                    .fetch_one(pool)
                    .await?;
            bail!(
                "{failed} requests failed, e.g.: {}",
                why.unwrap_or_default()
            );
        }
        if done >= count {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {done} of {count} requests completed in 30 minutes");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Throughput and latencies of the requests whose reason is `run`, from the ledger.
pub async fn ledger_timings(pool: &PgPool, run: &str) -> Result<(u64, f64, Percentiles)> {
    let rows: Vec<(f64,)> = sqlx::query_as(
        "SELECT EXTRACT(EPOCH FROM (completed_at - received_at))::float8 * 1000 FROM request WHERE reason = $1",
    )
    .bind(run)
    .fetch_all(pool)
    .await?;
    let (span,): (f64,) = sqlx::query_as(
        "SELECT EXTRACT(EPOCH FROM (max(completed_at) - min(received_at)))::float8 FROM request WHERE reason = $1",
    )
    .bind(run)
    .fetch_one(pool)
    .await?;
    Ok((
        rows.len() as u64,
        span,
        percentiles(rows.into_iter().map(|r| r.0).collect()),
    ))
}

/// The sample stores of a namespace of their own, as the daemons under test see them.
pub struct SampleStores {
    ns: Namespace,
    /// Where they are.
    pub options: lethe_sample::ConnectOptions,
    /// Connections to them.
    pub stores: lethe_sample::SampleStores,
}

impl SampleStores {
    /// Creates the sample stores (empty) in a new namespace.
    pub async fn create(services: &Services) -> Result<Self> {
        let ns = Namespace::create(services)
            .await?
            .with_drop_timeout(INTERRUPTED_CLEANUP_TIMEOUT);
        eprintln!("sample stores: namespace {}", ns.name());
        let options = lethe_tests::sample_options(&ns).await?;
        let stores = lethe_sample::SampleStores::connect(&options).await?;
        Ok(Self {
            ns,
            options,
            stores,
        })
    }

    /// Seeds them, printing how long it took.
    pub async fn seed(&self, options: &lethe_sample::SeedOptions) -> Result<()> {
        eprintln!("seeding {} subject(s)", options.subjects);
        let started = Instant::now();
        let report = lethe_sample::seed(&self.stores, options).await?;
        eprintln!(
            "seeded {} records in {:.0} s",
            report.counts.total(),
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }

    /// The data map pointed at them.
    pub fn data_map(&self) -> Result<String> {
        lethe_tests::sample_datamap(&self.options)
    }

    /// The variables naming their URLs, as the data map's `url_env` keys expect.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            (
                "ACCOUNTS_DATABASE_URL".to_owned(),
                self.options.accounts_url.clone(),
            ),
            (
                "CHAT_DATABASE_URL".to_owned(),
                self.options.chat_url.clone(),
            ),
            (
                "SESSIONS_REDIS_URL".to_owned(),
                self.options.sessions_url.clone(),
            ),
        ]
    }

    /// Drops them.
    pub async fn cleanup(self) -> Result<()> {
        drop(self.stores);
        self.ns
            .cleanup()
            .await
            .context("while removing the seeded stores")
    }
}

/// Where the requests of run `run` spent their time, from the ledger: per store, from its task
/// being queued to the worker finishing it; and the coordinator's turnaround, from a phase's
/// last task finishing to the next phase's tasks being queued (or the request completing).
pub async fn stage_timings(pool: &PgPool, run: &str) -> Result<Vec<(String, Percentiles)>> {
    let rows: Vec<(String, f64)> = sqlx::query_as(
        "SELECT t.kind || ' ' || t.store,
                EXTRACT(EPOCH FROM (t.finished_at - t.created_at))::float8 * 1000
         FROM task t JOIN request r ON r.id = t.request_id
         WHERE r.reason = $1 AND t.finished_at IS NOT NULL
         UNION ALL
         SELECT 'coordinator turnaround',
                EXTRACT(EPOCH FROM (COALESCE(
                    (SELECT min(n.created_at) FROM task n
                     WHERE n.request_id = p.request_id AND n.created_at > p.last),
                    r.completed_at) - p.last))::float8 * 1000
         FROM (SELECT request_id, phase, max(finished_at) AS last FROM task GROUP BY request_id, phase) p
         JOIN request r ON r.id = p.request_id
         WHERE r.reason = $1 AND p.last IS NOT NULL",
    )
    .bind(run)
    .fetch_all(pool)
    .await?;
    let mut by_stage: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    for (stage, ms) in rows {
        by_stage.entry(stage).or_default().push(ms);
    }
    Ok(by_stage
        .into_iter()
        .map(|(stage, samples)| (stage, percentiles(samples)))
        .collect())
}
