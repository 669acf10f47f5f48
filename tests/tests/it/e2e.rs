//! End to end: the five real binaries as processes against the real services, driven only
//! through the API, NATS and the stores, as a client and an operator would. Each test ends by
//! scanning every log the daemons wrote for every seeded subject's identifiers.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use base64::Engine as _;
use lethe_sample::{FileKind, Subject, count_in_stores};
use lethe_tests::Services;
use lethe_tests::digest::pg_table_digests;
use lethe_tests::e2e::{Deployment, Options};
use lethe_tests::exporter_support::inspect_archive;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

/// How long one request may take end to end.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// A subject with something in every store: a session, an avatar and attachments, messages of
/// their own, invoices.
fn rich_subject(deployment: &Deployment) -> Subject {
    deployment
        .subjects()
        .into_iter()
        .find(|s| {
            s.session.is_some()
                && s.files.iter().any(|f| f.kind == FileKind::Avatar)
                && s.files.iter().any(|f| f.kind == FileKind::Attachment)
                && s.own_messages().count() > 0
                && !s.invoices.is_empty()
                && !s.access_log.is_empty()
                && !s.visits.is_empty()
        })
        .expect("the seeded subjects include a rich one")
}

async fn deployment(options: Options) -> Result<Deployment> {
    let mut deployment = Deployment::create(&Services::from_env(), options).await?;
    deployment.start_all().await?;
    Ok(deployment)
}

/// Whether `command` succeeded; its standard error otherwise.
fn run(command: &mut Command) -> Result<std::process::Output> {
    let output = command.output()?;
    ensure!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(output)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erasure_of_a_subject_known_by_email_leaves_nothing_of_them_and_a_receipt_that_checks()
-> Result<()> {
    let deployment = deployment(Options::default()).await?;
    let s = rich_subject(&deployment);
    let before = count_in_stores(&deployment.stores).await?;

    let id = deployment
        .file(&json!({"kind": "erasure", "subject": {"email": s.identities.email}}))
        .await?;
    let view = deployment.wait_completed(&id, REQUEST_TIMEOUT).await?;

    // Every store confirmed its erasure, and found nothing left when it looked again.
    let tasks = view["tasks"].as_array().context("tasks")?;
    for store in ["accounts", "chat", "sessions", "files"] {
        let erase = tasks
            .iter()
            .find(|t| t["task"] == "erase" && t["store"] == store)
            .with_context(|| format!("no erase task for {store}: {view}"))?;
        ensure!(erase["status"] == "done", "{store}: {erase}");
        ensure!(erase["remaining"] == 0, "{store}: {erase}");
    }

    // The stores lost exactly the subject's records; invoices stay, masked (tax law).
    let after = count_in_stores(&deployment.stores).await?;
    let theirs = s.counts();
    for (store, collection, count) in before.iter() {
        let expected = if (store, collection) == ("accounts", "invoices") {
            count
        } else {
            count - theirs.get(store, collection)
        };
        ensure!(
            after.get(store, collection) == expected,
            "{store}.{collection}: {} left, expected {expected}",
            after.get(store, collection)
        );
    }
    let invoice_ids: Vec<i64> = s.invoices.iter().map(|i| i.id).collect();
    let masked: Vec<(Option<String>, Option<String>, Option<i64>)> = sqlx::query_as(
        "SELECT billing_name, billing_address, user_id FROM invoices WHERE id = ANY($1)",
    )
    .bind(&invoice_ids)
    .fetch_all(&deployment.stores.accounts)
    .await?;
    ensure!(masked.len() == invoice_ids.len());
    for row in &masked {
        ensure!(
            row == &(Some("[redacted]".to_owned()), None, None),
            "an invoice of the subject is not masked: {row:?}"
        );
    }
    let mut redis = deployment.stores.sessions.connection.clone();
    for key in s.redis_keys() {
        let full = format!("{}{key}", deployment.stores.sessions.prefix);
        let exists: i64 = redis::cmd("EXISTS")
            .arg(&full)
            .query_async(&mut redis)
            .await?;
        ensure!(exists == 0, "a Redis key of the subject is left");
    }
    let files = &deployment.stores.files;
    for prefix in [
        format!("avatars/{}/", s.user.id),
        format!("attachments/{}/", s.user.id),
    ] {
        let left = lethe_sample::list_keys(&files.client, &files.bucket, &prefix).await?;
        ensure!(
            left.is_empty(),
            "{} objects of the subject left",
            left.len()
        );
    }

    // The receipt: signed by the published key, every store erased with nothing remaining.
    let (status, signed) = deployment
        .get(&format!("/v1/requests/{id}/receipt"))
        .await?;
    ensure!(status == 200, "receipt: {status} {signed}");
    let payload = base64::engine::general_purpose::STANDARD
        .decode(signed["payload"].as_str().context("payload")?)?;
    let receipt: Value = serde_json::from_slice(&payload)?;
    ensure!(receipt["request_id"] == json!(id), "{receipt}");
    let stores: BTreeSet<&str> = receipt["stores"]
        .as_array()
        .context("stores")?
        .iter()
        .filter(|r| r["remaining"] == 0)
        .filter_map(|r| r["store"].as_str())
        .collect();
    ensure!(
        stores == BTreeSet::from(["accounts", "chat", "files", "sessions"]),
        "{receipt}"
    );
    let (_, key) = deployment.get("/v1/receipt-key").await?;
    let check = deployment.dir().join("receipt");
    std::fs::create_dir_all(&check)?;
    std::fs::write(
        check.join("key.pem"),
        key["public_key_pem"].as_str().context("pem")?,
    )?;
    std::fs::write(check.join("payload"), &payload)?;
    std::fs::write(
        check.join("sig"),
        base64::engine::general_purpose::STANDARD
            .decode(signed["signature"].as_str().context("signature")?)?,
    )?;
    run(Command::new("openssl")
        .current_dir(&check)
        .args([
            "pkeyutl", "-verify", "-pubin", "-inkey", "key.pem", "-rawin",
        ])
        .args(["-in", "payload", "-sigfile", "sig"]))?;

    deployment.assert_logs_hold_no_identifier()?;
    deployment.cleanup().await
}

/// The subject's records in the stores, by the archive's `<store>/<collection>` names: the
/// ids of SQL rows, the Redis keys, and for users the whole row.
async fn ids_in_stores(
    deployment: &Deployment,
    s: &Subject,
) -> Result<BTreeMap<String, BTreeSet<String>>> {
    let stores = &deployment.stores;
    let mut found = BTreeMap::new();
    for (table, column) in [
        ("users", "id"),
        ("invoices", "user_id"),
        ("access_log", "user_id"),
    ] {
        let ids: Vec<i64> = sqlx::query_scalar(&format!(
            "SELECT id FROM {table} WHERE {column} = $1 ORDER BY id"
        ))
        .bind(s.user.id)
        .fetch_all(&stores.accounts)
        .await?;
        found.insert(
            format!("accounts/{table}"),
            ids.iter().map(ToString::to_string).collect(),
        );
    }
    for (table, column) in [
        ("conversations", "user_id"),
        ("messages", "author_id"),
        ("visits", "user_id"),
    ] {
        let ids: Vec<i64> = sqlx::query_scalar(&format!(
            "SELECT id FROM `{table}` WHERE `{column}` = ? ORDER BY id"
        ))
        .bind(s.user.id)
        .fetch_all(&stores.chat)
        .await?;
        found.insert(
            format!("chat/{table}"),
            ids.iter().map(ToString::to_string).collect(),
        );
    }
    let mut redis = stores.sessions.connection.clone();
    for (collection, key) in [
        ("session", format!("session:{}", s.user.id)),
        ("last_seen", format!("last_seen:{}", s.identities.email)),
        ("visits", format!("visits:{}", s.user.id)),
    ] {
        let exists: i64 = redis::cmd("EXISTS")
            .arg(format!("{}{key}", stores.sessions.prefix))
            .query_async(&mut redis)
            .await?;
        found.insert(
            format!("sessions/{collection}"),
            if exists == 1 {
                BTreeSet::from([key])
            } else {
                BTreeSet::new()
            },
        );
    }
    Ok(found)
}

/// The same, as the archive holds it.
fn ids_in_archive(json: &BTreeMap<String, Vec<Value>>) -> BTreeMap<String, BTreeSet<String>> {
    json.iter()
        .map(|(collection, records)| {
            let ids = records
                .iter()
                .map(|r| {
                    if collection.starts_with("sessions/") {
                        r["key"].as_str().unwrap_or_default().to_owned()
                    } else {
                        r["id"].to_string()
                    }
                })
                .collect();
            (collection.clone(), ids)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_downloaded_through_its_presigned_link_holds_exactly_what_the_stores_hold()
-> Result<()> {
    let deployment = deployment(Options::default()).await?;
    let s = rich_subject(&deployment);

    let id = deployment
        .file(&json!({"kind": "access", "subject": {"email": s.identities.email}}))
        .await?;
    deployment.wait_completed(&id, REQUEST_TIMEOUT).await?;
    let (status, _) = deployment.get(&format!("/v1/requests/{id}/export")).await?;
    ensure!(status == 303, "GET export: {status}");
    let redirect = deployment
        .http()
        .get(format!("{}/v1/requests/{id}/export", deployment.api()?))
        .bearer_auth(&deployment.key)
        .send()
        .await?;
    let location = redirect
        .headers()
        .get("location")
        .context("no Location")?
        .to_str()?
        .to_owned();
    // The link carries its own signature: no API key.
    let download = reqwest::get(&location).await?;
    ensure!(download.status() == 200, "download: {}", download.status());
    let archive = download.bytes().await?;

    let report = inspect_archive(&archive)?;
    ensure!(report.problems.is_empty(), "{:?}", report.problems);
    ensure!(report.manifest["request_id"] == json!(id));
    let expected = ids_in_stores(&deployment, &s).await?;
    let found = ids_in_archive(&report.json);
    ensure!(
        found == expected,
        "the archive holds {found:#?}\nthe stores {expected:#?}"
    );
    // The user's row as stored, field by field.
    let row: String = sqlx::query_scalar("SELECT row_to_json(t)::text FROM users t WHERE id = $1")
        .bind(s.user.id)
        .fetch_one(&deployment.stores.accounts)
        .await?;
    let row: Value = serde_json::from_str(&row)?;
    let exported = &report.json["accounts/users"][0];
    for field in ["id", "email", "phone", "first_name", "last_name", "country"] {
        ensure!(exported[field] == row[field], "users.{field}: {exported}");
    }
    // Every object of the subject, byte for byte.
    let files = &deployment.stores.files;
    let mut objects = BTreeMap::new();
    for prefix in [
        format!("avatars/{}/", s.user.id),
        format!("attachments/{}/", s.user.id),
    ] {
        for key in lethe_sample::list_keys(&files.client, &files.bucket, &prefix).await? {
            let body = files
                .client
                .get_object()
                .bucket(&files.bucket)
                .key(&key)
                .send()
                .await?
                .body
                .collect()
                .await?
                .into_bytes();
            objects.insert(
                format!("files/files/{key}"),
                hex::encode(Sha256::digest(&body)),
            );
        }
    }
    ensure!(!objects.is_empty());
    ensure!(
        report.files == objects,
        "files in the archive {:?}, in the store {objects:?}",
        report.files
    );

    deployment.assert_logs_hold_no_identifier()?;
    deployment.cleanup().await
}

/// A digest of every users row but `id`'s.
async fn other_users(deployment: &Deployment, id: i64) -> Result<String> {
    let rows: Vec<String> =
        sqlx::query_scalar("SELECT t::text FROM users t WHERE id <> $1 ORDER BY id")
            .bind(id)
            .fetch_all(&deployment.stores.accounts)
            .await?;
    Ok(hex::encode(Sha256::digest(rows.join("\n"))))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rectification_corrects_the_named_fields_of_the_subject_and_nothing_else() -> Result<()> {
    let deployment = deployment(Options::default()).await?;
    let s = deployment.subject(3);
    let others = other_users(&deployment, s.user.id).await?;

    let id = deployment
        .file(&json!({
            "kind": "rectification",
            "subject": {"email": s.identities.email},
            "changes": {"first_name": "Ada", "last_name": "Lovelace", "country": "GB"},
        }))
        .await?;
    deployment.wait_completed(&id, REQUEST_TIMEOUT).await?;

    let (first, last, country, email): (String, String, String, String) =
        sqlx::query_as("SELECT first_name, last_name, country, email FROM users WHERE id = $1")
            .bind(s.user.id)
            .fetch_one(&deployment.stores.accounts)
            .await?;
    ensure!(
        (first.as_str(), last.as_str(), country.as_str()) == ("Ada", "Lovelace", "GB"),
        "not rectified"
    );
    ensure!(email == s.identities.email, "the email changed");
    ensure!(
        other_users(&deployment, s.user.id).await? == others,
        "another user's row changed"
    );

    deployment.assert_logs_hold_no_identifier()?;
    deployment.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_on_command_decrypts_with_gpg_and_restores_with_pg_restore_to_an_equal_database()
-> Result<()> {
    let deployment = deployment(Options {
        operator_key: true,
        ..Options::default()
    })
    .await?;
    let operator = deployment.operator.as_ref().context("operator key")?;

    // An operator asks for a backup of the accounts store over NATS.
    let client = async_nats::connect(&deployment.nats_url).await?;
    let jetstream = async_nats::jetstream::new(client);
    let accounts = lethe_common::ids::StoreName::parse("accounts").map_err(anyhow::Error::msg)?;
    jetstream
        .publish(
            deployment.names.backup_run_subject(Some(&accounts)),
            "{}".into(),
        )
        .await?
        .await?;
    let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
    let object_key = loop {
        let row: Option<(String, String)> = sqlx::query_as(
            "SELECT status, object_key FROM backup WHERE store = 'accounts' ORDER BY started_at DESC LIMIT 1",
        )
        .fetch_optional(&deployment.ledger)
        .await?;
        match row {
            Some((status, key)) if status == "completed" => break key,
            Some((status, _)) => ensure!(status == "running", "the backup ended {status}"),
            None => {}
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "no completed backup in time"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // By hand: download, gpg --decrypt, zstd -d, pg_restore into an empty database.
    let object = deployment
        .ns()
        .services()
        .s3_client()
        .get_object()
        .bucket(&deployment.bucket)
        .key(&object_key)
        .send()
        .await?
        .body
        .collect()
        .await?
        .into_bytes();
    let work = deployment.dir().join("restore");
    std::fs::create_dir_all(&work)?;
    let encrypted = work.join("accounts.dump.zst.gpg");
    std::fs::write(&encrypted, &object)?;
    let decrypted = run(operator
        .gpg
        .command()
        .arg("--decrypt")
        .arg(&encrypted)
        .stderr(Stdio::piped()))?;
    let compressed = work.join("accounts.dump.zst");
    std::fs::write(&compressed, &decrypted.stdout)?;
    let dump = work.join("accounts.dump");
    run(Command::new("zstd")
        .args(["-d", "-q"])
        .arg(&compressed)
        .arg("-o")
        .arg(&dump))?;
    let restored = deployment.ns().pg_database("restored").await?;
    run(Command::new("pg_restore")
        .args(["--exit-on-error", "--no-owner", "--no-privileges", "-d"])
        .arg(&restored)
        .arg(&dump))?;

    let restored_pool = sqlx::PgPool::connect(&restored).await?;
    let original = pg_table_digests(&deployment.stores.accounts).await?;
    let copy = pg_table_digests(&restored_pool).await?;
    restored_pool.close().await;
    ensure!(original.len() >= 3, "tables: {original:?}");
    ensure!(
        copy == original,
        "the restored database differs: {copy:?} vs {original:?}"
    );

    deployment.assert_logs_hold_no_identifier()?;
    deployment.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retention_run_deletes_the_log_rows_past_their_age_and_nothing_else() -> Result<()> {
    let deployment = deployment(Options::default()).await?;
    let s = rich_subject(&deployment);
    // The sample's activity ends on 2025-01-01; one subject was active yesterday, which a
    // year's retention keeps.
    let recent_access =
        sqlx::query("UPDATE access_log SET at = now() - interval '1 day' WHERE user_id = $1")
            .bind(s.user.id)
            .execute(&deployment.stores.accounts)
            .await?
            .rows_affected();
    let recent_visits =
        sqlx::query("UPDATE visits SET at = UTC_TIMESTAMP() - INTERVAL 1 DAY WHERE user_id = ?")
            .bind(s.user.id)
            .execute(&deployment.stores.chat)
            .await?
            .rows_affected();
    ensure!(recent_access > 0 && recent_visits > 0);
    let kept_access: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM access_log WHERE at >= now() - interval '365 days'",
    )
    .fetch_one(&deployment.stores.accounts)
    .await?;
    let kept_visits: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM visits WHERE at >= UTC_TIMESTAMP() - INTERVAL 365 DAY",
    )
    .fetch_one(&deployment.stores.chat)
    .await?;
    let before = count_in_stores(&deployment.stores).await?;
    ensure!(
        before.get("accounts", "access_log") > u64::try_from(kept_access)?,
        "nothing is past its age"
    );

    // The operator's one-shot run.
    let output = deployment
        .command(lethe_tests::e2e::Daemon::Retention)?
        .arg("run")
        .output()
        .await?;
    std::fs::write(
        deployment.dir().join("lethe-retention-run.log"),
        &output.stderr,
    )?;
    ensure!(
        output.status.success(),
        "lethe-retention run failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).context("the report is not JSON")?;
    let deleted = |store: &str, table: &str| {
        report["logs"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|l| l["store"] == store && l["table"] == table)
            .and_then(|l| l["rows"].as_u64())
    };
    ensure!(
        deleted("accounts", "access_log")
            == Some(before.get("accounts", "access_log") - u64::try_from(kept_access)?)
            && deleted("chat", "visits")
                == Some(before.get("chat", "visits") - u64::try_from(kept_visits)?),
        "the report does not count what was deleted: {report}"
    );

    let after = count_in_stores(&deployment.stores).await?;
    ensure!(
        after.get("accounts", "access_log") == u64::try_from(kept_access)?,
        "access_log: {} rows left, {kept_access} within the year",
        after.get("accounts", "access_log")
    );
    ensure!(
        after.get("chat", "visits") == u64::try_from(kept_visits)?,
        "visits: {} rows left, {kept_visits} within the year",
        after.get("chat", "visits")
    );
    for (store, collection, count) in before.iter() {
        if matches!(
            (store, collection),
            ("accounts", "access_log") | ("chat", "visits")
        ) {
            continue;
        }
        ensure!(
            after.get(store, collection) == count,
            "{store}.{collection}: {count} before, {} after",
            after.get(store, collection)
        );
    }

    deployment.assert_logs_hold_no_identifier()?;
    deployment.cleanup().await
}
