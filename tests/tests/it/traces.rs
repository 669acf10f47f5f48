//! Traces: with `telemetry.otlp_endpoint` set, the real api and eraser export their spans over
//! OTLP/HTTP, and one request's spans (its HTTP call, the eraser's tasks, the coordinator's
//! steps) form one trace that continues the caller's `traceparent`.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use lethe_tests::Services;
use lethe_tests::e2e::{Daemon, Deployment, LeakScanner, Options};
use lethe_tests::otlp::{OtlpReceiver, ReceivedSpan};
use rand::RngCore as _;
use serde_json::json;

/// How long the request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the spans may take to arrive once the request completed (the daemons export every
/// 100 ms here).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(30);

/// The spans of one trace the test looks for.
struct Trace<'a> {
    http: &'a ReceivedSpan,
    tasks: Vec<&'a ReceivedSpan>,
    results: Vec<&'a ReceivedSpan>,
}

/// The request's trace, once every part of it has arrived: the HTTP span (a child of the
/// caller's span), the eraser's task spans, and one coordinator span per task.
fn request_trace<'a>(
    spans: &'a [ReceivedSpan],
    trace_id: &str,
    caller_span: &str,
) -> Result<Trace<'a>> {
    let in_trace = |service: &str, name: &str| -> Vec<&'a ReceivedSpan> {
        spans
            .iter()
            .filter(|s| s.trace_id == trace_id && s.service == service && s.name == name)
            .collect()
    };
    let http = *in_trace("lethe-api", "POST /v1/requests")
        .first()
        .context("no span of the api's HTTP handling in the caller's trace")?;
    ensure!(
        http.parent_span_id == caller_span,
        "the HTTP span's parent is {}, not the caller's span",
        http.parent_span_id
    );
    let tasks = in_trace("lethe-eraser", "task");
    ensure!(
        tasks
            .iter()
            .any(|t| t.attribute("task.kind") == Some("erase")),
        "no erase task span of the eraser in the trace yet"
    );
    let results = in_trace("lethe-api", "coordinator.result");
    ensure!(
        results.len() >= tasks.len(),
        "{} coordinator spans for {} task spans",
        results.len(),
        tasks.len()
    );
    // Each daemon exports in its own batches: a coordinator span can arrive before the eraser's
    // span of the task it continues. Wait until every parent is in.
    let task_ids: std::collections::BTreeSet<&str> =
        tasks.iter().map(|t| t.span_id.as_str()).collect();
    ensure!(
        results
            .iter()
            .all(|r| task_ids.contains(r.parent_span_id.as_str())),
        "a coordinator span whose task span has not arrived (or is not a child of a task span)"
    );
    Ok(Trace {
        http,
        tasks,
        results,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erasure_is_one_trace_from_the_callers_traceparent_through_the_eraser_and_the_coordinator()
-> Result<()> {
    // Arrange: a receiver, and an api and an eraser that export to it.
    let receiver = OtlpReceiver::start().await?;
    let mut deployment = Deployment::create(
        &Services::from_env(),
        Options {
            subjects: 3,
            ..Options::default()
        },
    )
    .await?;
    deployment.set_config(
        "telemetry",
        "otlp_endpoint",
        toml::Value::String(receiver.url()),
    )?;
    let export_often = [("OTEL_BSP_SCHEDULE_DELAY", "100")];
    deployment.start_with(Daemon::Api, &export_often).await?;
    deployment.start_with(Daemon::Eraser, &export_often).await?;
    let mut rng = rand::rng();
    let (mut trace_id, mut caller_span) = ([0u8; 16], [0u8; 8]);
    rng.fill_bytes(&mut trace_id);
    rng.fill_bytes(&mut caller_span);
    let (trace_id, caller_span) = (hex::encode(trace_id), hex::encode(caller_span));

    // Act: file an erasure as a traced caller would, and wait for it.
    let email = deployment.subject(1).identities.email;
    let response = deployment
        .http()
        .post(format!("{}/v1/requests", deployment.api()?))
        .bearer_auth(&deployment.key)
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .json(&json!({"kind": "erasure", "subject": {"email": email}}))
        .send()
        .await?;
    ensure!(
        response.status().as_u16() == 202,
        "POST /v1/requests: {}",
        response.status()
    );
    let answer: serde_json::Value = response.json().await?;
    let id = answer["id"].as_str().context("the answer has no id")?;
    deployment.wait_completed(id, REQUEST_TIMEOUT).await?;

    // Assert: the HTTP span, the eraser's tasks and the coordinator's steps form one trace,
    // each part a child of the one that caused it.
    let spans = receiver
        .wait_for(EXPORT_TIMEOUT, |spans| {
            request_trace(spans, &trace_id, &caller_span).map(|_| spans.to_vec())
        })
        .await?;
    let trace = request_trace(&spans, &trace_id, &caller_span)?;
    ensure!(
        trace.http.attribute("http.route") == Some("/v1/requests")
            && trace.http.attribute("http.response.status_code") == Some("202"),
        "the HTTP span: {:?}",
        trace.http.attributes
    );
    let steps: BTreeSet<&str> = spans
        .iter()
        .filter(|s| s.trace_id == trace_id && s.name == "coordinator.apply")
        .map(|s| s.span_id.as_str())
        .collect();
    for task in &trace.tasks {
        // The first phase's tasks were queued by the HTTP call, the later ones by a step of
        // the coordinator.
        ensure!(
            task.parent_span_id == trace.http.span_id
                || steps.contains(task.parent_span_id.as_str()),
            "task span {:?} has a parent outside the request's trace",
            task.attributes
        );
    }
    ensure!(
        trace
            .tasks
            .iter()
            .any(|t| t.parent_span_id == trace.http.span_id),
        "no task span is a child of the HTTP span"
    );
    let task_spans: BTreeSet<&str> = trace.tasks.iter().map(|t| t.span_id.as_str()).collect();
    for result in &trace.results {
        ensure!(
            task_spans.contains(result.parent_span_id.as_str()),
            "a coordinator span is not a child of a task span"
        );
    }

    // Nothing personal in what was exported.
    let scanner = LeakScanner::new(&deployment.subjects());
    let exported: String = spans
        .iter()
        .map(ReceivedSpan::text)
        .collect::<Vec<_>>()
        .join("\n");
    let leaks = scanner.scan(Path::new("exported spans"), &exported);
    ensure!(
        leaks.is_empty(),
        "identifiers in the exported spans:\n{}",
        leaks
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
    deployment.assert_logs_hold_no_identifier()?;
    deployment.cleanup().await
}
