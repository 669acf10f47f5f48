//! The coordinator consumes results through the workers' loop: what it cannot decode or apply
//! ends in the dead-letter stream, visibly, and never stops it applying the results after it.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use lethe_common::ids::{RequestId, StoreName};
use lethe_common::messages::{TaskKind, TaskOutcome, TaskReport, TaskResult};
use lethe_common::nats::{Durable, Names, Publisher};
use lethe_tests::Services;
use lethe_tests::api::{ApiUnderTest, Driver, run_driver};
use serde_json::json;

/// A publisher in the api's namespace, as a worker would have.
async fn publisher(services: &Services, names: &Names) -> Publisher {
    let client = async_nats::connect(&services.nats_url).await.unwrap();
    Publisher::new(client, names.clone())
}

async fn stream_messages(publisher: &Publisher, stream: String) -> u64 {
    let mut stream = publisher.jetstream().get_stream(stream).await.unwrap();
    stream.info().await.unwrap().state.messages
}

/// Waits (bounded) until `stream` holds `count` messages: the loop acknowledges after it
/// stored the dead letter, so the two streams settle one after the other.
async fn wait_for_messages(publisher: &Publisher, stream: String, count: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let held = stream_messages(publisher, stream.clone()).await;
        if held == count {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{stream} holds {held} messages, not {count}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_undecodable_result_is_dead_lettered_and_the_coordinator_goes_on_applying_later_results()
{
    let services = Services::from_env();
    let api = ApiUnderTest::start(&services).await.unwrap();
    let names = api.names();
    let publisher = publisher(&services, &names).await;
    let poison = bytes::Bytes::from_static(b"{\"request_id\": 42");
    let chat = StoreName::parse("chat").unwrap();
    publisher
        .publish_raw(
            names.result_subject(TaskKind::Erase, Some(&chat)),
            "poison-1",
            None,
            poison.clone(),
        )
        .await
        .unwrap();
    let driver = Arc::new(Driver::well_behaved());
    let (stop, running) = run_driver(&services.nats_url, &names, driver)
        .await
        .unwrap();
    let key = api.admin_key("acme").await.unwrap();

    let (status, accepted) = api
        .post(
            &key,
            "/v1/requests",
            &json!({ "kind": "erasure", "subject": { "email": "ada@example.com" } }),
        )
        .await
        .unwrap();
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["id"].as_str().unwrap();
    let view = api.wait_until_finished(&key, id).await.unwrap();

    assert_eq!(view["status"], "completed", "later results applied: {view}");
    wait_for_messages(&publisher, names.dead_stream(), 1).await;
    let coordinator = names.durable_name(&Durable::Coordinator);
    let dead = publisher
        .jetstream()
        .get_stream(names.dead_stream())
        .await
        .unwrap();
    let kept = dead
        .get_last_raw_message_by_subject(&names.dead_subject(&coordinator))
        .await
        .unwrap();
    assert_eq!(kept.payload, poison, "kept as it came, for inspection");
    let events = publisher
        .jetstream()
        .get_stream(names.events_stream())
        .await
        .unwrap();
    let announced = events
        .get_last_raw_message_by_subject(&names.event_subject("task.dead_lettered"))
        .await
        .unwrap();
    let announced: serde_json::Value = serde_json::from_slice(&announced.payload).unwrap();
    assert!(
        announced["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("consumer {coordinator} ")),
        "{announced}"
    );
    // Nothing left on the results stream.
    wait_for_messages(&publisher, names.results_stream(), 0).await;
    stop.cancel();
    running.await.unwrap();
    api.stop().await.unwrap();
}

#[tokio::test]
async fn a_result_for_a_request_in_an_unknown_state_is_retried_then_dead_lettered_never_applied() {
    let services = Services::from_env();
    let api = ApiUnderTest::start(&services).await.unwrap();
    let names = api.names();
    let publisher = publisher(&services, &names).await;
    let key = api.admin_key("acme").await.unwrap();
    let (_, accepted) = api
        .post(
            &key,
            "/v1/requests",
            &json!({"kind": "restriction", "subject": {"user_id": "9"}}),
        )
        .await
        .unwrap();
    let id: RequestId = accepted["id"].as_str().unwrap().parse().unwrap();
    sqlx::query("ALTER TABLE request DROP CONSTRAINT request_status_check")
        .execute(&api.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE request SET status = 'archived' WHERE id = $1")
        .bind(id)
        .execute(&api.pool)
        .await
        .unwrap();

    publisher
        .result(
            &TaskResult {
                request_id: id,
                task: TaskKind::Restrict,
                store: Some(StoreName::parse("accounts").unwrap()),
                generation: 0,
                outcome: TaskOutcome::Done(TaskReport {
                    counts: [("users".to_owned(), 1)].into(),
                    ..Default::default()
                }),
                deliveries: 1,
                finished_at: Utc::now(),
            },
            None,
        )
        .await
        .unwrap();
    // The api's settings allow 3 deliveries, 1 s then 2 s apart.
    wait_for_messages(&publisher, names.dead_stream(), 1).await;

    let task: (String, i32) =
        sqlx::query_as("SELECT status, attempts FROM task WHERE request_id = $1")
            .bind(id)
            .fetch_one(&api.pool)
            .await
            .unwrap();
    assert_eq!(task, ("queued".to_owned(), 0), "the result was not applied");
    let request: String = sqlx::query_scalar("SELECT status FROM request WHERE id = $1")
        .bind(id)
        .fetch_one(&api.pool)
        .await
        .unwrap();
    assert_eq!(request, "archived", "nor read as some other state");
    // The result left the work queue, for the dead-letter stream only.
    wait_for_messages(&publisher, names.results_stream(), 0).await;
    api.stop().await.unwrap();
}
