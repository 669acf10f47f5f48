//! One backup of one store: the lock, the catalog row, the pipeline, the manifest.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use aws_sdk_s3::Client;
use chrono::{DateTime, Utc};
use lethe_common::Settings;
use lethe_common::config::WorkerSettings;
use lethe_common::datamap::DataMap;
use lethe_common::ids::StoreName;
use lethe_common::messages::Event;
use lethe_common::nats::Publisher;
use lethe_common::s3::{self, MAX_PART, MIN_PART, ObjectWriter, WriterOptions};
use lethe_common::schedule::Schedule;
use lethe_stores::{self as stores, ServedStore};
use serde::Serialize;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use uuid::Uuid;

use crate::catalog::{self, BackupRow, StoreLock};
use crate::keys::Recipients;
use crate::manifest::{self, Manifest};
use crate::pipeline::{self, Compression, Encoded, Progress, is_stage_stopped};
use crate::schedule::{NextDue as _, Schedules};
use crate::settings::{BackupsSettings, SeipdVersion};
use crate::source::{self, Kind};
use crate::upload;

/// Everything start-up checks before connecting to anything: the recipients' certificates,
/// the data map, the stores' credentials, the schedule and the pipeline settings.
pub struct Plan {
    /// The certificates every backup is encrypted to.
    pub recipients: Arc<Recipients>,
    /// The stores this process backs up (`backup.stores`, or every store of the data map and
    /// the ledger).
    pub stores: Vec<ServedStore>,
    /// When each is backed up.
    pub schedules: Schedules,
    /// `[backups]`.
    pub settings: BackupsSettings,
    /// `[backup]`: operations address, stores, drain timeout.
    pub worker: WorkerSettings,
}

impl Plan {
    /// Checks the configuration; every error names the key at fault.
    pub fn load(settings: &Settings) -> anyhow::Result<Self> {
        let backups: BackupsSettings = settings.section()?;
        let worker = settings.worker("backup", DEFAULT_OPS_PORT)?;
        check_settings(&backups)?;
        let recipients = Arc::new(Recipients::load(
            &backups.recipients,
            &settings.base_dir,
            backups.seipd,
        )?);
        let map = DataMap::load(&settings.data_map_path()?)?;
        // Every store but the processors reached over HTTP (they are not Lethe's to back up),
        // unless `backup.stores` names some; and the ledger itself.
        let data_stores: Vec<String> = map
            .stores
            .iter()
            .filter(|(_, store)| !matches!(store, lethe_common::datamap::Store::Http(_)))
            .map(|(name, _)| name.to_string())
            .collect();
        let mut stores = match crate::ledger::data_stores(&worker.stores) {
            Some(named) if named.is_empty() => Vec::new(),
            Some(named) => stores::served(&map, &named, settings)?,
            None if data_stores.is_empty() => Vec::new(),
            None => stores::served(&map, &data_stores, settings)?,
        };
        if crate::ledger::wanted(&worker.stores) {
            stores.push(crate::ledger::served(settings)?);
        }
        let names: Vec<StoreName> = stores.iter().map(|s| s.name.clone()).collect();
        let schedules =
            Schedules::from_settings(&backups.schedule, &names).map_err(anyhow::Error::msg)?;
        Ok(Self {
            recipients,
            stores,
            schedules,
            settings: backups,
            worker,
        })
    }
}

/// Where `/healthz`, `/readyz` and `/metrics` listen when `[backup]` names no address.
pub const DEFAULT_OPS_PORT: u16 = 9183;

fn check_settings(backups: &BackupsSettings) -> anyhow::Result<()> {
    let part = backups.part_size.0;
    if !(MIN_PART..=MAX_PART).contains(&part) {
        anyhow::bail!("backups.part_size: must be between 5MiB and 5GiB");
    }
    if !(1..=22).contains(&backups.zstd_level) {
        anyhow::bail!("backups.zstd_level: must be between 1 and 22");
    }
    if backups.zstd_workers > 64 {
        anyhow::bail!("backups.zstd_workers: must be at most 64");
    }
    if backups.upload_concurrency == 0 {
        anyhow::bail!("backups.upload_concurrency: must be at least 1");
    }
    if backups.concurrency == 0 {
        anyhow::bail!("backups.concurrency: must be at least 1");
    }
    if backups.max_age < Duration::from_secs(3600) {
        anyhow::bail!("backups.max_age: must be at least 1h");
    }
    if backups.progress_interval < Duration::from_secs(1) {
        anyhow::bail!("backups.progress_interval: must be at least 1s");
    }
    if !backups.prefix.is_empty() && !backups.prefix.ends_with('/') {
        anyhow::bail!("backups.prefix: must end with `/`");
    }
    Ok(())
}

/// What a completed backup produced.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The backup's id.
    pub backup_id: Uuid,
    /// The store.
    pub store: String,
    /// The encrypted dump in Lethe's bucket.
    pub object_key: String,
    /// Its manifest.
    pub manifest_key: String,
    /// Bytes of the dump.
    pub plaintext_bytes: u64,
    /// Bytes of the object.
    pub ciphertext_bytes: u64,
    /// Hex SHA-256 of the object.
    pub ciphertext_sha256: String,
    /// The erasure records it may predate.
    pub erasure_seq: i64,
    /// How long it took.
    pub duration_ms: u64,
}

/// How a backup request ended (failures are errors).
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The backup is in the bucket and the catalog.
    Completed(Summary),
    /// Another process holds the store's lock: it is backing the store up right now.
    Busy,
    /// The condition no longer held once the lock was taken (another process just made the
    /// backup asked for).
    Satisfied,
}

/// When a backup is still wanted, checked again under the store's lock (another process may
/// have made it between the decision and the lock).
#[derive(Debug, Clone, Copy)]
pub enum Condition<'a> {
    /// Always.
    Always,
    /// When the schedule says it is due.
    Due(&'a Schedule),
    /// Unless a backup that started at or after this time completed.
    NoneSince(DateTime<Utc>),
}

/// The backup runner: the stores, the recipients, the ledger and the bucket.
pub struct Backups {
    settings: BackupsSettings,
    pool: PgPool,
    s3: Client,
    bucket: String,
    stores: BTreeMap<StoreName, ServedStore>,
    recipients: Arc<Recipients>,
    schedules: Schedules,
    events: Option<Publisher>,
}

impl Backups {
    /// A runner over an opened ledger and bucket. `events`, if given, receives
    /// `backup.completed` and `backup.failed` events.
    pub fn new(
        plan: Plan,
        pool: PgPool,
        s3: Client,
        bucket: String,
        events: Option<Publisher>,
    ) -> Self {
        Self {
            settings: plan.settings,
            pool,
            s3,
            bucket,
            stores: plan
                .stores
                .into_iter()
                .map(|s| (s.name.clone(), s))
                .collect(),
            recipients: plan.recipients,
            schedules: plan.schedules,
            events,
        }
    }

    /// Checks the configuration, then opens (and migrates) the ledger and checks the bucket.
    /// NATS is optional here (the one-shot `run`): when it answers, backups publish their
    /// events and carry an audit checkpoint; when it does not, they are made without.
    pub async fn connect(settings: &Settings) -> anyhow::Result<Self> {
        let plan = Plan::load(settings)?;
        let (pool, s3) = lethe_common::daemon::open_ledger_and_bucket(settings).await?;
        let bucket = settings.require_s3()?.bucket.clone();
        let events = match lethe_common::nats::connect(&settings.nats, "lethe-backup-run").await {
            Ok(client) => Some(Publisher::new(
                client,
                lethe_common::nats::Names::new(&settings.nats.prefix)?,
            )),
            Err(error) => {
                tracing::warn!(error = %error, "NATS unreachable: backups are made without events and without an audit checkpoint");
                None
            }
        };
        Ok(Self::new(plan, pool, s3, bucket, events))
    }

    /// The stores backed up, in name order.
    pub fn stores(&self) -> impl Iterator<Item = &StoreName> {
        self.stores.keys()
    }

    /// The store named `name`, if this runner backs it up.
    pub fn store(&self, name: &str) -> Option<&StoreName> {
        self.stores.keys().find(|s| s.as_str() == name)
    }

    /// The schedule.
    pub fn schedules(&self) -> &Schedules {
        &self.schedules
    }

    /// The ledger.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// `[backups]`.
    pub fn settings(&self) -> &BackupsSettings {
        &self.settings
    }

    /// Backs up `store` now, unless another process is already doing so. `cancel` interrupts
    /// the backup: its upload is aborted and its catalog row marked failed.
    pub async fn backup(
        &self,
        store: &StoreName,
        cancel: &CancellationToken,
    ) -> anyhow::Result<Outcome> {
        self.backup_if(store, Condition::Always, cancel).await
    }

    /// Backs up `store` if `condition` holds once its lock is taken.
    // One span per run, whoever asked for it (schedule, run command or the `run` subcommand).
    #[tracing::instrument(name = "backup.run", skip_all, fields(store = %store))]
    pub async fn backup_if(
        &self,
        store: &StoreName,
        condition: Condition<'_>,
        cancel: &CancellationToken,
    ) -> anyhow::Result<Outcome> {
        let served = self
            .stores
            .get(store)
            .ok_or_else(|| anyhow::anyhow!("store `{store}` is not backed up by this process"))?;
        self.recipients.check_now()?;
        let Some(lock) = StoreLock::try_acquire(&self.pool, store)
            .await
            .context("while taking the store's backup lock in the ledger")?
        else {
            tracing::info!(store = %store, "another process is backing this store up; not starting a second backup");
            return Ok(Outcome::Busy);
        };
        let wanted = match condition {
            Condition::Always => Ok(true),
            Condition::Due(schedule) => catalog::last_runs(&self.pool, store).await.map(|last| {
                schedule
                    .next_due(last, Utc::now())
                    .is_some_and(|due| due <= Utc::now())
            }),
            Condition::NoneSince(since) => catalog::completed_since(&self.pool, store, since)
                .await
                .map(|done| !done),
        };
        let result = match wanted {
            Ok(true) => self
                .backup_locked(served, cancel)
                .await
                .map(Outcome::Completed),
            Ok(false) => Ok(Outcome::Satisfied),
            Err(error) => Err(error.into()),
        };
        lock.release().await;
        result
    }

    async fn backup_locked(
        &self,
        served: &ServedStore,
        cancel: &CancellationToken,
    ) -> anyhow::Result<Summary> {
        self.clean_up_abandoned(&served.name).await;
        let kind = Kind::of(&served.store)?;
        let tool_version = match kind.program(&self.settings.tools) {
            Some(program) => crate::tools::version(&program).await?,
            None => format!("lethe-backup {}", env!("CARGO_PKG_VERSION")),
        };
        let id = Uuid::now_v7();
        let started_at = Utc::now();
        let base = format!(
            "{}{}/{}-{id}",
            self.settings.prefix,
            served.name,
            started_at.format("%Y%m%dT%H%M%SZ")
        );
        let row = BackupRow {
            id,
            store: served.name.to_string(),
            object_key: format!("{base}.{}.zst.gpg", kind.extension()),
            manifest_key: format!("{base}.manifest.json"),
            tool: tool_version.clone(),
            plaintext_bytes: None,
            bytes: None,
            sha256: None,
            recipients: self.recipients.fingerprints(),
            erasure_seq: catalog::erasure_position(&self.pool).await?,
            status: "running".into(),
            error: None,
            started_at,
            finished_at: None,
            expires_at: started_at
                + chrono::Duration::from_std(self.settings.max_age)
                    .context("backups.max_age is too long")?,
        };
        catalog::insert_running(&self.pool, &row).await?;
        tracing::info!(store = %served.name, backup.id = %id, tool = %tool_version, "backup started");
        let clock = Instant::now();
        let result = self.produce(served, kind, &row, cancel).await;
        let duration_ms = u64::try_from(clock.elapsed().as_millis()).unwrap_or(u64::MAX);
        match result {
            Ok(encoded) => {
                let finished_at = Utc::now();
                catalog::complete(
                    &self.pool,
                    id,
                    encoded.plaintext_bytes,
                    encoded.ciphertext_bytes,
                    &encoded.ciphertext_sha256,
                    finished_at,
                )
                .await?;
                let summary = Summary {
                    backup_id: id,
                    store: row.store.clone(),
                    object_key: row.object_key.clone(),
                    manifest_key: row.manifest_key.clone(),
                    plaintext_bytes: encoded.plaintext_bytes,
                    ciphertext_bytes: encoded.ciphertext_bytes,
                    ciphertext_sha256: encoded.ciphertext_sha256,
                    erasure_seq: row.erasure_seq,
                    duration_ms,
                };
                let seconds = duration_ms as f64 / 1000.0;
                tracing::info!(
                    store = %served.name,
                    backup.id = %id,
                    plaintext_bytes = summary.plaintext_bytes,
                    ciphertext_bytes = summary.ciphertext_bytes,
                    duration_ms,
                    rate_mib_s = summary.plaintext_bytes as f64 / 1_048_576.0 / seconds.max(0.001),
                    "backup completed"
                );
                metrics::counter!("lethe_backups_total", "store" => row.store.clone(), "outcome" => "completed").increment(1);
                metrics::histogram!("lethe_backup_duration_seconds", "store" => row.store.clone())
                    .record(seconds);
                metrics::gauge!("lethe_backup_last_success_timestamp_seconds", "store" => row.store.clone())
                    .set(finished_at.timestamp() as f64);
                metrics::gauge!("lethe_backup_bytes", "store" => row.store.clone())
                    .set(summary.ciphertext_bytes as f64);
                self.event("backup.completed", &row, Some(&summary), None)
                    .await;
                Ok(summary)
            }
            Err(error) => {
                let message = format!("{error:#}");
                tracing::error!(store = %served.name, backup.id = %id, error = %message, "backup failed");
                if let Err(e) = catalog::fail(&self.pool, id, &message).await {
                    tracing::warn!(backup.id = %id, error = %e, "cannot mark the backup failed in the catalog");
                }
                metrics::counter!("lethe_backups_total", "store" => row.store.clone(), "outcome" => "failed").increment(1);
                self.event("backup.failed", &row, None, Some(message)).await;
                Err(error.context(format!("backup {id} of store `{}` failed", served.name)))
            }
        }
    }

    /// Under the store's lock, what a process that died mid-backup left: its catalog rows stay
    /// `running` and its multipart upload open. Neither is anybody's now.
    async fn clean_up_abandoned(&self, store: &StoreName) {
        match catalog::fail_abandoned(&self.pool, store).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::warn!(store = %store, backups = n, "marked backups abandoned by a stopped process failed")
            }
            Err(error) => {
                tracing::warn!(store = %store, error = %error, "cannot check the catalog for abandoned backups")
            }
        }
        let prefix = format!("{}{store}/", self.settings.prefix);
        let listed = self
            .s3
            .list_multipart_uploads()
            .bucket(&self.bucket)
            .prefix(&prefix)
            .send()
            .await;
        let uploads = match listed {
            Ok(listed) => listed.uploads().to_vec(),
            Err(error) => {
                tracing::debug!(store = %store, error = %aws_sdk_s3::error::DisplayErrorContext(error), "cannot list unfinished uploads");
                return;
            }
        };
        for upload in uploads {
            let (Some(key), Some(id)) = (upload.key(), upload.upload_id()) else {
                continue;
            };
            match self
                .s3
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(id)
                .send()
                .await
            {
                Ok(_) => {
                    tracing::warn!(object.key = %key, "aborted an upload abandoned by a stopped process")
                }
                Err(error) => {
                    tracing::debug!(object.key = %key, error = %aws_sdk_s3::error::DisplayErrorContext(error), "cannot abort an abandoned upload")
                }
            }
        }
    }

    /// Dumps, compresses, encrypts and uploads; then writes the manifest. On any failure (or
    /// `cancel`) the multipart upload is aborted and nothing is left in the bucket.
    async fn produce(
        &self,
        served: &ServedStore,
        kind: Kind,
        row: &BackupRow,
        cancel: &CancellationToken,
    ) -> anyhow::Result<Encoded> {
        let mut writer = ObjectWriter::new(
            self.s3.clone(),
            &self.bucket,
            &row.object_key,
            WriterOptions {
                part_size: usize::try_from(self.settings.part_size.0).unwrap_or(usize::MAX),
                parallel_parts: self.settings.upload_concurrency,
                // The ciphertext's SHA-256 is recorded in the manifest and checked by verify
                // and restore, end to end.
                sign_payload: false,
            },
        )
        .content_type("application/octet-stream");
        let upload_id = writer
            .start()
            .await
            .map_err(|e| anyhow::anyhow!("cannot start the upload of the backup: {e}"))?;
        let progress = Arc::new(Progress::default());
        let _logger = self.progress_logger(&served.name, row.id, progress.clone());
        let streamed = tokio::select! {
            streamed = self.stream(served, kind, writer, progress) => streamed,
            () = cancel.cancelled() => Err(anyhow::anyhow!("interrupted: the daemon is shutting down")),
        };
        let (encoded, parts) = match streamed {
            Ok(done) => done,
            Err(error) => {
                s3::abort_upload(&self.s3, &self.bucket, &row.object_key, &upload_id).await;
                return Err(error);
            }
        };
        let manifest = Manifest {
            format: manifest::FORMAT,
            backup_id: row.id,
            store: row.store.clone(),
            kind: kind.as_str().into(),
            tool: kind.tool().into(),
            tool_version: row.tool.clone(),
            format_of_dump: kind.dump_format().into(),
            object_key: row.object_key.clone(),
            started_at: row.started_at,
            finished_at: Utc::now(),
            plaintext_bytes: encoded.plaintext_bytes,
            compressed_bytes: encoded.compressed_bytes,
            ciphertext_bytes: encoded.ciphertext_bytes,
            ciphertext_sha256: encoded.ciphertext_sha256.clone(),
            compression: "zstd".into(),
            zstd_level: self.settings.zstd_level,
            encryption: match self.recipients.seipd() {
                SeipdVersion::V1 => "OpenPGP SEIPDv1".into(),
                SeipdVersion::V2 => "OpenPGP SEIPDv2".into(),
            },
            recipients: row.recipients.clone(),
            erasure_seq: row.erasure_seq,
            expires_at: row.expires_at,
            parts,
            audit_checkpoint: self.audit_checkpoint().await,
        };
        let body = serde_json::to_vec_pretty(&manifest)?;
        if let Err(error) =
            upload::put(&self.s3, &self.bucket, &row.manifest_key, body.into()).await
        {
            // A backup without its manifest is not one: remove the object.
            let _ = self
                .s3
                .delete_object()
                .bucket(&self.bucket)
                .key(&row.object_key)
                .send()
                .await;
            return Err(error);
        }
        Ok(encoded)
    }

    async fn stream(
        &self,
        served: &ServedStore,
        kind: Kind,
        mut writer: ObjectWriter,
        progress: Arc<Progress>,
    ) -> anyhow::Result<(Encoded, usize)> {
        let (plain_tx, plain_rx) = pipeline::channel();
        let (cipher_tx, cipher_rx) = pipeline::channel();
        let source = AbortOnDropHandle::new(source::start(served, &self.settings.tools, plain_tx)?);
        let encoder = AbortOnDropHandle::new(pipeline::spawn_encoder(
            plain_rx,
            cipher_tx,
            self.recipients.clone(),
            format!("{}.{}.zst", served.name, kind.extension()),
            Compression {
                level: self.settings.zstd_level,
                workers: self.settings.zstd_workers,
            },
            progress,
        ));
        let mut cipher_rx = cipher_rx;
        let uploaded = async move {
            while let Some(chunk) = cipher_rx.recv().await {
                let chunk = chunk.map_err(|e| anyhow::anyhow!("{e}"))?;
                writer
                    .write(&chunk)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot upload the backup: {e}"))?;
            }
            Ok::<_, anyhow::Error>(writer)
        };
        let (source, encoder, uploaded) = tokio::join!(source, encoder, uploaded);
        let source = source.map_err(anyhow::Error::new).and_then(|r| r);
        let encoder = encoder.map_err(anyhow::Error::new).and_then(|r| r);
        // Report the stage that failed first: the stages around a failing one fail too.
        let errors = [
            source.as_ref().err(),
            encoder.as_ref().err(),
            uploaded.as_ref().err(),
        ];
        if let Some(error) = errors
            .iter()
            .flatten()
            .find(|e| !is_stage_stopped(e))
            .or(errors.iter().flatten().next())
        {
            return Err(anyhow::anyhow!("{error:#}"));
        }
        let (Ok(dumped), Ok(encoded), Ok(writer)) = (source, encoder, uploaded) else {
            anyhow::bail!("a backup stage failed");
        };
        if dumped != encoded.plaintext_bytes {
            anyhow::bail!(
                "the dump had {dumped} bytes but {} were encrypted",
                encoded.plaintext_bytes
            );
        }
        let uploaded = writer
            .finish()
            .await
            .map_err(|e| anyhow::anyhow!("cannot complete the upload of the backup: {e}"))?;
        Ok((encoded, uploaded.parts as usize))
    }

    fn progress_logger(
        &self,
        store: &StoreName,
        id: Uuid,
        progress: Arc<Progress>,
    ) -> AbortOnDropHandle<()> {
        let every = self.settings.progress_interval;
        let store = store.clone();
        AbortOnDropHandle::new(tokio::spawn(async move {
            let started = Instant::now();
            let mut ticker = tokio::time::interval(every);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let plaintext = progress.plaintext.load(Ordering::Relaxed);
                let ciphertext = progress.ciphertext.load(Ordering::Relaxed);
                let seconds = started.elapsed().as_secs_f64().max(0.001);
                tracing::info!(
                    store = %store,
                    backup.id = %id,
                    plaintext_bytes = plaintext,
                    ciphertext_bytes = ciphertext,
                    elapsed_s = seconds as u64,
                    rate_mib_s = plaintext as f64 / 1_048_576.0 / seconds,
                    "backup in progress"
                );
            }
        }))
    }

    /// The audit chain's checkpoint for a manifest: asked of the api (which also publishes it),
    /// else the latest published one; none without NATS (the one-shot `run` when NATS is away).
    async fn audit_checkpoint(&self) -> Option<lethe_common::anchors::Checkpoint> {
        let publisher = self.events.as_ref()?;
        lethe_common::anchors::for_backup(&publisher.jetstream().client(), publisher.names()).await
    }

    async fn event(
        &self,
        kind: &str,
        row: &BackupRow,
        summary: Option<&Summary>,
        error: Option<String>,
    ) {
        let Some(publisher) = &self.events else {
            return;
        };
        let mut counts = BTreeMap::new();
        if let Some(summary) = summary {
            counts.insert("plaintext_bytes".to_owned(), summary.plaintext_bytes);
            counts.insert("ciphertext_bytes".to_owned(), summary.ciphertext_bytes);
            counts.insert("duration_ms".to_owned(), summary.duration_ms);
        }
        let detail = match error {
            Some(error) => format!("backup {} of store {}: {error}", row.id, row.store),
            None => format!("backup {} of store {}", row.id, row.store),
        };
        let event = Event {
            kind: kind.to_owned(),
            request_id: None,
            tenant_id: None,
            counts,
            detail: Some(detail),
            at: Utc::now(),
        };
        if let Err(error) = publisher.event(&event).await {
            tracing::warn!(error = %error, "cannot publish the backup event");
        }
    }
}
