//! No identifier of a data subject reaches a log line, even at debug level.

use std::sync::Arc;

use lethe_api::keys::{self, Scope};
use lethe_tests::api::{API_TEST_DATA_MAP, Driver, run_driver, settings_text};
use lethe_tests::process::DaemonProcess;
use lethe_tests::{Namespace, Services};
use serde_json::json;

#[tokio::test]
async fn the_api_logs_no_identity_of_the_requests_it_handles_even_at_debug_level() {
    let services = Services::from_env();
    let ns = Namespace::create(&services).await.unwrap();
    let ledger = ns.pg_database("ledger").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let map = dir.path().join("datamap.toml");
    std::fs::write(&map, API_TEST_DATA_MAP).unwrap();
    let config = dir.path().join("lethe.toml");
    let text = settings_text(&services, &ns, &ledger, &services.nats_url, &map)
        + "[telemetry]\nfilter = \"debug\"\nformat = \"json\"\n";
    std::fs::write(&config, text).unwrap();
    let api = DaemonProcess::start("lethe-api", &config, "LETHE__API__LISTEN", &[], dir.path())
        .await
        .unwrap();
    let names = lethe_common::nats::Names::new(&ns.nats_prefix()).unwrap();
    let (stop, running) = run_driver(&services.nats_url, &names, Arc::new(Driver::well_behaved()))
        .await
        .unwrap();
    let pool = sqlx::PgPool::connect(&ledger).await.unwrap();
    let tenant = keys::ensure_tenant(&pool, "acme").await.unwrap();
    let key = keys::create(
        &pool,
        tenant,
        "t",
        &[Scope::RequestsWrite, Scope::RequestsRead],
    )
    .await
    .unwrap()
    .secret;
    let client = reqwest::Client::new();
    let base = format!("http://{}", api.address);
    let canaries = [
        "log-canary-93@example.com",
        "+999 555 0199 42",
        "canary-user-7731",
    ];

    let bodies = [
        json!({"kind": "erasure", "subject": {"email": canaries[0], "phone": canaries[1]}}),
        json!({"kind": "access", "subject": {"user_id": canaries[2]}}),
        json!({"kind": "erasure", "subject": {"email": canaries[0]}, "surprise": canaries[2]}),
        json!({"kind": canaries[0], "subject": {"email": canaries[0]}}),
    ];
    let mut ids = Vec::new();
    for body in &bodies {
        let response = client
            .post(format!("{base}/v1/requests"))
            .bearer_auth(&key)
            .json(body)
            .send()
            .await
            .unwrap();
        if response.status().as_u16() == 202 {
            let accepted: serde_json::Value = response.json().await.unwrap();
            ids.push(accepted["id"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(ids.len(), 2);
    for id in &ids {
        loop {
            let view: serde_json::Value = client
                .get(format!("{base}/v1/requests/{id}"))
                .bearer_auth(&key)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if view["status"] == "completed" {
                break;
            }
            assert_ne!(view["status"], "failed", "{view}");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    stop.cancel();
    running.await.unwrap();
    let log_path = api.log.clone();
    assert!(api.stop().unwrap());

    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.lines().count() > 10,
        "the api logged at debug level:\n{log}"
    );
    for canary in canaries {
        assert!(!log.contains(canary), "`{canary}` appears in the api's log");
    }
    assert!(
        !log.contains("log-canary"),
        "part of an identifier appears in the api's log"
    );
    pool.close().await;
    let client = async_nats::connect(&services.nats_url).await.unwrap();
    lethe_common::nats::deprovision(&async_nats::jetstream::new(client), &names)
        .await
        .unwrap();
    ns.cleanup().await.unwrap();
}
