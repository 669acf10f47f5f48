//! A whole Lethe deployment for the end-to-end and chaos tests: the sample stores of one
//! [`Namespace`] seeded with N subjects, a configuration file of its own (NATS prefix, ledger
//! database, bucket), the five real binaries started as processes with their logs in a temporary
//! directory, a tenant and an API key made by `lethe-api keys create`, and helpers to file
//! requests, wait for them with a deadline, and scan every log the daemons wrote for the seeded
//! subjects' identifiers.
//!
//! Tests drive the deployment only as a client and an operator would: through the API, NATS
//! and the stores.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use futures::StreamExt as _;
use lethe_common::nats::Names;
use lethe_sample::{ConnectOptions, SampleStores, SeedOptions, Subject};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::time::Instant;

use crate::backup_support::{Gpg, OPERATOR, fixture_recipient};
use crate::process::{DaemonProcess, binaries_dir};
use crate::{Namespace, Services, sample_datamap, sample_options, sample_stores};

/// The key of the keyed hashes in the deployment's settings.
pub const HASH_KEY: &str = "lethe-e2e-hash-key-0123456789abcdef0123";

/// The receipt signing key of the deployment (a fixed test seed).
const RECEIPT_KEY: &str = "dGVzdC1yZWNlaXB0LWtleS0wMTIzNDU2Nzg5YWJjZGU=";

/// How long a daemon gets to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// The five daemons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Daemon {
    /// `lethe-api`: HTTP API and coordinator.
    Api,
    /// `lethe-eraser`.
    Eraser,
    /// `lethe-exporter`.
    Exporter,
    /// `lethe-backup`.
    Backup,
    /// `lethe-retention`.
    Retention,
}

impl Daemon {
    /// Every daemon, in start order (the api first: it provisions the streams).
    pub const ALL: [Daemon; 5] = [
        Daemon::Api,
        Daemon::Eraser,
        Daemon::Exporter,
        Daemon::Backup,
        Daemon::Retention,
    ];

    /// Its configuration section (`api`, `eraser`, ...).
    pub fn section(self) -> &'static str {
        match self {
            Daemon::Api => "api",
            Daemon::Eraser => "eraser",
            Daemon::Exporter => "exporter",
            Daemon::Backup => "backup",
            Daemon::Retention => "retention",
        }
    }

    /// Its binary, `lethe-<section>`.
    pub fn binary(self) -> String {
        format!("lethe-{}", self.section())
    }

    /// The variable that overrides its listen address, `LETHE__<SECTION>__LISTEN`.
    pub fn listen_key(self) -> String {
        format!("LETHE__{}__LISTEN", self.section().to_uppercase())
    }
}

/// What a deployment is made of.
#[derive(Debug, Clone)]
pub struct Options {
    /// Sample subjects seeded (`1..=subjects`).
    pub subjects: u64,
    /// Seed of the sample data.
    pub seed: u64,
    /// The NATS server(s) (a private server or cluster for chaos tests; several URLs
    /// comma-separated); the shared server when `None`.
    pub nats_url: Option<String>,
    /// Tracing filter of every daemon.
    pub filter: String,
    /// Make an operator key with `gpg` and encrypt backups to it (else to the test fixture
    /// certificate, whose secret key nobody has).
    pub operator_key: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            subjects: 20,
            seed: 7,
            nats_url: None,
            // Lethe's own crates at debug, as an operator chasing a problem would run them.
            filter: "info,lethe_common=debug,lethe_api=debug,lethe_eraser=debug,\
                     lethe_exporter=debug,lethe_backup=debug,lethe_retention=debug"
                .to_owned(),
            operator_key: false,
        }
    }
}

/// The operator's OpenPGP key: a GnuPG home holding it, and its exported halves.
pub struct OperatorKey {
    /// The GnuPG home with the secret key (for `gpg --decrypt`).
    pub gpg: Gpg,
    /// The public certificate (the backup daemon's recipient).
    pub public_key: PathBuf,
    /// The secret key, ASCII-armored (for `lethe-backup restore --secret-key`).
    pub secret_key: PathBuf,
}

/// One deployment. Dropping it kills its daemons and removes its namespace; call
/// [`Deployment::cleanup`] to stop them gracefully and report cleanup failures.
pub struct Deployment {
    // Declared first so they are dropped (killed) before the namespace goes.
    running: Vec<(Daemon, DaemonProcess)>,
    /// The sample stores (direct connections, not through any proxy).
    pub stores: SampleStores,
    /// Where the sample stores are.
    pub options: ConnectOptions,
    /// The ledger.
    pub ledger: PgPool,
    /// The ledger's URL.
    pub ledger_url: String,
    /// Lethe's bucket (exports, backups).
    pub bucket: String,
    /// NATS names of the deployment.
    pub names: Names,
    /// The NATS server(s) the daemons use (`nats.url`: comma-separated for a cluster).
    pub nats_url: String,
    /// The API key (tenant `e2e`, every scope), made by `lethe-api keys create`.
    pub key: String,
    /// The operator's key, when asked for.
    pub operator: Option<OperatorKey>,
    seed: u64,
    subjects: u64,
    config: toml::Table,
    config_path: PathBuf,
    env: BTreeMap<String, String>,
    http: reqwest::Client,
    dir: tempfile::TempDir,
    ns: Namespace,
}

impl Deployment {
    /// Creates the namespace, its sample stores seeded with `options.subjects` subjects, the
    /// ledger, Lethe's bucket, the data map and the configuration file, and an API key. No
    /// daemon runs yet: see [`Deployment::start`] and [`Deployment::start_all`].
    pub async fn create(services: &Services, options: Options) -> Result<Self> {
        let ns = Namespace::create(services).await?;
        let connect = sample_options(&ns).await?;
        let stores = sample_stores(&ns).await?;
        lethe_sample::prepare(&stores)
            .await
            .context("while creating the sample tables")?;
        if options.subjects > 0 {
            lethe_sample::seed(&stores, &SeedOptions::new(options.subjects, options.seed))
                .await
                .context("while seeding the sample stores")?;
        }
        let ledger_url = ns.pg_database("ledger").await?;
        let bucket = ns.bucket("lethe").await?;
        let names = Names::new(&ns.nats_prefix())?;
        let nats_url = options
            .nats_url
            .clone()
            .unwrap_or_else(|| services.nats_url.clone());
        if options.nats_url.is_none() {
            // Streams on the shared server go with the namespace; a private server takes its
            // streams with it.
            let names = names.clone();
            let url = nats_url.clone();
            ns.on_cleanup(move |_| async move {
                let client = async_nats::connect(&url).await?;
                lethe_common::nats::deprovision(&async_nats::jetstream::new(client), &names)
                    .await?;
                Ok(())
            });
        }
        let mut dir = tempfile::Builder::new().prefix("lethe-e2e-").tempdir()?;
        if std::env::var("LETHE_TEST_KEEP").is_ok_and(|v| !v.is_empty() && v != "0") {
            // Kept with the namespace, to read the daemons' logs after a failure.
            dir.disable_cleanup(true);
            eprintln!("LETHE_TEST_KEEP: keeping {}", dir.path().display());
        }
        let data_map = dir.path().join("datamap.toml");
        std::fs::write(&data_map, sample_datamap(&connect)?)?;
        let operator = if options.operator_key {
            let gpg = Gpg::new()?;
            gpg.generate(OPERATOR, "0", None)?;
            let public_key = dir.path().join("ops.asc");
            let secret_key = dir.path().join("ops.key");
            gpg.export_public(OPERATOR, &public_key)?;
            gpg.export_secret(OPERATOR, &secret_key)?;
            Some(OperatorKey {
                gpg,
                public_key,
                secret_key,
            })
        } else {
            None
        };
        let recipient = operator
            .as_ref()
            .map_or_else(fixture_recipient, |o| o.public_key.clone());
        let services_s3 = &services.s3;
        let text = format!(
            r#"data_map = {map:?}

[telemetry]
format = "json"
filter = {filter:?}

[privacy]
hash_key = "{HASH_KEY}"

[nats]
url = {nats_url:?}
prefix = {prefix:?}
ack_wait = "5s"
max_deliver = 10
connect_timeout = "5s"

[ledger]
url = {ledger_url:?}
max_connections = 8

[s3]
endpoint = {endpoint:?}
region = {region:?}
bucket = {bucket:?}
access_key_id = {key:?}
secret_access_key = {secret:?}

[api]
listen = "127.0.0.1:0"
receipt_signing_key = "{RECEIPT_KEY}"
key_cache_ttl = "1s"
drain_timeout = "5s"

[eraser]
listen = "127.0.0.1:0"
drain_timeout = "5s"

[exporter]
listen = "127.0.0.1:0"
drain_timeout = "5s"

[backup]
listen = "127.0.0.1:0"
drain_timeout = "5s"

[retention]
listen = "127.0.0.1:0"
drain_timeout = "5s"
schedule = "off"

[backups]
recipients = [{recipient:?}]
schedule = {{ default = "off" }}
progress_interval = "2s"
"#,
            map = data_map.display().to_string(),
            filter = options.filter,
            prefix = ns.nats_prefix(),
            endpoint = services_s3.endpoint,
            region = services_s3.region,
            key = services_s3.access_key_id,
            secret = services_s3.secret_access_key,
            recipient = recipient.display().to_string(),
        );
        let config: toml::Table = toml::from_str(&text).context("the deployment's settings")?;
        let config_path = dir.path().join("lethe.toml");
        let env = BTreeMap::from([
            (
                "ACCOUNTS_DATABASE_URL".to_owned(),
                connect.accounts_url.clone(),
            ),
            ("CHAT_DATABASE_URL".to_owned(), connect.chat_url.clone()),
            (
                "SESSIONS_REDIS_URL".to_owned(),
                connect.sessions_url.clone(),
            ),
        ]);
        let ledger = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect(&ledger_url)
            .await
            .context("while connecting to the ledger")?;
        let mut deployment = Self {
            running: Vec::new(),
            stores,
            options: connect,
            ledger,
            ledger_url,
            bucket,
            names,
            nats_url,
            key: String::new(),
            operator,
            seed: options.seed,
            subjects: options.subjects,
            config,
            config_path,
            env,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
            dir,
            ns,
        };
        deployment.write_config()?;
        deployment.key = deployment
            .admin(&[
                "keys",
                "create",
                "--tenant",
                "e2e",
                "--scopes",
                "requests:write,requests:read,admin",
            ])
            .await?
            .trim()
            .to_owned();
        ensure!(
            deployment.key.starts_with("lethe_"),
            "keys create printed no key"
        );
        Ok(deployment)
    }

    /// The namespace.
    pub fn ns(&self) -> &Namespace {
        &self.ns
    }

    /// The seed of the sample data.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Sample subject `index` (1-based) as seeded.
    pub fn subject(&self, index: u64) -> Subject {
        lethe_sample::subject(self.seed, index)
    }

    /// Every seeded subject.
    pub fn subjects(&self) -> Vec<Subject> {
        (1..=self.subjects).map(|i| self.subject(i)).collect()
    }

    /// The configuration file the daemons are started with.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The directory of the configuration, the data map and the daemons' logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Sets `section.key` in the configuration file (for daemons started afterwards).
    pub fn set_config(&mut self, section: &str, key: &str, value: toml::Value) -> Result<()> {
        let table = self
            .config
            .entry(section.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .with_context(|| format!("`{section}` is not a section"))?;
        table.insert(key.to_owned(), value);
        self.write_config()
    }

    /// Sets a variable of the daemons' environment (e.g. a store's URL through a proxy), for
    /// daemons started afterwards.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.insert(key.to_owned(), value.to_owned());
    }

    fn write_config(&self) -> Result<()> {
        std::fs::write(&self.config_path, toml::to_string(&self.config)?)
            .context("while writing the configuration")
    }

    /// Runs `lethe-api --config <config> <args>` as an operator would; returns its standard
    /// output, failing with its standard error if it fails.
    pub async fn admin(&self, args: &[&str]) -> Result<String> {
        let output = self.command(Daemon::Api)?.args(args).output().await?;
        ensure!(
            output.status.success(),
            "lethe-api {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8(output.stdout)?)
    }

    /// A command for `daemon`'s binary with the deployment's configuration and environment
    /// (and nothing inherited that would override them).
    pub fn command(&self, daemon: Daemon) -> Result<tokio::process::Command> {
        let mut command = tokio::process::Command::new(binaries_dir()?.join(daemon.binary()));
        command
            .arg("--config")
            .arg(&self.config_path)
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::null());
        for (key, _) in std::env::vars() {
            if key.starts_with("LETHE__") {
                command.env_remove(key);
            }
        }
        command.envs(&self.env);
        Ok(command)
    }

    /// Starts one process of `daemon` (waits for its `/healthz`) with extra environment.
    pub async fn start_with(&mut self, daemon: Daemon, env: &[(&str, &str)]) -> Result<()> {
        let mut all: Vec<(String, String)> = self
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        all.extend(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        let process = DaemonProcess::start(
            &daemon.binary(),
            &self.config_path,
            &daemon.listen_key(),
            &all,
            self.dir.path(),
        )
        .await?;
        self.running.push((daemon, process));
        Ok(())
    }

    /// Starts one process of `daemon`.
    pub async fn start(&mut self, daemon: Daemon) -> Result<()> {
        self.start_with(daemon, &[]).await
    }

    /// Starts the five daemons.
    pub async fn start_all(&mut self) -> Result<()> {
        for daemon in Daemon::ALL {
            self.start(daemon).await?;
        }
        Ok(())
    }

    /// The first running process of `daemon`.
    pub fn process(&self, daemon: Daemon) -> Option<&DaemonProcess> {
        self.running
            .iter()
            .find(|(d, _)| *d == daemon)
            .map(|(_, p)| p)
    }

    fn take(&mut self, daemon: Daemon) -> Result<DaemonProcess> {
        let at = self
            .running
            .iter()
            .position(|(d, _)| *d == daemon)
            .with_context(|| format!("no {} runs", daemon.binary()))?;
        Ok(self.running.remove(at).1)
    }

    /// Kills the first process of `daemon` with SIGKILL, as a crash would.
    pub fn kill(&mut self, daemon: Daemon) -> Result<()> {
        self.take(daemon)?.kill()
    }

    /// Stops the first process of `daemon` with SIGTERM; fails unless it exits cleanly in time.
    pub fn stop(&mut self, daemon: Daemon) -> Result<()> {
        let process = self.take(daemon)?;
        ensure!(
            process.stop_within(STOP_TIMEOUT)?,
            "{} did not exit cleanly on SIGTERM",
            daemon.binary()
        );
        Ok(())
    }

    /// `http://<api address>`.
    pub fn api(&self) -> Result<String> {
        let api = self.process(Daemon::Api).context("the api does not run")?;
        Ok(format!("http://{}", api.address))
    }

    /// An HTTP client that does not follow redirects.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// `GET <api><path>` with the deployment's key: status and JSON body (`Null` if empty,
    /// the text as a string if not JSON).
    pub async fn get(&self, path: &str) -> Result<(u16, Value)> {
        let response = self
            .http
            .get(format!("{}{path}", self.api()?))
            .bearer_auth(&self.key)
            .send()
            .await?;
        read(response).await
    }

    /// `POST <api><path>` of `body` with the deployment's key.
    pub async fn post(&self, path: &str, body: &Value) -> Result<(u16, Value)> {
        let response = self
            .http
            .post(format!("{}{path}", self.api()?))
            .bearer_auth(&self.key)
            .json(body)
            .send()
            .await?;
        read(response).await
    }

    /// Files a request; returns its id (fails unless the API accepted it with 202).
    pub async fn file(&self, body: &Value) -> Result<String> {
        let (status, answer) = self.post("/v1/requests", body).await?;
        ensure!(status == 202, "POST /v1/requests: {status} {answer}");
        answer["id"]
            .as_str()
            .map(str::to_owned)
            .context("the answer has no id")
    }

    /// Files an erasure of seeded subject `index`, known by email only.
    pub async fn file_erasure(&self, index: u64) -> Result<String> {
        let email = self.subject(index).identities.email;
        self.file(&json!({"kind": "erasure", "subject": {"email": email}}))
            .await
    }

    /// Waits until request `id` reaches a final status (polling the API) and returns its view;
    /// fails after `timeout`.
    pub async fn wait_finished(&self, id: &str, timeout: Duration) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let (status, view) = self.get(&format!("/v1/requests/{id}")).await?;
            ensure!(status == 200, "GET /v1/requests/{id}: {status} {view}");
            if matches!(
                view["status"].as_str(),
                Some("completed" | "failed" | "cancelled" | "rejected")
            ) {
                return Ok(view);
            }
            ensure!(
                Instant::now() < deadline,
                "request {id} did not finish within {timeout:?}: {view}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until request `id` completed (fails at once if it failed).
    pub async fn wait_completed(&self, id: &str, timeout: Duration) -> Result<Value> {
        let view = self.wait_finished(id, timeout).await?;
        ensure!(view["status"] == "completed", "request {id} ended: {view}");
        Ok(view)
    }

    /// The number of `ids` per status, from the ledger.
    pub async fn statuses(&self, ids: &[String]) -> Result<BTreeMap<String, i64>> {
        let ids = uuids(ids)?;
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT status, count(*) FROM request WHERE id = ANY($1) GROUP BY status",
        )
        .bind(&ids)
        .fetch_all(&self.ledger)
        .await?;
        Ok(rows.into_iter().collect())
    }

    /// Waits until every one of `ids` completed, reading the ledger; fails as soon as one
    /// fails (naming its failure), or after `timeout` (with the count per status).
    pub async fn wait_all_completed(&self, ids: &[String], timeout: Duration) -> Result<()> {
        self.wait_all_completed_progressing(ids, timeout, timeout)
            .await
    }

    /// [`Deployment::wait_all_completed`], failing early when no request completes for
    /// `stall` (a lost task never completes: no need to wait for the whole `timeout`).
    pub async fn wait_all_completed_progressing(
        &self,
        ids: &[String],
        timeout: Duration,
        stall: Duration,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let uuids = uuids(ids)?;
        let mut last = (-1i64, Instant::now());
        loop {
            let statuses = self.statuses(ids).await?;
            if statuses.get("failed").copied().unwrap_or(0) > 0 {
                let failure: Option<String> = sqlx::query_scalar(
                    "SELECT failure FROM request WHERE id = ANY($1) AND status = 'failed' LIMIT 1",
                )
                .bind(&uuids)
                .fetch_one(&self.ledger)
                .await?;
                bail!(
                    "requests failed ({statuses:?}), e.g.: {}",
                    failure.unwrap_or_default()
                );
            }
            let completed = statuses.get("completed").copied().unwrap_or(0);
            if usize::try_from(completed)? == ids.len() {
                return Ok(());
            }
            if completed != last.0 {
                last = (completed, Instant::now());
            }
            if last.1.elapsed() >= stall || Instant::now() >= deadline {
                bail!(
                    "{completed} of {} requests completed ({statuses:?}), none for {:?}\n{}\n{}",
                    ids.len(),
                    last.1.elapsed(),
                    self.consumers_state().await,
                    self.log_problems()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Every log file the daemons of this deployment wrote (running, stopped or killed).
    pub fn log_files(&self) -> Result<Vec<PathBuf>> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(self.dir.path())? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "log") {
                files.push(path);
            }
        }
        files.sort();
        Ok(files)
    }

    /// The state of every durable consumer of the deployment on the NATS server, to explain
    /// a failed wait.
    pub async fn consumers_state(&self) -> String {
        let urls = lethe_common::nats::server_urls(&self.nats_url);
        let Ok(client) = async_nats::connect(urls).await else {
            return "NATS unreachable".to_owned();
        };
        let jetstream = async_nats::jetstream::new(client);
        let mut out = String::new();
        for stream in [self.names.tasks_stream(), self.names.results_stream()] {
            let Ok(mut stream) = jetstream.get_stream(&stream).await else {
                continue;
            };
            if let Ok(info) = stream.info().await {
                out.push_str(&format!(
                    "stream {}: {} messages, first {}, last {}\n",
                    info.config.name,
                    info.state.messages,
                    info.state.first_sequence,
                    info.state.last_sequence
                ));
            }
            let mut consumers = stream.consumers();
            while let Some(Ok(info)) = consumers.next().await {
                out.push_str(&format!(
                    "consumer {}: pending {}, ack pending {}, redelivered {}, waiting {}, delivered {}\n",
                    info.name,
                    info.num_pending,
                    info.num_ack_pending,
                    info.num_redelivered,
                    info.num_waiting,
                    info.delivered.stream_sequence
                ));
            }
        }
        out
    }

    /// How many warnings and errors each daemon logged, and its last lines, to explain a
    /// failed wait.
    pub fn log_problems(&self) -> String {
        let mut out = String::new();
        for file in self.log_files().unwrap_or_default() {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            let problems: Vec<&str> = text
                .lines()
                .filter(|l| l.contains("\"WARN\"") || l.contains("\"ERROR\""))
                .collect();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!(
                "{}: {} warnings and errors; its last lines:\n",
                file.display(),
                problems.len()
            ));
            for line in &lines[lines.len().saturating_sub(12)..] {
                out.push_str("  ");
                out.extend(line.chars().take(600));
                out.push('\n');
            }
        }
        out
    }

    /// Scans every log the daemons wrote for an identifier of any seeded subject; fails
    /// naming the file, line and kind of identifier of every hit (not the identifier).
    pub fn assert_logs_hold_no_identifier(&self) -> Result<()> {
        let scanner = LeakScanner::new(&self.subjects());
        let files = self.log_files()?;
        ensure!(!files.is_empty(), "no daemon wrote a log");
        let mut leaks = Vec::new();
        let mut lines = 0usize;
        for file in &files {
            let text = std::fs::read_to_string(file)?;
            lines += text.lines().count();
            leaks.extend(scanner.scan(file, &text));
        }
        ensure!(lines > 0, "the daemons' logs are empty");
        ensure!(
            leaks.is_empty(),
            "{} identifiers in the daemons' logs:\n{}",
            leaks.len(),
            leaks
                .iter()
                .take(20)
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        );
        Ok(())
    }

    /// Stops every daemon (SIGTERM, bounded), closes the connections and removes the
    /// namespace (databases, keys, buckets, NATS streams).
    pub async fn cleanup(mut self) -> Result<()> {
        let mut unclean = Vec::new();
        for (daemon, process) in std::mem::take(&mut self.running) {
            if !process.stop_within(STOP_TIMEOUT).unwrap_or(false) {
                unclean.push(daemon.binary());
            }
        }
        self.ledger.close().await;
        self.stores.accounts.close().await;
        self.stores.chat.close().await;
        self.ns.cleanup().await?;
        ensure!(
            unclean.is_empty(),
            "did not exit cleanly on SIGTERM: {unclean:?}"
        );
        Ok(())
    }
}

async fn read(response: reqwest::Response) -> Result<(u16, Value)> {
    let status = response.status().as_u16();
    let text = response.text().await?;
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    Ok((status, body))
}

fn uuids(ids: &[String]) -> Result<Vec<sqlx::types::Uuid>> {
    ids.iter()
        .map(|id| {
            id.parse()
                .with_context(|| format!("`{id}` is not a request id"))
        })
        .collect()
}

/// One identifier found in a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leak {
    /// The log file.
    pub file: PathBuf,
    /// The line, 1-based.
    pub line: usize,
    /// What was found, e.g. `email of subject 7` (never the identifier itself).
    pub what: String,
    /// The line (lower case, at most 400 characters) with the email, phone or name blanked
    /// out, to show where it stood.
    pub context: String,
}

impl std::fmt::Display for Leak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}: {}\n    {}",
            self.file.display(),
            self.line,
            self.what,
            self.context
        )
    }
}

/// Finds subjects' identifiers in log text: their email addresses and phone numbers, their
/// full names, and their user ids where one stands as such: in a key or object name
/// (`session:7`, `avatars/7/`) or as a field (`user_id=7`, `"user_id":"7"`). A bare number
/// alone proves nothing (counts and durations are numbers too), so it is not looked for.
pub struct LeakScanner {
    tokens: HashMap<String, String>,
    names: HashMap<(String, String), String>,
    user_ids: HashMap<String, String>,
}

/// Words after which a number is a user id, when joined to it as in a key, a path or a field
/// (see [`id_after`]).
const USER_ID_CONTEXTS: [&str; 6] = [
    "avatars",
    "attachments",
    "session",
    "visits",
    "user_id",
    "author_id",
];

/// The number joined to the text before `rest` as a key, path or field joins it:
/// `:7`, `/7`, `=7`, `":"7"`, `":7`, `":["7"]`, `\":\"7` (JSON inside a JSON string); not `": 7`, which is
/// how count maps print (`"visits": 7`).
fn id_after(rest: &str) -> Option<&str> {
    let rest = rest
        .strip_prefix("\\\"")
        .or_else(|| rest.strip_prefix('"'))
        .unwrap_or(rest);
    let rest = rest.strip_prefix([':', '/', '='])?;
    let rest = rest.strip_prefix('[').unwrap_or(rest);
    let rest = rest
        .strip_prefix("\\\"")
        .or_else(|| rest.strip_prefix('"'))
        .unwrap_or(rest);
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    (end > 0).then(|| &rest[..end])
}

impl LeakScanner {
    /// A scanner for the identifiers of `subjects`.
    pub fn new(subjects: &[Subject]) -> Self {
        let mut tokens = HashMap::new();
        let mut names = HashMap::new();
        let mut user_ids = HashMap::new();
        for s in subjects {
            let who = format!("subject {}", s.index);
            tokens.insert(s.identities.email.to_lowercase(), format!("email of {who}"));
            tokens.insert(s.identities.phone.to_lowercase(), format!("phone of {who}"));
            names.insert(
                (
                    s.user.first_name.to_lowercase(),
                    s.user.last_name.to_lowercase(),
                ),
                format!("name of {who}"),
            );
            user_ids.insert(s.user.id.to_string(), format!("user id of {who}"));
        }
        Self {
            tokens,
            names,
            user_ids,
        }
    }

    /// Every identifier in `text` (the content of `file`).
    pub fn scan(&self, file: &Path, text: &str) -> Vec<Leak> {
        let mut leaks = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let lower = line.to_lowercase();
            let words: Vec<&str> = lower
                .split(|c: char| !(c.is_alphanumeric() || "@._+-%'".contains(c)))
                .map(|w| w.trim_matches('.'))
                .filter(|w| !w.is_empty())
                .collect();
            let mut hit = |what: &String, word: Option<&str>| {
                // A user id is a small number: blanking it would blank every such digit.
                let blanked = word.map_or_else(|| lower.clone(), |w| lower.replace(w, "<...>"));
                leaks.push(Leak {
                    file: file.to_owned(),
                    line: number + 1,
                    what: what.clone(),
                    context: blanked.chars().take(400).collect(),
                });
            };
            for (i, word) in words.iter().enumerate() {
                if let Some(what) = self.tokens.get(*word) {
                    hit(what, Some(word));
                }
                if i == 0 {
                    continue;
                }
                let previous = words[i - 1];
                if let Some(what) = self.names.get(&(previous.to_owned(), (*word).to_owned())) {
                    hit(what, Some(&format!("{previous} {word}")));
                }
            }
            for context in USER_ID_CONTEXTS {
                for (at, _) in lower.match_indices(context) {
                    if let Some(id) = id_after(&lower[at + context.len()..])
                        && let Some(what) = self.user_ids.get(id)
                    {
                        hit(what, None);
                    }
                }
            }
        }
        leaks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scanner_finds_identifiers_in_context_and_ignores_bare_numbers() {
        let s = lethe_sample::subject(7, 3);
        let scanner = LeakScanner::new(std::slice::from_ref(&s));
        let file = Path::new("x.log");
        let email = &s.identities.email;
        let phone = &s.identities.phone;
        let id = s.user.id;
        let (first, last) = (&s.user.first_name, &s.user.last_name);
        for (line, expected) in [
            (format!(r#"{{"msg":"erased","email":"{email}"}}"#), 1),
            (format!("deleting last_seen:{email}."), 1),
            (format!("phone={phone} rows={id}"), 1),
            (format!("hello {first} {last}!"), 1),
            (format!("listing avatars/{id}/ took {id} ms"), 1),
            (format!(r#"{{"user_id":"{id}"}}"#), 1),
            (format!(r#"{{"user_id":["{id}"]}}"#), 1),
            (format!("rows={id} duration_ms={id}"), 0),
            (
                format!(r#"counts: {{\"visits\": {id}, \"session:{{user_id}}\": {id}}}"#),
                0,
            ),
            (format!("request {id} done, {first} alone"), 0),
        ] {
            assert_eq!(scanner.scan(file, &line).len(), expected, "{line}");
        }
    }
}
