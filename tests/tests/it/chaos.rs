//! Chaos: the real binaries, each test on a NATS server of its own, through crashes, a NATS
//! restart, a store cut away for a minute and poison messages. Every test is bounded in time
//! (its waits have deadlines; none asserts on a fixed sleep) and removes what it made, also
//! when it fails (the deployment's and the server's `Drop`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use futures::StreamExt as _;
use lethe_common::messages::{Identities, TaskKind, TaskMessage};
use lethe_common::worker::RunMode;
use lethe_tests::e2e::{Daemon, Deployment, Options};
use lethe_tests::eraser_support::EraserBed;
use lethe_tests::proxy::TcpProxy;
use lethe_tests::{NatsServer, Services};
use tokio::time::Instant;

/// Outer bound of every chaos test but the store cut.
pub(crate) const TEST_TIMEOUT: Duration = Duration::from_secs(600);

/// Only the info level: the chaos tests produce far more lines than the end-to-end ones.
fn quiet(subjects: u64, nats: &NatsServer) -> Options {
    Options {
        subjects,
        seed: 11,
        nats_url: Some(nats.url()),
        filter: std::env::var("LETHE_CHAOS_FILTER").unwrap_or_else(|_| "info".to_owned()),
        operator_key: false,
    }
}

/// Files `count` erasures of subjects `1..=count` at once (`in_flight` at a time); returns
/// their ids in subject order.
pub(crate) async fn burst(
    deployment: &Deployment,
    count: u64,
    in_flight: usize,
) -> Result<Vec<String>> {
    let ids: Vec<Result<String>> = futures::stream::iter(1..=count)
        .map(|i| deployment.file_erasure(i))
        .buffered(in_flight)
        .collect()
        .await;
    ids.into_iter().collect()
}

/// Erase tasks done so far among `ids`, from the ledger.
pub(crate) async fn erase_tasks_done(deployment: &Deployment, ids: &[String]) -> Result<i64> {
    let ids: Vec<sqlx::types::Uuid> = ids.iter().map(|i| i.parse()).collect::<Result<_, _>>()?;
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM task WHERE request_id = ANY($1) AND kind = 'erase' AND status = 'done'",
    )
    .bind(&ids)
    .fetch_one(&deployment.ledger)
    .await?)
}

/// The digest of the sample stores of a second namespace seeded alike, after the in-process
/// eraser (no crash, nothing else running) erased subjects `1..=erased` with the identities
/// the coordinator would have given it: what the stores must look like "as if nothing had
/// happened".
pub(crate) async fn reference_digest(
    services: &Services,
    subjects: u64,
    seed: u64,
    erased: u64,
) -> Result<BTreeMap<String, String>> {
    let bed = EraserBed::create(services).await?;
    bed.seed(subjects, seed).await?;
    for i in 1..=erased {
        let s = lethe_sample::subject(seed, i);
        let identities = Identities::from([
            ("email".to_owned(), vec![s.identities.email.clone()]),
            ("user_id".to_owned(), vec![s.user.id.to_string()]),
        ]);
        for store in ["accounts", "chat", "sessions", "files"] {
            bed.publish(&lethe_tests::eraser_support::task(
                TaskKind::Erase,
                store,
                identities.clone(),
            )?)
            .await?;
        }
    }
    let running = bed.spawn(&bed.settings(16)?, RunMode::UntilIdle).await?;
    running.wait().await?;
    let digest = lethe_tests::digest::sample_digest(&bed.stores).await?;
    bed.cleanup().await?;
    Ok(digest)
}

/// "None twice": each request has one task per store and kind, one erasure record, and one
/// `request.completed` audit event.
pub(crate) async fn assert_each_request_counted_once(
    deployment: &Deployment,
    ids: &[String],
) -> Result<()> {
    let uuids: Vec<sqlx::types::Uuid> = ids.iter().map(|i| i.parse()).collect::<Result<_, _>>()?;
    let per_request: Vec<(sqlx::types::Uuid, i64, i64, i64)> = sqlx::query_as(
        "SELECT r.id,
                (SELECT count(*) FROM task t WHERE t.request_id = r.id AND t.kind = 'erase'),
                (SELECT count(*) FROM erasure_log e WHERE e.request_id = r.id),
                (SELECT count(*) FROM audit_event a WHERE a.request_id = r.id AND a.kind = 'request.completed')
         FROM request r WHERE r.id = ANY($1)",
    )
    .bind(&uuids)
    .fetch_all(&deployment.ledger)
    .await?;
    ensure!(
        per_request.len() == ids.len(),
        "requests missing from the ledger"
    );
    for (id, erase_tasks, erasure_records, completions) in per_request {
        ensure!(
            (erase_tasks, erasure_records, completions) == (4, 1, 1),
            "request {id}: {erase_tasks} erase tasks, {erasure_records} erasure records, \
             {completions} completion events (expected 4, 1, 1)"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eraser_killed_during_a_burst_of_500_erasures_leaves_every_request_completed_once_and_the_stores_as_if_nothing_happened()
-> Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, eraser_killed_during_a_burst())
        .await
        .context("the test did not finish in time")?
}

async fn eraser_killed_during_a_burst() -> Result<()> {
    const SUBJECTS: u64 = 520;
    const ERASED: u64 = 500;
    let services = Services::from_env();
    let nats = NatsServer::start().await?;
    let options = quiet(SUBJECTS, &nats);
    let seed = options.seed;
    let reference = tokio::spawn({
        let services = services.clone();
        async move { reference_digest(&services, SUBJECTS, seed, ERASED).await }
    });
    let mut deployment = Deployment::create(&services, options).await?;
    deployment.set_config("eraser", "concurrency", 8.into())?;
    deployment.start(Daemon::Api).await?;
    deployment.start(Daemon::Eraser).await?;

    let ids = burst(&deployment, ERASED, 32).await?;
    // Kill the eraser while it is in the middle of the work: some erasures done, most not.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let done = erase_tasks_done(&deployment, &ids).await?;
        if done >= 100 {
            ensure!(
                done < 4 * i64::try_from(ERASED)? - 200,
                "the burst was nearly over ({done} erase tasks done) before the kill"
            );
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "only {done} erase tasks done before the kill"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    deployment.kill(Daemon::Eraser)?;
    deployment.start(Daemon::Eraser).await?;

    // A task redelivered after the kill waits out its lease (`ack_wait`, 5 s) first; a lost
    // one never comes back, and then nothing moves for long.
    deployment
        .wait_all_completed_progressing(&ids, Duration::from_secs(300), Duration::from_secs(60))
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
    deployment.assert_logs_hold_no_identifier()?;
    deployment.cleanup().await?;
    drop(nats);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_killed_and_restarted_during_intake_loses_no_accepted_request() -> Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, nats_killed_during_intake())
        .await
        .context("the test did not finish in time")?
}

async fn nats_killed_during_intake() -> Result<()> {
    const SUBJECTS: u64 = 90;
    let services = Services::from_env();
    let mut nats = NatsServer::start().await?;
    let mut deployment = Deployment::create(&services, quiet(SUBJECTS, &nats)).await?;
    deployment.start(Daemon::Api).await?;
    deployment.start(Daemon::Eraser).await?;
    let deployment = Arc::new(deployment);

    // A client files erasures one after the other, through what follows.
    let intake = tokio::spawn({
        let deployment = deployment.clone();
        async move {
            let mut accepted = BTreeMap::new();
            let mut refused = 0u32;
            for i in 1..=SUBJECTS {
                match deployment.file_erasure(i).await {
                    Ok(id) => {
                        accepted.insert(i, id);
                    }
                    Err(_) => refused += 1,
                }
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            (accepted, refused)
        }
    });
    let accepted_so_far = |n: i64| {
        let deployment = deployment.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let count: i64 = sqlx::query_scalar("SELECT count(*) FROM request")
                    .fetch_one(&deployment.ledger)
                    .await?;
                if count >= n {
                    return Ok::<_, anyhow::Error>(());
                }
                ensure!(Instant::now() < deadline, "intake stalled at {count}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    accepted_so_far(20).await?;
    nats.stop()?;
    // While NATS is down, intake goes on into the ledger's outbox.
    accepted_so_far(50).await?;
    let waiting: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&deployment.ledger)
        .await?;
    ensure!(
        waiting > 0,
        "nothing waited in the outbox while NATS was down"
    );
    nats.restart().await?;
    let (accepted, refused) = intake.await?;
    ensure!(
        accepted.len() as u64 + u64::from(refused) == SUBJECTS,
        "intake ended early"
    );
    ensure!(
        accepted.len() >= 50,
        "only {} requests accepted",
        accepted.len()
    );

    let ids: Vec<String> = accepted.values().cloned().collect();
    deployment
        .wait_all_completed(&ids, Duration::from_secs(240))
        .await?;
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&deployment.ledger)
        .await?;
    ensure!(left == 0, "{left} messages left in the outbox");
    for i in 1..=SUBJECTS {
        let s = deployment.subject(i);
        let user: Option<i64> = sqlx::query_scalar("SELECT id FROM users WHERE id = $1")
            .bind(s.user.id)
            .fetch_optional(&deployment.stores.accounts)
            .await?;
        let erased = accepted.contains_key(&i);
        ensure!(
            user.is_none() == erased,
            "subject {i}: erased {erased}, still in the store {}",
            user.is_some()
        );
    }
    let Ok(deployment) = Arc::try_unwrap(deployment) else {
        bail!("the deployment is still shared");
    };
    deployment.assert_logs_hold_no_identifier()?;
    deployment.cleanup().await?;
    drop(nats);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_cut_for_a_minute_holds_its_requests_which_complete_after_and_never_before()
-> Result<()> {
    tokio::time::timeout(
        TEST_TIMEOUT + Duration::from_secs(60),
        store_cut_for_a_minute(),
    )
    .await
    .context("the test did not finish in time")?
}

async fn store_cut_for_a_minute() -> Result<()> {
    const SUBJECTS: u64 = 30;
    const ERASED: u64 = 10;
    let services = Services::from_env();
    let nats = NatsServer::start().await?;
    let mut deployment = Deployment::create(&services, quiet(SUBJECTS, &nats)).await?;
    let proxy = TcpProxy::for_url(&deployment.options.chat_url).await?;
    let through = proxy.url_through(&deployment.options.chat_url)?;
    deployment.set_env("CHAT_DATABASE_URL", &through);
    deployment.start(Daemon::Api).await?;
    deployment.start(Daemon::Eraser).await?;

    // One erasure before the cut goes through: the proxy works.
    let warm = deployment.file_erasure(SUBJECTS).await?;
    deployment
        .wait_completed(&warm, Duration::from_secs(60))
        .await?;

    proxy.cut();
    let cut_at = chrono::Utc::now();
    let ids = burst(&deployment, ERASED, 4).await?;
    // For a minute the chat store is away: the other stores go on, chat's tasks wait, and no
    // request may be reported completed.
    let back_at = Instant::now() + Duration::from_secs(60);
    while Instant::now() < back_at {
        let statuses = deployment.statuses(&ids).await?;
        ensure!(
            statuses
                .keys()
                .all(|s| s == "received" || s == "in_progress"),
            "while chat is cut: {statuses:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let pending: i64 = {
        let uuids: Vec<sqlx::types::Uuid> =
            ids.iter().map(|i| i.parse()).collect::<Result<_, _>>()?;
        sqlx::query_scalar(
            "SELECT count(*) FROM task WHERE request_id = ANY($1) AND store = 'chat' AND status <> 'done'",
        )
        .bind(&uuids)
        .fetch_one(&deployment.ledger)
        .await?
    };
    ensure!(
        pending == i64::try_from(ERASED)?,
        "{pending} chat tasks pending after the cut"
    );
    proxy.restore();
    let restored_at = chrono::Utc::now();

    deployment
        .wait_all_completed_progressing(&ids, Duration::from_secs(360), Duration::from_secs(150))
        .await?;
    let uuids: Vec<sqlx::types::Uuid> = ids.iter().map(|i| i.parse()).collect::<Result<_, _>>()?;
    let early: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM request WHERE id = ANY($1) AND (completed_at IS NULL OR completed_at < $2)",
    )
    .bind(&uuids)
    .bind(restored_at)
    .fetch_one(&deployment.ledger)
    .await?;
    ensure!(
        early == 0,
        "{early} requests reported completed before the store came back"
    );
    let chat_done_early: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM task WHERE request_id = ANY($1) AND store = 'chat' AND finished_at < $2",
    )
    .bind(&uuids)
    .bind(restored_at)
    .fetch_one(&deployment.ledger)
    .await?;
    ensure!(chat_done_early == 0, "chat tasks finished during the cut");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM messages WHERE author_id <= ?")
        .bind(i64::try_from(ERASED)?)
        .fetch_one(&deployment.stores.chat)
        .await?;
    ensure!(left == 0, "{left} messages of erased subjects left in chat");
    ensure!(cut_at < restored_at);
    deployment.assert_logs_hold_no_identifier()?;
    deployment.cleanup().await?;
    drop(proxy);
    drop(nats);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_dead_lettered_or_reported_failed_and_the_eraser_goes_on() -> Result<()>
{
    tokio::time::timeout(TEST_TIMEOUT, poison_messages())
        .await
        .context("the test did not finish in time")?
}

/// The value of `counter` with `labels` in a Prometheus text page (0 when absent).
fn counter(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn poison_messages() -> Result<()> {
    let services = Services::from_env();
    let nats = NatsServer::start().await?;
    let mut deployment = Deployment::create(&services, quiet(5, &nats)).await?;
    deployment.start(Daemon::Api).await?;
    deployment.start(Daemon::Eraser).await?;
    let eraser = deployment.process(Daemon::Eraser).context("eraser")?;
    let (eraser_pid, metrics_url) = (eraser.pid(), format!("http://{}/metrics", eraser.address));
    let names = deployment.names.clone();
    let client = async_nats::connect(&deployment.nats_url).await?;
    let jetstream = async_nats::jetstream::new(client);
    let chat = lethe_common::ids::StoreName::parse("chat").map_err(anyhow::Error::msg)?;
    let subject = names.task_subject(TaskKind::Erase, Some(&chat));

    // An undecodable body, and a well-formed task for a store nobody serves.
    let garbage: &[u8] = b"\xff\xfe not a task {";
    jetstream
        .publish(subject.clone(), garbage.to_vec().into())
        .await?
        .await?;
    let unknown: TaskMessage = lethe_tests::eraser_support::task(
        TaskKind::Erase,
        "nowhere",
        lethe_tests::eraser_support::identity("user_id", "1"),
    )?;
    jetstream
        .publish(subject.clone(), serde_json::to_vec(&unknown)?.into())
        .await?
        .await?;

    // The undecodable one lands on the dead-letter stream, byte for byte, with an event; the
    // other is reported failed; neither stays in the queue.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let metrics = reqwest::get(&metrics_url).await?.text().await?;
        let dead = counter(
            &metrics,
            "lethe_tasks_total",
            &[("outcome", "dead_lettered")],
        );
        let failed = counter(&metrics, "lethe_tasks_total", &[("outcome", "failed")]);
        if dead >= 1.0 && failed >= 1.0 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "poison not handled: dead {dead}, failed {failed}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut dead_stream = jetstream.get_stream(names.dead_stream()).await?;
    let state = dead_stream.info().await?.state.clone();
    ensure!(state.messages == 1, "dead letters: {}", state.messages);
    let letter = dead_stream.get_raw_message(state.first_sequence).await?;
    ensure!(
        letter.payload.as_ref() == garbage,
        "the dead letter is not the message"
    );
    let mut events = jetstream.get_stream(names.events_stream()).await?;
    let mut found_event = false;
    let last = events.info().await?.state.last_sequence;
    for sequence in 1..=last {
        if let Ok(message) = events.get_raw_message(sequence).await
            && serde_json::from_slice::<serde_json::Value>(&message.payload)
                .is_ok_and(|e| e["kind"] == "task.dead_lettered")
        {
            found_event = true;
        }
    }
    ensure!(found_event, "no task.dead_lettered event");
    let mut tasks = jetstream.get_stream(names.tasks_stream()).await?;
    let queued = tasks.info().await?.state.messages;
    ensure!(queued == 0, "{queued} poison messages still queued");

    // The eraser went on: same process, and a real erasure completes.
    let still = deployment.process(Daemon::Eraser).context("eraser")?;
    ensure!(still.pid() == eraser_pid, "the eraser was replaced");
    let id = deployment.file_erasure(2).await?;
    deployment
        .wait_completed(&id, Duration::from_secs(60))
        .await?;
    deployment.assert_logs_hold_no_identifier()?;
    deployment.cleanup().await?;
    drop(nats);
    Ok(())
}
