//! The backup worker against the sample stores: backups land in S3 with manifests and catalog
//! rows, real `gpg` 2.2 decrypts them and the field's tools restore them, a damaged backup is
//! refused, the worker refuses to start without a valid recipient, run commands and the
//! schedule trigger backups, one store is never backed up twice at once, and a restore replays
//! the erasures recorded after its backup so no erased subject comes back.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use lethe_backup::{Backups, Outcome};
use lethe_common::ids::{RequestId, StoreName};
use lethe_common::messages::{TaskKind, TaskMessage, TaskOutcome};
use lethe_common::worker::RunMode;
use lethe_sample::{ConnectOptions, Counts, SampleStores, Subject, count_in_stores, subject};
use lethe_tests::Services;
use lethe_tests::backup_support::{BackupBed, FIXTURE_FINGERPRINT, Gpg, RedisServer};
use lethe_tests::eraser_support::{EraserBed, identities_of, task};
use secrecy::SecretString;
use sha2::{Digest as _, Sha256};
use tokio_util::sync::CancellationToken;

const SEED: u64 = 23;

/// The JSON lines a command printed.
fn json_lines(output: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The JSON document a command printed.
fn json(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

fn assert_success(output: &Output) {
    assert!(
        output.status.success(),
        "failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The process failed with exit status 1 and an `error:` line containing every `expected`
/// part, without a panic.
fn assert_refused(output: &Output, expected: &[&str]) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr:\n{stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert!(!errors.is_empty(), "no `error:` line; stderr:\n{stderr}");
    for part in expected {
        assert!(
            errors.iter().any(|l| l.contains(part)),
            "`{part}` not in the error; stderr:\n{stderr}"
        );
    }
    assert!(!stderr.contains("panicked"), "stderr:\n{stderr}");
}

/// Runs a program, failing the test with its output if it fails.
fn run(command: &mut Command) -> Output {
    let output = command.output().unwrap();
    assert_success(&output);
    output
}

/// A command for the field's tool `program` connected to the database of `url`, as the
/// backup worker itself connects (password in the environment).
fn tool(program: &str, url: &str, mysql: bool) -> (Command, Option<String>) {
    let url = SecretString::from(url.to_owned());
    let (invocation, database) = if mysql {
        let (invocation, database) = lethe_backup::tools::mysql(&url).unwrap();
        (invocation, Some(database))
    } else {
        (lethe_backup::tools::postgres(&url).unwrap(), None)
    };
    let mut command = Command::new(program);
    command.args(&invocation.args);
    for (key, value) in &invocation.env {
        use secrecy::ExposeSecret as _;
        command.env(key, value.expose_secret());
    }
    (command, database)
}

/// Sample stores whose accounts, chat and sessions are the given restored copies (the files
/// store stays `files_bucket`).
async fn stores_at(
    bed: &EraserBed,
    accounts_url: &str,
    chat_url: &str,
    sessions_url: &str,
    files_bucket: &str,
) -> Result<SampleStores> {
    let options = ConnectOptions {
        accounts_url: accounts_url.to_owned(),
        chat_url: chat_url.to_owned(),
        sessions_url: sessions_url.to_owned(),
        files_bucket: files_bucket.to_owned(),
        ..bed.options.clone()
    };
    Ok(SampleStores::connect(&options).await?)
}

/// Counts of one store only.
fn only(counts: &Counts, store: &str) -> Counts {
    counts.only(store)
}

/// Objects per top-level folder in a tar file, as `tar -t` lists them.
fn tar_folders(path: &Path) -> BTreeMap<String, u64> {
    let output = run(Command::new("tar").arg("-tf").arg(path));
    let mut folders = BTreeMap::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let folder = line.split('/').next().unwrap_or_default().to_owned();
        *folders.entry(folder).or_insert(0) += 1;
    }
    folders
}

#[tokio::test]
async fn every_sample_store_lands_in_s3_encrypted_with_a_manifest_and_a_catalog_row_and_restores_by_hand_with_gpg_and_the_fields_tools()
 {
    let services = Services::from_env();
    let bed = BackupBed::create(&services).await.unwrap();
    bed.bed.seed(40, SEED).await.unwrap();
    let before = count_in_stores(&bed.bed.stores).await.unwrap();

    let output = bed.run_cli(&["run"], &[]).unwrap();
    assert_success(&output);
    let summaries = json_lines(&output);
    let stores: Vec<&str> = summaries
        .iter()
        .map(|s| s["store"].as_str().unwrap())
        .collect();
    // The data map's stores, and the ledger backed up as one.
    assert_eq!(stores, ["accounts", "chat", "files", "ledger", "sessions"]);

    let ns = bed.bed.ns();
    let hand = bed.dir().join("by-hand");
    std::fs::create_dir_all(&hand).unwrap();
    for summary in &summaries {
        let store = summary["store"].as_str().unwrap();
        let id: sqlx::types::Uuid = summary["backup_id"].as_str().unwrap().parse().unwrap();
        let row = lethe_backup::catalog::get(&bed.ledger, id)
            .await
            .unwrap()
            .unwrap();
        let (object_key, manifest_key) = (row.object_key.clone(), row.manifest_key.clone());
        let (plaintext, bytes) = (row.plaintext_bytes.unwrap(), row.bytes.unwrap());
        let sha256 = row.sha256.clone().unwrap();
        let (status, recipients, seq) = (row.status, row.recipients, row.erasure_seq);
        let (started, expires) = (row.started_at, row.expires_at);
        assert_eq!(status, "completed", "{store}");
        assert_eq!(
            recipients,
            [bed.fingerprint.clone(), FIXTURE_FINGERPRINT.to_owned()],
            "{store}"
        );
        assert_eq!(seq, 0, "{store}");
        assert_eq!(expires - started, chrono::Duration::days(7), "{store}");
        assert!(
            object_key.starts_with(&format!("backups/{store}/")),
            "{object_key}"
        );

        // The object is what the catalog says.
        let object = bed.object(&object_key).await.unwrap();
        assert_eq!(object.len() as i64, bytes, "{store}");
        assert_eq!(hex::encode(Sha256::digest(&object)), sha256, "{store}");

        // The manifest next to it says the same, and more.
        let manifest: serde_json::Value =
            serde_json::from_slice(&bed.object(&manifest_key).await.unwrap()).unwrap();
        assert_eq!(manifest["store"], store);
        assert_eq!(manifest["backup_id"], id.to_string());
        assert_eq!(manifest["object_key"], object_key);
        assert_eq!(manifest["ciphertext_sha256"], sha256);
        assert_eq!(manifest["ciphertext_bytes"], bytes);
        assert_eq!(manifest["plaintext_bytes"], plaintext);
        assert_eq!(manifest["recipients"][0], bed.fingerprint);
        assert_eq!(manifest["recipients"][1], FIXTURE_FINGERPRINT);
        assert_eq!(manifest["erasure_seq"], 0);
        assert_eq!(manifest["encryption"], "OpenPGP SEIPDv1");
        assert!(manifest["expires_at"].is_string());
        assert!(manifest["finished_at"].is_string());
        let tool = manifest["tool_version"].as_str().unwrap();
        let expected_tool = match store {
            "accounts" | "ledger" => "pg_dump",
            "chat" => "mariadb-dump",
            "sessions" => "redis-cli",
            _ => "lethe-backup",
        };
        assert!(tool.contains(expected_tool), "{store}: {tool}");

        // What an operator does by hand: gpg (2.2, with the key gpg made) | zstd -d.
        let encrypted = hand.join(format!("{store}.gpg"));
        std::fs::write(&encrypted, &object).unwrap();
        let packets = run(bed.gpg.command().arg("--list-packets").arg(&encrypted));
        let packets = String::from_utf8_lossy(&packets.stdout);
        assert!(
            packets.contains(":encrypted data packet:") && packets.contains("mdc_method: 2"),
            "{store}: not SEIPDv1 with MDC:\n{packets}"
        );
        assert_eq!(
            packets.matches(":pubkey enc packet: version 3").count(),
            2,
            "{store}: not encrypted to both recipients:\n{packets}"
        );
        let dump = hand.join(format!("{store}.dump"));
        let decrypted = bed
            .gpg
            .command()
            .arg("--decrypt")
            .arg(&encrypted)
            .output()
            .unwrap();
        assert_success(&decrypted);
        let compressed = hand.join(format!("{store}.zst"));
        std::fs::write(&compressed, &decrypted.stdout).unwrap();
        run(Command::new("zstd")
            .args(["-d", "-q"])
            .arg(&compressed)
            .arg("-o")
            .arg(&dump));
        assert_eq!(
            std::fs::metadata(&dump).unwrap().len() as i64,
            plaintext,
            "{store}"
        );
    }

    // pg_restore, mariadb, redis-server and tar take the dumps as they are.
    let accounts_url = ns.pg_database("by_hand_accounts").await.unwrap();
    let (mut pg_restore, _) = tool("pg_restore", &accounts_url, false);
    run(pg_restore
        .args(["--exit-on-error", "--no-owner", "--no-privileges"])
        .arg(hand.join("accounts.dump")));
    let ledger_url = ns.pg_database("by_hand_ledger").await.unwrap();
    let (mut pg_restore, _) = tool("pg_restore", &ledger_url, false);
    run(pg_restore
        .args(["--exit-on-error", "--no-owner", "--no-privileges"])
        .arg(hand.join("ledger.dump")));
    let restored_ledger = sqlx::PgPool::connect(&ledger_url).await.unwrap();
    let catalogued: i64 =
        sqlx::query_scalar("SELECT count(*) FROM backup WHERE store = 'accounts'")
            .fetch_one(&restored_ledger)
            .await
            .unwrap();
    assert_eq!(catalogued, 1, "the ledger's backup holds its catalog");
    restored_ledger.close().await;
    let chat_url = ns.mysql_database("by_hand_chat").await.unwrap();
    let (mut mariadb, database) = tool("mariadb", &chat_url, true);
    run(mariadb
        .arg(database.unwrap())
        .stdin(std::fs::File::open(hand.join("chat.dump")).unwrap()));
    let rdb_dir = hand.join("redis");
    std::fs::create_dir_all(&rdb_dir).unwrap();
    std::fs::copy(hand.join("sessions.dump"), rdb_dir.join("dump.rdb")).unwrap();
    let redis = RedisServer::start(&rdb_dir).await.unwrap();
    let restored = stores_at(
        &bed.bed,
        &accounts_url,
        &chat_url,
        &redis.url,
        &bed.bed.options.files_bucket,
    )
    .await
    .unwrap();
    let after = count_in_stores(&restored).await.unwrap();
    for store in ["accounts", "chat", "sessions"] {
        assert_eq!(only(&after, store), only(&before, store), "{store}");
        assert!(only(&before, store) != Counts::zero(), "{store} was empty");
    }
    let folders = tar_folders(&hand.join("files.dump"));
    for folder in ["avatars", "attachments"] {
        assert_eq!(
            folders.get(folder).copied().unwrap_or(0),
            before.get("files", folder),
            "files/{folder}"
        );
    }
    restored.accounts.close().await;
    restored.chat.close().await;
    drop(redis);
    bed.cleanup().await.unwrap();
}

#[tokio::test]
async fn verify_checks_a_backup_and_verify_and_restore_refuse_one_with_a_flipped_byte() {
    let services = Services::from_env();
    let mut bed = BackupBed::create(&services).await.unwrap();
    bed.bed.seed(10, SEED).await.unwrap();
    let settings = bed.settings().unwrap();
    let backups = Backups::connect(&settings).await.unwrap();
    let accounts = StoreName::parse("accounts").unwrap();
    let Outcome::Completed(summary) = backups
        .backup(&accounts, &CancellationToken::new())
        .await
        .unwrap()
    else {
        panic!("the backup did not run");
    };
    let id = summary.backup_id.to_string();
    let secret = bed.secret_key.display().to_string();

    // Intact: the hash matches; with the secret key file, and with gpg and its agent, it
    // decrypts and decompresses to the recorded size.
    let plain = json(&bed.run_cli(&["verify", "--backup", &id], &[]).unwrap());
    assert_eq!(plain["ciphertext_sha256"], summary.ciphertext_sha256);
    assert!(plain["plaintext_bytes"].is_null());
    for key in [&["--secret-key", secret.as_str()][..], &["--gpg"][..]] {
        let mut args = vec!["verify", "--backup", &id];
        args.extend_from_slice(key);
        let output = bed.run_cli(&args, &[]).unwrap();
        assert_success(&output);
        assert_eq!(
            json(&output)["plaintext_bytes"],
            summary.plaintext_bytes,
            "{key:?}"
        );
    }

    // One flipped byte in the middle of the object.
    let mut object = bed.object(&summary.object_key).await.unwrap();
    let middle = object.len() / 2;
    object[middle] ^= 0x01;
    bed.put_object(&summary.object_key, object).await.unwrap();

    for key in [&[][..], &["--secret-key", secret.as_str()][..]] {
        let mut args = vec!["verify", "--backup", &id];
        args.extend_from_slice(key);
        let output = bed.run_cli(&args, &[]).unwrap();
        assert_refused(&output, &["damaged", &id, &summary.ciphertext_sha256]);
    }
    let target = bed.bed.ns().pg_database("restore_target").await.unwrap();
    let variable = bed.bed.set_variable("RESTORE_TARGET_URL", &target);
    let target_arg = format!("env:{variable}");
    let output = bed
        .run_cli(
            &[
                "restore",
                "--backup",
                &id,
                "--secret-key",
                &secret,
                "--target",
                &target_arg,
            ],
            &[],
        )
        .unwrap();
    assert_refused(&output, &["refusing to restore", "damaged"]);
    let pool = sqlx::PgPool::connect(&target).await.unwrap();
    let tables: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(tables, 0, "the damaged backup was partly restored");
    pool.close().await;
    backups.pool().close().await;
    bed.cleanup().await.unwrap();
}

/// A configuration the backup daemon reads up to its recipients (nothing is connected to).
fn offline_config(dir: &Path, recipients: &str) -> std::path::PathBuf {
    let path = dir.join("lethe.toml");
    std::fs::write(
        &path,
        format!(
            "data_map = \"datamap.toml\"\n\
             [nats]\nurl = \"nats://127.0.0.1:1\"\n\
             [ledger]\nurl = \"postgres://nobody@127.0.0.1:1/none\"\n\
             [s3]\nendpoint = \"http://127.0.0.1:1\"\nbucket = \"none\"\naccess_key_id = \"x\"\nsecret_access_key = \"y\"\n\
             [backup]\nlisten = \"127.0.0.1:0\"\n\
             [backups]\nrecipients = {recipients}\n"
        ),
    )
    .unwrap();
    path
}

fn run_backup_binary(config: &Path, args: &[&str]) -> Output {
    let mut command = Command::new(lethe_tests::backup_support::binary("lethe-backup").unwrap());
    command.arg("--config").arg(config).args(args);
    for (key, _) in std::env::vars() {
        if key.starts_with("LETHE__") {
            command.env_remove(key);
        }
    }
    command.env_remove("RUST_LOG").output().unwrap()
}

#[tokio::test]
async fn the_worker_refuses_to_start_without_a_recipient_or_with_an_expired_or_revoked_certificate()
{
    let dir = tempfile::tempdir().unwrap();
    let gpg = Gpg::new().unwrap();
    gpg.generate("Old <old@example.org>", "1d", Some("20200101T000000"))
        .unwrap();
    gpg.export_public("old@example.org", &dir.path().join("old.asc"))
        .unwrap();
    let gone = gpg.generate("Gone <gone@example.org>", "0", None).unwrap();
    gpg.revoke(&gone).unwrap();
    gpg.export_public("gone@example.org", &dir.path().join("gone.asc"))
        .unwrap();
    gpg.generate("Ops <ops@example.org>", "0", None).unwrap();
    gpg.export_secret("ops@example.org", &dir.path().join("ops.key"))
        .unwrap();

    for (recipients, expected) in [
        (
            "[]",
            &["no backup recipient is configured", "backups.recipients"][..],
        ),
        (
            "[\"old.asc\"]",
            &["backups.recipients[0]", "old.asc", "expired on 2020-01-02"][..],
        ),
        ("[\"gone.asc\"]", &["backups.recipients[0]", "revoked"][..]),
        ("[\"ops.key\"]", &["secret key material"][..]),
        (
            "[\"missing.asc\"]",
            &["backups.recipients[0]", "cannot read"][..],
        ),
    ] {
        let config = offline_config(dir.path(), recipients);
        // The daemon, and the one-shot run.
        for args in [&[][..], &["run"][..]] {
            let output = run_backup_binary(&config, args);
            assert_refused(&output, expected);
        }
    }
}

/// Erases `subject` from the live stores as the coordinator has the eraser do it: the stores
/// that know the user id first, then the store that provides it.
async fn erase(bed: &EraserBed, subject: &Subject) -> Result<RequestId> {
    let request_id = RequestId::new();
    for stores in [&["chat", "sessions", "files"][..], &["accounts"][..]] {
        let tasks: Vec<TaskMessage> = stores
            .iter()
            .map(|store| {
                let mut t = task(TaskKind::Erase, store, identities_of(subject))?;
                t.request_id = request_id;
                Ok(t)
            })
            .collect::<Result<_>>()?;
        for t in &tasks {
            bed.publish(t).await?;
        }
        bed.run_until_idle().await?;
        for result in bed.results(tasks.len(), Duration::from_secs(60)).await? {
            if let TaskOutcome::Failed { code, reason } = result.outcome {
                bail!("erasing in {:?} failed: {code}: {reason}", result.store);
            }
        }
    }
    Ok(request_id)
}

/// Records a completed erasure in the ledger as the coordinator does: the request and its
/// `erasure_log` row, with the subject's identities (the resolved user id included).
async fn record_erasure(
    ledger: &sqlx::PgPool,
    request_id: RequestId,
    subject: &Subject,
) -> Result<i64> {
    let tenant = sqlx::types::Uuid::new_v4();
    let identities = serde_json::to_value(identities_of(subject))?;
    sqlx::query("INSERT INTO tenant (id, name) VALUES ($1, $2)")
        .bind(tenant)
        .bind(format!("tenant-{tenant}"))
        .execute(ledger)
        .await?;
    sqlx::query(
        "INSERT INTO request (id, tenant_id, kind, status, identities, identity_hash, traceparent, \
         phase, received_at, target_at, due_at, completed_at) VALUES ($1, $2, 'erasure', 'completed', \
         $3, 'test-hash', '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01', 'done', now(), \
         now() + interval '7 days', now() + interval '1 month', now())",
    )
    .bind(request_id.0)
    .bind(tenant)
    .bind(&identities)
    .execute(ledger)
    .await?;
    let seq: i64 = sqlx::query_scalar(
        "INSERT INTO erasure_log (request_id, tenant_id, identities, identity_hash) \
         VALUES ($1, $2, $3, 'test-hash') RETURNING seq",
    )
    .bind(request_id.0)
    .bind(tenant)
    .bind(&identities)
    .fetch_one(ledger)
    .await?;
    Ok(seq)
}

#[tokio::test]
async fn a_subject_erased_after_a_backup_is_absent_after_its_restore_and_the_replay_report_names_the_erasure()
 {
    let services = Services::from_env();
    let mut bed = BackupBed::create(&services).await.unwrap();
    bed.bed.seed(30, SEED).await.unwrap();
    // A subject with a session and files, so every store holds something of theirs.
    let erased = (1..=30)
        .map(|i| subject(SEED, i))
        .find(|s| s.session.is_some() && !s.files.is_empty() && !s.conversations.is_empty())
        .expect("a subject with data in every store");

    let backups = Backups::connect(&bed.settings().unwrap()).await.unwrap();
    let mut ids = BTreeMap::new();
    for store in backups.stores().cloned().collect::<Vec<_>>() {
        let Outcome::Completed(summary) = backups
            .backup(&store, &CancellationToken::new())
            .await
            .unwrap()
        else {
            panic!("the backup of {store} did not run");
        };
        assert_eq!(summary.erasure_seq, 0);
        ids.insert(store.to_string(), summary.backup_id.to_string());
    }

    let request_id = erase(&bed.bed, &erased).await.unwrap();
    let seq = record_erasure(&bed.ledger, request_id, &erased)
        .await
        .unwrap();
    let live = count_in_stores(&bed.bed.stores).await.unwrap();

    // Fresh targets for the four stores.
    let ns = bed.bed.ns();
    let accounts_url = ns.pg_database("restored_accounts").await.unwrap();
    let unreplayed_url = ns.pg_database("unreplayed_accounts").await.unwrap();
    let chat_url = ns.mysql_database("restored_chat").await.unwrap();
    let files_bucket = ns.bucket("restored").await.unwrap();
    let sessions_dir = bed.dir().join("sessions");
    std::fs::create_dir_all(&sessions_dir).unwrap();
    let accounts_var = bed.bed.set_variable("RESTORED_ACCOUNTS_URL", &accounts_url);
    let unreplayed_var = bed
        .bed
        .set_variable("UNREPLAYED_ACCOUNTS_URL", &unreplayed_url);
    let chat_var = bed.bed.set_variable("RESTORED_CHAT_URL", &chat_url);
    let secret = bed.secret_key.display().to_string();
    let targets = [
        ("accounts", format!("env:{accounts_var}")),
        ("chat", format!("env:{chat_var}")),
        ("sessions", sessions_dir.display().to_string()),
        ("files", format!("s3://{files_bucket}")),
    ];
    for (store, target) in &targets {
        let output = bed
            .run_cli(
                &[
                    "restore",
                    "--backup",
                    &ids[*store],
                    "--secret-key",
                    &secret,
                    "--target",
                    target,
                ],
                &[],
            )
            .unwrap();
        assert_success(&output);
        let report = json(&output);
        assert_eq!(report["store"], *store);
        let replayed = report["replay"]["replayed"].as_array().unwrap();
        assert_eq!(replayed.len(), 1, "{store}: {report}");
        assert_eq!(replayed[0]["request_id"], request_id.to_string(), "{store}");
        assert_eq!(replayed[0]["seq"], seq, "{store}");
        let erased_there: u64 = replayed[0]["counts"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert!(
            erased_there > 0,
            "{store}: the replay erased nothing: {report}"
        );
        assert!(
            report["replay"]["unreplayable"]
                .as_array()
                .unwrap()
                .is_empty()
        );
    }

    // Restored and replayed, every store holds exactly what the live stores hold now.
    let redis = RedisServer::start(&sessions_dir).await.unwrap();
    let restored = stores_at(
        &bed.bed,
        &accounts_url,
        &chat_url,
        &redis.url,
        &files_bucket,
    )
    .await
    .unwrap();
    assert_eq!(count_in_stores(&restored).await.unwrap(), live);
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users WHERE email = $1")
        .bind(&erased.identities.email)
        .fetch_one(&restored.accounts)
        .await
        .unwrap();
    assert_eq!(users, 0, "the erased subject came back");

    // Without the replay, the backup would have brought them back.
    let output = bed
        .run_cli(
            &[
                "restore",
                "--backup",
                &ids["accounts"],
                "--gpg",
                "--target",
                &format!("env:{unreplayed_var}"),
                "--no-replay",
            ],
            &[],
        )
        .unwrap();
    assert_success(&output);
    assert!(json(&output)["replay"].is_null());
    let unreplayed = sqlx::PgPool::connect(&unreplayed_url).await.unwrap();
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users WHERE email = $1")
        .bind(&erased.identities.email)
        .fetch_one(&unreplayed)
        .await
        .unwrap();
    assert_eq!(users, 1);

    // `replay` does the same for a target restored by other means.
    let output = bed
        .run_cli(
            &[
                "replay",
                "--backup",
                &ids["accounts"],
                "--target",
                &format!("env:{unreplayed_var}"),
            ],
            &[],
        )
        .unwrap();
    assert_success(&output);
    assert_eq!(
        json(&output)["replayed"][0]["request_id"],
        request_id.to_string()
    );
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users WHERE email = $1")
        .bind(&erased.identities.email)
        .fetch_one(&unreplayed)
        .await
        .unwrap();
    assert_eq!(users, 0);

    unreplayed.close().await;
    restored.accounts.close().await;
    restored.chat.close().await;
    drop(redis);
    backups.pool().close().await;
    bed.cleanup().await.unwrap();
}

/// Waits until the catalog holds a completed backup of `store`.
async fn completed_backups(ledger: &sqlx::PgPool, store: &str) -> Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM backup WHERE store = $1 AND status = 'completed'")
            .bind(store)
            .fetch_one(ledger)
            .await?,
    )
}

#[tokio::test]
async fn a_run_command_on_nats_backs_up_the_named_store_only() {
    let services = Services::from_env();
    let bed = BackupBed::create(&services).await.unwrap();
    bed.bed.seed(5, SEED).await.unwrap();
    let settings = bed.settings().unwrap();
    let client = async_nats::connect(&services.nats_url).await.unwrap();
    let jetstream = async_nats::jetstream::new(client);
    let names = lethe_common::nats::Names::new(&bed.bed.ns().nats_prefix()).unwrap();
    let chat = StoreName::parse("chat").unwrap();
    jetstream
        .publish(names.backup_run_subject(Some(&chat)), "{}".into())
        .await
        .unwrap()
        .await
        .unwrap();

    let app = lethe_backup::App::build(&settings, RunMode::UntilIdle)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(120), app.run(CancellationToken::new()))
        .await
        .expect("the backup daemon did not become idle")
        .unwrap();

    let rows: Vec<(String, String)> = sqlx::query_as("SELECT store, status FROM backup")
        .fetch_all(&bed.ledger)
        .await
        .unwrap();
    assert_eq!(rows, [("chat".to_owned(), "completed".to_owned())]);
    bed.cleanup().await.unwrap();
}

#[tokio::test]
async fn the_daemon_backs_up_a_store_when_its_schedule_says_so() {
    let services = Services::from_env();
    let mut bed = BackupBed::create(&services).await.unwrap();
    bed.bed.seed(5, SEED).await.unwrap();
    let text = bed.settings_text(r#"schedule = { default = "off", chat = "1h" }"#);
    bed.write_config(&text).unwrap();
    let app = lethe_backup::App::build(&bed.settings().unwrap(), RunMode::UntilShutdown)
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(app.run(shutdown.clone()));
    let deadline = Instant::now() + Duration::from_secs(90);
    while completed_backups(&bed.ledger, "chat").await.unwrap() == 0 {
        assert!(Instant::now() < deadline, "no scheduled backup of chat");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    shutdown.cancel();
    running.await.unwrap().unwrap();
    let stores: Vec<String> = sqlx::query_scalar("SELECT DISTINCT store FROM backup")
        .fetch_all(&bed.ledger)
        .await
        .unwrap();
    assert_eq!(
        stores,
        ["chat"],
        "a store whose schedule is off was backed up"
    );
    // Due again only in an hour: a restarted daemon does not back it up again.
    let app = lethe_backup::App::build(&bed.settings().unwrap(), RunMode::UntilShutdown)
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(app.run(shutdown.clone()));
    tokio::time::sleep(Duration::from_secs(3)).await;
    shutdown.cancel();
    running.await.unwrap().unwrap();
    assert_eq!(completed_backups(&bed.ledger, "chat").await.unwrap(), 1);
    bed.cleanup().await.unwrap();
}

#[tokio::test]
async fn two_backups_of_the_same_store_never_run_at_once() {
    let services = Services::from_env();
    let bed = BackupBed::create(&services).await.unwrap();
    bed.bed.seed(3, SEED).await.unwrap();
    let backups = Backups::connect(&bed.settings().unwrap()).await.unwrap();
    let accounts = StoreName::parse("accounts").unwrap();

    // Another process holds the store's lock (a session-level advisory lock in the ledger).
    let mut other = bed.ledger.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(lethe_backup::catalog::lock_key(&accounts))
        .execute(&mut *other)
        .await
        .unwrap();
    let outcome = backups
        .backup(&accounts, &CancellationToken::new())
        .await
        .unwrap();
    assert!(matches!(outcome, Outcome::Busy), "{outcome:?}");
    assert_eq!(completed_backups(&bed.ledger, "accounts").await.unwrap(), 0);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM backup")
        .fetch_one(&bed.ledger)
        .await
        .unwrap();
    assert_eq!(rows, 0, "a catalog row for a backup that never ran");

    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(lethe_backup::catalog::lock_key(&accounts))
        .execute(&mut *other)
        .await
        .unwrap();
    drop(other);
    // A process that died mid-backup left its row `running`: the next backup, holding the lock,
    // knows nobody runs it any more.
    sqlx::query(
        "INSERT INTO backup (id, store, object_key, manifest_key, tool, recipients, erasure_seq, \
         status, started_at, expires_at) VALUES ($1, 'accounts', 'k', 'm', 'pg_dump', '{}', 0, \
         'running', now() - interval '1 hour', now() + interval '6 days')",
    )
    .bind(sqlx::types::Uuid::new_v4())
    .execute(&bed.ledger)
    .await
    .unwrap();
    let outcome = backups
        .backup(&accounts, &CancellationToken::new())
        .await
        .unwrap();
    assert!(matches!(outcome, Outcome::Completed(_)), "{outcome:?}");
    let statuses: Vec<String> = sqlx::query_scalar("SELECT status FROM backup ORDER BY started_at")
        .fetch_all(&bed.ledger)
        .await
        .unwrap();
    assert_eq!(statuses, ["failed", "completed"]);
    backups.pool().close().await;
    bed.cleanup().await.unwrap();
}

#[tokio::test]
async fn a_dump_that_fails_midway_leaves_no_object_and_a_failed_catalog_row_naming_the_tool() {
    let services = Services::from_env();
    let mut bed = BackupBed::create(&services).await.unwrap();
    // A pg_dump that streams 12 MB (incompressible: two parts of the upload go out), then loses
    // its connection.
    let fake = bed.dir().join("pg_dump");
    std::fs::write(
        &fake,
        "#!/bin/sh\n\
         if [ \"$1\" = \"--version\" ]; then echo 'pg_dump (PostgreSQL) 99.0'; exit 0; fi\n\
         head -c 12000000 /dev/urandom\n\
         echo 'pg_dump: error: connection to server lost' >&2\n\
         exit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let text = bed.settings_text(&format!(
        "schedule = {{ default = \"off\" }}\npart_size = \"5MiB\"\n[backups.tools]\npg_dump = {:?}\n",
        fake.display().to_string()
    ));
    bed.write_config(&text).unwrap();

    let output = bed.run_cli(&["run", "--store", "accounts"], &[]).unwrap();
    assert_refused(&output, &["pg_dump failed", "connection to server lost"]);

    let (status, error): (String, String) =
        sqlx::query_as("SELECT status, error FROM backup WHERE store = 'accounts'")
            .fetch_one(&bed.ledger)
            .await
            .unwrap();
    assert_eq!(status, "failed");
    assert!(error.contains("pg_dump failed"), "{error}");
    let listed = services
        .s3_client()
        .list_objects_v2()
        .bucket(&bed.bucket)
        .prefix("backups/")
        .send()
        .await
        .unwrap();
    assert!(
        listed.contents().is_empty(),
        "a failed backup left objects: {:?}",
        listed.contents()
    );
    bed.cleanup().await.unwrap();
}
