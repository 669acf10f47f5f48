//! Every daemon starts, provisions what it owns, answers its operations endpoints, and stops
//! cleanly on SIGTERM.

use secrecy::SecretString;
use std::time::Duration;

use lethe_common::Settings;
use lethe_common::worker::RunMode;
use lethe_tests::{Namespace, Services};
use tokio_util::sync::CancellationToken;

use crate::support;

struct Deployment {
    ns: Namespace,
    settings: Settings,
    _dir: tempfile::TempDir,
}

/// A namespace with a ledger, a bucket and a data map of a Redis and an S3 store.
async fn deployment(services: &Services) -> Deployment {
    let ns = Namespace::create(services).await.unwrap();
    let ledger = ns.pg_database("ledger").await.unwrap();
    let bucket = ns.bucket("lethe").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let map = support::write_temp(
        &dir,
        "datamap.toml",
        &format!(
            "identities = [\"user_id\"]\n\
             [stores.sessions]\nkind = \"redis\"\nurl_env = \"LETHE_TEST_REDIS_URL\"\nkey_prefix = {:?}\nkeys = [\"session:{{user_id}}\"]\n\
             [stores.files]\nkind = \"s3\"\nbucket = {bucket:?}\nprefixes = [\"avatars/{{user_id}}/\"]\n",
            ns.redis_prefix(),
        ),
    );
    let text = support::settings_toml(services, &ns, Some(&ledger), Some(&bucket), Some(&map));
    Deployment {
        settings: support::settings(&text).with_credential(
            "LETHE_TEST_REDIS_URL",
            SecretString::from(services.redis_url.clone()),
        ),
        ns,
        _dir: dir,
    }
}

async fn get(address: std::net::SocketAddr, path: &str) -> (u16, serde_json::Value) {
    let response = reqwest::get(format!("http://{address}{path}"))
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

#[tokio::test]
async fn every_daemon_starts_answers_its_health_endpoints_and_stops_on_request() {
    let services = Services::from_env();
    let deployment = deployment(&services).await;
    let settings = &deployment.settings;
    let shutdown = CancellationToken::new();

    let api = lethe_api::App::build(settings).await.unwrap();
    let eraser = lethe_eraser::App::build(settings, RunMode::UntilShutdown)
        .await
        .unwrap();
    let exporter = lethe_exporter::App::build(settings, RunMode::UntilShutdown)
        .await
        .unwrap();
    let backup = lethe_backup::App::build(settings, RunMode::UntilShutdown)
        .await
        .unwrap();
    let retention = lethe_retention::App::build(settings, RunMode::UntilShutdown)
        .await
        .unwrap();
    let addresses = [
        ("api", api.local_addr().unwrap()),
        ("eraser", eraser.ops_addr().unwrap()),
        ("exporter", exporter.ops_addr().unwrap()),
        ("backup", backup.ops_addr().unwrap()),
        ("retention", retention.ops_addr().unwrap()),
    ];
    let running = [
        tokio::spawn(api.run(shutdown.clone())),
        tokio::spawn(eraser.run(shutdown.clone())),
        tokio::spawn(exporter.run(shutdown.clone())),
        tokio::spawn(backup.run(shutdown.clone())),
        tokio::spawn(retention.run(shutdown.clone())),
    ];

    for (daemon, address) in addresses {
        let (status, body) = get(address, "/healthz").await;
        assert_eq!(status, 200, "{daemon}");
        assert_eq!(body["daemon"], daemon);
        let (status, body) = get(address, "/readyz").await;
        assert_eq!(status, 200, "{daemon} not ready: {body}");
        let response = reqwest::get(format!("http://{address}/metrics"))
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "{daemon}");
    }

    shutdown.cancel();
    for handle in running {
        tokio::time::timeout(Duration::from_secs(20), handle)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
    let client = async_nats::connect(&services.nats_url).await.unwrap();
    let names = lethe_common::nats::Names::new(&deployment.ns.nats_prefix()).unwrap();
    lethe_common::nats::deprovision(&async_nats::jetstream::new(client), &names)
        .await
        .unwrap();
    deployment.ns.cleanup().await.unwrap();
}

#[tokio::test]
async fn readiness_reports_a_store_that_is_down_without_stopping_the_daemon() {
    let services = Services::from_env();
    let deployment = deployment(&services).await;
    let mut settings = deployment.settings.clone();
    let dir = tempfile::tempdir().unwrap();
    let map = support::write_temp(
        &dir,
        "datamap.toml",
        "identities = [\"user_id\"]\n[stores.sessions]\nkind = \"redis\"\nurl_env = \"LETHE_TEST_DOWN_REDIS_URL\"\nkeys = [\"session:{user_id}\"]\n",
    );
    settings = settings.with_credential(
        "LETHE_TEST_DOWN_REDIS_URL",
        SecretString::from("redis://127.0.0.1:1".to_owned()),
    );
    settings.data_map = Some(map);
    let shutdown = CancellationToken::new();

    let eraser = lethe_eraser::App::build(&settings, RunMode::UntilShutdown)
        .await
        .unwrap();
    let address = eraser.ops_addr().unwrap();
    let running = tokio::spawn(eraser.run(shutdown.clone()));

    let (status, body) = get(address, "/healthz").await;
    assert_eq!(status, 200);
    let (status, body_ready) = get(address, "/readyz").await;
    assert_eq!(status, 503, "{body} {body_ready}");
    assert_ne!(body_ready["checks"]["store.sessions"], "ok");

    shutdown.cancel();
    running.await.unwrap().unwrap();
    let client = async_nats::connect(&services.nats_url).await.unwrap();
    let names = lethe_common::nats::Names::new(&deployment.ns.nats_prefix()).unwrap();
    lethe_common::nats::deprovision(&async_nats::jetstream::new(client), &names)
        .await
        .unwrap();
    deployment.ns.cleanup().await.unwrap();
}

#[test]
fn a_daemon_process_exits_cleanly_on_sigterm() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let services = Services::from_env();
    let deployment = runtime.block_on(deployment(&services));
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ledger = deployment.settings.ledger.as_ref().map(|l| {
        use secrecy::ExposeSecret;
        l.url.expose_secret().to_owned()
    });
    let s3 = deployment.settings.s3.as_ref().unwrap();
    let text = support::settings_toml(
        &services,
        &deployment.ns,
        ledger.as_deref(),
        Some(&s3.bucket),
        deployment.settings.data_map.as_deref(),
    );
    let config = support::write_temp(&dir, "lethe.toml", &text);
    let mut child = std::process::Command::new(support::binary("lethe-backup"))
        .args(["--config", config.to_str().unwrap()])
        .env("LETHE__BACKUP__LISTEN", format!("127.0.0.1:{port}"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let healthy = runtime.block_on(async {
        for _ in 0..300 {
            if let Ok(response) = reqwest::get(format!("http://127.0.0.1:{port}/healthz")).await {
                return response.status().is_success();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    });
    assert!(healthy, "the backup daemon never answered /healthz");

    let pid = child.id().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "exit status {exit:?}");
    runtime.block_on(async {
        let client = async_nats::connect(&services.nats_url).await.unwrap();
        let names = lethe_common::nats::Names::new(&deployment.ns.nats_prefix()).unwrap();
        lethe_common::nats::deprovision(&async_nats::jetstream::new(client), &names)
            .await
            .unwrap();
    });
    runtime.block_on(deployment.ns.cleanup()).unwrap();
}
