//! Console: each console page's load time (server side, as a browser's request sees it) on a
//! deployment seeded with requests spread over the last 30 days, some completed.

use std::time::Instant;

use anyhow::{Result, ensure};
use lethe_api::keys::{self, Scope};
use lethe_tests::Services;
use lethe_tests::browser::ConsoleClient;
use serde_json::json;

use crate::deployment::Deployment;
use crate::intake::post_many;
use crate::report::{percentiles, table};

/// Runs the console benchmark: `requests` seeded, each page loaded `loads` times.
pub async fn run(requests: u64, loads: u64) -> Result<()> {
    let services = Services::from_env();
    let deployment = Deployment::new(
        &services,
        lethe_tests::api::API_TEST_DATA_MAP,
        Vec::new(),
        "",
    )
    .await?;
    let api = deployment.start("lethe-api", "LETHE__API__LISTEN").await?;
    let base = format!("http://{}", api.address);
    let key = deployment.key().await?;
    let tenant = keys::ensure_tenant(&deployment.pool, "bench").await?;
    let admin = keys::create(
        &deployment.pool,
        tenant,
        "bench-admin",
        &[Scope::RequestsWrite, Scope::RequestsRead, Scope::Admin],
    )
    .await?
    .secret;

    eprintln!("seeding {requests} requests");
    post_many(&base, &key, requests, 32, |i| {
        json!({"kind": if i % 3 == 0 { "access" } else { "erasure" }, "subject": {"email": format!("console-{i}@example.com")}})
    })
    .await?;
    // Spread them over 30 days and finish two thirds, as a month of traffic would look.
    sqlx::query(
        "UPDATE request SET received_at = now() - (random() * interval '30 days'),
                status = CASE WHEN random() < 0.66 THEN 'completed' ELSE status END",
    )
    .execute(&deployment.pool)
    .await?;
    sqlx::query(
        "UPDATE request SET completed_at = received_at + (random() * interval '2 hours'), phase = 'done'
         WHERE status = 'completed'",
    )
    .execute(&deployment.pool)
    .await?;
    let one: lethe_common::ids::RequestId =
        sqlx::query_scalar("SELECT id FROM request ORDER BY random() LIMIT 1")
            .fetch_one(&deployment.pool)
            .await?;

    let console = ConsoleClient::login(&base, &admin).await?;
    let pages = [
        ("dashboard", "/console".to_owned()),
        ("requests", "/console/requests".to_owned()),
        (
            "requests, overdue",
            "/console/requests?overdue=true".to_owned(),
        ),
        ("request", format!("/console/requests/{one}")),
        (
            "request, live part",
            format!("/console/requests/{one}/live"),
        ),
        ("incidents", "/console/incidents".to_owned()),
        ("backups & retention", "/console/backups".to_owned()),
        ("privacy center", "/privacy/bench".to_owned()),
    ];
    let mut rows = Vec::new();
    for (name, path) in pages {
        let mut samples = Vec::new();
        let started = Instant::now();
        for _ in 0..loads {
            let sent = Instant::now();
            let (status, _, _) = console.get(&path).await?;
            ensure!(status == 200, "{path} answered {status}");
            samples.push(sent.elapsed().as_secs_f64() * 1000.0);
        }
        let wall = started.elapsed().as_secs_f64();
        rows.push((
            format!("console: {name}"),
            loads,
            wall,
            loads as f64 / wall,
            "pages/s",
            percentiles(samples),
        ));
    }
    table(&rows);
    api.stop()?;
    deployment.cleanup().await
}
