//! The exporter against the sample stores: an archive holds exactly the subject's records and
//! files, every reader accepts it, it is delivered through the API as an expiring link, and an
//! exporter killed while assembling leaves an export that a fresh one completes once.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use aws_sdk_s3::primitives::ByteStream;
use lethe_api::keys::Scope;
use lethe_common::ids::RequestId;
use lethe_common::messages::{Identities, TaskKind, TaskOutcome, TaskReport, TaskResult};
use lethe_common::worker::RunMode;
use lethe_sample::{FileKind, Subject, subject};
use lethe_tests::Services;
use lethe_tests::eraser_support::{SAMPLE_STORES, identity};
use lethe_tests::exporter_support::{ArchiveReport, ExporterBed, inspect_archive};
use lethe_tests::process::DaemonProcess;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use tokio_util::sync::CancellationToken;

const SEED: u64 = 23;
const RESULTS_TIMEOUT: Duration = Duration::from_secs(120);

/// A subject with something in every collection: a session, an avatar and attachments,
/// conversations with messages of their own, invoices.
fn rich_subject(subjects: u64) -> Subject {
    (1..=subjects)
        .map(|i| subject(SEED, i))
        .find(|s| {
            s.session.is_some()
                && s.files.iter().any(|f| f.kind == FileKind::Avatar)
                && s.files.iter().any(|f| f.kind == FileKind::Attachment)
                && s.own_messages().count() > 0
                && !s.invoices.is_empty()
        })
        .expect("the seeded subjects include a rich one")
}

/// The identities the coordinator sends: the accounts store gets the email only (and must
/// derive the user id itself), the others the resolved user id too.
fn collect_identities(s: &Subject, store: &str) -> Identities {
    let mut ids = identity("email", s.identities.email.clone());
    if store != "accounts" {
        ids.insert("user_id".to_owned(), vec![s.user.id.to_string()]);
    }
    ids
}

/// Publishes collect tasks for every store and then (after they are done, as the coordinator
/// does) the assemble task; returns the five results: collect ones in store order
/// (accounts, chat, sessions, files), then assemble.
async fn export(bed: &ExporterBed, request: RequestId, s: &Subject) -> Result<Vec<TaskResult>> {
    let mut tasks = bed.collect_tasks(request, &Identities::new())?;
    for task in &mut tasks {
        let store = task
            .store
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_default();
        task.identities = collect_identities(s, &store);
    }
    for task in &tasks {
        bed.bed.publish(task).await?;
    }
    bed.run_until_idle().await?;
    let mut results = bed.bed.results(tasks.len(), RESULTS_TIMEOUT).await?;
    results.sort_by_key(|r| {
        let store = r.store.as_ref().map(|s| s.to_string()).unwrap_or_default();
        SAMPLE_STORES.iter().position(|s| *s == store)
    });
    bed.bed
        .publish(&bed.assemble_task(request, &tasks[0].identities))
        .await?;
    bed.run_until_idle().await?;
    results.extend(bed.bed.results(1, RESULTS_TIMEOUT).await?);
    Ok(results)
}

fn done(result: &TaskResult) -> Result<&TaskReport> {
    match &result.outcome {
        TaskOutcome::Done(report) => Ok(report),
        TaskOutcome::Failed { code, reason } => bail!(
            "{} in {:?} failed: {code}: {reason}",
            result.task,
            result.store
        ),
    }
}

/// The subject's records in the stores, by `<store>/<collection>` as the archive names them,
/// each as JSON the way an independent reader of the store sees it.
async fn records_in_stores(bed: &ExporterBed, s: &Subject) -> Result<BTreeMap<String, Vec<Value>>> {
    let mut expected = BTreeMap::new();
    let stores = &bed.bed.stores;
    let mut conn = stores.accounts.acquire().await?;
    sqlx::query("SET TIME ZONE 'UTC'")
        .execute(&mut *conn)
        .await?;
    for (table, column) in [
        ("users", "id"),
        ("invoices", "user_id"),
        ("access_log", "user_id"),
    ] {
        let rows: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT row_to_json(t)::text FROM {table} t WHERE {column} = $1 ORDER BY id"
        ))
        .bind(s.user.id)
        .fetch_all(&mut *conn)
        .await?;
        let rows = rows
            .iter()
            .map(|r| serde_json::from_str(r))
            .collect::<Result<Vec<Value>, _>>()?;
        expected.insert(format!("accounts/{table}"), rows);
    }
    for (table, column) in [
        ("conversations", "user_id"),
        ("messages", "author_id"),
        ("visits", "user_id"),
    ] {
        expected.insert(
            format!("chat/{table}"),
            mysql_records(&stores.chat, table, column, s.user.id).await?,
        );
    }
    let mut redis = stores.sessions.connection.clone();
    for (collection, key) in [
        ("session", format!("session:{}", s.user.id)),
        ("last_seen", format!("last_seen:{}", s.identities.email)),
        ("visits", format!("visits:{}", s.user.id)),
    ] {
        let full = format!("{}{key}", stores.sessions.prefix);
        let kind: String = redis::cmd("TYPE")
            .arg(&full)
            .query_async(&mut redis)
            .await?;
        let value = match kind.as_str() {
            "none" => None,
            "string" => Some(json!(
                redis::cmd("GET")
                    .arg(&full)
                    .query_async::<String>(&mut redis)
                    .await?
            )),
            "hash" => Some(json!(
                redis::cmd("HGETALL")
                    .arg(&full)
                    .query_async::<BTreeMap<String, String>>(&mut redis)
                    .await?
            )),
            "list" => Some(json!(
                redis::cmd("LRANGE")
                    .arg(&full)
                    .arg(0)
                    .arg(-1)
                    .query_async::<Vec<String>>(&mut redis)
                    .await?
            )),
            other => bail!("the sample has no {other} keys"),
        };
        let records = value
            .map(|value| vec![json!({ "key": key, "type": kind, "value": value })])
            .unwrap_or_default();
        expected.insert(format!("sessions/{collection}"), records);
    }
    Ok(expected)
}

/// A MariaDB table's rows matching `column = id`, as objects of every column (values as
/// `JSON_ARRAY` renders them), by id.
async fn mysql_records(
    pool: &sqlx::MySqlPool,
    table: &str,
    column: &str,
    id: i64,
) -> Result<Vec<Value>> {
    let columns: Vec<String> = sqlx::query_scalar(
        "SELECT CAST(column_name AS CHAR) FROM information_schema.columns \
         WHERE table_schema = DATABASE() AND table_name = ? ORDER BY ordinal_position",
    )
    .bind(table)
    .fetch_all(pool)
    .await?;
    let list = columns
        .iter()
        .map(|c| format!("`{c}`"))
        .collect::<Vec<_>>()
        .join(", ");
    let rows: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT CAST(JSON_ARRAY({list}) AS CHAR) FROM `{table}` WHERE `{column}` = ? ORDER BY id"
    ))
    .bind(id)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            let values: Vec<Value> = serde_json::from_str(row)?;
            Ok(Value::Object(columns.iter().cloned().zip(values).collect()))
        })
        .collect()
}

/// The SHA-256 of every object of the subject in the files store, by the archive's entry name.
async fn files_in_store(bed: &ExporterBed, s: &Subject) -> Result<BTreeMap<String, String>> {
    let files = &bed.bed.stores.files;
    let mut out = BTreeMap::new();
    for prefix in [
        format!("avatars/{}/", s.user.id),
        format!("attachments/{}/", s.user.id),
    ] {
        for object in
            lethe_common::s3::list_objects_under(&files.client, &files.bucket, &prefix).await?
        {
            let body = files
                .client
                .get_object()
                .bucket(&files.bucket)
                .key(&object.key)
                .send()
                .await?
                .body
                .collect()
                .await?
                .into_bytes();
            out.insert(
                format!("files/files/{}", object.key),
                hex::encode(Sha256::digest(&body)),
            );
        }
    }
    Ok(out)
}

/// Whether a CSV field holds `value` as the archive's JSON has it.
fn cell_matches(cell: &str, value: Option<&Value>) -> bool {
    match value {
        None | Some(Value::Null) => cell.is_empty(),
        Some(Value::String(text)) => cell == text,
        Some(Value::Bool(b)) => cell == b.to_string(),
        Some(Value::Number(n)) => cell.parse::<f64>().ok() == n.as_f64(),
        Some(nested) => serde_json::from_str::<Value>(cell).ok().as_ref() == Some(nested),
    }
}

/// Every check of an archive against the stores: the readers accept it, the manifest is
/// right, the JSON holds exactly the expected records, each CSV the same rows, the files the
/// same bytes.
fn check_archive(
    report: &ArchiveReport,
    request: RequestId,
    expected: &BTreeMap<String, Vec<Value>>,
    files: &BTreeMap<String, String>,
) -> Result<()> {
    ensure!(report.problems.is_empty(), "{:?}", report.problems);
    ensure!(
        report.manifest["request_id"] == json!(request.to_string()),
        "manifest of another request: {}",
        report.manifest["request_id"]
    );
    ensure!(report.names.first().map(String::as_str) == Some("README.txt"));
    let listed: BTreeSet<&str> = report.manifest["files"]
        .as_array()
        .context("manifest.files")?
        .iter()
        .filter_map(|f| f["path"].as_str())
        .collect();
    let names: BTreeSet<&str> = report
        .names
        .iter()
        .map(String::as_str)
        .filter(|n| *n != "manifest.json")
        .collect();
    ensure!(
        listed == names,
        "manifest lists {listed:?}, archive holds {names:?}"
    );

    let found: BTreeSet<&String> = report.json.keys().collect();
    let wanted: BTreeSet<&String> = expected.keys().collect();
    ensure!(
        found == wanted,
        "collections {found:?}, expected {wanted:?}"
    );
    for (collection, records) in expected {
        let mut got = report.json[collection].clone();
        if collection.starts_with("sessions/") {
            // Time to live is the store's to decide; the rest must be as stored.
            for record in &mut got {
                ensure!(
                    record
                        .as_object()
                        .is_some_and(|o| o.contains_key("ttl_seconds")),
                    "{collection}: {record}"
                );
                if let Some(o) = record.as_object_mut() {
                    o.remove("ttl_seconds");
                }
            }
        } else {
            got.sort_by_key(|r| r["id"].as_i64());
        }
        ensure!(
            &got == records,
            "{collection}: the archive holds\n{got:#?}\nthe store\n{records:#?}"
        );
        let (store, name) = collection.split_once('/').context("store/collection")?;
        let data_map_name = match store {
            "sessions" => format!(
                "{name}:{{{}}}",
                if name == "last_seen" {
                    "email"
                } else {
                    "user_id"
                }
            ),
            _ => name.to_owned(),
        };
        let counted = &report.manifest["stores"][store]["collections"][&data_map_name]["records"];
        ensure!(
            counted == &json!(records.len()),
            "{collection}: manifest counts {counted}, store holds {}",
            records.len()
        );

        let rows = &report.csv[collection];
        let json = &report.json[collection];
        if json.is_empty() {
            ensure!(rows.is_empty(), "{collection}: CSV of no records: {rows:?}");
            continue;
        }
        let header = &rows[0];
        let keys: BTreeSet<&String> = json
            .iter()
            .flat_map(|r| r.as_object().into_iter().flat_map(|o| o.keys()))
            .collect();
        ensure!(
            header.iter().collect::<BTreeSet<_>>() == keys,
            "{collection}: CSV header {header:?}, record keys {keys:?}"
        );
        ensure!(rows.len() == json.len() + 1, "{collection}: CSV rows");
        for (row, record) in rows[1..].iter().zip(json) {
            ensure!(row.len() == header.len(), "{collection}: ragged CSV row");
            for (cell, key) in row.iter().zip(header) {
                ensure!(
                    cell_matches(cell, record.get(key)),
                    "{collection}.{key}: CSV {cell:?}, JSON {:?}",
                    record.get(key)
                );
            }
        }
    }
    ensure!(
        &report.files == files,
        "files in the archive {:?}, in the store {files:?}",
        report.files
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_holds_exactly_the_subjects_records_and_files_from_every_store() -> Result<()> {
    let mut bed = ExporterBed::create(&Services::from_env()).await?;
    bed.bed.seed(200, SEED).await?;
    let s = rich_subject(200);
    let request = RequestId::new();

    let results = export(&bed, request, &s).await?;

    for result in &results[..4] {
        let report = done(result)?;
        let store = result
            .store
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_default();
        let bytes = report.counts.get("bytes").copied().unwrap_or(0);
        ensure!(
            bytes > 0 && report.bytes == Some(bytes),
            "{store}: {report:?}"
        );
    }
    let collected = done(&results[0])?;
    ensure!(
        collected.counts.get("invoices") == Some(&(s.invoices.len() as u64)),
        "accounts found the invoices through the user id it derived: {collected:?}"
    );
    let assembled = done(&results[4])?;
    ensure!(results[4].task == TaskKind::Assemble);
    let archive = bed.archive(request).await?.context("no archive")?;
    ensure!(assembled.bytes == Some(archive.len() as u64));
    ensure!(assembled.sha256.as_deref() == Some(hex::encode(Sha256::digest(&archive)).as_str()));
    ensure!(
        assembled.object_key.as_deref()
            == Some(format!("exports/{request}/{request}.zip").as_str())
    );

    let report = inspect_archive(&archive)?;
    let expected = records_in_stores(&bed, &s).await?;
    check_archive(
        &report,
        request,
        &expected,
        &files_in_store(&bed, &s).await?,
    )?;
    ensure!(
        bed.staging_keys(request).await?.is_empty(),
        "staging left behind"
    );

    // The files store with credentials of its own (the same ones, under other names): its
    // objects are copied through the exporter instead of inside the S3 service.
    let services = Services::from_env();
    let variables = [
        (
            "endpoint_env",
            bed.bed
                .set_variable("FILES_ENDPOINT", &services.s3.endpoint),
        ),
        (
            "access_key_id_env",
            bed.bed
                .set_variable("FILES_KEY", &services.s3.access_key_id),
        ),
        (
            "secret_access_key_env",
            bed.bed
                .set_variable("FILES_SECRET", &services.s3.secret_access_key),
        ),
    ];
    let mut map: toml::Table = toml::from_str(&bed.bed.sample_map()?)?;
    let files = map
        .get_mut("stores")
        .and_then(|s| s.get_mut("files"))
        .and_then(|f| f.as_table_mut())
        .context("no files store")?;
    for (key, variable) in variables {
        files.insert(key.to_owned(), toml::Value::String(variable));
    }
    bed.bed.write_map(&toml::to_string(&map)?)?;
    let streamed = RequestId::new();
    for result in export(&bed, streamed, &s).await? {
        done(&result)?;
    }
    let archive = bed.archive(streamed).await?.context("no archive")?;
    check_archive(
        &inspect_archive(&archive)?,
        streamed,
        &expected,
        &files_in_store(&bed, &s).await?,
    )?;

    // Someone the stores do not know: every collection is there, and empty.
    let nobody = RequestId::new();
    let mut unknown = s.clone();
    unknown.identities.email = "nobody@example.invalid".to_owned();
    unknown.user.id = 999_999_999;
    let results = export(&bed, nobody, &unknown).await?;
    for result in &results {
        let report = done(result)?;
        if result.task == TaskKind::Collect {
            ensure!(
                report.counts.iter().all(|(k, v)| k == "bytes" || *v == 0),
                "{report:?}"
            );
        }
    }
    let archive = bed.archive(nobody).await?.context("no archive")?;
    let report = inspect_archive(&archive)?;
    let empty: BTreeMap<String, Vec<Value>> =
        expected.keys().map(|k| (k.clone(), Vec::new())).collect();
    check_archive(&report, nobody, &empty, &BTreeMap::new())?;

    bed.bed.cleanup().await
}

/// The api, an eraser (for the resolve phase) and an exporter, all in-process on the sample
/// stores, with download links valid `link_ttl`.
struct Deployment {
    base: String,
    pool: sqlx::PgPool,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<Result<()>>>,
}

impl Deployment {
    async fn start(bed: &ExporterBed, link_ttl: &str) -> Result<Self> {
        let ledger = bed.bed.ns().pg_database("ledger").await?;
        let mut settings = bed.settings()?;
        settings.ledger = Some(
            lethe_common::Settings::from_toml(&format!(
                "[nats]\nurl = \"nats://x\"\n[ledger]\nurl = {ledger:?}\n"
            ))?
            .ledger
            .context("ledger settings")?,
        );
        settings
            .set("api.listen", "127.0.0.1:0")
            .set(
                "api.receipt_signing_key",
                "dGVzdC1yZWNlaXB0LWtleS0wMTIzNDU2Nzg5YWJjZGU=",
            )
            .set("api.key_cache_ttl", "0s")
            // Exports change nothing: no tombstone to write, no recipient configured.
            .set("api.tombstones", false)
            .set("api.export_link_ttl", link_ttl)
            .set("eraser.listen", "127.0.0.1:0");
        let api = lethe_api::App::build(&settings).await?;
        let base = format!("http://{}", api.local_addr()?);
        let pool = api.state().pool.clone();
        let eraser = lethe_eraser::App::build(&settings, RunMode::UntilShutdown).await?;
        let exporter = lethe_exporter::App::build(&settings, RunMode::UntilShutdown).await?;
        let shutdown = CancellationToken::new();
        let tasks = vec![
            tokio::spawn(api.run(shutdown.clone())),
            tokio::spawn(eraser.run(shutdown.clone())),
            tokio::spawn(exporter.run(shutdown.clone())),
        ];
        Ok(Self {
            base,
            pool,
            shutdown,
            tasks,
        })
    }

    async fn key(&self, tenant: &str) -> Result<String> {
        let tenant = lethe_api::keys::ensure_tenant(&self.pool, tenant).await?;
        Ok(lethe_api::keys::create(
            &self.pool,
            tenant,
            "test",
            &[Scope::RequestsWrite, Scope::RequestsRead],
        )
        .await?
        .secret)
    }

    async fn stop(self) -> Result<()> {
        self.shutdown.cancel();
        for task in self.tasks {
            task.await??;
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_access_request_through_the_api_yields_a_download_link_that_expires() -> Result<()> {
    let bed = ExporterBed::create(&Services::from_env()).await?;
    bed.bed.seed(50, SEED).await?;
    let s = rich_subject(50);
    let deployment = Deployment::start(&bed, "3s").await?;
    let key = deployment.key("acme").await?;
    let other = deployment.key("globex").await?;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let base = &deployment.base;

    let filed: Value = http
        .post(format!("{base}/v1/requests"))
        .bearer_auth(&key)
        .json(&json!({ "kind": "access", "subject": { "email": s.identities.email } }))
        .send()
        .await?
        .json()
        .await?;
    let id = filed["id"].as_str().context("no id")?.to_owned();
    let early = http
        .get(format!("{base}/v1/requests/{id}/export"))
        .bearer_auth(&key)
        .send()
        .await?;
    ensure!(early.status() == 409, "before assembly: {}", early.status());
    let problem: Value = early.json().await?;
    ensure!(problem["code"] == "export_not_ready", "{problem}");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let view = loop {
        let view: Value = http
            .get(format!("{base}/v1/requests/{id}"))
            .bearer_auth(&key)
            .send()
            .await?
            .json()
            .await?;
        if matches!(view["status"].as_str(), Some("completed" | "failed")) {
            break view;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "not finished: {view}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    ensure!(view["status"] == "completed", "{view}");
    let tasks = view["tasks"].as_array().context("tasks")?;
    for store in ["accounts", "chat", "sessions", "files"] {
        let collect = tasks
            .iter()
            .find(|t| t["task"] == "collect" && t["store"] == store)
            .with_context(|| format!("no collect task for {store}: {view}"))?;
        ensure!(
            collect["counts"]["bytes"].as_u64().is_some_and(|b| b > 0),
            "progress of {store} shows no bytes: {collect}"
        );
    }
    ensure!(
        tasks
            .iter()
            .any(|t| t["task"] == "assemble" && t["status"] == "done"),
        "{view}"
    );

    let redirect = http
        .get(format!("{base}/v1/requests/{id}/export"))
        .bearer_auth(&key)
        .send()
        .await?;
    ensure!(
        redirect.status() == 303,
        "GET export: {}",
        redirect.status()
    );
    let location = redirect
        .headers()
        .get("location")
        .context("no Location")?
        .to_str()?
        .to_owned();
    let download = reqwest::get(&location).await?;
    ensure!(download.status() == 200, "download: {}", download.status());
    let archive = download.bytes().await?;
    let (sha256, bytes): (String, i64) =
        sqlx::query_as("SELECT sha256, bytes FROM export WHERE request_id = $1::uuid")
            .bind(&id)
            .fetch_one(&deployment.pool)
            .await?;
    ensure!(sha256 == hex::encode(Sha256::digest(&archive)) && bytes == archive.len() as i64);
    let report = inspect_archive(&archive)?;
    ensure!(report.problems.is_empty(), "{:?}", report.problems);
    ensure!(report.json["accounts/users"].len() == 1);
    ensure!(report.json["accounts/users"][0]["email"] == json!(s.identities.email));

    for (who, path) in [
        (&other, format!("/v1/requests/{id}/export")),
        (&key, format!("/v1/requests/{}/export", RequestId::new())),
        (&key, "/v1/requests/not-an-id/export".to_owned()),
    ] {
        let response = http
            .get(format!("{base}{path}"))
            .bearer_auth(who)
            .send()
            .await?;
        ensure!(response.status() == 404, "{path}: {}", response.status());
    }

    tokio::time::sleep(Duration::from_secs(4)).await;
    let late = reqwest::get(&location).await?;
    ensure!(
        late.status() == 403,
        "an expired link answered {}",
        late.status()
    );

    deployment.stop().await?;
    bed.bed.cleanup().await
}

/// Bytes nothing compresses, the same for the same seed.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exporter_killed_while_assembling_leaves_an_export_a_fresh_one_completes_once()
-> Result<()> {
    const BIG_FILES: u64 = 3;
    const BIG_FILE_BYTES: usize = 48 * 1024 * 1024;
    let services = Services::from_env();
    let bed = ExporterBed::create(&services).await?;
    bed.bed.seed(20, SEED).await?;
    let s = rich_subject(20);
    // Large attachments, so the archive (144 MiB and more) is bigger than the memory the
    // exporter may use and takes long enough to assemble to be killed in the middle.
    let files = &bed.bed.stores.files;
    for i in 0..BIG_FILES {
        files
            .client
            .put_object()
            .bucket(&files.bucket)
            .key(format!("attachments/{}/large-{i}.bin", s.user.id))
            .body(ByteStream::from(noise(i + 1, BIG_FILE_BYTES)))
            .send()
            .await?;
    }
    let request = RequestId::new();
    let mut tasks = bed.collect_tasks(request, &Identities::new())?;
    for task in &mut tasks {
        let store = task
            .store
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_default();
        task.identities = collect_identities(&s, &store);
    }
    for task in &tasks {
        bed.bed.publish(task).await?;
    }
    bed.run_until_idle().await?;
    for result in bed.bed.results(tasks.len(), RESULTS_TIMEOUT).await? {
        done(&result)?;
    }

    let dir = tempfile::tempdir()?;
    let config = dir.path().join("lethe.toml");
    std::fs::write(&config, bed.settings_toml(&services)?)?;
    bed.bed
        .publish(&bed.assemble_task(request, &tasks[0].identities))
        .await?;
    let first = DaemonProcess::start(
        "lethe-exporter",
        &config,
        "LETHE__EXPORTER__LISTEN",
        &bed.bed.credential_env(),
        dir.path(),
    )
    .await?;
    // The hook: the upload record appears once the archive's multipart upload exists; the
    // exporter is killed as soon as a first part of the archive is stored.
    let record_key = format!("staging/{request}/upload.json");
    let archive_key = format!("exports/{request}/{request}.zip");
    let client = bed.client();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut stale_upload = None;
    loop {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the exporter never stored a part of the archive; log {}",
            first.log.display()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
        let Some(upload) = &stale_upload else {
            if let Ok(object) = client
                .get_object()
                .bucket(&bed.bucket)
                .key(&record_key)
                .send()
                .await
            {
                let record: Value =
                    serde_json::from_slice(&object.body.collect().await?.into_bytes())?;
                stale_upload = record["upload_id"].as_str().map(str::to_owned);
            }
            continue;
        };
        let parts = client
            .list_parts()
            .bucket(&bed.bucket)
            .key(&archive_key)
            .upload_id(upload)
            .send()
            .await?;
        if !parts.parts().is_empty() {
            break;
        }
    }
    let stale_upload = stale_upload.context("upload id")?;
    first.kill()?;
    ensure!(
        bed.archive(request).await?.is_none(),
        "the archive was complete before the kill: the test needs a larger export"
    );

    // A fresh exporter process: the task comes back after the dead one's lease expires.
    let second = DaemonProcess::start(
        "lethe-exporter",
        &config,
        "LETHE__EXPORTER__LISTEN",
        &bed.bed.credential_env(),
        dir.path(),
    )
    .await?;
    let results = bed.bed.results(1, RESULTS_TIMEOUT).await?;
    let peak = second.peak_rss_bytes();
    ensure!(second.stop()?, "the exporter did not stop cleanly");
    let extra = bed.bed.pull(10, Duration::from_secs(6)).await?;
    ensure!(extra.is_empty(), "more results than one: {extra:?}");
    let report = done(&results[0])?;
    ensure!(results[0].task == TaskKind::Assemble);
    ensure!(results[0].deliveries >= 2, "{:?}", results[0]);

    let archive = bed.archive(request).await?.context("no archive")?;
    ensure!(report.sha256.as_deref() == Some(hex::encode(Sha256::digest(&archive)).as_str()));
    let archive_len = archive.len();
    let inspected = inspect_archive(&archive)?;
    drop(archive);
    let expected = records_in_stores(&bed, &s).await?;
    check_archive(
        &inspected,
        request,
        &expected,
        &files_in_store(&bed, &s).await?,
    )?;
    ensure!(
        bed.staging_keys(request).await?.is_empty(),
        "staging left behind"
    );
    let stale = client
        .list_parts()
        .bucket(&bed.bucket)
        .key(&archive_key)
        .upload_id(&stale_upload)
        .send()
        .await;
    ensure!(
        stale.is_err() || stale.is_ok_and(|p| p.parts().is_empty()),
        "the dead run's upload still holds parts"
    );
    let peak = peak.context("no peak RSS")?;
    ensure!(
        peak < 128 * 1024 * 1024 && (archive_len as u64) > 128 * 1024 * 1024,
        "peak RSS {peak} bytes for an archive of {archive_len} bytes"
    );

    bed.bed.cleanup().await
}
