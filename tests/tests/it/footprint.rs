//! Lethe's own footprint: once retention has minimised the finished requests, the ledger keeps
//! no identifier of their subjects, no rectification value, no free-text reason, and no unkeyed
//! SHA-256 of any of them or of a request body (the idempotency fingerprint is keyed).

use std::sync::Arc;

use lethe_api::keys::Scope;
use lethe_common::messages::{Identities, TaskKind};
use lethe_tests::Services;
use lethe_tests::api::{ApiUnderTest, Driver, default_answer, run_driver};
use serde_json::json;
use sha2::{Digest as _, Sha256};

const EMAIL: &str = "footprint.canary.5521@example.org";
const PHONE: &str = "+44 20 7946 5521";
const DERIVED: &str = "footprint-user-5521";
const NEW_NAME: &str = "Footprintina-Canary";
const REASON: &str = "Asked by phone by Mrs Footprint-Reason-Canary";

#[tokio::test]
async fn footprint_after_minimisation_no_ledger_table_holds_an_identifier_a_rectified_value_a_reason_or_an_unkeyed_hash_of_one()
 {
    let services = Services::from_env();
    let api = ApiUnderTest::start(&services).await.unwrap();
    let key = api
        .key("acme", &[Scope::RequestsWrite, Scope::RequestsRead])
        .await
        .unwrap();
    // The resolve step derives our canary user id, so derived identities are covered too.
    let driver = Driver::answering(Box::new(|task| {
        let mut report = default_answer(task);
        if task.task == TaskKind::Resolve {
            report.derived = Identities::from([("user_id".to_owned(), vec![DERIVED.to_owned()])]);
        }
        Ok(report)
    }));
    let (stop, running) = run_driver(&services.nats_url, &api.names(), Arc::new(driver))
        .await
        .unwrap();

    // Arrange: an erasure, a rectification and an access request, each with an idempotency
    // key and a reason.
    let bodies = [
        json!({"kind": "erasure", "subject": {"email": EMAIL, "phone": PHONE}, "reason": REASON}),
        json!({"kind": "rectification", "subject": {"email": EMAIL},
               "changes": {"first_name": NEW_NAME}, "reason": REASON}),
        json!({"kind": "access", "subject": {"user_id": DERIVED}, "reason": REASON}),
    ];
    let client = reqwest::Client::new();
    let mut sent: Vec<Vec<u8>> = Vec::new();
    let mut ids = Vec::new();
    for (i, body) in bodies.iter().enumerate() {
        let bytes = serde_json::to_vec(body).unwrap();
        let response = client
            .post(format!("{}/v1/requests", api.base))
            .bearer_auth(&key)
            .header("Content-Type", "application/json")
            .header("Idempotency-Key", format!("footprint-{i}"))
            .body(bytes.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 202);
        let accepted: serde_json::Value = response.json().await.unwrap();
        ids.push(accepted["id"].as_str().unwrap().to_owned());
        sent.push(bytes);
    }
    for id in &ids {
        let view = api.wait_until_finished(&key, id).await.unwrap();
        assert_eq!(view["status"], "completed", "{view}");
    }
    stop.cancel();
    running.await.unwrap();

    // Act: minimise as retention does, as if the settling hour had passed and no backup
    // predated the erasure.
    let later = chrono::Utc::now() + chrono::Duration::hours(2);
    let batch = lethe_retention::catalog::minimisable(&api.pool, i64::MAX, later, 1000)
        .await
        .unwrap();
    assert_eq!(batch.len(), 3, "{batch:?}");
    lethe_retention::catalog::minimise(&api.pool, &batch, later)
        .await
        .unwrap();

    // Assert: every row of every table of the ledger, as JSON text (bytea as hex).
    let mut needles: Vec<(String, String)> = Vec::new();
    for value in [EMAIL, PHONE, DERIVED, NEW_NAME, REASON] {
        needles.push((value.to_owned(), value.to_lowercase()));
        needles.push((
            format!("unkeyed SHA-256 of {value}"),
            hex::encode(Sha256::digest(value.as_bytes())),
        ));
    }
    // Fragments too: an identifier reformatted (the phone's digits, the email's local part).
    needles.push(("phone digits".into(), "2079465521".into()));
    needles.push(("email local part".into(), "footprint.canary".into()));
    needles.push(("name".into(), "footprintina".into()));
    needles.push(("reason".into(), "footprint-reason".into()));
    for (i, body) in sent.iter().enumerate() {
        needles.push((
            format!("unkeyed SHA-256 of body {i}"),
            hex::encode(Sha256::digest(body)),
        ));
    }
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY 1",
    )
    .fetch_all(&api.pool)
    .await
    .unwrap();
    assert!(
        tables.iter().any(|t| t == "request") && tables.len() > 10,
        "{tables:?}"
    );
    let mut scanned_rows = 0i64;
    for table in &tables {
        let (rows, text): (i64, String) = sqlx::query_as(&format!(
            "SELECT count(*), coalesce(string_agg(row_to_json(t)::text, E'\\n'), '') FROM \"{table}\" t"
        ))
        .fetch_one(&api.pool)
        .await
        .unwrap();
        scanned_rows += rows;
        let text = text.to_lowercase();
        for (what, needle) in &needles {
            assert!(
                !text.contains(needle.as_str()),
                "table {table} holds the {what}"
            );
        }
    }
    // The scan saw the requests (and their keyed hashes, which stay).
    assert!(scanned_rows >= 3);
    let kept: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM request WHERE minimised_at IS NOT NULL AND identity_hash <> '' \
         AND idempotency_fingerprint IS NOT NULL AND params = '{}'::jsonb AND reason IS NULL",
    )
    .fetch_one(&api.pool)
    .await
    .unwrap();
    assert_eq!(kept, 3);

    // The keyed fingerprint still recognises a retry after minimisation.
    let response = client
        .post(format!("{}/v1/requests", api.base))
        .bearer_auth(&key)
        .header("Content-Type", "application/json")
        .header("Idempotency-Key", "footprint-0")
        .body(sent[0].clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    api.stop().await.unwrap();
}
