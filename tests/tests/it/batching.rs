//! Batched erasure: erase tasks taken together are carried out in one store transaction, each
//! task's result exactly what it alone would report, and a task that cannot succeed fails
//! alone while its neighbours complete.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use lethe_common::ids::RequestId;
use lethe_common::messages::{Identities, TaskKind, TaskOutcome, TaskResult};
use lethe_common::worker::RunMode;
use lethe_tests::Services;
use lethe_tests::eraser_support::{EraserBed, SAMPLE_STORES, task};
use sqlx::{Connection as _, PgConnection};

const SUBJECTS: u64 = 60;
const ERASED: u64 = 50;
const SEED: u64 = 5;

/// The identities the coordinator gives an erase task of sample subject `i`.
fn identities(i: u64) -> Identities {
    let subject = lethe_sample::subject(SEED, i);
    Identities::from([
        ("email".to_owned(), vec![subject.identities.email]),
        ("user_id".to_owned(), vec![subject.user.id.to_string()]),
    ])
}

/// Publishes an erase task of subjects `1..=ERASED` for every store; returns which subject
/// each request is.
async fn publish_erasures(bed: &EraserBed) -> BTreeMap<RequestId, u64> {
    let mut subjects = BTreeMap::new();
    for store in SAMPLE_STORES {
        for i in 1..=ERASED {
            let task = task(TaskKind::Erase, store, identities(i)).unwrap();
            subjects.insert(task.request_id, i);
            bed.publish(&task).await.unwrap();
        }
    }
    subjects
}

/// Per (subject, store) the counts a done task reported.
fn receipts(
    results: &[TaskResult],
    subjects: &BTreeMap<RequestId, u64>,
) -> BTreeMap<(u64, String), BTreeMap<String, u64>> {
    results
        .iter()
        .map(|result| {
            let TaskOutcome::Done(report) = &result.outcome else {
                panic!("a task failed: {:?}", result.outcome);
            };
            let store = result.store.as_ref().unwrap().as_str().to_owned();
            ((subjects[&result.request_id], store), report.counts.clone())
        })
        .collect()
}

/// The database name of a PostgreSQL URL.
fn database_of(url: &str) -> String {
    url::Url::parse(url)
        .unwrap()
        .path()
        .trim_start_matches('/')
        .to_owned()
}

/// Transactions committed in `database` so far, from PostgreSQL's own statistics (read on a
/// connection to another database, so reading them commits nothing there).
async fn commits(services: &Services, database: &str) -> i64 {
    let mut admin = PgConnection::connect(&services.pg_url).await.unwrap();
    let commits = sqlx::query_scalar("SELECT xact_commit FROM pg_stat_database WHERE datname = $1")
        .bind(database)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    admin.close().await.ok();
    commits
}

/// Runs an eraser with `batch_size` until no task is left, then waits until its connections
/// to `database` are closed (a backend flushes its statistics as it exits).
async fn run_eraser(bed: &EraserBed, services: &Services, database: &str, batch_size: usize) {
    let mut admin = PgConnection::connect(&services.pg_url).await.unwrap();
    let backends = "SELECT count(*) FROM pg_stat_activity WHERE datname = $1";
    let before: i64 = sqlx::query_scalar(backends)
        .bind(database)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    let settings = bed.settings_batched(4, batch_size).unwrap();
    bed.spawn(&settings, RunMode::UntilIdle)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now: i64 = sqlx::query_scalar(backends)
            .bind(database)
            .fetch_one(&mut admin)
            .await
            .unwrap();
        if now <= before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the eraser's connections stay open"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    admin.close().await.ok();
    tokio::time::sleep(Duration::from_millis(500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_erasures_taken_together_commit_one_transaction_per_store_and_report_what_one_by_one_erasures_report()
 {
    let services = Services::from_env();

    // Arrange: two beds seeded alike; the same 50 erasures queued in both.
    let one_by_one = EraserBed::create(&services).await.unwrap();
    one_by_one.seed(SUBJECTS, SEED).await.unwrap();
    let batched = EraserBed::create(&services).await.unwrap();
    batched.seed(SUBJECTS, SEED).await.unwrap();
    let accounts = database_of(&batched.options.accounts_url);
    // The seeding connections report their statistics within 10 s of going idle.
    tokio::time::sleep(Duration::from_secs(11)).await;
    // What an eraser commits without tasks (the start-up's schema check).
    let start = commits(&services, &accounts).await;
    run_eraser(&batched, &services, &accounts, 64).await;
    let start_up = commits(&services, &accounts).await - start;

    // Act: the same erasures one by one, and taken together.
    let single_subjects = publish_erasures(&one_by_one).await;
    one_by_one
        .spawn(
            &one_by_one.settings_batched(4, 1).unwrap(),
            RunMode::UntilIdle,
        )
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    let single_results = one_by_one
        .results(4 * ERASED as usize, Duration::from_secs(60))
        .await;
    let batched_subjects = publish_erasures(&batched).await;
    let before = commits(&services, &accounts).await;
    run_eraser(&batched, &services, &accounts, 64).await;
    let task_commits = commits(&services, &accounts).await - before - start_up;
    let batched_results = batched
        .results(4 * ERASED as usize, Duration::from_secs(60))
        .await;

    // Assert: one transaction for the 50 erasures of the PostgreSQL store; per subject, store
    // and collection the counts of one-by-one erasures; the stores left alike.
    assert_eq!(task_commits, 1, "transactions committed for 50 erasures");
    let single = receipts(&single_results.unwrap(), &single_subjects);
    let together = receipts(&batched_results.unwrap(), &batched_subjects);
    assert_eq!(single.len(), 4 * ERASED as usize);
    assert!(
        single
            .values()
            .any(|counts| counts.values().any(|n| *n > 0)),
        "the erasures found records"
    );
    assert_eq!(together, single);
    let single_digest = lethe_tests::digest::sample_digest(&one_by_one.stores)
        .await
        .unwrap();
    let batched_digest = lethe_tests::digest::sample_digest(&batched.stores)
        .await
        .unwrap();
    assert_eq!(batched_digest, single_digest);
    one_by_one.cleanup().await.unwrap();
    batched.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_task_in_a_batch_fails_alone_an_undecodable_one_is_dead_lettered_and_their_neighbours_complete()
 {
    let services = Services::from_env();
    let bed = EraserBed::create(&services).await.unwrap();
    bed.seed(30, SEED).await.unwrap();

    // Arrange: in the accounts store's queue, 20 erasures around a task whose email holds a
    // NUL character (PostgreSQL refuses it in any statement that carries it) and a body that
    // is no task at all.
    let mut subjects = BTreeMap::new();
    for i in 1..=20 {
        if i == 8 {
            let poison = task(
                TaskKind::Erase,
                "accounts",
                Identities::from([(
                    "email".to_owned(),
                    vec!["poi\u{0}son@example.com".to_owned()],
                )]),
            )
            .unwrap();
            subjects.insert(poison.request_id, 0);
            bed.publish(&poison).await.unwrap();
        }
        if i == 12 {
            let names = bed.publisher().names();
            let subject = names.task_subject(
                TaskKind::Erase,
                Some(&lethe_common::ids::StoreName::parse("accounts").unwrap()),
            );
            bed.publisher()
                .jetstream()
                .publish(subject, b"\xff not a task".to_vec().into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
        let task = task(TaskKind::Erase, "accounts", identities(i)).unwrap();
        subjects.insert(task.request_id, i);
        bed.publish(&task).await.unwrap();
    }

    // Act
    bed.spawn(&bed.settings_batched(4, 64).unwrap(), RunMode::UntilIdle)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    let results = bed.results(21, Duration::from_secs(60)).await.unwrap();

    // Assert: the poison task failed for good, alone; the 20 others were done and erased
    // their subject's account; the undecodable body is on the dead-letter stream.
    let mut done = 0;
    for result in &results {
        match (&result.outcome, subjects[&result.request_id]) {
            (TaskOutcome::Failed { code, .. }, 0) => assert_eq!(code, "invalid_value"),
            (TaskOutcome::Done(report), i) if i > 0 => {
                assert_eq!(report.counts.get("users"), Some(&1), "subject {i}");
                done += 1;
            }
            (outcome, i) => panic!("subject {i}: unexpected outcome {outcome:?}"),
        }
    }
    assert_eq!(done, 20);
    let mut dead = bed
        .publisher()
        .jetstream()
        .get_stream(bed.publisher().names().dead_stream())
        .await
        .unwrap();
    assert_eq!(dead.info().await.unwrap().state.messages, 1);
    bed.cleanup().await.unwrap();
}
