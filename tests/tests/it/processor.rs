//! Processors reached over HTTP (data-map kind `http`), against the sample payment processor
//! (`lethe-sample-processor`) run as a process of its own beside the five daemons: erasure,
//! export, refusals, rate limits, server errors and an outage. Each test ends with the privacy
//! scan of every log (the processor's own included), error paths included.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use chrono::{DateTime, Utc};
use lethe_tests::Services;
use lethe_tests::e2e::{Deployment, Options};
use lethe_tests::exporter_support::inspect_archive;
use lethe_tests::processor::Processor;
use lethe_tests::proxy::TcpProxy;
use serde_json::{Value, json};

/// How long one request may take end to end.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// A deployment whose data map has the `payments` processor, reached at the processor's own
/// address (or through a proxy when `proxied`), with the five daemons started.
async fn deployment_with_processor(
    proxied: bool,
) -> Result<(Deployment, Processor, Option<TcpProxy>)> {
    let mut deployment = Deployment::create(&Services::from_env(), Options::default()).await?;
    let processor = Processor::start(&deployment).await?;
    let proxy = if proxied {
        Some(TcpProxy::for_url(&processor.url).await?)
    } else {
        None
    };
    let url = match &proxy {
        Some(proxy) => proxy.url_through(&processor.url)?,
        None => processor.url.clone(),
    };
    processor.join(&mut deployment, &url)?;
    deployment.start_all().await?;
    Ok((deployment, processor, proxy))
}

/// The task of `kind` for `store` in a request's view.
fn task<'a>(view: &'a Value, kind: &str, store: &str) -> Result<&'a Value> {
    view["tasks"]
        .as_array()
        .context("tasks")?
        .iter()
        .find(|t| t["task"] == kind && t["store"] == store)
        .with_context(|| format!("no {kind} task for {store}: {view}"))
}

fn time(value: &Value) -> Result<DateTime<Utc>> {
    Ok(value
        .as_str()
        .with_context(|| format!("not a time: {value}"))?
        .parse()?)
}

async fn erase(deployment: &Deployment, email: &str) -> Result<Value> {
    let id = deployment
        .file(&json!({"kind": "erasure", "subject": {"email": email}}))
        .await?;
    deployment.wait_completed(&id, REQUEST_TIMEOUT).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_is_erased_and_exported_in_the_same_request_and_its_refusal_fails_the_request_without_its_body()
-> Result<()> {
    // Arrange
    let (deployment, processor, _) = deployment_with_processor(false).await?;
    let erased = deployment.subject(1);
    // The most invoices: their charges take more than one page (the data map asks for two a
    // page).
    let exported = deployment
        .subjects()
        .into_iter()
        .filter(|s| s.index != 1 && s.index != 3)
        .max_by_key(|s| s.invoices.len())
        .context("a seeded subject")?;
    ensure!(
        exported.invoices.len() >= 3,
        "no seeded subject has three invoices"
    );
    let refused = deployment.subject(3);
    ensure!(processor.customers(&erased.identities.email).await?.len() == 1);

    // Act / Assert: the erasure removes the subject's customer at the processor.
    let view = erase(&deployment, &erased.identities.email).await?;
    let payments = task(&view, "erase", "payments")?;
    ensure!(payments["status"] == "done", "{payments}");
    ensure!(payments["counts"]["customers"] == 1, "{payments}");
    ensure!(payments["remaining"] == 0, "{payments}");
    ensure!(
        processor
            .customers(&erased.identities.email)
            .await?
            .is_empty(),
        "the processor still lists the erased subject's customer"
    );
    let id = view["id"].as_str().context("id")?;
    let (status, receipt) = deployment
        .get(&format!("/v1/requests/{id}/receipt"))
        .await?;
    ensure!(status == 200, "receipt: {status} {receipt}");
    let payload = base64_json(&receipt["payload"])?;
    let listed = payload["stores"]
        .as_array()
        .context("receipt stores")?
        .iter()
        .find(|s| s["store"] == "payments")
        .with_context(|| format!("the receipt does not list the processor: {payload}"))?;
    ensure!(
        listed["counts"]["customers"] == 1 && listed["remaining"] == 0,
        "{listed}"
    );
    ensure!(
        listed["searched_with"]["email"].as_u64() >= Some(1),
        "{listed}"
    );

    // A second erasure finds nothing more there.
    let again = erase(&deployment, &erased.identities.email).await?;
    let payments = task(&again, "erase", "payments")?;
    ensure!(payments["counts"]["customers"] == 0, "{payments}");
    ensure!(payments["remaining"] == 0, "{payments}");

    // An access export holds the subject's customer and charges as the processor has them.
    let id = deployment
        .file(&json!({"kind": "access", "subject": {"email": exported.identities.email}}))
        .await?;
    deployment.wait_completed(&id, REQUEST_TIMEOUT).await?;
    let archive = download(&deployment, &id).await?;
    let report = inspect_archive(&archive)?;
    ensure!(report.problems.is_empty(), "{:?}", report.problems);
    let customers = report
        .json
        .get("payments/customers")
        .context("no payments/customers.json")?;
    ensure!(customers.len() == 1, "{customers:?}");
    ensure!(customers[0]["email"] == json!(exported.identities.email));
    let charges = report
        .json
        .get("payments/charges")
        .context("no payments/charges.json")?;
    ensure!(charges.len() == exported.invoices.len(), "{charges:?}");
    ensure!(charges.iter().all(|c| c["customer"] == customers[0]["id"]));

    // A 400 fails the request with the status and error code; the body (which quotes the
    // subject's email) is never passed on.
    processor.fail_next(400, 1, None, None).await?;
    let id = deployment
        .file(&json!({"kind": "erasure", "subject": {"email": refused.identities.email}}))
        .await?;
    let view = deployment.wait_finished(&id, REQUEST_TIMEOUT).await?;
    ensure!(view["status"] == "failed", "{view}");
    let failure = view["failure"].as_str().context("failure")?;
    ensure!(
        failure.contains("400") && failure.contains("parameter_invalid"),
        "the failure does not show the processor's status and code: {failure}"
    );
    let payments = task(&view, "erase", "payments")?;
    let error = payments["error"].as_str().context("task error")?;
    ensure!(error.contains("400"), "{payments}");
    let text = view.to_string().to_lowercase();
    ensure!(
        !text.contains(&refused.identities.email.to_lowercase()),
        "the request's view quotes the processor's body: {view}"
    );

    deployment.assert_logs_hold_no_identifier()?;
    processor.stop()?;
    deployment.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_and_server_errors_of_a_processor_delay_its_task_until_it_completes()
-> Result<()> {
    // Arrange
    let (deployment, processor, _) = deployment_with_processor(false).await?;

    // A 429 with Retry-After within the store's max_retry_wait (5 s): waited for in the task.
    processor.fail_next(429, 1, Some(2), Some("DELETE")).await?;
    let short = deployment.subject(1);
    let view = erase(&deployment, &short.identities.email).await?;
    let payments = task(&view, "erase", "payments")?;
    let waited = time(&payments["finished_at"])? - time(&view["received_at"])?;
    ensure!(
        waited >= chrono::Duration::seconds(2),
        "finished after {waited}: {payments}"
    );
    ensure!(payments["counts"]["customers"] == 1, "{payments}");
    ensure!(
        processor
            .customers(&short.identities.email)
            .await?
            .is_empty()
    );

    // A longer Retry-After puts the task back on the queue for that long.
    processor.fail_next(429, 1, Some(7), Some("DELETE")).await?;
    let long = deployment.subject(2);
    let view = erase(&deployment, &long.identities.email).await?;
    let payments = task(&view, "erase", "payments")?;
    let waited = time(&payments["finished_at"])? - time(&view["received_at"])?;
    ensure!(
        waited >= chrono::Duration::seconds(7),
        "finished after {waited}: {payments}"
    );
    ensure!(payments["attempts"].as_i64() >= Some(2), "{payments}");
    ensure!(
        processor
            .customers(&long.identities.email)
            .await?
            .is_empty()
    );

    // Server errors are retried like any store's passing failure.
    processor.fail_next(500, 2, None, Some("DELETE")).await?;
    let failing = deployment.subject(3);
    let view = erase(&deployment, &failing.identities.email).await?;
    let payments = task(&view, "erase", "payments")?;
    ensure!(payments["attempts"].as_i64() >= Some(3), "{payments}");
    ensure!(payments["counts"]["customers"] == 1, "{payments}");
    ensure!(
        processor
            .customers(&failing.identities.email)
            .await?
            .is_empty()
    );
    let stats = processor.stats().await?;
    ensure!(stats["faulted"] == 4, "{stats}");

    deployment.assert_logs_hold_no_identifier()?;
    processor.stop()?;
    deployment.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_that_is_down_delays_only_its_own_task() -> Result<()> {
    // Arrange
    let (deployment, processor, proxy) = deployment_with_processor(true).await?;
    let proxy = proxy.context("proxy")?;
    let s = deployment.subject(4);
    proxy.cut();

    // Act
    let id = deployment
        .file(&json!({"kind": "erasure", "subject": {"email": s.identities.email}}))
        .await?;

    // Assert: the other stores of its phase finish; the processor's task waits.
    let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
    let view = loop {
        let (_, view) = deployment.get(&format!("/v1/requests/{id}")).await?;
        let others_done = ["chat", "sessions", "files"]
            .iter()
            .all(|store| task(&view, "erase", store).is_ok_and(|t| t["status"] == "done"));
        if others_done {
            break view;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the other stores did not finish: {view}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, view_later) = deployment.get(&format!("/v1/requests/{id}")).await?;
    ensure!(view_later["status"] == "in_progress", "{view_later}");
    ensure!(
        task(&view_later, "erase", "payments")?["status"] == "queued",
        "{view}"
    );
    let restored_at = Utc::now();
    proxy.restore();
    let view = deployment.wait_completed(&id, REQUEST_TIMEOUT).await?;
    let payments = task(&view, "erase", "payments")?;
    ensure!(time(&payments["finished_at"])? >= restored_at, "{payments}");
    ensure!(payments["counts"]["customers"] == 1, "{payments}");
    ensure!(processor.customers(&s.identities.email).await?.is_empty());

    deployment.assert_logs_hold_no_identifier()?;
    drop(proxy);
    processor.stop()?;
    deployment.cleanup().await
}

/// The archive of export request `id`, through its presigned link.
async fn download(deployment: &Deployment, id: &str) -> Result<Vec<u8>> {
    let redirect = deployment
        .http()
        .get(format!("{}/v1/requests/{id}/export", deployment.api()?))
        .bearer_auth(&deployment.key)
        .send()
        .await?;
    ensure!(
        redirect.status() == 303,
        "GET export: {}",
        redirect.status()
    );
    let location = redirect
        .headers()
        .get("location")
        .context("no Location")?
        .to_str()?
        .to_owned();
    Ok(reqwest::get(&location).await?.bytes().await?.to_vec())
}

fn base64_json(value: &Value) -> Result<Value> {
    use base64::Engine as _;
    let text = value.as_str().context("not base64 text")?;
    Ok(serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD.decode(text)?,
    )?)
}
