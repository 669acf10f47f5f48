//! Erasure: subjects erased per second across the four sample stores, and latency at an
//! offered rate.

use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use lethe_tests::Services;
use serde_json::json;

use crate::cpu::Snapshot;
use crate::deployment::{Deployment, SampleStores, ledger_timings, stage_timings, wait_finished};
use crate::intake::post_many;
use crate::report::table;

/// The erasure benchmark's parameters.
#[derive(Debug, clap::Args)]
pub struct Run {
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
    /// Eraser processes (each serving every store); repeat (`--erasers 1 --erasers 2`) to run
    /// each count in turn on the same seeded stores, each on subjects not erased before.
    #[arg(long, default_values_t = [1])]
    erasers: Vec<usize>,
    /// Tasks each eraser handles at once per store.
    #[arg(long, default_value_t = 16)]
    eraser_concurrency: usize,
    /// Erase tasks carried out together at most (`eraser.batch_size`), and results applied in
    /// one ledger transaction (`api.coordinator_batch_size`); 1 turns batching off.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Leave this store out of the data map (repeatable): to see what the others sustain
    /// when one store's server is the limit.
    #[arg(long = "skip-store", value_name = "STORE")]
    skip_stores: Vec<String>,
}

/// Runs the erasure benchmark.
pub async fn run(run: Run) -> Result<()> {
    let Run {
        subjects,
        burst,
        paced,
        rate,
        erasers,
        eraser_concurrency,
        batch_size,
        skip_stores,
    } = run;
    let services = Services::from_env();
    let sample = SampleStores::create(&services).await?;
    let seed = 1;
    sample
        .seed(&lethe_sample::SeedOptions::new(subjects, seed))
        .await?;
    let mut env = sample.env();
    env.push((
        "LETHE__API__COORDINATOR_BATCH_SIZE".to_owned(),
        batch_size.to_string(),
    ));
    let map = without_stores(&sample.data_map()?, &skip_stores)?;
    let stores = 4 - skip_stores.len();
    let extra = format!(
        "[eraser]\nlisten = \"127.0.0.1:0\"\nconcurrency = {eraser_concurrency}\nbatch_size = {batch_size}\n"
    );
    let per_run = burst + paced;
    if per_run * erasers.len() as u64 > subjects {
        bail!("--burst plus --paced, once per --erasers count, must not exceed --subjects");
    }
    let email = move |i: u64| lethe_sample::subject(seed, i).identities.email;
    // Each eraser count gets a deployment of its own and subjects nobody erased yet, so one
    // seeding serves them all.
    for (round, &count) in erasers.iter().enumerate() {
        let first = round as u64 * per_run;
        let deployment = Deployment::new(&services, &map, env.clone(), &extra).await?;
        let api = deployment.start("lethe-api", "LETHE__API__LISTEN").await?;
        let mut eraser_processes = Vec::new();
        for _ in 0..count {
            eraser_processes.push(
                deployment
                    .start("lethe-eraser", "LETHE__ERASER__LISTEN")
                    .await?,
            );
        }
        let base = format!("http://{}", api.address);
        let key = deployment.key().await?;

        eprintln!("throughput: {burst} erasures at once, {count} eraser(s)");
        let body = move |i: u64| json!({"kind": "erasure", "subject": {"email": email(first + i + 1)}, "reason": "burst"});
        let before = Snapshot::take();
        post_many(&base, &key, burst, 64, body).await?;
        wait_finished(&deployment.pool, "burst", i64::try_from(burst)?).await?;
        let burst_cpu = (before, Snapshot::take());
        let (burst_count, span, burst_latency) = ledger_timings(&deployment.pool, "burst").await?;

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
                .json(&json!({"kind": "erasure", "subject": {"email": email(first + burst + i + 1)}, "reason": "paced"}));
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
                format!(
                    "erasure burst, {stores} stores, {subjects} subjects, {count} eraser(s), batches of {batch_size}"
                ),
                burst_count,
                span,
                burst_count as f64 / span,
                "subjects/s",
                burst_latency,
            ),
            (
                format!("erasure at {rate:.0}/s offered, {count} eraser(s), POST to completed"),
                paced_count,
                paced_span,
                paced_count as f64 / paced_span,
                "subjects/s",
                paced_latency,
            ),
        ]);
        burst_cpu.1.print_since(&burst_cpu.0);
        print_stages(
            "Where the paced requests spent their time",
            &stage_timings(&deployment.pool, "paced").await?,
        );
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
    }
    sample.cleanup().await
}

/// The data map `map` without the stores `skip`.
fn without_stores(map: &str, skip: &[String]) -> Result<String> {
    let mut map: toml::Table = toml::from_str(map)?;
    let stores = map
        .get_mut("stores")
        .and_then(|s| s.as_table_mut())
        .context("the data map has no [stores]")?;
    for name in skip {
        if stores.remove(name).is_none() {
            bail!("--skip-store {name}: the sample data map has no such store");
        }
    }
    Ok(toml::to_string(&map)?)
}

/// Prints per-stage latency percentiles.
fn print_stages(title: &str, stages: &[(String, crate::report::Percentiles)]) {
    println!("\n{title}:\n");
    println!("| stage | p50 ms | p90 ms | p99 ms | max ms |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (stage, p) in stages {
        println!(
            "| {stage} | {:.1} | {:.1} | {:.1} | {:.1} |",
            p.p50, p.p90, p.p99, p.max
        );
    }
}
