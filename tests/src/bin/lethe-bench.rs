//! `lethe-bench`: Lethe's benchmark harness. Each benchmark starts the real daemons (release
//! binaries beside this one) as processes in a throwaway namespace on the local services,
//! drives them as a client would, and prints a table. Latencies are taken from the ledger's own
//! timestamps (`received_at` -> `completed_at`), so measuring adds no load.
//!
//! Run from the repository after `scripts/stack services`:
//! `cargo build --release --bins && target/release/lethe-bench intake`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};
use lethe_api::keys::{self, Scope};
use lethe_tests::process::DaemonProcess;
use lethe_tests::{Namespace, Services};
use serde_json::json;
use sqlx::PgPool;

/// Lethe's benchmark harness: each benchmark runs the real daemons against the local services
/// (start them with `scripts/stack services`) and prints a table.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// Intake: POST /v1/requests throughput and latency percentiles (no workers running).
    Intake {
        /// Requests to send (after a warm-up of 500).
        #[arg(long, default_value_t = 20_000)]
        requests: u64,
        /// Requests in flight at once.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
    },
    /// Erasure: subjects erased per second across the four sample stores (a burst), and latency
    /// from POST to completed at an offered rate.
    Erasure {
        /// Sample subjects seeded first.
        #[arg(long, default_value_t = 100_000)]
        subjects: u64,
        /// Erasures filed at once for the throughput run.
        #[arg(long, default_value_t = 2_000)]
        burst: u64,
        /// Erasures filed at the offered rate for the latency run.
        #[arg(long, default_value_t = 1_000)]
        paced: u64,
        /// Offered rate of the latency run, requests per second.
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        /// Eraser processes (each serving every store).
        #[arg(long, default_value_t = 1)]
        erasers: usize,
        /// Tasks each eraser handles at once per store.
        #[arg(long, default_value_t = 16)]
        eraser_concurrency: usize,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    lethe_common::cli::report(run(Cli::parse()).await)
}

async fn run(cli: Cli) -> Result<()> {
    println!("{}", machine());
    match cli.bench {
        Bench::Intake {
            requests,
            concurrency,
        } => intake(requests, concurrency).await,
        Bench::Erasure {
            subjects,
            burst,
            paced,
            rate,
            erasers,
            eraser_concurrency,
        } => erasure(subjects, burst, paced, rate, erasers, eraser_concurrency).await,
    }
}

/// One line describing the machine, for the README's tables.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or_else(String::new, |kib| format!(", {} GiB", kib / 1024 / 1024));
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("machine: {cores} cores ({cpu}){memory}")
}

/// A deployment in its own namespace: ledger, NATS prefix, configuration file, log directory.
struct Deployment {
    ns: Namespace,
    pool: PgPool,
    config: std::path::PathBuf,
    env: Vec<(String, String)>,
    dir: tempfile::TempDir,
}

impl Deployment {
    async fn new(
        services: &Services,
        data_map: &str,
        env: Vec<(String, String)>,
        extra: &str,
    ) -> Result<Self> {
        let ns = Namespace::create(services).await?;
        let ledger = ns.pg_database("ledger").await?;
        let dir = tempfile::tempdir()?;
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

    async fn start(&self, binary: &str, listen_key: &str) -> Result<DaemonProcess> {
        DaemonProcess::start(binary, &self.config, listen_key, &self.env, self.dir.path()).await
    }

    async fn key(&self) -> Result<String> {
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

    async fn cleanup(self) -> Result<()> {
        self.pool.close().await;
        if let Ok(client) = async_nats::connect(&self.ns.services().nats_url).await {
            let names = lethe_common::nats::Names::new(&self.ns.nats_prefix())?;
            lethe_common::nats::deprovision(&async_nats::jetstream::new(client), &names)
                .await
                .ok();
        }
        self.ns.cleanup().await
    }
}

/// Latency percentiles of `samples` (milliseconds).
struct Percentiles {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

fn percentiles(mut samples: Vec<f64>) -> Percentiles {
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| {
        if samples.is_empty() {
            return 0.0;
        }
        let index = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples[index.min(samples.len() - 1)]
    };
    Percentiles {
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
        max: at(1.0),
    }
}

fn table(rows: &[(String, u64, f64, f64, &str, Percentiles)]) {
    println!();
    println!("| benchmark | requests | wall s | throughput | p50 ms | p90 ms | p99 ms | max ms |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (name, count, wall, rate, unit, p) in rows {
        println!(
            "| {name} | {count} | {wall:.1} | {rate:.0} {unit} | {:.1} | {:.1} | {:.1} | {:.1} |",
            p.p50, p.p90, p.p99, p.max
        );
    }
}

/// POSTs `count` requests built by `body(i)` with `concurrency` in flight; returns the
/// client-side latencies in milliseconds and the wall time.
async fn post_many(
    base: &str,
    key: &str,
    count: u64,
    concurrency: usize,
    body: impl Fn(u64) -> serde_json::Value + Send + Sync + 'static,
) -> Result<(Vec<f64>, Duration)> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()?;
    let next = Arc::new(AtomicU64::new(0));
    let body = Arc::new(body);
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (client, next, body) = (client.clone(), next.clone(), body.clone());
        let url = format!("{base}/v1/requests");
        let key = key.to_owned();
        workers.spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return Ok::<_, anyhow::Error>(latencies);
                }
                let sent = Instant::now();
                let response = client
                    .post(&url)
                    .bearer_auth(&key)
                    .json(&body(i))
                    .send()
                    .await?;
                let status = response.status();
                response.bytes().await?;
                if status.as_u16() != 202 {
                    bail!("POST answered {status}");
                }
                latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
            }
        });
    }
    let mut all = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    while let Some(joined) = workers.join_next().await {
        all.extend(joined??);
    }
    Ok((all, started.elapsed()))
}

async fn intake(requests: u64, concurrency: usize) -> Result<()> {
    let services = Services::from_env();
    let map = lethe_tests::api::API_TEST_DATA_MAP;
    let deployment = Deployment::new(&services, map, Vec::new(), "").await?;
    let api = deployment.start("lethe-api", "LETHE__API__LISTEN").await?;
    let base = format!("http://{}", api.address);
    let key = deployment.key().await?;
    let body =
        |i: u64| json!({"kind": "erasure", "subject": {"email": format!("bench-{i}@example.com")}});

    eprintln!("warming up (500 requests)");
    post_many(&base, &key, 500, concurrency, body).await?;
    eprintln!("intake: {requests} requests, {concurrency} in flight");
    let (latencies, wall) = post_many(&base, &key, requests, concurrency, move |i| {
        json!({"kind": "erasure", "subject": {"email": format!("bench-{}@example.com", i + 1_000_000)}})
    })
    .await?;
    let rate = requests as f64 / wall.as_secs_f64();
    table(&[(
        format!("intake, {concurrency} in flight"),
        requests,
        wall.as_secs_f64(),
        rate,
        "req/s",
        percentiles(latencies),
    )]);
    println!(
        "api peak RSS: {} MiB",
        api.peak_rss_bytes().unwrap_or(0) / 1024 / 1024
    );
    api.stop()?;
    deployment.cleanup().await
}

/// Waits until `ids` are all finished; fails if any failed.
async fn wait_finished(pool: &PgPool, first: &str, count: i64) -> Result<()> {
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
                "{failed} erasures failed, e.g.: {}",
                why.unwrap_or_default()
            );
        }
        if done >= count {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {done} of {count} erasures completed in 30 minutes");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Throughput and latencies of the requests whose reason is `run`, from the ledger.
async fn ledger_timings(pool: &PgPool, run: &str) -> Result<(u64, f64, Percentiles)> {
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

async fn erasure(
    subjects: u64,
    burst: u64,
    paced: u64,
    rate: f64,
    erasers: usize,
    eraser_concurrency: usize,
) -> Result<()> {
    if burst + paced > subjects {
        bail!("--burst plus --paced must not exceed --subjects");
    }
    let services = Services::from_env();
    let seed_ns = Namespace::create(&services).await?;
    let options = lethe_tests::sample_options(&seed_ns).await?;
    let stores = lethe_sample::SampleStores::connect(&options).await?;
    eprintln!("seeding {subjects} subjects");
    let seeded = Instant::now();
    let seed = 1;
    let report =
        lethe_sample::seed(&stores, &lethe_sample::SeedOptions::new(subjects, seed)).await?;
    eprintln!(
        "seeded {} records in {:.0} s",
        report.counts.total(),
        seeded.elapsed().as_secs_f64()
    );
    let env = vec![
        (
            "ACCOUNTS_DATABASE_URL".to_owned(),
            options.accounts_url.clone(),
        ),
        ("CHAT_DATABASE_URL".to_owned(), options.chat_url.clone()),
        (
            "SESSIONS_REDIS_URL".to_owned(),
            options.sessions_url.clone(),
        ),
    ];
    let map = lethe_tests::sample_datamap(&options)?;
    let extra = format!("[eraser]\nlisten = \"127.0.0.1:0\"\nconcurrency = {eraser_concurrency}\n");
    let deployment = Deployment::new(&services, &map, env, &extra).await?;
    let api = deployment.start("lethe-api", "LETHE__API__LISTEN").await?;
    let mut eraser_processes = Vec::new();
    for _ in 0..erasers {
        eraser_processes.push(
            deployment
                .start("lethe-eraser", "LETHE__ERASER__LISTEN")
                .await?,
        );
    }
    let base = format!("http://{}", api.address);
    let key = deployment.key().await?;
    let email = move |i: u64| lethe_sample::subject(seed, i).identities.email;

    eprintln!("throughput: {burst} erasures at once");
    let body = move |i: u64| json!({"kind": "erasure", "subject": {"email": email(i + 1)}, "reason": "burst"});
    post_many(&base, &key, burst, 64, body).await?;
    wait_finished(&deployment.pool, "burst", i64::try_from(burst)?).await?;
    let (count, span, burst_latency) = ledger_timings(&deployment.pool, "burst").await?;
    let throughput = count as f64 / span;

    eprintln!("latency: {paced} erasures at {rate} per second");
    let client = reqwest::Client::new();
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sends = tokio::task::JoinSet::new();
    for i in 0..paced {
        ticker.tick().await;
        let request = client
            .post(format!("{base}/v1/requests"))
            .bearer_auth(&key)
            .json(&json!({"kind": "erasure", "subject": {"email": email(burst + i + 1)}, "reason": "paced"}));
        sends.spawn(async move { request.send().await.map(|r| r.status().as_u16()) });
    }
    while let Some(sent) = sends.join_next().await {
        let status = sent??;
        if status != 202 {
            bail!("POST answered {status}");
        }
    }
    wait_finished(&deployment.pool, "paced", i64::try_from(paced)?).await?;
    let (paced_count, paced_span, paced_latency) =
        ledger_timings(&deployment.pool, "paced").await?;

    table(&[
        (
            format!("erasure burst, 4 stores, {subjects} subjects, {erasers} eraser(s)"),
            count,
            span,
            throughput,
            "subjects/s",
            burst_latency,
        ),
        (
            format!("erasure at {rate:.0}/s offered, POST to completed"),
            paced_count,
            paced_span,
            paced_count as f64 / paced_span,
            "subjects/s",
            paced_latency,
        ),
    ]);
    for (i, eraser) in eraser_processes.iter().enumerate() {
        println!(
            "eraser {i} peak RSS: {} MiB",
            eraser.peak_rss_bytes().unwrap_or(0) / 1024 / 1024
        );
    }
    println!(
        "api peak RSS: {} MiB",
        api.peak_rss_bytes().unwrap_or(0) / 1024 / 1024
    );
    for eraser in eraser_processes {
        eraser.stop()?;
    }
    api.stop()?;
    deployment.cleanup().await?;
    drop(stores);
    seed_ns
        .cleanup()
        .await
        .context("while removing the seeded stores")?;
    Ok(())
}
