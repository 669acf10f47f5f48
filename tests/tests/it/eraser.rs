//! The eraser against the sample stores: erasure, derived identities, unreachable stores,
//! live schema checks, shared work, rectification, restriction and objection. The test plays
//! the coordinator: it publishes tasks and reads their results.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Result, bail};
use lethe_common::ids::RequestId;
use lethe_common::messages::{TaskKind, TaskMessage, TaskOutcome, TaskReport, TaskResult};
use lethe_common::privacy::IdentityHasher;
use lethe_common::worker::RunMode;
use lethe_eraser::App;
use lethe_sample::{Counts, FileKind, Subject, count_in_stores, expected_counts, subject};
use lethe_tests::Services;
use lethe_tests::eraser_support::{
    EraserBed, HASH_KEY, identities_of, identity, others_digest, task,
};
use lethe_tests::proxy::TcpProxy;
use redis::AsyncCommands as _;
use sqlx::Row as _;

const SEED: u64 = 11;
/// The stores that know the subject by the user id the accounts store derives.
const DEPENDENT_STORES: [&str; 3] = ["chat", "sessions", "files"];
const RESULTS_TIMEOUT: Duration = Duration::from_secs(60);

/// Publishes `tasks`, runs the eraser until idle, and returns their results in task order.
pub(crate) async fn run_tasks(bed: &EraserBed, tasks: &[TaskMessage]) -> Result<Vec<TaskResult>> {
    for task in tasks {
        bed.publish(task).await?;
    }
    bed.run_until_idle().await?;
    let mut results = bed.results(tasks.len(), RESULTS_TIMEOUT).await?;
    let extra = bed.pull(10, Duration::from_millis(200)).await?;
    if !extra.is_empty() {
        bail!("{} results more than tasks: {extra:?}", extra.len());
    }
    let mut ordered = Vec::with_capacity(tasks.len());
    for task in tasks {
        let Some(i) = results.iter().position(|r| {
            r.request_id == task.request_id && r.store == task.store && r.task == task.task
        }) else {
            bail!("no result for {}", task.message_id());
        };
        ordered.push(results.swap_remove(i));
    }
    Ok(ordered)
}

/// The report of a done task; an error naming the failure otherwise.
pub(crate) fn done(result: &TaskResult) -> Result<&TaskReport> {
    match &result.outcome {
        TaskOutcome::Done(report) => Ok(report),
        TaskOutcome::Failed { code, reason } => bail!(
            "{} in {:?} failed: {code}: {reason}",
            result.task,
            result.store
        ),
    }
}

/// Erases `subjects` as the coordinator does, one request each naming every identity: the
/// stores that depend on the user id first, then the store that provides it. Returns each
/// subject's reports by store.
async fn erase_subjects(
    bed: &EraserBed,
    subjects: &[&Subject],
) -> Result<Vec<BTreeMap<String, TaskReport>>> {
    let requests: Vec<RequestId> = subjects.iter().map(|_| RequestId::new()).collect();
    let erase = |store: &str, s: &Subject, request_id: RequestId| -> Result<TaskMessage> {
        let mut t = task(TaskKind::Erase, store, identities_of(s))?;
        t.request_id = request_id;
        Ok(t)
    };
    let mut first = Vec::new();
    let mut last = Vec::new();
    for (s, request_id) in subjects.iter().zip(&requests) {
        for store in DEPENDENT_STORES {
            first.push(erase(store, s, *request_id)?);
        }
        last.push(erase("accounts", s, *request_id)?);
    }
    let mut all = run_tasks(bed, &first).await?;
    all.extend(run_tasks(bed, &last).await?);
    let mut reports = vec![BTreeMap::new(); subjects.len()];
    for result in &all {
        let Some(i) = requests.iter().position(|r| *r == result.request_id) else {
            bail!("a result of an unknown request");
        };
        let store = result
            .store
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_default();
        reports[i].insert(store, done(result)?.clone());
    }
    Ok(reports)
}

/// What erasing `s` reports per store and collection.
fn expected_reports(s: &Subject) -> BTreeMap<String, BTreeMap<String, u64>> {
    let n = |x: usize| x as u64;
    let avatars = s
        .files
        .iter()
        .filter(|f| f.kind == FileKind::Avatar)
        .count();
    let attachments = s.files.len() - avatars;
    let map = |pairs: &[(&str, u64)]| -> BTreeMap<String, u64> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
    };
    BTreeMap::from([
        (
            "accounts".to_owned(),
            map(&[
                ("users", 1),
                ("invoices", n(s.invoices.len())),
                ("access_log", n(s.access_log.len())),
            ]),
        ),
        (
            "chat".to_owned(),
            map(&[
                ("conversations", n(s.conversations.len())),
                ("messages", n(s.own_messages().count())),
                ("visits", n(s.visits.len())),
            ]),
        ),
        (
            "sessions".to_owned(),
            map(&[
                ("session:{user_id}", u64::from(s.session.is_some())),
                ("last_seen:{email}", 1),
                ("visits:{user_id}", 1),
            ]),
        ),
        (
            "files".to_owned(),
            map(&[
                ("avatars/{user_id}/", n(avatars)),
                ("attachments/{user_id}/", n(attachments)),
            ]),
        ),
    ])
}

/// What the stores hold after `erased` are gone from `before`: everything of theirs but the
/// invoices, which the data map retains (masked).
pub(crate) fn without(before: &Counts, erased: &[&Subject]) -> Counts {
    let mut expected = before.clone();
    for s in erased {
        for (store, collection, n) in s.counts().iter() {
            if (store, collection) != ("accounts", "invoices") {
                expected.set(store, collection, expected.get(store, collection) - n);
            }
        }
    }
    expected
}

/// Whether any store still holds a record found by the subject's identities.
pub(crate) async fn holds_anything_of(bed: &EraserBed, s: &Subject) -> Result<Vec<String>> {
    let mut found = Vec::new();
    let id = s.user.id;
    for (table, sql) in [
        ("users", "SELECT count(*) FROM users WHERE id = $1"),
        (
            "invoices",
            "SELECT count(*) FROM invoices WHERE user_id = $1",
        ),
        (
            "access_log",
            "SELECT count(*) FROM access_log WHERE user_id = $1",
        ),
    ] {
        let n: i64 = sqlx::query_scalar(sql)
            .bind(id)
            .fetch_one(&bed.stores.accounts)
            .await?;
        if n > 0 {
            found.push(format!("accounts.{table}: {n}"));
        }
    }
    for (table, sql) in [
        (
            "conversations",
            "SELECT count(*) FROM conversations WHERE user_id = ?",
        ),
        (
            "messages",
            "SELECT count(*) FROM messages WHERE author_id = ?",
        ),
        ("visits", "SELECT count(*) FROM visits WHERE user_id = ?"),
    ] {
        let n: i64 = sqlx::query_scalar(sql)
            .bind(id)
            .fetch_one(&bed.stores.chat)
            .await?;
        if n > 0 {
            found.push(format!("chat.{table}: {n}"));
        }
    }
    let orphans: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM messages m WHERE m.conversation_id IN (SELECT id FROM \
         conversations WHERE user_id = ?)",
    )
    .bind(id)
    .fetch_one(&bed.stores.chat)
    .await?;
    if orphans > 0 {
        found.push(format!(
            "chat.messages in the subject's conversations: {orphans}"
        ));
    }
    let mut conn = bed.stores.sessions.connection.clone();
    for key in s.redis_keys() {
        let exists: bool = conn
            .exists(format!("{}{key}", bed.stores.sessions.prefix))
            .await?;
        if exists {
            found.push(format!("sessions: {key}"));
        }
    }
    let files = &bed.stores.files;
    for prefix in [format!("avatars/{id}/"), format!("attachments/{id}/")] {
        let keys = lethe_sample::list_keys(&files.client, &files.bucket, &prefix).await?;
        if !keys.is_empty() {
            found.push(format!("files under {prefix}: {}", keys.len()));
        }
    }
    Ok(found)
}

/// Checks that the subject's invoices are kept, with the personal fields masked as the sample
/// data map says and the rest as generated.
async fn assert_invoices_masked(bed: &EraserBed, s: &Subject) -> Result<()> {
    for invoice in &s.invoices {
        let row = sqlx::query(
            "SELECT user_id, billing_name, billing_address, country, amount_cents, issued_at \
             FROM invoices WHERE id = $1",
        )
        .bind(invoice.id)
        .fetch_one(&bed.stores.accounts)
        .await?;
        assert_eq!(row.get::<Option<i64>, _>("user_id"), None);
        assert_eq!(
            row.get::<Option<String>, _>("billing_name").as_deref(),
            Some("[redacted]")
        );
        assert_eq!(row.get::<Option<String>, _>("billing_address"), None);
        assert_eq!(row.get::<String, _>("country"), invoice.country);
        assert_eq!(row.get::<i64, _>("amount_cents"), invoice.amount_cents);
        assert_eq!(
            row.get::<chrono::DateTime<chrono::Utc>, _>("issued_at"),
            invoice.issued_at
        );
    }
    Ok(())
}

#[tokio::test]
async fn erasing_ten_of_a_thousand_subjects_removes_their_data_everywhere_and_nothing_else()
-> Result<()> {
    // Arrange
    let bed = EraserBed::create(&Services::from_env()).await?;
    bed.seed(1_000, SEED).await?;
    let chosen: Vec<Subject> = [1, 2, 99, 250, 333, 500, 640, 777, 901, 1000]
        .iter()
        .map(|&i| subject(SEED, i))
        .collect();
    let chosen_refs: Vec<&Subject> = chosen.iter().collect();
    let before = count_in_stores(&bed.stores).await?;
    let others_before = others_digest(&bed, &chosen).await?;

    // Act
    let reports = erase_subjects(&bed, &chosen_refs).await?;

    // Assert: exactly the subjects' records are gone, the rest is byte for byte unchanged.
    assert_eq!(
        count_in_stores(&bed.stores).await?,
        without(&before, &chosen_refs)
    );
    assert_eq!(others_digest(&bed, &chosen).await?, others_before);
    for (s, reports) in chosen.iter().zip(&reports) {
        assert_eq!(holds_anything_of(&bed, s).await?, Vec::<String>::new());
        assert_invoices_masked(&bed, s).await?;
        for (store, expected) in expected_reports(s) {
            let report = &reports[&store];
            assert_eq!(report.counts, expected, "subject {} in {store}", s.index);
            assert_eq!(report.remaining, Some(0));
        }
    }
    bed.cleanup().await
}

#[tokio::test]
async fn erasing_the_same_subject_twice_completes_both_times_and_the_second_reports_zero()
-> Result<()> {
    // Arrange
    let bed = EraserBed::create(&Services::from_env()).await?;
    bed.seed(20, SEED).await?;
    let s = subject(SEED, 7);

    // Act
    let first = erase_subjects(&bed, &[&s]).await?;
    let second = erase_subjects(&bed, &[&s]).await?;

    // Assert
    for (store, expected) in expected_reports(&s) {
        assert_eq!(first[0][&store].counts, expected, "{store}");
        let zeros: BTreeMap<String, u64> = expected.keys().map(|k| (k.clone(), 0)).collect();
        assert_eq!(second[0][&store].counts, zeros, "{store}");
        assert_eq!(second[0][&store].remaining, Some(0));
    }
    assert_eq!(
        count_in_stores(&bed.stores).await?,
        without(&expected_counts(20, SEED), &[&s])
    );
    bed.cleanup().await
}

#[tokio::test]
async fn a_subject_known_by_email_only_is_erased_through_the_user_id_the_accounts_store_derives()
-> Result<()> {
    // Arrange
    let bed = EraserBed::create(&Services::from_env()).await?;
    bed.seed(20, SEED).await?;
    let s = subject(SEED, 5);
    let email = identity("email", s.identities.email.clone());
    let before = count_in_stores(&bed.stores).await?;

    // Act 1: resolve.
    let resolved = run_tasks(&bed, &[task(TaskKind::Resolve, "accounts", email.clone())?]).await?;
    let derived = done(&resolved[0])?.derived.clone();
    // A store that knows the subject by user id only finds nothing by email alone.
    let by_email = run_tasks(&bed, &[task(TaskKind::Erase, "chat", email.clone())?]).await?;

    // Act 2: the dependent stores with the derived identity, then the provider by email.
    let mut known = email.clone();
    known.extend(derived.clone());
    let dependent: Vec<TaskMessage> = DEPENDENT_STORES
        .iter()
        .map(|store| task(TaskKind::Erase, store, known.clone()))
        .collect::<Result<_>>()?;
    let dependent = run_tasks(&bed, &dependent).await?;
    let provider = run_tasks(&bed, &[task(TaskKind::Erase, "accounts", email)?]).await?;

    // Assert
    // Every identity column of the row found yields its identity (the closure): the user id,
    // and the email and phone the users row holds.
    assert_eq!(
        derived,
        BTreeMap::from([
            ("email".to_owned(), vec![s.identities.email.clone()]),
            ("phone".to_owned(), vec![s.identities.phone.clone()]),
            ("user_id".to_owned(), vec![s.user.id.to_string()]),
        ])
    );
    assert!(done(&by_email[0])?.counts.values().all(|n| *n == 0));
    let expected = expected_reports(&s);
    for result in dependent.iter().chain(&provider) {
        let store = result
            .store
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_default();
        assert_eq!(done(result)?.counts, expected[&store], "{store}");
        assert_eq!(done(result)?.remaining, Some(0));
    }
    assert_eq!(holds_anything_of(&bed, &s).await?, Vec::<String>::new());
    // The invoices were found by the user id the store derived from the email itself.
    assert_invoices_masked(&bed, &s).await?;
    assert_eq!(count_in_stores(&bed.stores).await?, without(&before, &[&s]));
    bed.cleanup().await
}

#[tokio::test]
async fn tasks_for_unreachable_stores_are_retried_and_complete_once_the_stores_are_back()
-> Result<()> {
    // Arrange: every store behind a proxy the test can cut.
    let mut bed = EraserBed::create(&Services::from_env()).await?;
    bed.seed(20, SEED).await?;
    let s = subject(SEED, 9);
    let options = bed.options.clone();
    let accounts = TcpProxy::for_url(&options.accounts_url).await?;
    let chat = TcpProxy::for_url(&options.chat_url).await?;
    let sessions = TcpProxy::for_url(&options.sessions_url).await?;
    let files = TcpProxy::for_url(&options.s3.endpoint).await?;
    bed.set_variable(
        "ACCOUNTS_URL",
        &accounts.url_through(&options.accounts_url)?,
    );
    bed.set_variable("CHAT_URL", &chat.url_through(&options.chat_url)?);
    bed.set_variable(
        "SESSIONS_URL",
        &sessions.url_through(&options.sessions_url)?,
    );
    let endpoint = bed.set_variable("FILES_ENDPOINT", &files.url_through(&options.s3.endpoint)?);
    let mut map: toml::Table = toml::from_str(&bed.sample_map()?)?;
    if let Some(files) = map["stores"]["files"].as_table_mut() {
        files.insert("endpoint_env".into(), toml::Value::String(endpoint));
    }
    bed.write_map(&toml::to_string(&map)?)?;
    let held_before = holds_anything_of(&bed, &s).await?;
    let running = bed.spawn(&bed.settings(4)?, RunMode::UntilShutdown).await?;
    let proxies = [&accounts, &chat, &sessions, &files];

    // Act: the stores go away, the tasks arrive, the stores come back.
    for proxy in proxies {
        proxy.cut();
    }
    let request_id = RequestId::new();
    for store in ["accounts", "chat", "sessions", "files"] {
        let mut t = task(TaskKind::Erase, store, identities_of(&s))?;
        t.request_id = request_id;
        bed.publish(&t).await?;
    }
    let while_down = bed.pull(4, Duration::from_secs(8)).await?;
    let held_while_down = holds_anything_of(&bed, &s).await?;
    for proxy in proxies {
        proxy.restore();
    }
    let results = bed.results(4, Duration::from_secs(120)).await?;
    running.stop().await?;

    // Assert: nothing reported while down; everything done (after retries) once back.
    assert!(while_down.is_empty(), "{while_down:?}");
    assert!(!held_before.is_empty());
    assert_eq!(held_while_down, held_before);
    let expected = expected_reports(&s);
    for result in &results {
        let store = result
            .store
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_default();
        eprintln!("DELIVERIES {store} {}", result.deliveries);
        // The SQL pools and the S3 client give up within the outage, so their tasks fail and
        // are delivered again; the Redis client may instead hold the command until it has
        // reconnected, within one delivery.
        if store != "sessions" {
            assert!(result.deliveries >= 2, "{store}: {result:?}");
        }
        assert_eq!(done(result)?.counts, expected[&store], "{store}");
        assert_eq!(done(result)?.remaining, Some(0));
    }
    assert_eq!(holds_anything_of(&bed, &s).await?, Vec::<String>::new());
    bed.cleanup().await
}

#[tokio::test]
async fn a_data_map_that_does_not_fit_the_live_schemas_is_refused_at_start_up_naming_every_problem()
-> Result<()> {
    // Arrange: the sample tables exist; the map gets them wrong in every way at once.
    let bed = EraserBed::create(&Services::from_env()).await?;
    let wrong = format!(
        r#"
identities = ["email", "phone", "user_id"]

[stores.accounts]
kind = "postgres"
url_env = "{accounts}"

[[stores.accounts.collections]]
table = "userz"
match = {{ email = "email" }}
erase = "delete"

[[stores.accounts.collections]]
table = "users"
match = {{ email = "emial", phone = "phone" }}
provides = {{ user_id = "id" }}
erase = "delete"
rectify = {{ nickname = "nick" }}

[[stores.accounts.collections]]
table = "invoices"
match = {{ email = "user_id" }}
erase = {{ mask = {{ amount_cents = "redact" }} }}
retain = "tax law"

[[stores.accounts.collections]]
table = "access_log"
match = {{ user_id = "user_id" }}
erase = {{ mask = {{ ip = "null" }} }}
retain = "kept"

[stores.chat]
kind = "mysql"
url_env = "{chat}"

[[stores.chat.collections]]
table = "visits"
match = {{ user_id = "user_id" }}
erase = {{ mask = {{ os = "hash" }} }}
retain = "kept"
log = {{ timestamp = "page" }}
"#,
        accounts = bed.variable("ACCOUNTS_URL"),
        chat = bed.variable("CHAT_URL"),
    );
    let inconsistent = format!(
        r#"
identities = ["email", "user_id"]

[stores.accounts]
kind = "postgres"
url_env = "{accounts}"

[[stores.accounts.collections]]
table = "users"
match = {{ email = "email" }}
provides = {{ user_id = "id" }}
erase = "delete"

[stores.chat]
kind = "mysql"
url_env = "{chat}"

[[stores.chat.collections]]
table = "visits"
match = {{ user_id = "user_id" }}
provides = {{ email = "page" }}
erase = "delete"

[stores.files]
kind = "s3"
bucket = "whatever"
prefixes = ["avatars/{{account_id}}/"]
"#,
        accounts = bed.variable("ACCOUNTS_URL"),
        chat = bed.variable("CHAT_URL"),
    );

    // Act
    bed.write_map(&wrong)?;
    let live = App::build(&bed.settings(1)?, RunMode::UntilIdle).await;
    bed.write_map(&inconsistent)?;
    let statics = App::build(&bed.settings(1)?, RunMode::UntilIdle).await;

    // Assert: one message each, naming every problem.
    let Err(live) = live else {
        bail!("a data map that does not fit the schemas was accepted")
    };
    let message = format!("{live:#}");
    for expected in [
        "8 problem(s)",
        "table `userz` does not exist",
        "column `emial` (match `email`) does not exist in table `users`",
        "column `nick` (rectify `nickname`) does not exist",
        "column `user_id` (match `email`) is bigint",
        "column `amount_cents` (mask redact) is bigint",
        "column `ip` (mask null) is NOT NULL",
        "column `os` (mask hash) is varchar(40)",
        "column `page` (log timestamp) is varchar(255)",
    ] {
        assert!(
            message.contains(expected),
            "{expected:?} not in:\n{message}"
        );
    }
    let Err(statics) = statics else {
        bail!("an inconsistent data map was accepted")
    };
    let message = format!("{statics:#}");
    assert!(message.contains("cycle"), "{message}");
    assert!(message.contains("account_id"), "{message}");
    bed.cleanup().await
}

#[tokio::test]
async fn two_erasers_on_the_same_stores_share_the_work_without_erasing_anything_twice() -> Result<()>
{
    // Arrange
    let bed = EraserBed::create(&Services::from_env()).await?;
    bed.seed(100, SEED).await?;
    let chosen: Vec<Subject> = (1..=20).map(|i| subject(SEED, i * 5)).collect();
    let before = count_in_stores(&bed.stores).await?;
    let mut tasks = Vec::new();
    for s in &chosen {
        let request_id = RequestId::new();
        for store in ["accounts", "chat", "sessions", "files"] {
            let mut t = task(TaskKind::Erase, store, identities_of(s))?;
            t.request_id = request_id;
            tasks.push(t);
        }
    }
    for t in &tasks {
        bed.publish(t).await?;
    }
    // Small batches: with the default size the first eraser would take each store's 20 tasks
    // at once, leaving the second nothing to share.
    let settings = bed.settings_batched(1, 4)?;
    let first = App::build(&settings, RunMode::UntilIdle).await?;
    let second = App::build(&settings, RunMode::UntilIdle).await?;
    let (first_eraser, second_eraser) = (first.eraser(), second.eraser());

    // Act
    let (a, b) = tokio::join!(
        first.run(tokio_util::sync::CancellationToken::new()),
        second.run(tokio_util::sync::CancellationToken::new())
    );
    a?;
    b?;
    let results = bed.results(tasks.len(), RESULTS_TIMEOUT).await?;

    // Assert: each task carried out once, by one of the two, with the exact counts.
    let (by_first, by_second) = (first_eraser.tasks_handled(), second_eraser.tasks_handled());
    assert_eq!(by_first + by_second, tasks.len() as u64);
    assert!(by_first > 0 && by_second > 0, "{by_first} / {by_second}");
    for result in &results {
        assert_eq!(result.deliveries, 1, "{result:?}");
        let Some(i) = tasks.iter().position(|t| t.request_id == result.request_id) else {
            bail!("a result of an unknown request");
        };
        let s = &chosen[i / 4];
        let store = result
            .store
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_default();
        assert_eq!(done(result)?.counts, expected_reports(s)[&store]);
    }
    let refs: Vec<&Subject> = chosen.iter().collect();
    assert_eq!(count_in_stores(&bed.stores).await?, without(&before, &refs));
    bed.cleanup().await
}

/// Every user row, as text, by id.
async fn user_rows(bed: &EraserBed) -> Result<BTreeMap<i64, String>> {
    let rows = sqlx::query("SELECT id, u::text AS row FROM users u ORDER BY id")
        .fetch_all(&bed.stores.accounts)
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get::<i64, _>("id"), r.get::<String, _>("row")))
        .collect())
}

#[tokio::test]
async fn rectification_changes_exactly_the_named_fields_of_exactly_the_subject() -> Result<()> {
    // Arrange
    let bed = EraserBed::create(&Services::from_env()).await?;
    bed.seed(20, SEED).await?;
    let s = subject(SEED, 4);
    let before = user_rows(&bed).await?;
    let rectify = |changes: serde_json::Value| -> Result<TaskMessage> {
        let mut t = task(
            TaskKind::Rectify,
            "accounts",
            identity("email", s.identities.email.clone()),
        )?;
        t.params = serde_json::json!({ "changes": changes });
        Ok(t)
    };
    let changes = serde_json::json!({ "first_name": "Ada", "company": null, "country": "NZ" });

    // Act
    let first = run_tasks(&bed, &[rectify(changes.clone())?]).await?;
    let again = run_tasks(&bed, &[rectify(changes)?]).await?;
    let unknown = run_tasks(&bed, &[rectify(serde_json::json!({ "shoe_size": 42 }))?]).await?;

    // Assert
    assert_eq!(
        done(&first[0])?.counts,
        BTreeMap::from([("users".to_owned(), 1)])
    );
    assert_eq!(
        done(&again[0])?.counts,
        BTreeMap::from([("users".to_owned(), 0)])
    );
    assert!(
        matches!(&unknown[0].outcome, TaskOutcome::Failed { code, .. } if code == "unknown_field"),
        "{:?}",
        unknown[0].outcome
    );
    let after = user_rows(&bed).await?;
    for (id, row) in &before {
        if *id != s.user.id {
            assert_eq!(&after[id], row, "user {id} changed");
        }
    }
    let row = sqlx::query(
        "SELECT email, phone, first_name, last_name, company, avatar_key, country, created_at, \
         restricted, objected FROM users WHERE id = $1",
    )
    .bind(s.user.id)
    .fetch_one(&bed.stores.accounts)
    .await?;
    assert_eq!(row.get::<String, _>("first_name"), "Ada");
    assert_eq!(row.get::<Option<String>, _>("company"), None);
    assert_eq!(row.get::<String, _>("country"), "NZ");
    assert_eq!(row.get::<String, _>("email"), s.user.email);
    assert_eq!(
        row.get::<Option<String>, _>("phone"),
        Some(s.user.phone.clone())
    );
    assert_eq!(row.get::<String, _>("last_name"), s.user.last_name);
    assert_eq!(
        row.get::<Option<String>, _>("avatar_key"),
        s.user.avatar_key
    );
    assert_eq!(
        row.get::<chrono::DateTime<chrono::Utc>, _>("created_at"),
        s.user.created_at
    );
    assert!(!row.get::<bool, _>("restricted"));
    assert!(!row.get::<bool, _>("objected"));
    bed.cleanup().await
}

/// (restricted, objected) of every user, by id.
async fn flags(bed: &EraserBed) -> Result<BTreeMap<i64, (bool, bool)>> {
    let rows = sqlx::query("SELECT id, restricted, objected FROM users ORDER BY id")
        .fetch_all(&bed.stores.accounts)
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect())
}

#[tokio::test]
async fn restriction_and_objection_set_and_lift_the_flags_of_exactly_the_subject() -> Result<()> {
    // Arrange: the sessions store records both flags in sets as well.
    let bed = EraserBed::create(&Services::from_env()).await?;
    bed.seed(20, SEED).await?;
    let mut map: toml::Table = toml::from_str(&bed.sample_map()?)?;
    if let Some(sessions) = map["stores"]["sessions"].as_table_mut() {
        sessions.insert(
            "restrict".into(),
            toml::toml! { set = "restricted" identity = "user_id" }.into(),
        );
        sessions.insert(
            "object".into(),
            toml::toml! { set = "objected" identity = "user_id" }.into(),
        );
    }
    bed.write_map(&toml::to_string(&map)?)?;
    let s = subject(SEED, 6);
    let phone = identity("phone", s.identities.phone.clone());
    let user_id = identity("user_id", s.user.id.to_string());
    let prefix = bed.stores.sessions.prefix.clone();
    let mut redis = bed.stores.sessions.connection.clone();
    let untouched = flags(&bed).await?;
    let step = |kind: TaskKind| -> Result<Vec<TaskMessage>> {
        Ok(vec![
            task(kind, "accounts", phone.clone())?,
            task(kind, "sessions", user_id.clone())?,
        ])
    };
    let counts = |results: &[TaskResult]| -> Result<Vec<BTreeMap<String, u64>>> {
        results
            .iter()
            .map(|r| Ok(done(r)?.counts.clone()))
            .collect()
    };
    let one = |set: &str, n: u64| {
        vec![
            BTreeMap::from([("users".to_owned(), n)]),
            BTreeMap::from([(set.to_owned(), n)]),
        ]
    };

    for (set, lift, column) in [
        ("restricted", TaskKind::LiftRestriction, 0),
        ("objected", TaskKind::LiftObjection, 1),
    ] {
        let set_kind = if column == 0 {
            TaskKind::Restrict
        } else {
            TaskKind::Object
        };
        // Act: set, set again, lift.
        let set_once = run_tasks(&bed, &step(set_kind)?).await?;
        let flags_set = flags(&bed).await?;
        let member: bool = redis.sismember(format!("{prefix}{set}"), s.user.id).await?;
        let set_again = run_tasks(&bed, &step(set_kind)?).await?;
        let lifted = run_tasks(&bed, &step(lift)?).await?;
        let member_after: bool = redis.sismember(format!("{prefix}{set}"), s.user.id).await?;

        // Assert
        assert_eq!(counts(&set_once)?, one(set, 1));
        assert_eq!(counts(&set_again)?, one(set, 0));
        assert_eq!(counts(&lifted)?, one(set, 1));
        for (id, (restricted, objected)) in &flags_set {
            let flagged = if column == 0 { *restricted } else { *objected };
            assert_eq!(flagged, *id == s.user.id, "user {id}");
        }
        assert!(member);
        assert!(!member_after);
        assert_eq!(flags(&bed).await?, untouched);
    }
    bed.cleanup().await
}

#[tokio::test]
async fn hash_random_redact_and_null_masks_work_in_both_sql_dialects_and_are_applied_once()
-> Result<()> {
    // Arrange: invoices hashed and randomised, chat visits kept with masked columns.
    let bed = EraserBed::create(&Services::from_env()).await?;
    bed.seed(20, SEED).await?;
    let mut map: toml::Table = toml::from_str(&bed.sample_map()?)?;
    let mask = |columns: toml::Table| -> toml::Value {
        toml::Table::from_iter([("mask".to_owned(), toml::Value::Table(columns))]).into()
    };
    if let Some(invoices) = map["stores"]["accounts"]["collections"][1].as_table_mut() {
        let columns = toml::toml! { billing_name = "hash" billing_address = "random" };
        invoices.insert("erase".into(), mask(columns));
    }
    if let Some(visits) = map["stores"]["chat"]["collections"][2].as_table_mut() {
        let columns = toml::toml! { page = "hash" ip = "redact" screen = "null" };
        visits.insert("erase".into(), mask(columns));
        visits.insert("retain".into(), "Page views kept for statistics".into());
    }
    bed.write_map(&toml::to_string(&map)?)?;
    let s = subject(SEED, 3);
    let hasher = IdentityHasher::new(HASH_KEY.to_owned().into());
    let erase = |store: &str| task(TaskKind::Erase, store, identities_of(&s));

    // Act
    let first = run_tasks(&bed, &[erase("chat")?, erase("accounts")?]).await?;
    let again = run_tasks(&bed, &[erase("chat")?]).await?;

    // Assert
    assert_eq!(done(&first[0])?.counts["visits"], s.visits.len() as u64);
    assert_eq!(done(&first[1])?.counts["invoices"], s.invoices.len() as u64);
    assert_eq!(done(&again[0])?.counts["visits"], 0);
    assert_eq!(done(&again[0])?.remaining, Some(0));
    for invoice in &s.invoices {
        let row = sqlx::query("SELECT billing_name, billing_address FROM invoices WHERE id = $1")
            .bind(invoice.id)
            .fetch_one(&bed.stores.accounts)
            .await?;
        assert_eq!(
            row.get::<String, _>(0),
            hasher.digest("mask", &invoice.billing_name)
        );
        let random: String = row.get(1);
        assert!(
            random.len() == 32 && random.bytes().all(|b| b.is_ascii_hexdigit()),
            "{random}"
        );
    }
    for visit in &s.visits {
        let row = sqlx::query("SELECT page, ip, screen, os FROM visits WHERE id = ?")
            .bind(visit.id)
            .fetch_one(&bed.stores.chat)
            .await?;
        assert_eq!(row.get::<String, _>(0), hasher.digest("mask", &visit.page));
        assert_eq!(row.get::<String, _>(1), "[redacted]");
        assert_eq!(row.get::<Option<String>, _>(2), None);
        assert_eq!(row.get::<Option<String>, _>(3), Some(visit.os.clone()));
    }
    let others: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM invoices WHERE billing_name = '[redacted]' OR length(billing_name) = 64",
    )
    .fetch_one(&bed.stores.accounts)
    .await?;
    assert_eq!(others as usize, s.invoices.len());
    bed.cleanup().await
}
