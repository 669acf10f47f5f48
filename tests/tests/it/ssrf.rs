//! The outbound URL policy (SSRF): callback and webhook URLs that lead to loopback, private,
//! link-local or other non-public addresses are refused when a request is filed and again
//! when a webhook is delivered; redirects are never followed. Every test sends traffic only to
//! 127.0.0.0/8: the refused addresses (10.0.0.1, 169.254.169.254) are never connected to, the
//! refusal comes before any connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lethe_api::keys::Scope;
use lethe_tests::Services;
use lethe_tests::api::{ApiUnderTest, Driver, TEST_OUTBOUND, run_driver};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// A loopback HTTP endpoint that counts the connections it accepts and answers each request
/// with `response`.
struct Endpoint {
    base: String,
    connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Endpoint {
    async fn start(response: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let mut seen = Vec::new();
                let mut buffer = [0u8; 4096];
                // The headers are enough: the answer does not depend on the body.
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buffer).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => seen.extend_from_slice(&buffer[..n]),
                    }
                }
                socket.write_all(response.as_bytes()).await.ok();
                socket.shutdown().await.ok();
            }
        });
        Self {
            base,
            connections,
            task,
        }
    }

    fn port(&self) -> u16 {
        self.base.rsplit(':').next().unwrap().parse().unwrap()
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn ok() -> String {
    "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned()
}

/// Starts an api whose `[api.outbound]` section is `outbound` instead of the tests' default.
async fn api(services: &Services, outbound: &str) -> ApiUnderTest {
    let outbound = outbound.to_owned();
    ApiUnderTest::start_configured(services, &services.nats_url, move |text| {
        assert!(text.contains(TEST_OUTBOUND));
        text.replace(TEST_OUTBOUND, &outbound)
    })
    .await
    .unwrap()
}

fn erasure_to(callback: &str) -> Value {
    json!({"kind": "erasure", "subject": {"user_id": "ssrf-1"}, "callback_url": callback})
}

#[tokio::test]
async fn ssrf_callback_urls_to_loopback_private_link_local_and_localhost_are_refused_at_filing() {
    let services = Services::from_env();
    // Plain http allowed, nothing allow-listed: only the addresses decide.
    let api = api(&services, "[api.outbound]\nallow_http = true\n").await;
    let key = api.key("acme", &[Scope::RequestsWrite]).await.unwrap();
    let listening = Endpoint::start(ok()).await;
    let port = listening.port();

    let refused = [
        format!("http://127.0.0.1:{port}/hook"),
        "https://10.0.0.1/hook".to_owned(),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        format!("http://[::1]:{port}/hook"),
        format!("http://localhost:{port}/hook"),
        format!("http://hooks.localhost:{port}/hook"),
        format!("http://127.1.2.3:{port}/hook"),
        format!("http://[::ffff:127.0.0.1]:{port}/hook"),
    ];
    for url in &refused {
        let (status, body) = api
            .post(&key, "/v1/requests", &erasure_to(url))
            .await
            .unwrap();
        assert_eq!(status, 422, "{url}: {body}");
        assert_eq!(body["code"], "invalid_callback_url", "{url}: {body}");
        assert_eq!(body["field"], "callback_url", "{url}: {body}");
        let text = body.to_string();
        assert!(
            !text.contains("127.") && !text.contains("169.254") && !text.contains("localhost"),
            "the problem quotes the URL: {text}"
        );
    }
    // The check is made on addresses, before any connection: the one listening loopback
    // endpoint among them was never reached.
    assert_eq!(listening.connections(), 0);
    // And nothing was filed.
    let filed: i64 = sqlx::query_scalar("SELECT count(*) FROM request")
        .fetch_one(&api.pool)
        .await
        .unwrap();
    assert_eq!(filed, 0);
    api.stop().await.unwrap();
}

#[tokio::test]
async fn ssrf_plain_http_is_refused_unless_allowed_for_development() {
    let services = Services::from_env();
    let api = api(&services, "").await;
    let key = api.key("acme", &[Scope::RequestsWrite]).await.unwrap();
    // A public address, but plain http: refused by the default policy.
    let (status, body) = api
        .post(
            &key,
            "/v1/requests",
            &erasure_to("http://93.184.216.34/hook"),
        )
        .await
        .unwrap();
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["code"], "invalid_callback_url");
    // A public https URL is accepted (nothing is sent: the request does not complete here).
    let (status, body) = api
        .post(
            &key,
            "/v1/requests",
            &erasure_to("https://93.184.216.34/hook"),
        )
        .await
        .unwrap();
    assert_eq!(status, 202, "{body}");
    api.stop().await.unwrap();
}

/// The attempts recorded for the deliveries to `url`, once at least one is (bounded wait).
async fn attempts_to(api: &ApiUnderTest, url: &str) -> Vec<(Option<i32>, Option<String>, bool)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows: Vec<(Option<i32>, Option<String>, bool)> = sqlx::query_as(
            "SELECT a.status, a.error, d.abandoned_at IS NOT NULL FROM webhook_attempt a \
             JOIN webhook_delivery d ON d.id = a.delivery_id WHERE d.url = $1 ORDER BY a.attempt",
        )
        .bind(url)
        .fetch_all(&api.pool)
        .await
        .unwrap();
        if !rows.is_empty() {
            return rows;
        }
        assert!(Instant::now() < deadline, "no delivery attempt to {url}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn ssrf_a_redirect_from_an_allow_listed_endpoint_is_not_followed_and_a_url_refused_at_delivery_is_abandoned_unsent()
 {
    let services = Services::from_env();
    let target = Endpoint::start(ok()).await;
    let redirecting = Endpoint::start(format!(
        "HTTP/1.1 302 Found\r\nLocation: {}/stolen\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        target.base
    ))
    .await;
    // Only the redirecting endpoint is trusted, by host and port.
    let api = api(
        &services,
        &format!(
            "[api.outbound]\nallow_http = true\nallow_hosts = [\"127.0.0.1:{}\"]\n",
            redirecting.port()
        ),
    )
    .await;
    let key = api
        .key("acme", &[Scope::RequestsWrite, Scope::RequestsRead])
        .await
        .unwrap();
    let names = api.names();
    let (stop, running) = run_driver(&services.nats_url, &names, Arc::new(Driver::well_behaved()))
        .await
        .unwrap();

    // The not allow-listed port of the same host is refused at filing.
    let (status, body) = api
        .post(
            &key,
            "/v1/requests",
            &erasure_to(&format!("{}/hook", target.base)),
        )
        .await
        .unwrap();
    assert_eq!(status, 422, "{body}");

    let hook = format!("{}/hook", redirecting.base);
    let (status, body) = api
        .post(&key, "/v1/requests", &erasure_to(&hook))
        .await
        .unwrap();
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    api.wait_until_finished(&key, &id).await.unwrap();
    let attempts = attempts_to(&api, &hook).await;
    // The 302 is the attempt's answer (not delivered), and its Location was never visited.
    assert_eq!(attempts[0].0, Some(302), "{attempts:?}");
    assert!(redirecting.connections() >= 1);
    assert_eq!(target.connections(), 0);

    // A webhook URL that passed once but no longer does (a tenant's URL set before the
    // policy, or a name that resolves elsewhere now) is refused when it is delivered, and
    // abandoned without a connection.
    let stale = format!("{}/incident", target.base);
    let tenant: sqlx::types::Uuid = sqlx::query_scalar("SELECT id FROM tenant WHERE name = 'acme'")
        .fetch_one(&api.pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO webhook_delivery (tenant_id, url, event, payload) VALUES ($1, $2, 'test', '{}')",
    )
    .bind(tenant)
    .bind(&stale)
    .execute(&api.pool)
    .await
    .unwrap();
    // The attempt is recorded first, then the delivery marked abandoned: wait for both.
    let deadline = Instant::now() + Duration::from_secs(30);
    let attempts = loop {
        let attempts = attempts_to(&api, &stale).await;
        if attempts[0].2 || Instant::now() >= deadline {
            break attempts;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    let (status, error, abandoned) = &attempts[0];
    assert_eq!(*status, None);
    assert!(
        error.as_deref().is_some_and(|e| e.starts_with("refused")),
        "{attempts:?}"
    );
    assert!(
        !error.as_deref().unwrap_or_default().contains("127.0.0.1"),
        "the recorded error quotes the URL: {error:?}"
    );
    assert!(abandoned);
    assert_eq!(target.connections(), 0);

    stop.cancel();
    running.await.unwrap();
    api.stop().await.unwrap();
}
