//! The requests API and the coordinator against a real PostgreSQL and NATS, with a test driver
//! answering tasks in place of the workers.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Months, Utc};
use futures::StreamExt;
use lethe_api::keys::Scope;
use lethe_common::messages::{TaskKind, TaskOutcome, TaskReport, TaskResult};
use lethe_common::worker::TaskError;
use lethe_tests::Services;
use lethe_tests::api::{ApiUnderTest, Driver, default_answer, run_driver};
use serde_json::{Value, json};

fn erasure(email: &str) -> Value {
    json!({ "kind": "erasure", "subject": { "email": email } })
}

fn tasks_of(view: &Value) -> Vec<(String, String, String)> {
    view["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["task"].as_str().unwrap().to_owned(),
                t["store"].as_str().unwrap().to_owned(),
                t["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn an_erasure_by_email_resolves_erases_dependents_then_the_provider_and_completes() {
    let services = Services::from_env();
    let api = ApiUnderTest::start(&services).await.unwrap();
    let driver = Arc::new(Driver::well_behaved());
    let (stop, running) = run_driver(&services.nats_url, &api.names(), driver.clone())
        .await
        .unwrap();
    let key = api.admin_key("acme").await.unwrap();

    let (status, accepted) = api
        .post(&key, "/v1/requests", &erasure("ada@example.com"))
        .await
        .unwrap();
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["id"].as_str().unwrap().to_owned();
    let received: DateTime<Utc> = accepted["received_at"].as_str().unwrap().parse().unwrap();
    let due: DateTime<Utc> = accepted["due_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(due, received.checked_add_months(Months::new(1)).unwrap());
    let view = api.wait_until_finished(&key, &id).await.unwrap();

    assert_eq!(view["status"], "completed", "{view}");
    let mut tasks = tasks_of(&view);
    tasks.sort();
    assert_eq!(
        tasks,
        vec![
            ("erase".into(), "accounts".into(), "done".into()),
            ("erase".into(), "chat".into(), "done".into()),
            ("erase".into(), "files".into(), "done".into()),
            ("resolve".into(), "accounts".into(), "done".into()),
        ]
    );
    let seen = driver.seen();
    let position = |kind: TaskKind, store: &str| {
        seen.iter()
            .position(|t| t.task == kind && t.store.as_ref().is_some_and(|s| s.as_str() == store))
            .unwrap()
    };
    assert!(position(TaskKind::Resolve, "accounts") < position(TaskKind::Erase, "chat"));
    assert!(
        position(TaskKind::Erase, "chat") < position(TaskKind::Erase, "accounts"),
        "the provider is erased last"
    );
    assert!(position(TaskKind::Erase, "files") < position(TaskKind::Erase, "accounts"));
    let chat_task = &seen[position(TaskKind::Erase, "chat")];
    assert_eq!(
        chat_task.identities["user_id"],
        vec!["42"],
        "derived identities reach dependent stores"
    );
    let erasures: i64 =
        sqlx::query_scalar("SELECT count(*) FROM erasure_log WHERE request_id = $1::uuid")
            .bind(&id)
            .fetch_one(&api.pool)
            .await
            .unwrap();
    assert_eq!(erasures, 1);

    let (status, receipt) = api
        .get(&key, &format!("/v1/requests/{id}/receipt"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{receipt}");
    assert_eq!(receipt["receipt"]["stores"].as_array().unwrap().len(), 3);
    assert!(
        receipt["receipt"]["stores"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["remaining"] == 0)
    );
    let (_, public) = api.get(&key, "/v1/receipt-key").await.unwrap();
    assert_eq!(public["key_id"], receipt["key_id"]);

    stop.cancel();
    running.await.unwrap();
    api.stop().await.unwrap();
}

#[tokio::test]
async fn every_kind_of_request_runs_to_completion_with_the_tasks_it_needs() {
    let services = Services::from_env();
    let api = ApiUnderTest::start(&services).await.unwrap();
    let driver = Arc::new(Driver::well_behaved());
    let (stop, running) = run_driver(&services.nats_url, &api.names(), driver.clone())
        .await
        .unwrap();
    let key = api.admin_key("acme").await.unwrap();
    let cases = [
        (
            json!({"kind": "access", "subject": {"user_id": "7"}}),
            vec![
                "assemble:all",
                "collect:accounts",
                "collect:chat",
                "collect:files",
            ],
        ),
        (
            json!({"kind": "portability", "subject": {"user_id": 7}}),
            vec![
                "assemble:all",
                "collect:accounts",
                "collect:chat",
                "collect:files",
            ],
        ),
        (
            json!({"kind": "rectification", "subject": {"email": "b@example.org"}, "changes": {"first_name": "Bea"}}),
            vec!["rectify:accounts", "resolve:accounts"],
        ),
        (
            json!({"kind": "restriction", "subject": {"user_id": "7"}}),
            vec!["restrict:accounts"],
        ),
        (
            json!({"kind": "lift_restriction", "subject": {"user_id": "7"}}),
            vec!["lift_restriction:accounts"],
        ),
        (
            json!({"kind": "objection", "subject": {"user_id": "7"}}),
            vec!["object:accounts"],
        ),
        (
            json!({"kind": "lift_objection", "subject": {"user_id": "7"}}),
            vec!["lift_objection:accounts"],
        ),
    ];
    for (body, expected) in cases {
        let (status, accepted) = api.post(&key, "/v1/requests", &body).await.unwrap();
        assert_eq!(status, 202, "{body}: {accepted}");
        let view = api
            .wait_until_finished(&key, accepted["id"].as_str().unwrap())
            .await
            .unwrap();
        assert_eq!(view["status"], "completed", "{body}: {view}");
        let mut tasks: Vec<String> = tasks_of(&view)
            .into_iter()
            .map(|(task, store, _)| format!("{task}:{store}"))
            .collect();
        tasks.sort();
        assert_eq!(tasks, expected, "{body}");
    }
    let rectify = driver
        .seen()
        .into_iter()
        .find(|t| t.task == TaskKind::Rectify)
        .unwrap();
    assert_eq!(rectify.params["changes"]["first_name"], "Bea");
    stop.cancel();
    running.await.unwrap();
    api.stop().await.unwrap();
}

#[tokio::test]
async fn a_failing_store_fails_the_request_with_its_reason_and_stops_later_phases() {
    let services = Services::from_env();
    let api = ApiUnderTest::start(&services).await.unwrap();
    let driver = Arc::new(Driver::answering(Box::new(|task| {
        if task.task == TaskKind::Erase && task.store.as_ref().is_some_and(|s| s.as_str() == "chat")
        {
            Err(TaskError::Permanent {
                code: "schema_mismatch",
                reason: "table messages has no column author_id".into(),
            })
        } else {
            Ok(default_answer(task))
        }
    })));
    let (stop, running) = run_driver(&services.nats_url, &api.names(), driver.clone())
        .await
        .unwrap();
    let key = api.admin_key("acme").await.unwrap();

    let (_, accepted) = api
        .post(&key, "/v1/requests", &erasure("c@example.net"))
        .await
        .unwrap();
    let view = api
        .wait_until_finished(&key, accepted["id"].as_str().unwrap())
        .await
        .unwrap();

    assert_eq!(view["status"], "failed");
    assert!(
        view["failure"]
            .as_str()
            .unwrap()
            .contains("schema_mismatch"),
        "{view}"
    );
    assert!(
        !driver
            .seen()
            .iter()
            .any(|t| t.task == TaskKind::Erase && t.store.as_ref().unwrap().as_str() == "accounts"),
        "the provider must not be erased when a dependent store failed"
    );
    stop.cancel();
    running.await.unwrap();
    api.stop().await.unwrap();
}

#[tokio::test]
async fn a_retried_post_with_the_same_idempotency_key_returns_the_first_answer() {
    let services = Services::from_env();
    let api = ApiUnderTest::start(&services).await.unwrap();
    let key = api.admin_key("acme").await.unwrap();
    let client = reqwest::Client::new();
    let post = |body: Value, idem: &'static str| {
        client
            .post(format!("{}/v1/requests", api.base))
            .bearer_auth(&key)
            .header("Idempotency-Key", idem)
            .json(&body)
            .send()
    };

    let first = post(erasure("d@example.com"), "k-1").await.unwrap();
    assert_eq!(first.status().as_u16(), 202);
    let first: Value = first.json().await.unwrap();
    let again = post(erasure("d@example.com"), "k-1").await.unwrap();
    assert_eq!(again.status().as_u16(), 200);
    let again: Value = again.json().await.unwrap();
    let other_body = post(erasure("e@example.com"), "k-1").await.unwrap();

    assert_eq!(first["id"], again["id"]);
    assert_eq!(first["received_at"], again["received_at"]);
    assert_eq!(other_body.status().as_u16(), 409);
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM request")
        .fetch_one(&api.pool)
        .await
        .unwrap();
    assert_eq!(count, 1);
    api.stop().await.unwrap();
}

#[tokio::test]
async fn every_class_of_bad_input_gets_a_problem_document_and_nothing_is_stored() {
    let services = Services::from_env();
    let api = ApiUnderTest::start(&services).await.unwrap();
    let key = api.admin_key("acme").await.unwrap();
    let client = reqwest::Client::new();
    let send = |body: String, content_type: &'static str| {
        client
            .post(format!("{}/v1/requests", api.base))
            .bearer_auth(&key)
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let secret_email = "never-echo-this@example.com";
    let cases: Vec<(String, &str, u16, &str, Option<&str>)> = vec![
        (
            "{\"kind\": \"erasure\", ".into(),
            "application/json",
            400,
            "malformed_json",
            None,
        ),
        (
            json!({"kind": "erasure", "subject": {"email": secret_email}, "colour": 1}).to_string(),
            "application/json",
            422,
            "unknown_field",
            Some("colour"),
        ),
        (
            json!({"kind": "erasure", "subject": {"passport": "X1"}}).to_string(),
            "application/json",
            422,
            "unknown_identity",
            Some("subject.passport"),
        ),
        (
            json!({"kind": "erasure", "subject": {"email": "not an email"}}).to_string(),
            "application/json",
            422,
            "invalid_email",
            Some("subject.email"),
        ),
        (
            json!({"kind": "erasure", "subject": {}}).to_string(),
            "application/json",
            422,
            "empty_subject",
            Some("subject"),
        ),
        (
            json!({"kind": secret_email, "subject": {"user_id": "1"}}).to_string(),
            "application/json",
            422,
            "invalid_value",
            Some("kind"),
        ),
        (
            json!({"kind": "erasure", "subject": {"user_id": "1"}, "reason": "x".repeat(200_000)})
                .to_string(),
            "application/json",
            413,
            "body_too_large",
            None,
        ),
        (
            erasure(secret_email).to_string(),
            "text/plain",
            415,
            "unsupported_media_type",
            None,
        ),
    ];
    for (body, content_type, status, code, field) in cases {
        let response = send(body.clone(), content_type).await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{code}");
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "application/problem+json"
        );
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["code"], code);
        assert_eq!(problem["field"].as_str(), field, "{problem}");
        assert!(
            !problem.to_string().contains(secret_email),
            "a problem echoed a value: {problem}"
        );
    }
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM request")
        .fetch_one(&api.pool)
        .await
        .unwrap();
    assert_eq!(stored, 0);
    api.stop().await.unwrap();
}

#[tokio::test]
async fn keys_can_do_only_what_their_scopes_allow() {
    let services = Services::from_env();
    let api = ApiUnderTest::start(&services).await.unwrap();
    let writer = api.key("acme", &[Scope::RequestsWrite]).await.unwrap();
    let reader = api.key("acme", &[Scope::RequestsRead]).await.unwrap();
    let admin = api.admin_key("acme").await.unwrap();

    let (status, _) = api
        .post(&reader, "/v1/requests", &erasure("f@example.com"))
        .await
        .unwrap();
    assert_eq!(status, 403);
    let (status, accepted) = api
        .post(&writer, "/v1/requests", &erasure("f@example.com"))
        .await
        .unwrap();
    assert_eq!(status, 202);
    let id = accepted["id"].as_str().unwrap();
    let (status, _) = api
        .get(&writer, &format!("/v1/requests/{id}"))
        .await
        .unwrap();
    assert_eq!(status, 403);
    let (status, _) = api
        .get(&reader, &format!("/v1/requests/{id}"))
        .await
        .unwrap();
    assert_eq!(status, 200);
    let extend = json!({"months": 2, "reason": "many requests this month"});
    let (status, _) = api
        .post(&writer, &format!("/v1/requests/{id}/extend"), &extend)
        .await
        .unwrap();
    assert_eq!(status, 403);
    let (status, extended) = api
        .post(&admin, &format!("/v1/requests/{id}/extend"), &extend)
        .await
        .unwrap();
    assert_eq!(status, 200, "{extended}");
    let due: DateTime<Utc> = extended["due_at"].as_str().unwrap().parse().unwrap();
    let first_due: DateTime<Utc> = accepted["due_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(due, first_due.checked_add_months(Months::new(2)).unwrap());
    let (status, _) = api
        .post(&admin, &format!("/v1/requests/{id}/extend"), &extend)
        .await
        .unwrap();
    assert_eq!(status, 409, "extended only once");
    let (status, _) = api
        .get("lethe_000000000000_nonsense", "/v1/requests")
        .await
        .unwrap();
    assert_eq!(status, 401);
    api.stop().await.unwrap();
}

#[tokio::test]
async fn another_tenants_request_is_not_found_on_every_endpoint() {
    let services = Services::from_env();
    let api = ApiUnderTest::start(&services).await.unwrap();
    let owner = api.admin_key("acme").await.unwrap();
    let stranger = api.admin_key("globex").await.unwrap();
    let (_, accepted) = api
        .post(&owner, "/v1/requests", &erasure("g@example.com"))
        .await
        .unwrap();
    let id = accepted["id"].as_str().unwrap();

    for path in [
        format!("/v1/requests/{id}"),
        format!("/v1/requests/{id}/receipt"),
        format!("/v1/requests/{id}/export"),
    ] {
        let (status, body) = api.get(&stranger, &path).await.unwrap();
        assert_eq!(status, 404, "GET {path}: {body}");
    }
    for (path, body) in [
        (format!("/v1/requests/{id}/cancel"), json!({})),
        (
            format!("/v1/requests/{id}/extend"),
            json!({"months": 1, "reason": "r"}),
        ),
    ] {
        let (status, _) = api.post(&stranger, &path, &body).await.unwrap();
        assert_eq!(status, 404, "POST {path}");
    }
    let (_, page) = api.get(&stranger, "/v1/requests").await.unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 0);
    let (_, page) = api.get(&owner, "/v1/requests").await.unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    let (status, _) = api
        .post(&owner, &format!("/v1/requests/{id}/cancel"), &json!({}))
        .await
        .unwrap();
    assert_eq!(status, 200, "the owner can cancel");
    api.stop().await.unwrap();
}

#[tokio::test]
async fn listing_filters_and_pages_with_a_cursor() {
    let services = Services::from_env();
    let api = ApiUnderTest::start(&services).await.unwrap();
    let key = api.admin_key("acme").await.unwrap();
    for i in 0..5 {
        let kind = if i % 2 == 0 { "erasure" } else { "access" };
        let body = json!({"kind": kind, "subject": {"user_id": i.to_string()}});
        assert_eq!(api.post(&key, "/v1/requests", &body).await.unwrap().0, 202);
    }
    sqlx::query("UPDATE request SET due_at = now() - interval '1 day' WHERE kind = 'access'")
        .execute(&api.pool)
        .await
        .unwrap();

    let (_, first) = api.get(&key, "/v1/requests?limit=2").await.unwrap();
    let cursor = first["next_cursor"].as_str().unwrap();
    let (_, second) = api
        .get(&key, &format!("/v1/requests?limit=2&cursor={cursor}"))
        .await
        .unwrap();
    let (_, third) = api
        .get(
            &key,
            &format!(
                "/v1/requests?limit=2&cursor={}",
                second["next_cursor"].as_str().unwrap()
            ),
        )
        .await
        .unwrap();
    let (_, erasures) = api.get(&key, "/v1/requests?kind=erasure").await.unwrap();
    let (_, overdue) = api.get(&key, "/v1/requests?overdue=true").await.unwrap();
    let (status, bad) = api.get(&key, "/v1/requests?kind=nonsense").await.unwrap();

    let ids = |page: &Value| {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let mut all = [ids(&first), ids(&second), ids(&third)].concat();
    assert_eq!(all.len(), 5);
    assert!(third["next_cursor"].is_null());
    all.dedup();
    assert_eq!(all.len(), 5, "pages do not overlap");
    assert_eq!(ids(&erasures).len(), 3);
    assert_eq!(ids(&overdue).len(), 2);
    assert!(
        overdue["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["overdue"] == true)
    );
    assert_eq!(status, 422, "{bad}");
    api.stop().await.unwrap();
}

#[tokio::test]
async fn a_result_delivered_twice_changes_nothing() {
    let services = Services::from_env();
    let api = ApiUnderTest::start(&services).await.unwrap();
    let key = api.admin_key("acme").await.unwrap();
    let (_, accepted) = api
        .post(
            &key,
            "/v1/requests",
            &json!({"kind": "restriction", "subject": {"user_id": "9"}}),
        )
        .await
        .unwrap();
    let id: lethe_common::ids::RequestId = accepted["id"].as_str().unwrap().parse().unwrap();
    let coordinator = lethe_api::coordinator::Coordinator::new(
        api.pool.clone(),
        Arc::new(lethe_api::plan::Planner::new(
            lethe_common::datamap::DataMap::parse(lethe_tests::api::API_TEST_DATA_MAP).unwrap(),
        )),
        api.names(),
        lethe_api::outbox::OutboxSignal::default(),
    );
    let result = TaskResult {
        request_id: id,
        task: TaskKind::Restrict,
        store: Some(lethe_common::ids::StoreName::parse("accounts").unwrap()),
        generation: 0,
        outcome: TaskOutcome::Done(TaskReport {
            counts: [("users".to_owned(), 1)].into(),
            ..Default::default()
        }),
        deliveries: 1,
        finished_at: Utc::now(),
    };

    let first = coordinator.apply(&result).await.unwrap();
    let audit_after_first: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_event")
        .fetch_one(&api.pool)
        .await
        .unwrap();
    let second = coordinator.apply(&result).await.unwrap();
    let audit_after_second: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_event")
        .fetch_one(&api.pool)
        .await
        .unwrap();

    assert_eq!(first, lethe_api::coordinator::Applied::Recorded);
    assert_eq!(second, lethe_api::coordinator::Applied::Ignored);
    assert_eq!(audit_after_first, audit_after_second);
    let (_, view) = api.get(&key, &format!("/v1/requests/{id}")).await.unwrap();
    assert_eq!(view["status"], "completed");
    let completions = view["audit"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "request.completed")
        .count();
    assert_eq!(completions, 1);
    api.stop().await.unwrap();
}

#[tokio::test]
async fn a_request_accepted_while_nats_is_down_reaches_nats_when_it_returns() {
    let services = Services::from_env();
    let mut server = lethe_tests::NatsServer::start().await.unwrap();
    let api = ApiUnderTest::start_with_nats(&services, &server.url())
        .await
        .unwrap();
    let key = api.admin_key("acme").await.unwrap();

    server.stop().unwrap();
    let (status, accepted) = api
        .post(
            &key,
            "/v1/requests",
            &json!({"kind": "restriction", "subject": {"user_id": "3"}}),
        )
        .await
        .unwrap();
    assert_eq!(status, 202, "intake does not depend on NATS: {accepted}");
    let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&api.pool)
        .await
        .unwrap();
    assert!(queued >= 1, "the task waits in the outbox");
    server.restart().await.unwrap();

    let client = async_nats::connect(server.url()).await.unwrap();
    let jetstream = async_nats::jetstream::new(client);
    let names = api.names();
    let stream = jetstream.get_stream(names.tasks_stream()).await.unwrap();
    let consumer: async_nats::jetstream::consumer::PullConsumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            filter_subjects: names.task_subjects(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let message = tokio::time::timeout(Duration::from_secs(60), messages.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let task: lethe_common::messages::TaskMessage =
        serde_json::from_slice(&message.payload).unwrap();
    assert_eq!(
        task.request_id.to_string(),
        accepted["id"].as_str().unwrap()
    );
    assert_eq!(task.task, TaskKind::Restrict);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(&api.pool)
            .await
            .unwrap();
        if left == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the outbox was not emptied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let info = jetstream
        .get_stream(names.tasks_stream())
        .await
        .unwrap()
        .cached_info()
        .state
        .messages;
    assert_eq!(info, 1, "published once");
    api.stop().await.unwrap();
}

#[tokio::test]
async fn tampering_with_one_audit_event_is_detected_by_the_verify_command() {
    let services = Services::from_env();
    let api = ApiUnderTest::start(&services).await.unwrap();
    let driver = Arc::new(Driver::well_behaved());
    let (stop, running) = run_driver(&services.nats_url, &api.names(), driver)
        .await
        .unwrap();
    let key = api.admin_key("acme").await.unwrap();
    let (_, accepted) = api
        .post(&key, "/v1/requests", &erasure("h@example.com"))
        .await
        .unwrap();
    api.wait_until_finished(&key, accepted["id"].as_str().unwrap())
        .await
        .unwrap();
    stop.cancel();
    running.await.unwrap();
    let config = api.config_path.to_str().unwrap().to_owned();

    let intact =
        crate::support::run_binary("lethe-api", &["--config", &config, "audit", "verify"], &[]);
    assert!(
        intact.status.success(),
        "{}",
        String::from_utf8_lossy(&intact.stderr)
    );
    assert!(String::from_utf8_lossy(&intact.stdout).contains("intact"));
    // The sealer gives events their place in the chain as it goes: wait for the second.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while sqlx::query_scalar::<_, i64>("SELECT count(*) FROM audit_event WHERE chain_pos = 2")
        .fetch_one(&api.pool)
        .await
        .unwrap()
        == 0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second event was never sealed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let tampered =
        sqlx::query("UPDATE audit_event SET detail = '{\"tasks\": 0}' WHERE chain_pos = 2")
            .execute(&api.pool)
            .await
            .unwrap();
    assert_eq!(tampered.rows_affected(), 1);
    let broken =
        crate::support::run_binary("lethe-api", &["--config", &config, "audit", "verify"], &[]);

    assert!(!broken.status.success());
    let stderr = String::from_utf8_lossy(&broken.stderr);
    assert!(stderr.contains("broken at chain position 2"), "{stderr}");
    api.stop().await.unwrap();
}

#[tokio::test]
async fn events_and_metrics_never_carry_an_identity() {
    let services = Services::from_env();
    let api = ApiUnderTest::start(&services).await.unwrap();
    let driver = Arc::new(Driver::well_behaved());
    let (stop, running) = run_driver(&services.nats_url, &api.names(), driver)
        .await
        .unwrap();
    let key = api.admin_key("acme").await.unwrap();
    let email = "identity-canary-4711@example.org";
    let (_, accepted) = api
        .post(&key, "/v1/requests", &erasure(email))
        .await
        .unwrap();
    api.wait_until_finished(&key, accepted["id"].as_str().unwrap())
        .await
        .unwrap();
    stop.cancel();
    running.await.unwrap();

    let client = async_nats::connect(&services.nats_url).await.unwrap();
    let jetstream = async_nats::jetstream::new(client);
    let names = api.names();
    let stream = jetstream.get_stream(names.events_stream()).await.unwrap();
    let consumer: async_nats::jetstream::consumer::PullConsumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config::default())
        .await
        .unwrap();
    let mut batch = consumer.fetch().max_messages(100).messages().await.unwrap();
    let mut events = 0;
    while let Some(message) = batch.next().await {
        let message = message.unwrap();
        let text = String::from_utf8_lossy(&message.payload).to_string();
        assert!(
            !text.contains("identity-canary"),
            "event carries an identity: {text}"
        );
        assert!(
            !text.contains("\"42\""),
            "event carries a derived identity: {text}"
        );
        events += 1;
    }
    assert!(events >= 2, "received and completed events");
    let metrics = reqwest::get(format!("{}/metrics", api.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("lethe_requests_total"));
    assert!(!metrics.contains("identity-canary"));
    api.stop().await.unwrap();
}

#[tokio::test]
async fn the_openapi_document_describes_every_route() {
    let services = Services::from_env();
    let api = ApiUnderTest::start(&services).await.unwrap();
    let document: Value = reqwest::get(format!("{}/openapi.json", api.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for path in [
        "/v1/requests",
        "/v1/requests/{id}",
        "/v1/requests/{id}/cancel",
        "/v1/requests/{id}/extend",
        "/v1/requests/{id}/receipt",
        "/v1/receipt-key",
    ] {
        assert!(document["paths"][path].is_object(), "{path} missing");
    }
    assert!(document["components"]["schemas"]["NewRequest"].is_object());
    api.stop().await.unwrap();
}

#[tokio::test]
async fn a_ledger_status_this_version_does_not_know_is_answered_with_an_error_not_a_wrong_state() {
    let services = Services::from_env();
    let api = ApiUnderTest::start(&services).await.unwrap();
    let key = api.admin_key("acme").await.unwrap();
    let restriction = json!({"kind": "restriction", "subject": {"user_id": "9"}});
    let (_, first) = api.post(&key, "/v1/requests", &restriction).await.unwrap();
    let (_, second) = api.post(&key, "/v1/requests", &restriction).await.unwrap();
    let request_id = first["id"].as_str().unwrap().to_owned();
    let task_request_id = second["id"].as_str().unwrap().to_owned();
    // Statuses this version does not know, as a newer version sharing the ledger could write
    // them: the request's, and a task's of another request.
    for statement in [
        "ALTER TABLE request DROP CONSTRAINT request_status_check",
        "ALTER TABLE task DROP CONSTRAINT task_status_check",
    ] {
        sqlx::query(statement).execute(&api.pool).await.unwrap();
    }
    sqlx::query("UPDATE request SET status = 'archived' WHERE id = $1::uuid")
        .bind(&request_id)
        .execute(&api.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE task SET status = 'paused' WHERE request_id = $1::uuid")
        .bind(&task_request_id)
        .execute(&api.pool)
        .await
        .unwrap();

    let (shown, view) = api
        .get(&key, &format!("/v1/requests/{request_id}"))
        .await
        .unwrap();
    let (listed, page) = api.get(&key, "/v1/requests").await.unwrap();
    let (cancelled, answer) = api
        .post(
            &key,
            &format!("/v1/requests/{request_id}/cancel"),
            &json!({}),
        )
        .await
        .unwrap();
    let (task_shown, task_view) = api
        .get(&key, &format!("/v1/requests/{task_request_id}"))
        .await
        .unwrap();

    for (status, body) in [
        (shown, &view),
        (listed, &page),
        (cancelled, &answer),
        (task_shown, &task_view),
    ] {
        assert_eq!(status, 500, "{body}");
        assert_eq!(body["code"], "internal", "{body}");
        assert_eq!(
            body["status"], 500,
            "a problem document, not a request: {body}"
        );
    }
    let stored: String = sqlx::query_scalar("SELECT status FROM request WHERE id = $1::uuid")
        .bind(&request_id)
        .fetch_one(&api.pool)
        .await
        .unwrap();
    assert_eq!(stored, "archived", "the failed cancel changed nothing");
    api.stop().await.unwrap();
}

#[tokio::test]
async fn a_key_holding_a_scope_this_version_does_not_know_gets_an_error_not_fewer_rights() {
    let services = Services::from_env();
    let api = ApiUnderTest::start(&services).await.unwrap();
    let key = api.key("acme", &[Scope::RequestsRead]).await.unwrap();
    let (before, _) = api.get(&key, "/v1/requests").await.unwrap();
    sqlx::query("UPDATE api_key SET scopes = array_append(scopes, 'requests:purge')")
        .execute(&api.pool)
        .await
        .unwrap();

    let (after, body) = api.get(&key, "/v1/requests").await.unwrap();

    assert_eq!(before, 200);
    assert_eq!(after, 500, "{body}");
    assert_eq!(body["code"], "internal", "{body}");
    api.stop().await.unwrap();
}
