//! Running the api daemon in a test's namespace, and a driver that answers its tasks in place
//! of the workers.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result};
use async_nats::jetstream::consumer::{AckPolicy, pull};
use lethe_api::keys::{self, Scope};
use lethe_common::Settings;
use lethe_common::messages::{Identities, TaskKind, TaskMessage, TaskReport};
use lethe_common::nats::{self, Names, Publisher};
use lethe_common::worker::{Handler, LoopSettings, RunMode, TaskError, WorkerLoop};
use serde_json::Value;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{Namespace, Services};

/// The data map the API tests use: an identity provider (accounts), a store keyed by the
/// derived user id (chat), and a bucket. The api never connects to these stores; the driver
/// answers for them.
pub const API_TEST_DATA_MAP: &str = r#"
identities = ["email", "phone", "user_id"]

[stores.accounts]
kind = "postgres"
url_env = "UNUSED_ACCOUNTS_URL"
[[stores.accounts.collections]]
table = "users"
match = { email = "email", phone = "phone" }
provides = { user_id = "id" }
erase = "delete"
rectify = { first_name = "first_name", last_name = "last_name" }
restrict = { column = "restricted" }
object = { column = "objected" }

[stores.chat]
kind = "mysql"
url_env = "UNUSED_CHAT_URL"
[[stores.chat.collections]]
table = "messages"
match = { user_id = "author_id" }
erase = "delete"

[stores.files]
kind = "s3"
bucket = "unused"
prefixes = ["avatars/{user_id}/"]
"#;

/// The outbound URL policy of the tests' configuration: the tests' webhook receivers listen on
/// plain http on 127.0.0.1, which the default policy refuses. Tests of the policy replace it.
pub const TEST_OUTBOUND: &str =
    "[api.outbound]\nallow_http = true\nallow_hosts = [\"127.0.0.1\"]\n";

/// The configuration of a deployment in `ns`, with NATS at `nats_url`. Its bucket is a name
/// only, so tombstones are off (tests/tests/it/drill.rs has them on, in a whole deployment).
pub fn settings_text(
    services: &Services,
    ns: &Namespace,
    ledger_url: &str,
    nats_url: &str,
    data_map: &std::path::Path,
) -> String {
    format!(
        "data_map = {map:?}\n\
         [privacy]\nhash_key = \"test-hash-key-0123456789abcdef0123456789\"\n\
         [nats]\nurl = {nats_url:?}\nprefix = {prefix:?}\nack_wait = \"5s\"\nmax_deliver = 3\nconnect_timeout = \"2s\"\n\
         [ledger]\nurl = {ledger_url:?}\n\
         [s3]\nendpoint = {endpoint:?}\nbucket = \"unused\"\naccess_key_id = {key:?}\nsecret_access_key = {secret:?}\n\
         [api]\nlisten = \"127.0.0.1:0\"\nreceipt_signing_key = \"dGVzdC1yZWNlaXB0LWtleS0wMTIzNDU2Nzg5YWJjZGU=\"\nkey_cache_ttl = \"0s\"\n\
         tombstones = false\n\
         {TEST_OUTBOUND}",
        map = data_map.display().to_string(),
        prefix = ns.nats_prefix(),
        endpoint = services.s3.endpoint,
        key = services.s3.access_key_id,
        secret = services.s3.secret_access_key,
    )
}

/// The api daemon running in-process in its own namespace.
pub struct ApiUnderTest {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// Its settings.
    pub settings: Settings,
    /// Its ledger.
    pub pool: PgPool,
    /// Its namespace.
    pub ns: Namespace,
    shutdown: CancellationToken,
    handle: Option<JoinHandle<Result<()>>>,
    _dir: tempfile::TempDir,
    /// The configuration file, for running the binary's subcommands against it.
    pub config_path: PathBuf,
}

impl ApiUnderTest {
    /// Starts the api against the shared NATS server.
    pub async fn start(services: &Services) -> Result<Self> {
        Self::start_with_nats(services, &services.nats_url).await
    }

    /// Starts the api against the NATS server at `nats_url`.
    pub async fn start_with_nats(services: &Services, nats_url: &str) -> Result<Self> {
        Self::start_configured(services, nats_url, |text| text).await
    }

    /// Starts the api against the NATS server at `nats_url` with the configuration text
    /// `edit` makes of the usual one.
    pub async fn start_configured(
        services: &Services,
        nats_url: &str,
        edit: impl FnOnce(String) -> String,
    ) -> Result<Self> {
        let ns = Namespace::create(services).await?;
        let ledger = ns.pg_database("ledger").await?;
        let dir = tempfile::tempdir()?;
        let map = dir.path().join("datamap.toml");
        std::fs::write(&map, API_TEST_DATA_MAP)?;
        let config_path = dir.path().join("lethe.toml");
        std::fs::write(
            &config_path,
            edit(settings_text(services, &ns, &ledger, nats_url, &map)),
        )?;
        let settings = Settings::from_toml(&std::fs::read_to_string(&config_path)?)?;
        let app = lethe_api::App::build(&settings).await?;
        let base = format!("http://{}", app.local_addr()?);
        let pool = app.state().pool.clone();
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(app.run(shutdown.clone()));
        Ok(Self {
            base,
            settings,
            pool,
            ns,
            shutdown,
            handle: Some(handle),
            _dir: dir,
            config_path,
        })
    }

    /// NATS names of this deployment.
    pub fn names(&self) -> Names {
        Names::new(&self.settings.nats.prefix).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A new API key for `tenant` with `scopes`.
    pub async fn key(&self, tenant: &str, scopes: &[Scope]) -> Result<String> {
        let tenant = keys::ensure_tenant(&self.pool, tenant).await?;
        Ok(keys::create(&self.pool, tenant, "test", scopes)
            .await?
            .secret)
    }

    /// A key with every scope.
    pub async fn admin_key(&self, tenant: &str) -> Result<String> {
        self.key(
            tenant,
            &[Scope::RequestsWrite, Scope::RequestsRead, Scope::Admin],
        )
        .await
    }

    /// POSTs `body` as JSON to `path` with `key`.
    pub async fn post(&self, key: &str, path: &str, body: &Value) -> Result<(u16, Value)> {
        let response = reqwest::Client::new()
            .post(format!("{}{path}", self.base))
            .bearer_auth(key)
            .json(body)
            .send()
            .await?;
        read(response).await
    }

    /// GETs `path` with `key`.
    pub async fn get(&self, key: &str, path: &str) -> Result<(u16, Value)> {
        let response = reqwest::Client::new()
            .get(format!("{}{path}", self.base))
            .bearer_auth(key)
            .send()
            .await?;
        read(response).await
    }

    /// Waits (bounded) until the request reaches a terminal status; returns its view.
    pub async fn wait_until_finished(&self, key: &str, id: &str) -> Result<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let (status, body) = self.get(key, &format!("/v1/requests/{id}")).await?;
            anyhow::ensure!(status == 200, "GET {id}: {status} {body}");
            if matches!(
                body["status"].as_str(),
                Some("completed" | "failed" | "cancelled" | "rejected")
            ) {
                return Ok(body);
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "request {id} did not finish: {body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the api and removes its namespace (streams included).
    pub async fn stop(mut self) -> Result<()> {
        self.shutdown.cancel();
        if let Some(handle) = self.handle.take() {
            handle.await??;
        }
        if let Ok(client) = async_nats::connect(&self.settings.nats.url).await {
            nats::deprovision(&async_nats::jetstream::new(client), &self.names())
                .await
                .ok();
        }
        self.ns.cleanup().await
    }
}

async fn read(response: reqwest::Response) -> Result<(u16, Value)> {
    let status = response.status().as_u16();
    let text = response.text().await?;
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).context("response is not JSON")?
    };
    Ok((status, body))
}

/// What the driver answers for one task.
pub type Answer = Box<dyn Fn(&TaskMessage) -> Result<TaskReport, TaskError> + Send + Sync>;

/// Answers tasks like well-behaved workers: resolve derives `user_id = 42`, erase reports one
/// row and nothing remaining, everything else reports one row. Records every task it saw.
pub struct Driver {
    seen: Arc<Mutex<Vec<TaskMessage>>>,
    answer: Answer,
}

impl Driver {
    /// The well-behaved driver.
    pub fn well_behaved() -> Self {
        Self::answering(Box::new(|task| Ok(default_answer(task))))
    }

    /// A driver answering with `answer`.
    pub fn answering(answer: Answer) -> Self {
        Self {
            seen: Arc::default(),
            answer,
        }
    }

    /// Every task seen so far, in order.
    pub fn seen(&self) -> Vec<TaskMessage> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// The well-behaved answer.
pub fn default_answer(task: &TaskMessage) -> TaskReport {
    let mut report = TaskReport {
        counts: BTreeMap::from([("rows".to_owned(), 1)]),
        ..Default::default()
    };
    match task.task {
        TaskKind::Resolve => {
            report.derived = Identities::from([("user_id".to_owned(), vec!["42".to_owned()])]);
        }
        TaskKind::Erase => report.remaining = Some(0),
        _ => {}
    }
    report
}

impl Handler for Driver {
    async fn handle(&self, task: TaskMessage) -> Result<TaskReport, TaskError> {
        if let Ok(mut seen) = self.seen.lock() {
            seen.push(task.clone());
        }
        (self.answer)(&task)
    }
}

/// Runs `driver` on every task subject of `names` until the returned token is cancelled.
pub async fn run_driver(
    nats_url: &str,
    names: &Names,
    driver: Arc<Driver>,
) -> Result<(CancellationToken, JoinHandle<()>)> {
    let client = async_nats::connect(nats_url).await?;
    let publisher = Publisher::new(client, names.clone());
    let stream = publisher
        .jetstream()
        .get_stream(names.tasks_stream())
        .await?;
    let consumer = stream
        .get_or_create_consumer(
            "test-driver",
            pull::Config {
                durable_name: Some("test-driver".to_owned()),
                filter_subjects: names.task_subjects(),
                ack_policy: AckPolicy::Explicit,
                max_deliver: 3,
                ack_wait: Duration::from_secs(5),
                ..Default::default()
            },
        )
        .await?;
    let worker = WorkerLoop::new(
        "test-driver",
        consumer,
        driver,
        publisher,
        LoopSettings {
            concurrency: 8,
            drain_timeout: Duration::from_secs(5),
            max_deliver: 3,
            ack_wait: Duration::from_secs(5),
            poll: Duration::from_millis(200),
            batch_size: 1,
        },
    );
    let stop = CancellationToken::new();
    let token = stop.clone();
    let handle = tokio::spawn(async move {
        if let Err(error) = worker.run(token, RunMode::UntilShutdown).await {
            tracing::warn!(error = %error, "test driver stopped");
        }
    });
    Ok((stop, handle))
}
