//! The retention worker against real services: backups and exports past their age are deleted
//! (objects and catalog rows) and nothing younger, a dry run lists the same and deletes
//! nothing, staging leftovers of finished requests go, old log rows go in batches while newer
//! ones stay, identities are minimised once no usable backup predates their erasure while the
//! restore replay of a backup inside the window still works, runs are idempotent and never
//! conflict, and a run command on NATS triggers a run and its event.

use std::time::Duration;

use chrono::{DateTime, Utc};
use lethe_common::Settings;
use lethe_common::nats::{self, Names};
use lethe_common::worker::RunMode;
use lethe_retention::{Mode, Outcome, Report, Retention};
use lethe_tests::backup_support::BackupBed;
use lethe_tests::eraser_support::{EraserBed, identities_of};
use lethe_tests::{Namespace, Services};
use sqlx::PgPool;
use sqlx::types::Uuid;
use tokio_util::sync::CancellationToken;

const DAY: i64 = 24 * 3600;

/// A ledger, Lethe's bucket and a configuration whose data map has no log table.
struct Bed {
    ns: Namespace,
    ledger: PgPool,
    bucket: String,
    s3: aws_sdk_s3::Client,
    text: String,
    _dir: tempfile::TempDir,
}

impl Bed {
    async fn create(services: &Services, retention_extra: &str) -> Bed {
        let ns = Namespace::create(services).await.unwrap();
        let ledger_url = ns.pg_database("ledger").await.unwrap();
        let ledger = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect(&ledger_url)
            .await
            .unwrap();
        lethe_common::ledger::MIGRATOR.run(&ledger).await.unwrap();
        let bucket = ns.bucket("lethe").await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let map = dir.path().join("datamap.toml");
        std::fs::write(
            &map,
            format!(
                "identities = [\"user_id\"]\n[stores.files]\nkind = \"s3\"\nbucket = {bucket:?}\n\
                 prefixes = [\"avatars/{{user_id}}/\"]\n"
            ),
        )
        .unwrap();
        let text = crate::support::settings_toml(
            services,
            &ns,
            Some(&ledger_url),
            Some(&bucket),
            Some(&map),
        )
        .replace(
            "[retention]\n",
            &format!("[retention]\nschedule = \"off\"\n{retention_extra}\n"),
        );
        deprovision_on_cleanup(&ns, services);
        Bed {
            s3: services.s3_client(),
            ns,
            ledger,
            bucket,
            text,
            _dir: dir,
        }
    }

    fn settings(&self) -> Settings {
        crate::support::settings(&self.text)
    }

    async fn retention(&self) -> Retention {
        Retention::connect(&self.settings()).await.unwrap()
    }

    async fn put(&self, key: &str) {
        put(&self.s3, &self.bucket, key).await;
    }

    async fn exists(&self, key: &str) -> bool {
        exists(&self.s3, &self.bucket, key).await
    }

    async fn cleanup(self) {
        self.ledger.close().await;
        self.ns.cleanup().await.unwrap();
    }
}

/// Removes the namespace's streams at cleanup (the daemon provisions them).
fn deprovision_on_cleanup(ns: &Namespace, services: &Services) {
    let url = services.nats_url.clone();
    let prefix = ns.nats_prefix();
    ns.on_cleanup(move |_| async move {
        let settings =
            Settings::from_toml(&format!("[nats]\nurl = \"{url}\"\nprefix = \"{prefix}\"\n"))?.nats;
        let client = nats::connect(&settings, "lethe-tests-cleanup").await?;
        nats::deprovision(&async_nats::jetstream::new(client), &Names::new(&prefix)?).await?;
        Ok(())
    });
}

async fn put(s3: &aws_sdk_s3::Client, bucket: &str, key: &str) {
    s3.put_object()
        .bucket(bucket)
        .key(key)
        .body(b"old".to_vec().into())
        .send()
        .await
        .unwrap();
}

async fn exists(s3: &aws_sdk_s3::Client, bucket: &str, key: &str) -> bool {
    match s3.head_object().bucket(bucket).key(key).send().await {
        Ok(_) => true,
        Err(error)
            if error
                .raw_response()
                .is_some_and(|r| r.status().as_u16() == 404) =>
        {
            false
        }
        Err(error) => panic!("head {key}: {error:?}"),
    }
}

/// A completed backup of `store` that started `age_days` ago, with its object and manifest.
async fn backup(
    ledger: &PgPool,
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    store: &str,
    now: DateTime<Utc>,
    age_days: i64,
    erasure_seq: i64,
) -> Uuid {
    let id = Uuid::new_v4();
    let started = now - chrono::Duration::seconds(age_days * DAY);
    let base = format!("backups/{store}/{}-{id}", started.format("%Y%m%dT%H%M%SZ"));
    let object = format!("{base}.tar.zst.gpg");
    let manifest = format!("{base}.manifest.json");
    put(s3, bucket, &object).await;
    put(s3, bucket, &manifest).await;
    sqlx::query(
        "INSERT INTO backup (id, store, object_key, manifest_key, tool, plaintext_bytes, bytes, \
         sha256, recipients, erasure_seq, status, started_at, finished_at, expires_at) \
         VALUES ($1, $2, $3, $4, 'test', 3, 3, 'x', '{}', $5, 'completed', $6, $6, $7)",
    )
    .bind(id)
    .bind(store)
    .bind(&object)
    .bind(&manifest)
    .bind(erasure_seq)
    .bind(started)
    .bind(started + chrono::Duration::days(7))
    .execute(ledger)
    .await
    .unwrap();
    id
}

async fn tenant(ledger: &PgPool) -> Uuid {
    let id = Uuid::new_v4();
    sqlx::query("INSERT INTO tenant (id, name) VALUES ($1, $2)")
        .bind(id)
        .bind(format!("tenant-{id}"))
        .execute(ledger)
        .await
        .unwrap();
    id
}

/// A request of `kind` and `status` holding `identities`, received and last changed at `changed`.
async fn request(
    ledger: &PgPool,
    tenant: Uuid,
    kind: &str,
    status: &str,
    identities: Option<&serde_json::Value>,
    changed: DateTime<Utc>,
) -> Uuid {
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO request (id, tenant_id, kind, status, identities, identity_hash, traceparent, \
         phase, received_at, target_at, due_at, completed_at, updated_at) VALUES ($1, $2, $3, $4, $5, \
         'keyed-hash', '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01', 'done', $6, \
         $6 + interval '7 days', $6 + interval '1 month', $6, $6)",
    )
    .bind(id)
    .bind(tenant)
    .bind(kind)
    .bind(status)
    .bind(identities)
    .bind(changed)
    .execute(ledger)
    .await
    .unwrap();
    id
}

/// An export assembled `age_days` ago, with its archive.
async fn export(bed: &Bed, tenant: Uuid, now: DateTime<Utc>, age_days: i64) -> (Uuid, String) {
    let created = now - chrono::Duration::seconds(age_days * DAY);
    let id = request(&bed.ledger, tenant, "access", "completed", None, created).await;
    let key = format!("exports/{id}/{id}.zip");
    bed.put(&key).await;
    sqlx::query(
        "INSERT INTO export (request_id, object_key, bytes, sha256, created_at, expires_at) \
         VALUES ($1, $2, 3, 'x', $3, $4)",
    )
    .bind(id)
    .bind(&key)
    .bind(created)
    .bind(created + chrono::Duration::days(7))
    .execute(&bed.ledger)
    .await
    .unwrap();
    (id, key)
}

/// The clock of a test, to the microsecond the ledger keeps.
fn now() -> DateTime<Utc> {
    use chrono::SubsecRound as _;
    Utc::now().trunc_subsecs(6)
}

fn completed(outcome: Outcome) -> Box<Report> {
    match outcome {
        Outcome::Completed(report) => report,
        Outcome::Busy => panic!("the run found another one running"),
    }
}

#[tokio::test]
async fn a_run_deletes_exactly_the_backups_and_exports_past_7_days_catalog_rows_included_and_a_dry_run_lists_the_same_deleting_nothing()
 {
    let services = Services::from_env();
    let bed = Bed::create(&services, "").await;
    let now = now();
    let mut backups = Vec::new();
    let mut exports = Vec::new();
    let tenant = tenant(&bed.ledger).await;
    for age in [1, 6, 8, 30] {
        backups.push(backup(&bed.ledger, &bed.s3, &bed.bucket, "files", now, age, 0).await);
        exports.push(export(&bed, tenant, now, age).await);
    }
    let keys: Vec<(String, String)> =
        sqlx::query_as("SELECT object_key, manifest_key FROM backup ORDER BY started_at DESC")
            .fetch_all(&bed.ledger)
            .await
            .unwrap();
    let retention = bed.retention().await;

    // Dry run: the 8- and 30-day-old ones are listed, nothing changes.
    let dry = completed(retention.run(now, Mode::DryRun).await.unwrap());
    assert!(dry.dry_run);
    let listed: Vec<Uuid> = dry.backups.items.iter().map(|b| b.backup_id).collect();
    assert_eq!(listed, [backups[3], backups[2]]);
    let listed: Vec<Option<Uuid>> = dry.exports.items.iter().map(|e| e.request_id).collect();
    assert_eq!(listed, [Some(exports[3].0), Some(exports[2].0)]);
    assert_eq!(dry.backups.bytes, 6);
    assert_eq!(dry.errors(), 0, "{dry:?}");
    for (object, manifest) in &keys {
        assert!(bed.exists(object).await && bed.exists(manifest).await);
    }
    for (_, key) in &exports {
        assert!(bed.exists(key).await);
    }
    let untouched: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM backup WHERE deleted_at IS NULL AND status = 'completed') \
         + (SELECT count(*) FROM export WHERE deleted_at IS NULL)",
    )
    .fetch_one(&bed.ledger)
    .await
    .unwrap();
    assert_eq!(untouched, 8, "a dry run changed the catalog");

    // Two runs at once: one deletes, the other finds it running or nothing left; never both.
    let other = bed.retention().await;
    let (a, b) = tokio::join!(
        retention.run(now, Mode::Delete),
        other.run(now, Mode::Delete)
    );
    let reports: Vec<Box<Report>> = [a.unwrap(), b.unwrap()]
        .into_iter()
        .filter_map(|o| match o {
            Outcome::Completed(report) => Some(report),
            Outcome::Busy => None,
        })
        .collect();
    assert!(!reports.is_empty());
    assert_eq!(reports.iter().map(|r| r.backups.deleted).sum::<u64>(), 2);
    assert_eq!(reports.iter().map(|r| r.exports.deleted).sum::<u64>(), 2);
    assert!(reports.iter().all(|r| r.errors() == 0), "{reports:?}");
    let report = reports
        .iter()
        .find(|r| r.backups.deleted == 2)
        .expect("one run deleted both backups");
    let deleted: Vec<Uuid> = report.backups.items.iter().map(|b| b.backup_id).collect();
    assert_eq!(deleted, listed_backups(&dry));
    assert_eq!(
        report.backups.oldest_left,
        Some(now - chrono::Duration::seconds(6 * DAY))
    );

    // Exactly the 8- and 30-day-old ones are gone, objects and catalog rows.
    for (i, (object, manifest)) in keys.iter().enumerate() {
        let old = i >= 2;
        assert_eq!(bed.exists(object).await, !old, "{object}");
        assert_eq!(bed.exists(manifest).await, !old, "{manifest}");
    }
    for (i, id) in backups.iter().enumerate() {
        let (status, deleted_at): (String, Option<DateTime<Utc>>) =
            sqlx::query_as("SELECT status, deleted_at FROM backup WHERE id = $1")
                .bind(id)
                .fetch_one(&bed.ledger)
                .await
                .unwrap();
        let old = i >= 2;
        assert_eq!(status, if old { "deleted" } else { "completed" });
        assert_eq!(deleted_at.is_some(), old);
    }
    for (i, (id, key)) in exports.iter().enumerate() {
        let old = i >= 2;
        assert_eq!(bed.exists(key).await, !old, "{key}");
        let deleted_at: Option<DateTime<Utc>> =
            sqlx::query_scalar("SELECT deleted_at FROM export WHERE request_id = $1")
                .bind(id)
                .fetch_one(&bed.ledger)
                .await
                .unwrap();
        assert_eq!(deleted_at.is_some(), old);
    }
    // One audit event per deletion, for the api's sealer to chain.
    let events: Vec<String> = sqlx::query_scalar(
        "SELECT kind FROM audit_event WHERE kind LIKE 'retention.%' ORDER BY kind",
    )
    .fetch_all(&bed.ledger)
    .await
    .unwrap();
    assert_eq!(
        events,
        [
            "retention.backup_deleted",
            "retention.backup_deleted",
            "retention.export_deleted",
            "retention.export_deleted"
        ]
    );

    // Again: nothing left to delete.
    let again = completed(retention.run(now, Mode::Delete).await.unwrap());
    assert!(again.is_empty(), "{again:?}");
    assert_eq!(again.errors(), 0);

    // A stopped backup schedule keeps nothing alive: a day later the 6-day-old one goes too,
    // although no newer backup was made.
    let later = completed(
        retention
            .run(
                now + chrono::Duration::days(1) + chrono::Duration::hours(1),
                Mode::Delete,
            )
            .await
            .unwrap(),
    );
    let deleted: Vec<Uuid> = later.backups.items.iter().map(|b| b.backup_id).collect();
    assert_eq!(deleted, [backups[1]]);

    retention.pool().close().await;
    other.pool().close().await;
    bed.cleanup().await;
}

fn listed_backups(report: &Report) -> Vec<Uuid> {
    report.backups.items.iter().map(|b| b.backup_id).collect()
}

#[tokio::test]
async fn staging_leftovers_of_finished_requests_go_after_a_day_and_those_of_open_requests_stay() {
    let services = Services::from_env();
    let bed = Bed::create(&services, "").await;
    let tenant = tenant(&bed.ledger).await;
    let now = now();
    let finished = request(&bed.ledger, tenant, "access", "failed", None, now).await;
    let open = request(&bed.ledger, tenant, "access", "in_progress", None, now).await;
    let finished_keys = [
        format!("staging/{finished}/accounts/users.ndjson"),
        format!("staging/{finished}/files/files/avatars/7/me.png"),
    ];
    let open_key = format!("staging/{open}/accounts/users.ndjson");
    for key in finished_keys.iter().chain([&open_key]) {
        bed.put(key).await;
    }
    let retention = bed.retention().await;

    // Written just now: not a day old yet.
    let early = completed(retention.run(now, Mode::Delete).await.unwrap());
    assert_eq!(early.staging.deleted, 0);
    assert_eq!(early.errors(), 0, "{early:?}");

    let later = now + chrono::Duration::hours(25);
    let dry = completed(retention.run(later, Mode::DryRun).await.unwrap());
    assert_eq!(dry.staging.deleted, 2);
    assert!(bed.exists(&finished_keys[0]).await);

    let report = completed(retention.run(later, Mode::Delete).await.unwrap());
    assert_eq!(report.staging.deleted, 2);
    // Reported by the request's prefix only: keys inside can name a subject's files.
    let prefixes: Vec<&str> = report
        .staging
        .items
        .iter()
        .map(|i| i.prefix.as_str())
        .collect();
    assert_eq!(prefixes, [format!("staging/{finished}/").as_str()]);
    let printed = serde_json::to_string(&report).unwrap();
    assert!(!printed.contains("avatars"), "{printed}");
    for key in &finished_keys {
        assert!(!bed.exists(key).await, "{key}");
    }
    assert!(
        bed.exists(&open_key).await,
        "an open request's staging area was deleted"
    );
    let recorded: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_event WHERE kind = 'retention.staging_deleted' AND request_id = $1",
    )
    .bind(finished)
    .fetch_one(&bed.ledger)
    .await
    .unwrap();
    assert_eq!(recorded, 1);
    retention.pool().close().await;
    bed.cleanup().await;
}

/// The unfinished multipart uploads of the bucket, by upload id, with their start as the
/// server reports it (`ListMultipartUploads`).
async fn pending_uploads(bed: &Bed) -> Vec<(String, DateTime<Utc>)> {
    let page = bed
        .s3
        .list_multipart_uploads()
        .bucket(&bed.bucket)
        .send()
        .await
        .unwrap();
    page.uploads()
        .iter()
        .map(|u| {
            let at = u.initiated().unwrap();
            (
                u.upload_id().unwrap().to_owned(),
                DateTime::from_timestamp(at.secs(), at.subsec_nanos()).unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn unfinished_uploads_older_than_the_staging_age_are_aborted_and_newer_ones_kept() {
    let services = Services::from_env();
    let bed = Bed::create(&services, "staging_max_age = \"1d\"").await;
    let tenant = tenant(&bed.ledger).await;
    let finished = request(&bed.ledger, tenant, "access", "failed", None, now()).await;
    let start = |key: String| {
        let s3 = bed.s3.clone();
        let bucket = bed.bucket.clone();
        async move {
            let upload = s3
                .create_multipart_upload()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .unwrap();
            upload.upload_id().unwrap().to_owned()
        }
    };
    let stale = start(format!("staging/{finished}/files/files/avatars/7/a.png")).await;
    // Servers report the start to the second: begin the second upload in a later one.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let fresh = start(format!("staging/{finished}/files/files/avatars/7/b.png")).await;
    let listed = pending_uploads(&bed).await;
    let started = |id: &str| {
        listed
            .iter()
            .find(|(u, _)| u == id)
            .map(|(_, at)| *at)
            .unwrap()
    };
    let (stale_at, fresh_at) = (started(&stale), started(&fresh));
    assert!(stale_at < fresh_at, "{listed:?}");
    let retention = bed.retention().await;

    // A clock at which the first upload is over a day old and the second not yet.
    let at = stale_at + (fresh_at - stale_at) / 2 + chrono::Duration::days(1);
    let dry = completed(retention.run(at, Mode::DryRun).await.unwrap());
    assert_eq!(dry.uploads.section.deleted, 1, "{dry:?}");
    assert_eq!(pending_uploads(&bed).await.len(), 2);

    let report = completed(retention.run(at, Mode::Delete).await.unwrap());
    assert_eq!(report.errors(), 0, "{report:?}");
    assert_eq!(report.uploads.section.deleted, 1);
    // Reported by the request's prefix only: the key can name a subject's file.
    let prefixes: Vec<&str> = report
        .uploads
        .section
        .items
        .iter()
        .map(|i| i.prefix.as_str())
        .collect();
    assert_eq!(prefixes, [format!("staging/{finished}/").as_str()]);
    let left: Vec<String> = pending_uploads(&bed)
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(
        left,
        std::slice::from_ref(&fresh),
        "the stale upload {stale} is left"
    );
    let recorded: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_event WHERE kind = 'retention.upload_aborted' AND request_id = $1",
    )
    .bind(finished)
    .fetch_one(&bed.ledger)
    .await
    .unwrap();
    assert_eq!(recorded, 1);

    bed.s3
        .abort_multipart_upload()
        .bucket(&bed.bucket)
        .key(format!("staging/{finished}/files/files/avatars/7/b.png"))
        .upload_id(&fresh)
        .send()
        .await
        .unwrap();
    retention.pool().close().await;
    bed.cleanup().await;
}

/// Rows of the sample log tables: `old` rows over 400 days old and `new` rows of yesterday.
async fn log_rows(bed: &EraserBed, old: i64, new: i64, now: DateTime<Utc>) {
    let past = now - chrono::Duration::days(400);
    let recent = now - chrono::Duration::days(1);
    sqlx::query(
        "INSERT INTO access_log (user_id, ip, page, at) \
         SELECT 1, '192.0.2.1', '/p', $1 - make_interval(secs => g) FROM generate_series(1, $2) g \
         UNION ALL SELECT 1, '192.0.2.1', '/p', $3 FROM generate_series(1, $4)",
    )
    .bind(past)
    .bind(old)
    .bind(recent)
    .bind(new)
    .execute(&bed.stores.accounts)
    .await
    .unwrap();
    let mut id = 1i64;
    for (count, at) in [(old, past), (new, recent)] {
        for _ in 0..count {
            sqlx::query("INSERT INTO visits (id, user_id, page, ip, at) VALUES (?, 1, '/p', '192.0.2.1', ?)")
                .bind(id)
                .bind(at.naive_utc())
                .execute(&bed.stores.chat)
                .await
                .unwrap();
            id += 1;
        }
    }
}

async fn counts(bed: &EraserBed) -> (i64, i64) {
    let pg: i64 = sqlx::query_scalar("SELECT count(*) FROM access_log")
        .fetch_one(&bed.stores.accounts)
        .await
        .unwrap();
    let my: i64 = sqlx::query_scalar("SELECT count(*) FROM visits")
        .fetch_one(&bed.stores.chat)
        .await
        .unwrap();
    (pg, my)
}

#[tokio::test]
async fn old_log_rows_are_deleted_in_batches_around_locked_rows_and_newer_rows_stay() {
    let services = Services::from_env();
    let bed = EraserBed::create(&services).await.unwrap();
    let ns = bed.ns();
    let ledger_url = ns.pg_database("ledger").await.unwrap();
    let bucket = ns.bucket("lethe").await.unwrap();
    let map = bed.settings(1).unwrap().data_map_path().unwrap();
    let text =
        crate::support::settings_toml(&services, ns, Some(&ledger_url), Some(&bucket), Some(&map))
            .replace("[retention]\n", "[retention]\nlog_batch_size = 100\n");
    let now = now();
    log_rows(&bed, 250, 7, now).await;
    assert_eq!(counts(&bed).await, (257, 257));

    // The application holds one old row locked: the batches go around it instead of waiting.
    let mut holder = bed.stores.accounts.begin().await.unwrap();
    let locked: i64 = sqlx::query_scalar(
        "SELECT id FROM access_log WHERE at < now() - interval '365 days' ORDER BY id LIMIT 1 FOR UPDATE",
    )
    .fetch_one(&mut *holder)
    .await
    .unwrap();

    let mut settings = crate::support::settings(&text);
    settings.credentials = bed.credentials().clone();
    let retention = Retention::connect(&settings).await.unwrap();
    let dry = completed(retention.run(now, Mode::DryRun).await.unwrap());
    let rows: Vec<(String, u64)> = dry.logs.iter().map(|l| (l.table.clone(), l.rows)).collect();
    assert_eq!(
        rows,
        [("access_log".to_owned(), 250), ("visits".to_owned(), 250)]
    );
    assert_eq!(counts(&bed).await, (257, 257));

    let report = tokio::time::timeout(Duration::from_secs(60), retention.run(now, Mode::Delete))
        .await
        .expect("pruning waited for the locked row");
    let report = completed(report.unwrap());
    assert_eq!(report.errors(), 0, "{report:?}");
    let access = &report.logs[0];
    let visits = &report.logs[1];
    assert_eq!((access.rows, visits.rows), (249, 250));
    // 100 rows per statement, one short transaction each.
    assert!(access.batches >= 3 && visits.batches >= 3, "{report:?}");
    assert_eq!(counts(&bed).await, (8, 7));
    // Every newer row is still there.
    let newer: i64 =
        sqlx::query_scalar("SELECT count(*) FROM access_log WHERE at > now() - interval '2 days'")
            .fetch_one(&bed.stores.accounts)
            .await
            .unwrap();
    assert_eq!(newer, 7);
    holder.rollback().await.unwrap();

    // Released, the row goes at the next run; then nothing is left to delete.
    let next = completed(retention.run(now, Mode::Delete).await.unwrap());
    assert_eq!(next.logs[0].rows, 1);
    let gone: i64 = sqlx::query_scalar("SELECT count(*) FROM access_log WHERE id = $1")
        .bind(locked)
        .fetch_one(&bed.stores.accounts)
        .await
        .unwrap();
    assert_eq!(gone, 0);
    let last = completed(retention.run(now, Mode::Delete).await.unwrap());
    assert_eq!(last.log_rows(), 0);
    let recorded: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_event WHERE kind = 'retention.log_rows_deleted'",
    )
    .fetch_one(retention.pool())
    .await
    .unwrap();
    assert_eq!(recorded, 3);
    retention.pool().close().await;
    bed.cleanup().await.unwrap();
}

/// Records a completed erasure of `subject` as the coordinator does, at `at`.
async fn erasure(
    ledger: &PgPool,
    tenant: Uuid,
    subject: &lethe_sample::Subject,
    at: DateTime<Utc>,
) -> (Uuid, i64) {
    let identities = serde_json::to_value(identities_of(subject)).unwrap();
    let id = request(
        ledger,
        tenant,
        "erasure",
        "completed",
        Some(&identities),
        at,
    )
    .await;
    let seq: i64 = sqlx::query_scalar(
        "INSERT INTO erasure_log (request_id, tenant_id, identities, identity_hash, recorded_at) \
         VALUES ($1, $2, $3, 'keyed-hash', $4) RETURNING seq",
    )
    .bind(id)
    .bind(tenant)
    .bind(&identities)
    .bind(at)
    .fetch_one(ledger)
    .await
    .unwrap();
    (id, seq)
}

async fn identities_kept(ledger: &PgPool, request: Uuid) -> (bool, bool) {
    sqlx::query_as(
        "SELECT r.identities IS NOT NULL, l.identities IS NOT NULL FROM request r \
         JOIN erasure_log l ON l.request_id = r.id WHERE r.id = $1",
    )
    .bind(request)
    .fetch_one(ledger)
    .await
    .unwrap()
}

#[tokio::test]
async fn identities_are_minimised_once_no_usable_backup_predates_the_erasure_and_the_replay_of_a_backup_inside_the_window_still_works()
 {
    let services = Services::from_env();
    let mut bed = BackupBed::create(&services).await.unwrap();
    bed.bed.seed(4, 31).await.unwrap();
    let text = format!(
        "{}\n[retention]\nlisten = \"127.0.0.1:0\"\nschedule = \"off\"\n",
        bed.settings_text(r#"schedule = { default = "off" }"#)
    );
    bed.write_config(&text).unwrap();
    let settings = bed.settings().unwrap();
    let now = now();
    let ledger = bed.ledger.clone();
    let s3 = services.s3_client();
    let tenant = tenant(&ledger).await;
    let first = lethe_sample::subject(31, 1);
    let second = lethe_sample::subject(31, 2);

    // A backup 10 days old, an erasure 9 days ago, a backup 5 days old, an erasure 2 days ago.
    let old_backup = backup(&ledger, &s3, &bed.bucket, "accounts", now, 10, 0).await;
    let (early, early_seq) =
        erasure(&ledger, tenant, &first, now - chrono::Duration::days(9)).await;
    let new_backup = backup(&ledger, &s3, &bed.bucket, "accounts", now, 5, early_seq).await;
    let (late, late_seq) = erasure(&ledger, tenant, &second, now - chrono::Duration::days(2)).await;
    // An access request finished two days ago: no replay ever needs its identities.
    let access_identities = serde_json::to_value(identities_of(&first)).unwrap();
    let access = request(
        &ledger,
        tenant,
        "access",
        "completed",
        Some(&access_identities),
        now - chrono::Duration::days(2),
    )
    .await;

    let retention = Retention::connect(&settings).await.unwrap();
    let dry = completed(retention.run(now, Mode::DryRun).await.unwrap());
    let listed: Vec<Uuid> = dry
        .identities
        .section
        .items
        .iter()
        .map(|i| i.request_id)
        .collect();
    assert_eq!(listed, [early, access]);
    assert_eq!(dry.identities.replay_window, Some(early_seq));
    assert_eq!(identities_kept(&ledger, early).await, (true, true));

    let report = completed(retention.run(now, Mode::Delete).await.unwrap());
    assert_eq!(listed_backups(&report), [old_backup]);
    assert_eq!(report.identities.section.deleted, 2);
    // The erasure only the deleted backup predates is minimised; the one the remaining backup
    // predates keeps its identities for the replay.
    assert_eq!(identities_kept(&ledger, early).await, (false, false));
    assert_eq!(identities_kept(&ledger, late).await, (true, true));
    let (hash, minimised): (String, Option<DateTime<Utc>>) =
        sqlx::query_as("SELECT identity_hash, minimised_at FROM request WHERE id = $1")
            .bind(early)
            .fetch_one(&ledger)
            .await
            .unwrap();
    assert_eq!(hash, "keyed-hash");
    assert!(minimised.is_some());
    let access_left: bool =
        sqlx::query_scalar("SELECT identities IS NOT NULL FROM request WHERE id = $1")
            .bind(access)
            .fetch_one(&ledger)
            .await
            .unwrap();
    assert!(!access_left);
    let audited: Vec<Uuid> = sqlx::query_scalar(
        "SELECT request_id FROM audit_event WHERE kind = 'request.minimised' ORDER BY seq",
    )
    .fetch_all(&ledger)
    .await
    .unwrap();
    assert_eq!(audited.len(), 2);
    assert!(audited.contains(&early) && audited.contains(&access));

    // The restore replay of the backup inside the window still erases the later subject.
    let target = bed.bed.variable("ACCOUNTS_URL");
    let replay_ledger = lethe_backup::Ledger::connect(&settings).await.unwrap();
    let replayed = lethe_backup::restore::replay(
        &replay_ledger,
        new_backup,
        &lethe_backup::Target::Env(target.clone()),
        None,
    )
    .await
    .unwrap();
    assert!(replayed.unreplayable.is_empty(), "{replayed:?}");
    assert_eq!(replayed.replayed.len(), 1);
    assert_eq!(replayed.replayed[0].seq, Some(late_seq));
    assert!(
        replayed.replayed[0].counts.values().sum::<u64>() > 0,
        "{replayed:?}"
    );
    // The deleted backup's restore could not replay the minimised erasure: that is why it
    // waited for the backup to go.
    let stale = lethe_backup::restore::replay(
        &replay_ledger,
        old_backup,
        &lethe_backup::Target::Env(target),
        None,
    )
    .await
    .unwrap();
    assert_eq!(stale.unreplayable.len(), 1);
    assert_eq!(stale.unreplayable[0].seq, Some(early_seq));

    // Nothing more the second time.
    let again = completed(retention.run(now, Mode::Delete).await.unwrap());
    assert_eq!(again.identities.section.deleted, 0);
    assert_eq!(again.backups.deleted, 0);

    if let Some(pool) = replay_ledger.pool() {
        pool.close().await;
    }
    retention.pool().close().await;
    bed.cleanup().await.unwrap();
}

#[tokio::test]
async fn a_run_command_on_nats_runs_retention_and_publishes_its_event() {
    let services = Services::from_env();
    let bed = Bed::create(&services, "").await;
    let now = now();
    let old = backup(&bed.ledger, &bed.s3, &bed.bucket, "files", now, 8, 0).await;
    let young = backup(&bed.ledger, &bed.s3, &bed.bucket, "files", now, 2, 0).await;
    let client = async_nats::connect(&services.nats_url).await.unwrap();
    let jetstream = async_nats::jetstream::new(client);
    let names = Names::new(&bed.ns.nats_prefix()).unwrap();
    let app = lethe_retention::App::build(&bed.settings(), RunMode::UntilIdle)
        .await
        .unwrap();
    jetstream
        .publish(names.retention_run_subject(), "".into())
        .await
        .unwrap()
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(60), app.run(CancellationToken::new()))
        .await
        .expect("the retention daemon did not become idle")
        .unwrap();

    let statuses: Vec<(Uuid, String)> =
        sqlx::query_as("SELECT id, status FROM backup ORDER BY started_at")
            .fetch_all(&bed.ledger)
            .await
            .unwrap();
    assert_eq!(
        statuses,
        [(old, "deleted".to_owned()), (young, "completed".to_owned())]
    );
    let stream = jetstream.get_stream(names.events_stream()).await.unwrap();
    let event = stream
        .get_last_raw_message_by_subject(&names.event_subject("retention"))
        .await
        .unwrap();
    let event: serde_json::Value = serde_json::from_slice(&event.payload).unwrap();
    assert_eq!(event["kind"], "retention");
    assert_eq!(event["counts"]["backups_deleted"], 1);
    assert!(
        event["counts"]["oldest_backup_age_seconds"]
            .as_u64()
            .unwrap()
            >= 2 * DAY as u64
    );
    bed.cleanup().await;
}

#[tokio::test]
async fn the_run_command_prints_what_a_dry_run_would_delete_then_deletes_it_once() {
    let services = Services::from_env();
    let bed = Bed::create(&services, "").await;
    let now = now();
    let old = backup(&bed.ledger, &bed.s3, &bed.bucket, "files", now, 9, 0).await;
    let young = backup(&bed.ledger, &bed.s3, &bed.bucket, "files", now, 3, 0).await;
    // A catalog row pointing outside `backups.prefix` is reported, never followed.
    sqlx::query(
        "UPDATE backup SET object_key = 'elsewhere/x', started_at = started_at - interval '10 days' \
         WHERE id = $1",
    )
    .bind(young)
    .execute(&bed.ledger)
    .await
    .unwrap();
    bed.put("elsewhere/x").await;
    let dir = tempfile::tempdir().unwrap();
    let config = crate::support::write_temp(&dir, "lethe.toml", &bed.text);
    let config = config.to_str().unwrap();
    let object: String = sqlx::query_scalar("SELECT object_key FROM backup WHERE id = $1")
        .bind(old)
        .fetch_one(&bed.ledger)
        .await
        .unwrap();

    let output = crate::support::run_binary(
        "lethe-retention",
        &["--config", config, "run", "--dry-run"],
        &[],
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    assert_eq!(report["dry_run"], true);
    let items = report["backups"]["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{report}");
    assert_eq!(items[0]["backup_id"], old.to_string());
    assert_eq!(items[0]["object_key"], object.as_str());
    let errors = report["backups"]["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{report}");
    assert!(
        errors[0]
            .as_str()
            .unwrap()
            .contains("outside backups.prefix")
    );
    assert!(bed.exists(&object).await, "a dry run deleted the backup");

    // The real run deletes it and exits 1 over the row it refused to follow.
    let output = crate::support::run_binary("lethe-retention", &["--config", config, "run"], &[]);
    assert_eq!(output.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["backups"]["deleted"], 1);
    assert!(!bed.exists(&object).await);
    assert!(bed.exists("elsewhere/x").await);
    let output = crate::support::run_binary("lethe-retention", &["--config", config, "run"], &[]);
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["backups"]["deleted"], 0);
    bed.cleanup().await;
}

#[tokio::test]
async fn the_daemon_runs_on_its_schedule_first_at_start_up() {
    let services = Services::from_env();
    let bed = Bed::create(&services, "").await;
    let text = bed
        .text
        .replace("schedule = \"off\"\n", "schedule = \"1h\"\n");
    let now = now();
    let old = backup(&bed.ledger, &bed.s3, &bed.bucket, "files", now, 8, 0).await;
    let app = lethe_retention::App::build(&crate::support::settings(&text), RunMode::UntilShutdown)
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(app.run(shutdown.clone()));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let status: String = sqlx::query_scalar("SELECT status FROM backup WHERE id = $1")
            .bind(old)
            .fetch_one(&bed.ledger)
            .await
            .unwrap();
        if status == "deleted" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no scheduled run deleted the old backup"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    shutdown.cancel();
    running.await.unwrap().unwrap();
    bed.cleanup().await;
}

/// A tombstone object completed `age` ago (its content does not matter to retention).
async fn tombstone(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    now: DateTime<Utc>,
    age: chrono::Duration,
) -> String {
    let key = format!(
        "tombstones/{}-{}.json.gpg",
        (now - age).format("%Y%m%dT%H%M%S%.6fZ"),
        Uuid::now_v7()
    );
    put(s3, bucket, &key).await;
    key
}

#[tokio::test]
async fn tombstones_go_once_no_backup_in_the_catalog_or_the_bucket_predates_them_and_recent_ones_stay()
 {
    let services = Services::from_env();
    let mut bed = BackupBed::create(&services).await.unwrap();
    let text = format!(
        "{}\n[retention]\nlisten = \"127.0.0.1:0\"\nschedule = \"off\"\n",
        bed.settings_text(r#"schedule = { default = "off" }"#)
    );
    bed.write_config(&text).unwrap();
    let settings = bed.settings().unwrap();
    let now = now();
    let s3 = services.s3_client();
    let hours = chrono::Duration::hours;
    // A catalogued backup two days old, and one four days old whose catalog row is gone (a
    // ledger restored from an older backup): only its manifest in the bucket tells of it.
    backup(&bed.ledger, &s3, &bed.bucket, "accounts", now, 2, 0).await;
    let started = now - hours(4 * 24);
    let uncatalogued = format!(
        "backups/chat/{}-{}.manifest.json",
        started.format("%Y%m%dT%H%M%SZ"),
        Uuid::new_v4()
    );
    put(&s3, &bed.bucket, &uncatalogued).await;
    let six_days = tombstone(&s3, &bed.bucket, now, hours(6 * 24)).await;
    let three_days = tombstone(&s3, &bed.bucket, now, hours(3 * 24)).await;
    let one_day = tombstone(&s3, &bed.bucket, now, hours(24)).await;
    let recent = tombstone(&s3, &bed.bucket, now, chrono::Duration::minutes(10)).await;

    let retention = Retention::connect(&settings).await.unwrap();
    let dry = completed(retention.run(now, Mode::DryRun).await.unwrap());
    assert_eq!(dry.tombstones.deleted, 1, "{:?}", dry.tombstones);
    assert!(exists(&s3, &bed.bucket, &six_days).await);

    let report = completed(retention.run(now, Mode::Delete).await.unwrap());
    assert_eq!(report.tombstones.deleted, 1, "{:?}", report.tombstones);
    assert!(
        report.tombstones.errors.is_empty(),
        "{:?}",
        report.tombstones
    );
    assert!(!exists(&s3, &bed.bucket, &six_days).await);
    assert!(exists(&s3, &bed.bucket, &three_days).await);

    // The four-day-old backup gone, the three-day-old tombstone is needed by no backup.
    s3.delete_object()
        .bucket(&bed.bucket)
        .key(&uncatalogued)
        .send()
        .await
        .unwrap();
    let report = completed(retention.run(now, Mode::Delete).await.unwrap());
    assert_eq!(report.tombstones.deleted, 1, "{:?}", report.tombstones);
    assert!(!exists(&s3, &bed.bucket, &three_days).await);
    for kept in [&one_day, &recent] {
        assert!(exists(&s3, &bed.bucket, kept).await, "{kept}");
    }
    let recorded: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_event WHERE kind = 'retention.tombstones_deleted'",
    )
    .fetch_one(&bed.ledger)
    .await
    .unwrap();
    assert_eq!(recorded, 2);
    retention.pool().close().await;
    bed.cleanup().await.unwrap();
}
