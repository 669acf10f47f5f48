//! The breach register against real services: incidents opened through the API, subject
//! counts made by a real exporter next to the seeded sample stores, notifications delivered to
//! a webhook receiver, deadlines judged by the api's clock moved forward.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use chrono::{DateTime, Utc};
use lethe_api::audit::Verification;
use lethe_api::incidents::Clock;
use lethe_api::keys::{self, Scope};
use lethe_common::Settings;
use lethe_common::nats::{self, Names};
use lethe_common::worker::RunMode;
use lethe_tests::api::{API_TEST_DATA_MAP, settings_text};
use lethe_tests::exporter_support::ExporterBed;
use lethe_tests::{Namespace, Services};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The api running in-process with a handle on its clock.
struct Api {
    base: String,
    pool: PgPool,
    clock: Clock,
    names: Names,
    nats_url: String,
    shutdown: CancellationToken,
    handle: JoinHandle<Result<()>>,
    config: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Api {
    async fn start(services: &Services, ns: &Namespace, data_map: &str) -> Result<Self> {
        let ledger = ns.pg_database("ledger").await?;
        let dir = tempfile::tempdir()?;
        let map = dir.path().join("datamap.toml");
        std::fs::write(&map, data_map)?;
        let text = settings_text(services, ns, &ledger, &services.nats_url, &map);
        let config = dir.path().join("lethe.toml");
        std::fs::write(&config, &text)?;
        let settings = Settings::from_toml(&text)?;
        let app = lethe_api::App::build(&settings).await?;
        let base = format!("http://{}", app.local_addr()?);
        let pool = app.state().pool.clone();
        let clock = app.state().incidents.clock.clone();
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(app.run(shutdown.clone()));
        Ok(Self {
            base,
            pool,
            clock,
            names: Names::new(&settings.nats.prefix)?,
            nats_url: services.nats_url.clone(),
            shutdown,
            handle,
            config,
            _dir: dir,
        })
    }

    async fn stop(self) -> Result<()> {
        self.shutdown.cancel();
        self.handle.await??;
        if let Ok(client) = async_nats::connect(&self.nats_url).await {
            nats::deprovision(&async_nats::jetstream::new(client), &self.names)
                .await
                .ok();
        }
        Ok(())
    }

    /// A key of tenant `name` (created if new) with `scopes`.
    async fn key(&self, name: &str, scopes: &[Scope]) -> String {
        let tenant = keys::ensure_tenant(&self.pool, name).await.unwrap();
        keys::create(&self.pool, tenant, "test", scopes)
            .await
            .unwrap()
            .secret
    }

    async fn set_webhook(&self, tenant: &str, url: &str) {
        sqlx::query("UPDATE tenant SET webhook_url = $2 WHERE name = $1")
            .bind(tenant)
            .bind(url)
            .execute(&self.pool)
            .await
            .unwrap();
    }

    async fn call(
        &self,
        method: reqwest::Method,
        key: &str,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut request = reqwest::Client::new()
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(key);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap()
        };
        (status, body)
    }

    async fn get(&self, key: &str, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, key, path, None).await
    }

    async fn post(&self, key: &str, path: &str, body: &Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, key, path, Some(body))
            .await
    }

    /// Polls the incident until `done` holds for its view (bounded).
    async fn wait_for(&self, key: &str, id: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let (status, view) = self.get(key, &format!("/v1/incidents/{id}")).await;
            assert_eq!(status, 200, "{view}");
            if done(&view) {
                return view;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the incident did not reach the expected state: {view}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.base))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Polls `/metrics` until it holds `line` (bounded).
    async fn wait_for_metric(&self, line: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let metrics = self.metrics().await;
            if metrics.lines().any(|l| l.trim() == line) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "/metrics never showed `{line}`:\n{metrics}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// One request the webhook receiver got.
#[derive(Debug, Clone)]
struct Hit {
    path: String,
    signature: Option<String>,
    body: Vec<u8>,
}

/// A webhook receiver on a loopback port: records every request and answers 503 to the first
/// request on each path of `fail_first`, 200 otherwise.
struct Receiver {
    base: String,
    hits: Arc<Mutex<Vec<Hit>>>,
    task: JoinHandle<()>,
}

impl Receiver {
    async fn start(fail_first: &'static [&'static str]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let hits: Arc<Mutex<Vec<Hit>>> = Arc::default();
        let recorded = hits.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let Some(hit) = read_request(&mut socket).await else {
                    continue;
                };
                let status = {
                    let mut hits = recorded.lock().unwrap();
                    let earlier = hits.iter().filter(|h| h.path == hit.path).count();
                    let fail = earlier == 0 && fail_first.contains(&hit.path.as_str());
                    hits.push(hit);
                    if fail {
                        "503 Service Unavailable"
                    } else {
                        "200 OK"
                    }
                };
                let response =
                    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                socket.write_all(response.as_bytes()).await.ok();
                socket.shutdown().await.ok();
            }
        });
        Self { base, hits, task }
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one HTTP/1.1 request with a `Content-Length` body.
async fn read_request(socket: &mut tokio::net::TcpStream) -> Option<Hit> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
    let mut lines = head.lines();
    let path = lines.next()?.split_whitespace().nth(1)?.to_owned();
    let mut length = 0usize;
    let mut signature = None;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().ok()?;
            } else if name.eq_ignore_ascii_case("lethe-signature") {
                signature = Some(value.trim().to_owned());
            }
        }
    }
    while buffer.len() < head_end + length {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
    Some(Hit {
        path,
        signature,
        body: buffer[head_end..head_end + length].to_vec(),
    })
}

/// Whether `hit` carries a valid signature under `secret`.
fn signed_by(hit: &Hit, secret: &str) -> bool {
    let Some(signature) = &hit.signature else {
        return false;
    };
    let Some(timestamp) = signature
        .strip_prefix("t=")
        .and_then(|rest| rest.split(',').next())
        .and_then(|t| t.parse::<i64>().ok())
    else {
        return false;
    };
    lethe_api::webhooks::sign(secret, timestamp, &hit.body) == *signature
}

async fn webhook_secret(pool: &PgPool, tenant: &str) -> String {
    sqlx::query_scalar("SELECT webhook_secret FROM tenant WHERE name = $1")
        .bind(tenant)
        .fetch_one(pool)
        .await
        .unwrap()
}

fn tenant<'v>(view: &'v Value, name: &str) -> &'v Value {
    view["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tenant"] == name)
        .unwrap_or_else(|| panic!("no tenant {name} in {view}"))
}

fn audit_kinds(view: &Value) -> Vec<String> {
    view["audit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .collect()
}

async fn chain_is_intact(pool: &PgPool) {
    while lethe_api::audit::seal(pool).await.unwrap() > 0 {}
    let verification = lethe_api::audit::verify(pool).await.unwrap();
    assert!(
        matches!(verification, Verification::Intact { sealed, .. } if sealed > 0),
        "{verification:?}"
    );
}

fn at(value: &Value) -> DateTime<Utc> {
    value.as_str().unwrap().parse().unwrap()
}

/// Distinct users per company in the seeded accounts store: the expected estimates.
async fn users_per_company(accounts: &PgPool) -> BTreeMap<String, i64> {
    sqlx::query_as::<_, (String, i64)>(
        "SELECT company, count(DISTINCT id) FROM users WHERE company IS NOT NULL GROUP BY company",
    )
    .fetch_all(accounts)
    .await
    .unwrap()
    .into_iter()
    .collect()
}

/// Distinct user ids anywhere in the seeded chat store.
async fn chat_subjects(chat: &sqlx::MySqlPool) -> i64 {
    let mut ids = BTreeSet::new();
    for statement in [
        "SELECT user_id FROM conversations",
        "SELECT author_id FROM messages WHERE author_id IS NOT NULL",
        "SELECT user_id FROM visits",
    ] {
        let rows: Vec<i64> = sqlx::query_scalar(statement).fetch_all(chat).await.unwrap();
        ids.extend(rows);
    }
    i64::try_from(ids.len()).unwrap()
}

#[tokio::test]
async fn an_incident_affecting_two_of_three_tenants_notifies_exactly_those_two() {
    let services = Services::from_env();
    let bed = ExporterBed::create(&services).await.unwrap();
    bed.bed.seed(200, 11).await.unwrap();
    let exporter = lethe_exporter::App::build(&bed.settings().unwrap(), RunMode::UntilShutdown)
        .await
        .unwrap();
    let exporter_stop = CancellationToken::new();
    let exporter_run = tokio::spawn(exporter.run(exporter_stop.clone()));
    let api = Api::start(&services, bed.bed.ns(), &bed.bed.sample_map().unwrap())
        .await
        .unwrap();
    // The three customers with the most users in the seeded data are the tenants.
    let expected = users_per_company(&bed.bed.stores.accounts).await;
    let mut companies: Vec<(&String, &i64)> = expected.iter().collect();
    companies.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let [a, b, c] = [0, 1, 2].map(|i| companies[i].0.clone());
    let receiver = Receiver::start(&["/b"]).await;
    let operator = api.key("operator", &[Scope::Admin]).await;
    let mut tenant_keys = BTreeMap::new();
    for (name, path) in [(&a, "/a"), (&b, "/b"), (&c, "/c")] {
        tenant_keys.insert(
            name.clone(),
            api.key(name, &[Scope::RequestsWrite, Scope::RequestsRead])
                .await,
        );
        api.set_webhook(name, &format!("{}{path}", receiver.base))
            .await;
    }

    // Open: two of the three tenants, the accounts and chat stores, notify at once.
    let detected_at = Utc::now() - chrono::Duration::hours(2);
    let (status, opened) = api
        .post(
            &operator,
            "/v1/incidents",
            &json!({
                "detected_at": detected_at,
                "description": "A support agent's laptop with a database export was stolen.",
                "stores": ["accounts", "chat"],
                "data_categories": ["contact details", "support conversations"],
                "tenants": [a, b],
                "notify": true,
            }),
        )
        .await;
    assert_eq!(status, 201, "{opened}");
    let id = opened["id"].as_str().unwrap().to_owned();

    // Deadlines from detection.
    let detected = at(&opened["detected_at"]);
    assert_eq!(
        at(&opened["deadlines"]["tenants_due_at"]),
        detected + chrono::Duration::hours(24)
    );
    assert_eq!(
        at(&opened["deadlines"]["authority_due_at"]),
        detected + chrono::Duration::hours(72)
    );
    assert_eq!(opened["overdue"], false);

    // The estimates match the seeded data: per tenant from the accounts store, and the chat
    // store, which does not record the customer, as unattributed.
    assert_eq!(opened["tenants"].as_array().unwrap().len(), 2);
    assert_eq!(tenant(&opened, &a)["subjects"], expected[&a]);
    assert_eq!(tenant(&opened, &b)["subjects"], expected[&b]);
    let estimates = opened["estimates"].as_array().unwrap();
    let accounts = estimates.iter().find(|e| e["store"] == "accounts").unwrap();
    assert_eq!(accounts["answered"], true, "{accounts}");
    assert_eq!(accounts["attributed"], true, "{accounts}");
    assert_eq!(accounts["tenants"][&c], expected[&c], "{accounts}");
    let chat = estimates.iter().find(|e| e["store"] == "chat").unwrap();
    assert_eq!(chat["counted"], true, "{chat}");
    assert_eq!(chat["attributed"], false, "{chat}");
    assert_eq!(
        chat["unattributed"],
        chat_subjects(&bed.bed.stores.chat).await,
        "{chat}"
    );

    // Both affected tenants are notified (b after one failed attempt); c never is.
    let view = api
        .wait_for(&operator, &id, |v| {
            v["tenants"]
                .as_array()
                .unwrap()
                .iter()
                .all(|t| !t["notified_at"].is_null())
        })
        .await;
    let hits = receiver.hits();
    let paths: BTreeSet<&str> = hits.iter().map(|h| h.path.as_str()).collect();
    assert_eq!(paths, BTreeSet::from(["/a", "/b"]), "{hits:?}");
    for (name, path) in [(&a, "/a"), (&b, "/b")] {
        let secret = webhook_secret(&api.pool, name).await;
        let delivered = hits.iter().rfind(|h| h.path == path).unwrap();
        assert!(signed_by(delivered, &secret), "{delivered:?}");
        let payload: Value = serde_json::from_slice(&delivered.body).unwrap();
        assert_eq!(payload["event"], "incident.notification");
        assert_eq!(payload["incident_id"], id.as_str());
        assert_eq!(payload["tenant"], name.as_str());
        assert_eq!(payload["affected_subjects"], expected[name]);
        let summary = payload["summary"].as_str().unwrap();
        assert!(
            summary.contains(&format!("{} of your users", expected[name])),
            "{summary}"
        );
    }
    let attempts = |name: &str| -> Vec<Option<i64>> {
        tenant(&view, name)["notifications"][0]["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["status"].as_i64())
            .collect()
    };
    assert_eq!(attempts(&a), vec![Some(200)]);
    assert_eq!(attempts(&b), vec![Some(503), Some(200)]);
    assert_eq!(view["overdue"], false);

    // A tenant sees only itself and acknowledges; an unaffected tenant sees nothing.
    let (status, own) = api
        .get(&tenant_keys[&a], &format!("/v1/incidents/{id}"))
        .await;
    assert_eq!(status, 200, "{own}");
    assert_eq!(own["tenants"].as_array().unwrap().len(), 1);
    assert!(
        own["estimates"].is_null() && own["audit"].is_null(),
        "{own}"
    );
    assert!(own["summary"].as_str().unwrap().contains("acknowledge"));
    let (status, acked) = api
        .post(
            &tenant_keys[&a],
            &format!("/v1/incidents/{id}/acknowledge"),
            &json!({}),
        )
        .await;
    assert_eq!(status, 200, "{acked}");
    assert!(!tenant(&acked, &a)["acknowledged_at"].is_null());
    for path in [
        format!("/v1/incidents/{id}"),
        format!("/v1/incidents/{id}/acknowledge"),
    ] {
        let (status, body) = if path.ends_with("acknowledge") {
            api.post(&tenant_keys[&c], &path, &json!({})).await
        } else {
            api.get(&tenant_keys[&c], &path).await
        };
        assert_eq!(status, 404, "{path}: {body}");
    }
    let (_, listed) = api.get(&tenant_keys[&c], "/v1/incidents").await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 0, "{listed}");

    // Who was notified when and who acknowledged; then close; every step is in the chain.
    let (status, closed) = api
        .post(&operator, &format!("/v1/incidents/{id}/close"), &json!({}))
        .await;
    assert_eq!(status, 200, "{closed}");
    assert_eq!(closed["status"], "closed");
    assert!(!tenant(&closed, &a)["acknowledged_at"].is_null());
    assert!(tenant(&closed, &b)["acknowledged_at"].is_null());
    let kinds = audit_kinds(&closed);
    for kind in [
        "incident.opened",
        "incident.estimated",
        "incident.notification_queued",
        "incident.notified",
        "incident.acknowledged",
        "incident.closed",
    ] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} missing: {kinds:?}");
    }
    assert_eq!(
        kinds.iter().filter(|k| *k == "incident.notified").count(),
        2
    );
    chain_is_intact(&api.pool).await;

    api.stop().await.unwrap();
    exporter_stop.cancel();
    exporter_run.await.unwrap().unwrap();
    drop(receiver);
    bed.bed.cleanup().await.unwrap();
}

#[tokio::test]
async fn an_incident_lists_as_overdue_once_24_hours_pass_without_notification() {
    let services = Services::from_env();
    let ns = Namespace::create(&services).await.unwrap();
    let api = Api::start(&services, &ns, API_TEST_DATA_MAP).await.unwrap();
    let receiver = Receiver::start(&[]).await;
    let operator = api.key("operator", &[Scope::Admin]).await;
    let config = api.config.to_str().unwrap().to_owned();
    for name in ["acme", "globex"] {
        api.key(name, &[Scope::RequestsRead]).await;
        // As an operator would: the CLI sets where a tenant's notifications go.
        let url = format!("{}/{name}", receiver.base);
        let set = crate::support::run_binary(
            "lethe-api",
            &[
                "--config",
                &config,
                "tenants",
                "webhook-url",
                "--tenant",
                name,
                "--url",
                &url,
            ],
            &[],
        );
        assert!(
            set.status.success(),
            "{}",
            String::from_utf8_lossy(&set.stderr)
        );
    }
    let detected_at = api.clock.now();
    let (status, opened) = api
        .post(
            &operator,
            "/v1/incidents",
            &json!({
                "detected_at": detected_at,
                "description": "Misconfigured bucket policy exposed message attachments.",
                "stores": ["files"],
                "data_categories": ["attachments"],
                "tenants": ["acme", "globex"],
            }),
        )
        .await;
    assert_eq!(status, 201, "{opened}");
    let id = opened["id"].as_str().unwrap().to_owned();
    // No exporter runs here: the store's estimate says it got no answer.
    let files = &opened["estimates"][0];
    assert_eq!(files["answered"], false, "{files}");
    assert!(files["error"].as_str().is_some(), "{files}");
    let overdue_ids = |list: &Value| -> Vec<String> {
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let (_, list) = api.get(&operator, "/v1/incidents?overdue=true").await;
    assert!(overdue_ids(&list).is_empty(), "{list}");
    api.wait_for_metric(r#"lethe_incidents_overdue{deadline="tenants"} 0"#)
        .await;

    // 25 hours later, nobody notified: overdue in the listing, the view and the gauge.
    api.clock.advance(chrono::Duration::hours(25));
    let (_, list) = api.get(&operator, "/v1/incidents?overdue=true").await;
    assert_eq!(overdue_ids(&list), vec![id.clone()], "{list}");
    assert_eq!(list["items"][0]["deadlines"]["tenants_overdue"], true);
    assert_eq!(list["items"][0]["deadlines"]["authority_overdue"], false);
    api.wait_for_metric(r#"lethe_incidents_overdue{deadline="tenants"} 1"#)
        .await;

    // Notified late is still notified: no longer overdue for the tenants.
    let (status, notified) = api
        .post(&operator, &format!("/v1/incidents/{id}/notify"), &json!({}))
        .await;
    assert_eq!(status, 200, "{notified}");
    let outcomes: Vec<&str> = notified["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, vec!["queued", "queued"]);
    let (_, again) = api
        .post(&operator, &format!("/v1/incidents/{id}/notify"), &json!({}))
        .await;
    assert_eq!(again["tenants"][0]["outcome"], "already_notified");
    api.wait_for(&operator, &id, |v| {
        v["tenants"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| !t["notified_at"].is_null())
    })
    .await;
    let (_, list) = api.get(&operator, "/v1/incidents?overdue=true").await;
    assert!(overdue_ids(&list).is_empty(), "{list}");

    // Past 72 hours the authority deadline is missed until its notification is recorded.
    api.clock.advance(chrono::Duration::hours(48));
    let (_, list) = api.get(&operator, "/v1/incidents?overdue=true").await;
    assert_eq!(
        list["items"][0]["deadlines"]["authority_overdue"], true,
        "{list}"
    );
    let (status, updated) = api
        .call(
            reqwest::Method::PATCH,
            &operator,
            &format!("/v1/incidents/{id}"),
            Some(&json!({
                "authority_notified_at": detected_at + chrono::Duration::hours(70),
                "contained_at": detected_at + chrono::Duration::hours(1),
                "measures": "Bucket policy fixed; access logs reviewed.",
            })),
        )
        .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["status"], "contained");
    assert_eq!(updated["overdue"], false, "{updated}");
    let (_, list) = api.get(&operator, "/v1/incidents?overdue=true").await;
    assert!(overdue_ids(&list).is_empty(), "{list}");
    assert!(
        audit_kinds(&updated)
            .iter()
            .any(|k| k == "incident.updated")
    );
    chain_is_intact(&api.pool).await;

    api.stop().await.unwrap();
    drop(receiver);
    ns.cleanup().await.unwrap();
}

#[tokio::test]
async fn incident_administration_rejects_keys_without_the_admin_scope() {
    let services = Services::from_env();
    let ns = Namespace::create(&services).await.unwrap();
    let api = Api::start(&services, &ns, API_TEST_DATA_MAP).await.unwrap();
    let operator = api.key("operator", &[Scope::Admin]).await;
    let tenant = api
        .key("acme", &[Scope::RequestsWrite, Scope::RequestsRead])
        .await;
    let body = json!({
        "detected_at": Utc::now(),
        "description": "Test incident.",
        "stores": ["accounts"],
        "data_categories": ["contact details"],
        "tenants": "all",
    });
    let (status, refused) = api.post(&tenant, "/v1/incidents", &body).await;
    assert_eq!(status, 403, "{refused}");
    assert_eq!(refused["code"], "missing_scope");
    let (status, opened) = api.post(&operator, "/v1/incidents", &body).await;
    assert_eq!(status, 201, "{opened}");
    assert_eq!(opened["all_tenants"], true);
    assert_eq!(opened["tenants"].as_array().unwrap().len(), 2, "{opened}");
    let id = opened["id"].as_str().unwrap();
    for path in ["estimate", "notify", "close"] {
        let (status, body) = api
            .post(&tenant, &format!("/v1/incidents/{id}/{path}"), &json!({}))
            .await;
        assert_eq!(status, 403, "{path}: {body}");
    }
    let (status, _) = api
        .call(
            reqwest::Method::PATCH,
            &tenant,
            &format!("/v1/incidents/{id}"),
            Some(&json!({ "cause": "x" })),
        )
        .await;
    assert_eq!(status, 403);
    // Unknown stores and tenants are refused, naming the field and not the value.
    let (status, problem) = api
        .post(
            &operator,
            "/v1/incidents",
            &json!({
                "detected_at": Utc::now(),
                "description": "Test incident.",
                "stores": ["accounts", "nowhere"],
                "data_categories": ["contact details"],
                "tenants": ["acme", "initech"],
            }),
        )
        .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["code"], "unknown_store");
    assert_eq!(problem["field"], "stores[1]");
    assert!(!problem["detail"].as_str().unwrap().contains("nowhere"));
    // Closing is refused while an affected tenant has not been told.
    let (status, problem) = api
        .post(&operator, &format!("/v1/incidents/{id}/close"), &json!({}))
        .await;
    assert_eq!(status, 409, "{problem}");
    assert_eq!(problem["code"], "tenants_not_notified");
    // The OpenAPI document describes the register.
    let document: Value = reqwest::get(format!("{}/openapi.json", api.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for path in [
        "/v1/incidents",
        "/v1/incidents/{id}",
        "/v1/incidents/{id}/estimate",
        "/v1/incidents/{id}/notify",
        "/v1/incidents/{id}/acknowledge",
        "/v1/incidents/{id}/close",
    ] {
        assert!(document["paths"][path].is_object(), "{path} missing");
    }
    assert!(document["paths"]["/v1/incidents/{id}"]["patch"].is_object());

    api.stop().await.unwrap();
    ns.cleanup().await.unwrap();
}
