//! Chaos on a three-node JetStream cluster: Lethe's streams replicated three times, the
//! daemons given all three servers, and the server leading the tasks stream killed with
//! SIGKILL in the middle of a burst of erasures, then started again.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use lethe_tests::e2e::{Daemon, Deployment, Options};
use lethe_tests::{NatsCluster, Services};
use tokio::time::Instant;

use crate::chaos::{assert_each_request_counted_once, burst, erase_tasks_done, reference_digest};

/// A thousand erasures on a debug build, a leader election and a node catching up: longer
/// than the single-server chaos tests.
const TEST_TIMEOUT: Duration = Duration::from_secs(1200);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tasks_stream_leader_killed_during_a_burst_of_1000_erasures_loses_none_and_repeats_none()
-> Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, leader_killed_during_a_burst())
        .await
        .context("the test did not finish in time")?
}

async fn leader_killed_during_a_burst() -> Result<()> {
    const SUBJECTS: u64 = 1020;
    const ERASED: u64 = 1000;
    let services = Services::from_env();
    let mut cluster = NatsCluster::start().await?;
    let options = Options {
        subjects: SUBJECTS,
        seed: 11,
        // Every server: a daemon whose server dies reconnects to a survivor.
        nats_url: Some(cluster.urls()),
        filter: std::env::var("LETHE_CHAOS_FILTER").unwrap_or_else(|_| "info".to_owned()),
        operator_key: false,
    };
    let seed = options.seed;
    let reference = tokio::spawn({
        let services = services.clone();
        async move { reference_digest(&services, SUBJECTS, seed, ERASED).await }
    });
    let mut deployment = Deployment::create(&services, options).await?;
    deployment.set_config("nats", "replicas", 3.into())?;
    deployment.set_config("eraser", "concurrency", 8.into())?;
    deployment.start(Daemon::Api).await?;
    deployment.start(Daemon::Eraser).await?;

    // The api provisioned every stream with three replicas, one on each node.
    let jetstream = async_nats::jetstream::new(cluster.client().await?);
    let names = deployment.names.clone();
    for stream in [
        names.tasks_stream(),
        names.results_stream(),
        names.events_stream(),
        names.dead_stream(),
    ] {
        let mut handle = jetstream.get_stream(&stream).await?;
        let info = handle.info().await?;
        let followers = info.cluster.as_ref().map_or(0, |c| c.replicas.len());
        ensure!(
            info.config.num_replicas == 3 && followers == 2,
            "stream {stream}: {} replicas, {followers} followers",
            info.config.num_replicas
        );
    }

    let ids = burst(&deployment, ERASED, 32).await?;
    let total = 4 * i64::try_from(ERASED)?;
    let deadline = Instant::now() + Duration::from_secs(300);
    let done_at_kill = loop {
        let done = erase_tasks_done(&deployment, &ids).await?;
        if done >= 100 {
            ensure!(
                done < total - 400,
                "the burst was nearly over ({done} erase tasks done) before the kill"
            );
            break done;
        }
        ensure!(
            Instant::now() < deadline,
            "only {done} erase tasks done before the kill"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    // Kill the server leading the tasks stream, the one every task goes through.
    let tasks = names.tasks_stream();
    let leader = cluster.stream_leader(&tasks).await?;
    cluster.kill(&leader)?;
    let killed_at = Instant::now();
    let successor = cluster.stream_leader(&tasks).await?;
    ensure!(
        successor != leader,
        "{leader} was killed but is still reported as the leader"
    );
    eprintln!(
        "killed {leader} with {done_at_kill} of {total} erase tasks done; {successor} leads {tasks} after {:?}",
        killed_at.elapsed()
    );

    // Work goes on through the two survivors before the dead node comes back.
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let done = erase_tasks_done(&deployment, &ids).await?;
        if done >= (done_at_kill + 200).min(total) {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "no progress without {leader}: {done} erase tasks done, {done_at_kill} at the kill\n{}\n{}",
            deployment.consumers_state().await,
            deployment.log_problems()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.restart(&leader).await?;
    eprintln!("{leader} back after {:?}", killed_at.elapsed());

    deployment
        .wait_all_completed_progressing(&ids, Duration::from_secs(600), Duration::from_secs(120))
        .await?;
    assert_each_request_counted_once(&deployment, &ids).await?;
    let expected = reference.await.context("the reference run panicked")??;
    let actual = lethe_tests::digest::sample_digest(&deployment.stores).await?;
    let differing: Vec<&String> = expected
        .keys()
        .chain(actual.keys())
        .filter(|k| expected.get(*k) != actual.get(*k))
        .collect();
    ensure!(
        differing.is_empty(),
        "the stores differ from an undisturbed erasure of the same subjects in {differing:?}"
    );
    eprintln!("{}", problems_by_message(&deployment)?);
    // While the leader is elected the server refuses pulls at once: a loop that pulled again
    // at once spun, logging thousands of lines.
    let mut spins = 0usize;
    for file in deployment.log_files()? {
        spins += std::fs::read_to_string(&file)?
            .lines()
            .filter(|l| l.contains("pull interrupted"))
            .count();
    }
    ensure!(
        spins <= 20,
        "{spins} interrupted pulls logged: the workers spin while the leader is elected"
    );
    deployment.assert_logs_hold_no_identifier()?;
    deployment.cleanup().await?;
    drop(cluster);
    Ok(())
}

/// How often each daemon logged each warning and error message: what losing the leader cost
/// (retried publishes, redelivered tasks), for the test's output.
fn problems_by_message(deployment: &Deployment) -> Result<String> {
    let mut counts: BTreeMap<(String, String, String), usize> = BTreeMap::new();
    for file in deployment.log_files()? {
        let daemon = file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        for line in std::fs::read_to_string(&file)?.lines() {
            let Ok(entry) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let level = entry["level"].as_str().unwrap_or_default();
            if level == "WARN" || level == "ERROR" {
                // Events are flattened: the message and the error are top-level fields.
                let message = entry["message"].as_str().unwrap_or_default();
                let error: String = entry["error"]
                    .as_str()
                    .unwrap_or_default()
                    .chars()
                    .take(160)
                    .collect();
                *counts
                    .entry((
                        daemon.clone(),
                        level.to_owned(),
                        format!("{message} {error}"),
                    ))
                    .or_default() += 1;
            }
        }
    }
    Ok(counts
        .iter()
        .map(|((daemon, level, message), n)| format!("{daemon}: {n} x {level} {message}"))
        .collect::<Vec<_>>()
        .join("\n"))
}
