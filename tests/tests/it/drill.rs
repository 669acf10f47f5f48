//! The disaster drill: the stores and the ledger are backed up, a subject is erased, another
//! rectified and restricted, a third objects and lifts the objection; then the ledger database
//! is dropped. Every store restored from its backup with only the tombstones and the operator's
//! key holds exactly what the live stores hold (the erased subject absent, the corrections
//! and flags present); so does every store restored after the ledger was restored from its own
//! backup. Tombstones are unreadable without the operator's key (checked with `gpg`), and
//! neither their names nor any log names a subject.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use lethe_sample::{ConnectOptions, SampleStores, Subject, count_in_stores};
use lethe_tests::Services;
use lethe_tests::backup_support::{Gpg, RedisServer};
use lethe_tests::e2e::{Daemon, Deployment, LeakScanner, Options};
use serde_json::{Value, json};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const STORES: [&str; 4] = ["accounts", "chat", "files", "sessions"];

/// Runs `lethe-backup <args>` with the deployment's configuration and `env`; returns its
/// standard output, failing with its standard error. Its standard error is scanned for
/// identifiers by the caller through `logs`.
async fn backup_cli(
    deployment: &Deployment,
    args: &[&str],
    env: &[(&str, &str)],
    logs: &mut String,
) -> Result<String> {
    let mut command = deployment.command(Daemon::Backup)?;
    command.args(args).envs(env.iter().copied());
    let output = command.output().await?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    logs.push_str(&stderr);
    ensure!(
        output.status.success(),
        "lethe-backup {args:?} failed: {stderr}"
    );
    Ok(String::from_utf8(output.stdout)?)
}

/// The first seeded subject with data in every store, and two others.
fn subjects(deployment: &Deployment) -> (Subject, Subject, Subject) {
    let all = deployment.subjects();
    let erased = all
        .iter()
        .find(|s| s.session.is_some() && !s.files.is_empty() && !s.conversations.is_empty())
        .cloned()
        .expect("a subject with data in every store");
    let mut others = all.into_iter().filter(|s| s.index != erased.index);
    let rectified = others.next().expect("a second subject");
    let objecting = others.next().expect("a third subject");
    (erased, rectified, objecting)
}

/// Files `body` and waits until it completed.
async fn complete(deployment: &Deployment, body: Value) -> Result<()> {
    let id = deployment.file(&body).await?;
    deployment.wait_completed(&id, REQUEST_TIMEOUT).await?;
    Ok(())
}

/// Drops the ledger database (the api and the eraser stopped first).
async fn drop_ledger(services: &Services, deployment: &Deployment) -> Result<String> {
    let name = url::Url::parse(&deployment.ledger_url)?
        .path()
        .trim_start_matches('/')
        .to_owned();
    ensure!(
        name.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
        "unexpected ledger name"
    );
    deployment.ledger.close().await;
    let admin = sqlx::PgPool::connect(&services.pg_url).await?;
    sqlx::query(&format!("DROP DATABASE \"{name}\" WITH (FORCE)"))
        .execute(&admin)
        .await?;
    admin.close().await;
    Ok(name)
}

async fn create_database(services: &Services, name: &str) -> Result<()> {
    let admin = sqlx::PgPool::connect(&services.pg_url).await?;
    sqlx::query(&format!("CREATE DATABASE \"{name}\""))
        .execute(&admin)
        .await?;
    admin.close().await;
    Ok(())
}

/// Restores every store from its backup into fresh targets named after `round`, with the
/// operator's secret key; returns the restored stores (and the Redis server holding the
/// restored sessions) and each restore's report.
async fn restore_stores(
    deployment: &Deployment,
    backups: &serde_json::Map<String, Value>,
    round: &str,
    logs: &mut String,
) -> Result<(SampleStores, RedisServer, Vec<Value>)> {
    let ns = deployment.ns();
    let accounts_url = ns.pg_database(&format!("{round}_accounts")).await?;
    let chat_url = ns.mysql_database(&format!("{round}_chat")).await?;
    let files_bucket = ns.bucket(&format!("{round}files")).await?;
    let sessions_dir = deployment.dir().join(format!("{round}-sessions"));
    std::fs::create_dir_all(&sessions_dir)?;
    let secret = deployment
        .operator
        .as_ref()
        .context("no operator key")?
        .secret_key
        .display()
        .to_string();
    let targets = [
        ("accounts", "env:DRILL_ACCOUNTS_URL".to_owned()),
        ("chat", "env:DRILL_CHAT_URL".to_owned()),
        ("files", format!("s3://{files_bucket}")),
        ("sessions", sessions_dir.display().to_string()),
    ];
    let mut reports = Vec::new();
    for (store, target) in &targets {
        let id = backups[*store].as_str().context("backup id")?;
        let printed = backup_cli(
            deployment,
            &[
                "restore",
                "--backup",
                id,
                "--secret-key",
                &secret,
                "--target",
                target,
            ],
            &[
                ("DRILL_ACCOUNTS_URL", &accounts_url),
                ("DRILL_CHAT_URL", &chat_url),
            ],
            logs,
        )
        .await?;
        reports.push(serde_json::from_str(&printed)?);
    }
    let redis = RedisServer::start(&sessions_dir).await?;
    let options = ConnectOptions {
        accounts_url,
        chat_url,
        sessions_url: redis.url.clone(),
        files_bucket,
        ..deployment.options.clone()
    };
    Ok((SampleStores::connect(&options).await?, redis, reports))
}

/// What the accounts store says of a subject: rows by email, first name, restricted, objected.
async fn account(
    stores: &SampleStores,
    subject: &Subject,
) -> Result<(i64, Option<(String, bool, bool)>)> {
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM users WHERE id = $1")
        .bind(subject.user.id)
        .fetch_one(&stores.accounts)
        .await?;
    let row: Option<(String, bool, bool)> =
        sqlx::query_as("SELECT first_name, restricted, objected FROM users WHERE id = $1")
            .bind(subject.user.id)
            .fetch_optional(&stores.accounts)
            .await?;
    Ok((rows, row))
}

/// Restored stores hold what the live ones hold: counts, the erased subject gone, the
/// rectified and restricted one corrected, the objection lifted; every store's replay lists
/// every change, in order of completion.
async fn assert_restored_like_live(
    deployment: &Deployment,
    restored: &SampleStores,
    reports: &[Value],
    people: &(Subject, Subject, Subject),
    ledger_read: bool,
) -> Result<()> {
    let (erased, rectified, objecting) = people;
    ensure!(
        count_in_stores(restored).await? == count_in_stores(&deployment.stores).await?,
        "the restored stores differ from the live ones"
    );
    ensure!(
        account(restored, erased).await?.0 == 0,
        "the erased subject came back"
    );
    let (_, row) = account(restored, rectified).await?;
    ensure!(
        row == Some(("Corrected".to_owned(), true, false)),
        "the rectified and restricted subject is {row:?}"
    );
    let (_, row) = account(restored, objecting).await?;
    ensure!(
        row.as_ref().is_some_and(|(_, _, objected)| !objected),
        "the objection lifted came back: {row:?}"
    );
    for report in reports {
        let replay = &report["replay"];
        ensure!(
            replay["ledger_read"] == ledger_read,
            "{}: {replay}",
            report["store"]
        );
        ensure!(
            replay["tombstones_read"] == 5,
            "{}: {replay}",
            report["store"]
        );
        let kinds: Vec<&str> = replay["replayed"]
            .as_array()
            .context("replayed")?
            .iter()
            .filter_map(|r| r["kind"].as_str())
            .collect();
        ensure!(
            kinds
                == [
                    "erasure",
                    "rectification",
                    "restriction",
                    "objection",
                    "lift_objection"
                ],
            "{}: replayed {kinds:?}",
            report["store"]
        );
        ensure!(
            replay["unreplayable"].as_array().is_some_and(Vec::is_empty),
            "{}: {replay}",
            report["store"]
        );
    }
    Ok(())
}

/// Tombstone keys in Lethe's bucket.
async fn tombstone_keys(deployment: &Deployment) -> Result<Vec<String>> {
    let client = deployment.ns().services().s3_client();
    lethe_common::s3::list_keys_under(&client, &deployment.bucket, "tombstones/")
        .await
        .map_err(|e| anyhow::anyhow!("cannot list the tombstones: {e}"))
}

/// `gpg --decrypt` of `object` in the GnuPG home `gpg`: the plaintext, or `None` if it fails.
fn gpg_decrypt(gpg: &Gpg, object: &Path) -> Result<Option<Vec<u8>>> {
    let output = gpg.command().arg("--decrypt").arg(object).output()?;
    Ok(output.status.success().then_some(output.stdout))
}

#[tokio::test]
async fn after_losing_the_ledger_every_store_restored_from_backup_with_the_tombstones_holds_every_change_since()
 {
    drill().await.unwrap();
}

async fn drill() -> Result<()> {
    let services = Services::from_env();
    let mut deployment = Deployment::create(
        &services,
        Options {
            subjects: 12,
            seed: 31,
            operator_key: true,
            ..Options::default()
        },
    )
    .await?;
    deployment.start(Daemon::Api).await?;
    deployment.start(Daemon::Eraser).await?;
    let people = subjects(&deployment);
    let (erased, rectified, objecting) = &people;
    let mut logs = String::new();

    // Back up every store and the ledger.
    let printed = backup_cli(&deployment, &["run"], &[], &mut logs).await?;
    let mut backups = serde_json::Map::new();
    for line in printed.lines().filter(|l| l.starts_with('{')) {
        let summary: Value = serde_json::from_str(line)?;
        backups.insert(
            summary["store"].as_str().context("store")?.to_owned(),
            summary["backup_id"].clone(),
        );
    }
    for store in STORES.iter().chain(&["ledger"]) {
        ensure!(
            backups.contains_key(*store),
            "no backup of {store}: {printed}"
        );
    }

    // The changes since: each completes with its tombstone written.
    complete(
        &deployment,
        json!({"kind": "erasure", "subject": {"email": erased.identities.email}}),
    )
    .await?;
    complete(
        &deployment,
        json!({"kind": "rectification", "subject": {"email": rectified.identities.email},
               "changes": {"first_name": "Corrected"}}),
    )
    .await?;
    complete(
        &deployment,
        json!({"kind": "restriction", "subject": {"email": rectified.identities.email}}),
    )
    .await?;
    for kind in ["objection", "lift_objection"] {
        complete(
            &deployment,
            json!({"kind": kind, "subject": {"email": objecting.identities.email}}),
        )
        .await?;
    }
    let keys = tombstone_keys(&deployment).await?;
    ensure!(keys.len() == 5, "tombstones: {keys:?}");

    // Unreadable without the operator's key; readable with it; named without identifiers.
    let scanner = LeakScanner::new(&deployment.subjects());
    let leaks = scanner.scan(Path::new("tombstone keys"), &keys.join("\n"));
    ensure!(
        leaks.is_empty(),
        "tombstone names hold identifiers: {leaks:?}"
    );
    let sealed = deployment.dir().join("tombstone.gpg");
    std::fs::write(&sealed, deployment_object(&deployment, &keys[0]).await?)?;
    let stranger = Gpg::new()?;
    stranger.generate("Stranger <stranger@example.org>", "0", None)?;
    ensure!(
        gpg_decrypt(&stranger, &sealed)?.is_none(),
        "a tombstone decrypted without the operator's key"
    );
    let operator = &deployment.operator.as_ref().context("operator")?.gpg;
    let plaintext = gpg_decrypt(operator, &sealed)?.context("gpg cannot decrypt a tombstone")?;
    let tombstone: Value = serde_json::from_slice(&plaintext)?;
    ensure!(tombstone["kind"] == "erasure", "{}", tombstone["kind"]);
    ensure!(
        tombstone["identities"]["email"]
            .as_array()
            .is_some_and(|e| e.iter().any(|v| v == erased.identities.email.as_str())),
        "the erasure's tombstone lacks the subject's email"
    );

    // The ledger is lost.
    deployment.stop(Daemon::Api)?;
    deployment.stop(Daemon::Eraser)?;
    let ledger_name = drop_ledger(&services, &deployment).await?;

    // Restored with only the tombstones and the operator's key.
    let (restored, redis, reports) =
        restore_stores(&deployment, &backups, "bare", &mut logs).await?;
    assert_restored_like_live(&deployment, &restored, &reports, &people, false).await?;
    drop(redis);

    // The ledger restored from its own backup (found in the bucket), then the stores again.
    create_database(&services, &ledger_name).await?;
    let listed = backup_cli(
        &deployment,
        &["list", "--from-bucket", "--store", "ledger"],
        &[],
        &mut logs,
    )
    .await?;
    let ledger_backup = backups["ledger"].as_str().context("ledger backup")?;
    ensure!(listed.contains(ledger_backup), "{listed}");
    let secret = deployment
        .operator
        .as_ref()
        .context("operator")?
        .secret_key
        .display()
        .to_string();
    let printed = backup_cli(
        &deployment,
        &[
            "restore",
            "--backup",
            ledger_backup,
            "--secret-key",
            &secret,
            "--target",
            "env:DRILL_LEDGER_URL",
        ],
        &[("DRILL_LEDGER_URL", &deployment.ledger_url)],
        &mut logs,
    )
    .await?;
    let report: Value = serde_json::from_str(&printed)?;
    ensure!(
        report["store"] == "ledger" && report["replay"].is_null(),
        "{report}"
    );
    let ledger = sqlx::PgPool::connect(&deployment.ledger_url).await?;
    let stores_backed_up: i64 =
        sqlx::query_scalar("SELECT count(*) FROM backup WHERE store = ANY($1)")
            .bind(STORES.map(str::to_owned).to_vec())
            .fetch_one(&ledger)
            .await?;
    ensure!(stores_backed_up > 0, "the restored ledger has no catalog");
    ledger.close().await;
    let (restored, redis, reports) =
        restore_stores(&deployment, &backups, "ledgered", &mut logs).await?;
    assert_restored_like_live(&deployment, &restored, &reports, &people, true).await?;
    drop(redis);

    // No identifier in any log: the daemons', and the restores' own.
    deployment.assert_logs_hold_no_identifier()?;
    let leaks = scanner.scan(Path::new("lethe-backup restore"), &logs);
    ensure!(
        leaks.is_empty(),
        "identifiers in the restores' logs: {leaks:?}"
    );
    restored.accounts.close().await;
    restored.chat.close().await;
    deployment.cleanup().await
}

/// An object of Lethe's bucket.
async fn deployment_object(deployment: &Deployment, key: &str) -> Result<Vec<u8>> {
    let client = deployment.ns().services().s3_client();
    let object = client
        .get_object()
        .bucket(&deployment.bucket)
        .key(key)
        .send()
        .await?;
    Ok(object.body.collect().await?.into_bytes().to_vec())
}
