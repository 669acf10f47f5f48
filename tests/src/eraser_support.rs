//! A test bed for the eraser: the sample stores in a namespace, the sample data map pointed at
//! them (with credentials variables private to the namespace), NATS streams under the
//! namespace's prefix, and the real eraser built in-process from settings.
//!
//! The test plays the coordinator: it publishes tasks with [`EraserBed::publish`], runs the
//! eraser ([`EraserBed::run_until_idle`] or [`EraserBed::spawn`]) and reads the results with
//! [`EraserBed::results`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use async_nats::jetstream::consumer::PullConsumer;
use futures::StreamExt as _;
use lethe_common::Settings;
use lethe_common::config::Credentials;
use lethe_common::ids::{RequestId, StoreName};
use lethe_common::messages::{Identities, TaskKind, TaskMessage, TaskResult};
use lethe_common::nats::{self, ConsumerSpec, Durable, Names, Publisher, Traceparent};
use lethe_common::worker::RunMode;
use lethe_eraser::{App, Eraser};
use lethe_sample::{ConnectOptions, SampleStores, SeedOptions, Subject};
use secrecy::{ExposeSecret as _, SecretString};
use sha2::{Digest as _, Sha256};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{Namespace, Services, sample_datamap, sample_options, sample_stores};

/// The key of the keyed hashes in the eraser's settings (and so of the `hash` mask).
pub const HASH_KEY: &str = "lethe-tests-hash-key-0123456789abcdef";

/// How long a run of the eraser may take before the test fails.
const RUN_TIMEOUT: Duration = Duration::from_secs(180);

/// The stores of the sample data map.
pub const SAMPLE_STORES: [&str; 4] = ["accounts", "chat", "sessions", "files"];

/// The sample stores, a data map describing them, NATS streams, and the eraser's settings.
pub struct EraserBed {
    ns: Namespace,
    /// Where the sample stores are.
    pub options: ConnectOptions,
    /// Connections to them, to arrange and assert.
    pub stores: SampleStores,
    map_path: PathBuf,
    env_prefix: String,
    nats_url: String,
    publisher: Publisher,
    results: PullConsumer,
    credentials: Credentials,
}

impl EraserBed {
    /// Creates the namespace, its sample stores (empty), the NATS streams and the results
    /// consumer, and writes the sample data map pointed at the namespace.
    pub async fn create(services: &Services) -> Result<Self> {
        let ns = Namespace::create(services).await?;
        let options = sample_options(&ns).await?;
        let stores = sample_stores(&ns).await?;
        lethe_sample::prepare(&stores)
            .await
            .context("while creating the sample tables")?;
        let env_prefix = format!("{}_", ns.name().to_uppercase());
        let map_path = std::env::temp_dir().join(format!("lethe-{}-datamap.toml", ns.name()));
        let nats_settings = Settings::from_toml(&format!(
            "[nats]\nurl = \"{}\"\nprefix = \"{}\"\n",
            services.nats_url,
            ns.nats_prefix()
        ))?
        .nats;
        let names = Names::new(&ns.nats_prefix())?;
        let client = nats::connect(&nats_settings, "lethe-tests").await?;
        let publisher = Publisher::new(client, names.clone());
        nats::provision_streams(publisher.jetstream(), &names, &nats_settings).await?;
        {
            let nats_settings = nats_settings.clone();
            let names = names.clone();
            let map_path = map_path.clone();
            ns.on_cleanup(move |_| async move {
                std::fs::remove_file(&map_path).ok();
                let client = nats::connect(&nats_settings, "lethe-tests-cleanup").await?;
                nats::deprovision(&async_nats::jetstream::new(client), &names).await?;
                Ok(())
            });
        }
        let results = nats::provision_consumer(
            publisher.jetstream(),
            &names,
            &nats_settings,
            &ConsumerSpec {
                durable: Durable::Coordinator,
            },
        )
        .await?;
        let mut bed = Self {
            ns,
            options,
            stores,
            map_path,
            env_prefix,
            nats_url: services.nats_url.clone(),
            publisher,
            results,
            credentials: Credentials::default(),
        };
        let accounts = bed.options.accounts_url.clone();
        let chat = bed.options.chat_url.clone();
        let sessions = bed.options.sessions_url.clone();
        bed.set_variable("ACCOUNTS_URL", &accounts);
        bed.set_variable("CHAT_URL", &chat);
        bed.set_variable("SESSIONS_URL", &sessions);
        let map = bed.sample_map()?;
        bed.write_map(&map)?;
        Ok(bed)
    }

    /// The namespace.
    pub fn ns(&self) -> &Namespace {
        &self.ns
    }

    /// Seeds subjects `1..=subjects` under `seed`.
    pub async fn seed(&self, subjects: u64, seed: u64) -> Result<()> {
        lethe_sample::seed(&self.stores, &SeedOptions::new(subjects, seed))
            .await
            .context("while seeding the sample stores")?;
        Ok(())
    }

    /// The name of an environment variable private to this bed: `<NS>_<suffix>`.
    pub fn variable(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.env_prefix)
    }

    /// Gives the credential `<NS>_<suffix>` (a store's URL, as its `url_env` names it) to every
    /// daemon this bed builds or starts, and returns its name. The environment of this process
    /// is left alone: in-process daemons get it through their settings, child processes
    /// through [`EraserBed::credential_env`].
    pub fn set_variable(&mut self, suffix: &str, value: &str) -> String {
        let name = self.variable(suffix);
        self.credentials
            .insert(name.clone(), SecretString::from(value.to_owned()));
        name
    }

    /// The credentials of this bed, to put into a daemon's [`Settings`].
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// The credentials of this bed as environment variables for a child process.
    pub fn credential_env(&self) -> Vec<(String, String)> {
        self.credentials
            .given()
            .map(|(name, value)| (name.to_owned(), value.expose_secret().to_owned()))
            .collect()
    }

    /// The sample data map (`config/datamap.toml`) pointed at this bed's stores, with its
    /// `url_env` names replaced by this bed's variables.
    pub fn sample_map(&self) -> Result<String> {
        let text = sample_datamap(&self.options)?;
        let mut map: toml::Table = toml::from_str(&text)?;
        let Some(stores) = map.get_mut("stores").and_then(|s| s.as_table_mut()) else {
            bail!("the sample data map has no stores");
        };
        for (store, suffix) in [
            ("accounts", "ACCOUNTS_URL"),
            ("chat", "CHAT_URL"),
            ("sessions", "SESSIONS_URL"),
        ] {
            if let Some(table) = stores.get_mut(store).and_then(|s| s.as_table_mut()) {
                table.insert("url_env".into(), toml::Value::String(self.variable(suffix)));
            }
        }
        Ok(toml::to_string(&map)?)
    }

    /// Writes the data map the eraser loads.
    pub fn write_map(&self, text: &str) -> Result<()> {
        std::fs::write(&self.map_path, text)
            .with_context(|| format!("while writing {}", self.map_path.display()))
    }

    /// The eraser's settings: this bed's data map, NATS prefix and S3, the hash key, an
    /// ephemeral operations port, `concurrency` tasks at once.
    pub fn settings(&self, concurrency: usize) -> Result<Settings> {
        self.settings_batched(
            concurrency,
            lethe_common::config::WorkerSettings::default_batch_size(),
        )
    }

    /// [`EraserBed::settings`] with `batch_size` tasks carried out together at most.
    pub fn settings_batched(&self, concurrency: usize, batch_size: usize) -> Result<Settings> {
        let s3 = &self.options.s3;
        let text = format!(
            r#"
data_map = "{map}"

[privacy]
hash_key = "{HASH_KEY}"

[nats]
url = "{nats}"
prefix = "{prefix}"

[s3]
endpoint = "{endpoint}"
region = "{region}"
bucket = "{bucket}"
access_key_id = "{key}"
secret_access_key = "{secret}"

[eraser]
listen = "127.0.0.1:0"
concurrency = {concurrency}
batch_size = {batch_size}
"#,
            map = self.map_path.display(),
            nats = self.nats_url,
            prefix = self.ns.nats_prefix(),
            endpoint = s3.endpoint,
            region = s3.region,
            bucket = self.options.files_bucket,
            key = s3.access_key_id,
            secret = s3.secret_access_key,
        );
        let mut settings = Settings::from_toml(&text)?;
        settings.credentials = self.credentials.clone();
        Ok(settings)
    }

    /// The publisher the test plays the coordinator with (names, JetStream).
    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    /// Publishes a task.
    pub async fn publish(&self, task: &TaskMessage) -> Result<()> {
        self.publisher
            .task(task, &Traceparent::new_root())
            .await
            .context("while publishing a task")
    }

    /// Builds the eraser and runs it until no task is pending or in flight.
    pub async fn run_until_idle(&self) -> Result<()> {
        let app = App::build(&self.settings(4)?, RunMode::UntilIdle).await?;
        tokio::time::timeout(RUN_TIMEOUT, app.run(CancellationToken::new()))
            .await
            .context("the eraser did not become idle in time")?
    }

    /// Builds an eraser with `settings` and runs it in the background until stopped.
    pub async fn spawn(&self, settings: &Settings, mode: RunMode) -> Result<RunningEraser> {
        let app = App::build(settings, mode).await?;
        let eraser = app.eraser();
        let shutdown = CancellationToken::new();
        let run = tokio::spawn(app.run(shutdown.clone()));
        Ok(RunningEraser {
            shutdown,
            run,
            eraser,
        })
    }

    /// Waits for `n` task results (acknowledging them), failing after `timeout`.
    pub async fn results(&self, n: usize, timeout: Duration) -> Result<Vec<TaskResult>> {
        let deadline = Instant::now() + timeout;
        let mut results = Vec::with_capacity(n);
        while results.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "{} of {n} task results arrived in {timeout:?}",
                    results.len()
                );
            }
            results.extend(
                self.pull(n - results.len(), left.min(Duration::from_secs(2)))
                    .await?,
            );
        }
        Ok(results)
    }

    /// The results that arrive within `wait`, at most `max`.
    pub async fn pull(&self, max: usize, wait: Duration) -> Result<Vec<TaskResult>> {
        let mut batch = self
            .results
            .batch()
            .max_messages(max)
            .expires(wait.max(Duration::from_millis(100)))
            .messages()
            .await
            .map_err(|e| anyhow::anyhow!("cannot pull results: {e}"))?;
        let mut results = Vec::new();
        while let Some(message) = batch.next().await {
            let message = message.map_err(|e| anyhow::anyhow!("cannot pull results: {e}"))?;
            results
                .push(serde_json::from_slice(&message.payload).context("while decoding a result")?);
            message
                .ack()
                .await
                .map_err(|e| anyhow::anyhow!("cannot acknowledge a result: {e}"))?;
        }
        Ok(results)
    }

    /// Removes everything: the NATS streams, the data map file, the databases, keys and
    /// bucket.
    pub async fn cleanup(self) -> Result<()> {
        self.ns.cleanup().await
    }
}

/// An eraser running in the background.
pub struct RunningEraser {
    shutdown: CancellationToken,
    run: JoinHandle<Result<()>>,
    /// Its task handler.
    pub eraser: std::sync::Arc<Eraser>,
}

impl RunningEraser {
    /// Stops it (draining in-flight tasks) and returns how its run ended.
    pub async fn stop(self) -> Result<()> {
        self.shutdown.cancel();
        self.wait().await
    }

    /// Waits until it stops by itself (an eraser in [`RunMode::UntilIdle`]).
    pub async fn wait(self) -> Result<()> {
        tokio::time::timeout(RUN_TIMEOUT, self.run)
            .await
            .context("the eraser did not stop in time")?
            .context("the eraser panicked")?
    }
}

/// A task of `kind` for `store` naming `identities`.
pub fn task(kind: TaskKind, store: &str, identities: Identities) -> Result<TaskMessage> {
    Ok(TaskMessage {
        request_id: RequestId::new(),
        task: kind,
        store: Some(StoreName::parse(store).map_err(anyhow::Error::msg)?),
        identities,
        tenant: None,
        params: serde_json::Value::Null,
        generation: 0,
        issued_at: chrono::Utc::now(),
    })
}

/// Every identity of a sample subject: email, phone and user id.
pub fn identities_of(subject: &Subject) -> Identities {
    Identities::from([
        ("email".to_owned(), vec![subject.identities.email.clone()]),
        ("phone".to_owned(), vec![subject.identities.phone.clone()]),
        ("user_id".to_owned(), vec![subject.user.id.to_string()]),
    ])
}

/// One identity of a subject.
pub fn identity(name: &str, value: impl Into<String>) -> Identities {
    Identities::from([(name.to_owned(), vec![value.into()])])
}

/// A fingerprint of every record the sample stores hold that does not belong to one of
/// `excluded`, per store and collection: rows (by id), Redis keys (name and `DUMP`), objects
/// (key and ETag). Equal before and after an erasure of `excluded` means nothing else changed.
pub async fn others_digest(
    bed: &EraserBed,
    excluded: &[Subject],
) -> Result<BTreeMap<String, String>> {
    let users: Vec<i64> = excluded.iter().map(|s| s.user.id).collect();
    let invoices: Vec<i64> = excluded
        .iter()
        .flat_map(|s| s.invoices.iter().map(|i| i.id))
        .collect();
    let messages: Vec<i64> = excluded
        .iter()
        .flat_map(|s| s.messages.iter().map(|m| m.id))
        .collect();
    let mut digests = BTreeMap::new();
    for (table, sql, ids) in [
        (
            "users",
            "SELECT t::text FROM users t WHERE id <> ALL($1) ORDER BY id",
            &users,
        ),
        (
            "invoices",
            "SELECT t::text FROM invoices t WHERE id <> ALL($1) ORDER BY id",
            &invoices,
        ),
        (
            "access_log",
            "SELECT t::text FROM access_log t WHERE user_id <> ALL($1) ORDER BY id",
            &users,
        ),
    ] {
        let rows: Vec<String> = sqlx::query_scalar(sql)
            .bind(ids)
            .fetch_all(&bed.stores.accounts)
            .await?;
        digests.insert(format!("accounts.{table}"), digest_lines(&rows));
    }
    for (table, key, ids) in [
        ("conversations", "user_id", &users),
        ("messages", "id", &messages),
        ("visits", "user_id", &users),
    ] {
        let rows = mysql_rows(&bed.stores.chat, table, key, ids).await?;
        digests.insert(format!("chat.{table}"), digest_lines(&rows));
    }

    let prefix = &bed.stores.sessions.prefix;
    let excluded_keys: BTreeSet<String> = excluded
        .iter()
        .flat_map(|s| s.redis_keys())
        .map(|k| format!("{prefix}{k}"))
        .collect();
    let mut conn = bed.stores.sessions.connection.clone();
    let mut keys = lethe_sample::scan(
        &mut conn,
        &format!("{}*", lethe_sample::escape_glob(prefix)),
    )
    .await?;
    keys.retain(|k| !excluded_keys.contains(k));
    keys.sort();
    let mut lines = Vec::with_capacity(keys.len());
    for key in keys {
        let dump: Vec<u8> = redis::cmd("DUMP").arg(&key).query_async(&mut conn).await?;
        lines.push(format!("{key} {}", hex::encode(Sha256::digest(&dump))));
    }
    digests.insert("sessions".to_owned(), digest_lines(&lines));

    let excluded_objects: BTreeSet<String> = excluded
        .iter()
        .flat_map(|s| s.files.iter().map(|f| f.key.clone()))
        .collect();
    let files = &bed.stores.files;
    let mut lines = Vec::new();
    let mut pages = files
        .client
        .list_objects_v2()
        .bucket(&files.bucket)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        for object in page?.contents() {
            let key = object.key().unwrap_or_default();
            if !excluded_objects.contains(key) {
                lines.push(format!("{key} {}", object.e_tag().unwrap_or_default()));
            }
        }
    }
    lines.sort();
    digests.insert("files".to_owned(), digest_lines(&lines));
    Ok(digests)
}

fn digest_lines(lines: &[String]) -> String {
    let mut hasher = Sha256::new();
    for line in lines {
        hasher.update(line.as_bytes());
        hasher.update(b"\n");
    }
    format!("{} rows, {}", lines.len(), hex::encode(hasher.finalize()))
}

/// Every row of a MariaDB table whose `key` is not one of `excluded`, as JSON arrays.
async fn mysql_rows(
    pool: &sqlx::MySqlPool,
    table: &str,
    key: &str,
    excluded: &[i64],
) -> Result<Vec<String>> {
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
    // Names are the sample's own constants; the ids are bound.
    let mut sql = format!("SELECT CAST(JSON_ARRAY({list}) AS CHAR) FROM `{table}`");
    if !excluded.is_empty() {
        let marks = vec!["?"; excluded.len()].join(", ");
        sql.push_str(&format!(" WHERE `{key}` NOT IN ({marks})"));
    }
    sql.push_str(" ORDER BY id");
    let mut query = sqlx::query_scalar(&sql);
    for id in excluded {
        query = query.bind(id);
    }
    Ok(query.fetch_all(pool).await?)
}
