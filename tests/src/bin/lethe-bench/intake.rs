//! Intake: `POST /v1/requests` throughput and latency, no workers running.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use lethe_tests::Services;
use serde_json::json;

use crate::cpu::Snapshot;
use crate::deployment::Deployment;
use crate::report::{percentiles, table};

/// POSTs `count` requests built by `body(i)` with `concurrency` in flight; returns the
/// client-side latencies in milliseconds and the wall time.
pub async fn post_many(
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

/// Runs the intake benchmark.
pub async fn run(requests: u64, concurrency: usize) -> Result<()> {
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
    let before = Snapshot::take();
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
    Snapshot::take().print_since(&before);
    println!(
        "api peak RSS: {} MiB",
        api.peak_rss_bytes().unwrap_or(0) / 1024 / 1024
    );
    api.stop()?;
    deployment.cleanup().await
}
