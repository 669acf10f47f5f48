//! Export: one subject with at least `--size` of data (rows plus attachments) exported into
//! one zip by the real api and exporter; wall time, throughput and the exporter's peak RSS.

use std::time::Instant;

use anyhow::{Context as _, Result, bail};
use lethe_sample::{FileKind, SeedOptions};
use lethe_tests::Services;
use serde_json::json;
use sha2::{Digest as _, Sha256};

use crate::cpu::Snapshot;
use crate::deployment::{Deployment, SampleStores, wait_finished};

/// Attachments of the subject the benchmark exports: the most a sample subject has, so the
/// archive holds several large files rather than one.
const ATTACHMENTS: usize = 3;

/// The first seed whose subject 1 has [`ATTACHMENTS`] attachments.
fn seed_with_attachments() -> Result<u64> {
    (1..1_000)
        .find(|&seed| {
            lethe_sample::subject(seed, 1)
                .files
                .iter()
                .filter(|f| f.kind == FileKind::Attachment)
                .count()
                == ATTACHMENTS
        })
        .context("no seed below 1000 gives subject 1 three attachments")
}

/// Runs the export benchmark for a subject of about `size_mib` MiB.
pub async fn run(size_mib: u64) -> Result<()> {
    if size_mib == 0 {
        bail!("--size-mib must be at least 1");
    }
    let services = Services::from_env();
    let sample = SampleStores::create(&services).await?;
    let seed = seed_with_attachments()?;
    let attachment_bytes = (size_mib << 20).div_ceil(ATTACHMENTS as u64);
    sample
        .seed(&SeedOptions {
            subjects: 1,
            seed,
            attachment_bytes: Some(attachment_bytes),
            s3_concurrency: 1,
            ..SeedOptions::default()
        })
        .await?;
    let map = sample.data_map()?;
    // The eraser resolves the subject's identities (its user id) before the exporter collects.
    let extra = "[exporter]\nlisten = \"127.0.0.1:0\"\n[eraser]\nlisten = \"127.0.0.1:0\"\n";
    let deployment = Deployment::new(&services, &map, sample.env(), extra).await?;
    let api = deployment.start("lethe-api", "LETHE__API__LISTEN").await?;
    let exporter = deployment
        .start("lethe-exporter", "LETHE__EXPORTER__LISTEN")
        .await?;
    let eraser = deployment
        .start("lethe-eraser", "LETHE__ERASER__LISTEN")
        .await?;
    let base = format!("http://{}", api.address);
    let key = deployment.key().await?;
    let email = lethe_sample::subject(seed, 1).identities.email;

    eprintln!("export: one subject, {ATTACHMENTS} attachments of {attachment_bytes} bytes each");
    let client = reqwest::Client::new();
    let before = Snapshot::take();
    let response = client
        .post(format!("{base}/v1/requests"))
        .bearer_auth(&key)
        .json(&json!({"kind": "access", "subject": {"email": email}, "reason": "export"}))
        .send()
        .await?;
    if response.status().as_u16() != 202 {
        bail!("POST answered {}", response.status());
    }
    let accepted: serde_json::Value = response.json().await?;
    let id = accepted["id"]
        .as_str()
        .context("the API's answer has no id")?
        .to_owned();
    wait_finished(&deployment.pool, "export", 1).await?;
    let after = Snapshot::take();
    let (wall, bytes, sha256): (f64, i64, String) = sqlx::query_as(
        "SELECT EXTRACT(EPOCH FROM (r.completed_at - r.received_at))::float8, e.bytes, e.sha256
         FROM request r JOIN export e ON e.request_id = r.id WHERE r.reason = 'export'",
    )
    .fetch_one(&deployment.pool)
    .await?;
    let exporter_rss = exporter.peak_rss_bytes().unwrap_or(0);
    // Where the time went: each task from its creation (queued) to its end, relative to the
    // request's arrival.
    let phases: Vec<(String, String, f64, f64)> = sqlx::query_as(
        "SELECT t.kind, t.store,
                EXTRACT(EPOCH FROM (t.created_at - r.received_at))::float8,
                EXTRACT(EPOCH FROM (t.finished_at - r.received_at))::float8
         FROM task t JOIN request r ON r.id = t.request_id WHERE r.reason = 'export'
         ORDER BY 3, 4",
    )
    .fetch_all(&deployment.pool)
    .await?;

    eprintln!("downloading the archive through its presigned link");
    let downloaded = Instant::now();
    let response = client
        .get(format!("{base}/v1/requests/{id}/export"))
        .bearer_auth(&key)
        .send()
        .await?;
    if !response.status().is_success() {
        bail!("the download answered {}", response.status());
    }
    let mut response = response;
    let (mut received, mut hasher) = (0u64, Sha256::new());
    while let Some(chunk) = response.chunk().await? {
        received += chunk.len() as u64;
        hasher.update(&chunk);
    }
    let download = downloaded.elapsed().as_secs_f64();
    if i64::try_from(received)? != bytes || hex::encode(hasher.finalize()) != sha256 {
        bail!("the downloaded archive differs from the one the ledger records");
    }

    let mb = bytes as f64 / 1e6;
    println!();
    println!("| benchmark | archive MB | wall s | throughput | exporter peak RSS |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    println!(
        "| export of one subject, POST to completed (collect + zip + upload) | {mb:.0} | {wall:.1} | {:.0} MB/s | {} MiB |",
        mb / wall,
        exporter_rss >> 20
    );
    println!(
        "| download through the presigned link (SHA-256 checked) | {mb:.0} | {download:.1} | {:.0} MB/s | |",
        mb / download
    );
    println!();
    println!("| task | store | queued at s | finished at s |");
    println!("| --- | --- | ---: | ---: |");
    for (kind, store, queued, finished) in phases {
        println!("| {kind} | {store} | {queued:.2} | {finished:.2} |");
    }
    after.print_since(&before);
    exporter.stop()?;
    eraser.stop()?;
    api.stop()?;
    deployment.cleanup().await?;
    sample.cleanup().await
}
