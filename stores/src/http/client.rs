//! The connection to one processor: a `reqwest` client that follows no redirect, the base URL
//! and credentials from the environment, a pace of at most `requests_per_second`, and the one
//! place a request is sent: authentication, `429 Retry-After` honoured, connection failures and
//! `5xx` made transient. Nothing here logs or reports a filled URL or a body: only the
//! request's template (`DELETE /v1/customers/{id}`), statuses and the processor's error code.

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value as Json;
use sha2::Sha256;
use tokio::sync::Mutex;
use tokio::time::Instant;

use lethe_common::datamap::{HttpAuth, HttpStore};
use lethe_common::ids::StoreName;
use lethe_common::worker::{RetryAfter, TaskError};

use super::request::Prepared;
use crate::connection::StoreError;

/// Largest answer read (a page of records): a bound on what a misbehaving processor costs.
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// A `429` without `Retry-After` is tried again after this long.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// A live handle on one processor, shared by every task of the store in this process.
#[derive(Clone)]
pub struct HttpHandle {
    client: reqwest::Client,
    base: String,
    auth: Option<Credentials>,
    headers: HeaderMap,
    pacer: Arc<Pacer>,
    max_retry_wait: Duration,
}

/// The secrets of a processor's authentication.
#[derive(Clone)]
enum Credentials {
    Bearer(SecretString),
    Basic(SecretString, Option<SecretString>),
    Hmac {
        header: HeaderName,
        secret: SecretString,
    },
}

/// What a processor answered (any status but `429`, which is handled here).
pub(crate) struct Answer {
    /// The status.
    pub status: u16,
    /// The body as JSON: `Null` when empty, `None` when it is not JSON.
    pub body: Option<Json>,
}

impl HttpHandle {
    /// The handle of store `name` from its data-map entry; `secret` reads a variable the entry
    /// names (the environment, or values given in code).
    pub(crate) fn new(
        name: &StoreName,
        spec: &HttpStore,
        secret: &dyn Fn(&str, &'static str) -> Result<SecretString, StoreError>,
    ) -> Result<Self, StoreError> {
        let bad = |variable: &str, message: &str| StoreError::BadUrl {
            store: name.clone(),
            variable: variable.to_owned(),
            message: message.to_owned(),
        };
        let base = secret(&spec.url_env, "url_env")?;
        let base = base.expose_secret().trim_end_matches('/').to_owned();
        match reqwest::Url::parse(&base) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => {}
            Ok(_) => return Err(bad(&spec.url_env, "not an http or https URL")),
            // The parser's message names the fault, never the URL.
            Err(error) => return Err(bad(&spec.url_env, &error.to_string())),
        }
        let auth = match &spec.auth {
            None => None,
            Some(HttpAuth::Bearer { token_env }) => Some(Credentials::Bearer(secret(
                token_env,
                "auth.bearer.token_env",
            )?)),
            Some(HttpAuth::Basic {
                username_env,
                password_env,
            }) => Some(Credentials::Basic(
                secret(username_env, "auth.basic.username_env")?,
                match password_env {
                    Some(env) => Some(secret(env, "auth.basic.password_env")?),
                    None => None,
                },
            )),
            Some(HttpAuth::Hmac { header, secret_env }) => Some(Credentials::Hmac {
                header: HeaderName::from_bytes(header.as_bytes())
                    .map_err(|_| bad(secret_env, "auth.hmac.header is not a header name"))?,
                secret: secret(secret_env, "auth.hmac.secret_env")?,
            }),
        };
        let mut headers = HeaderMap::new();
        headers.insert(
            reqwest::header::ACCEPT,
            HeaderValue::from_static("application/json"),
        );
        for (key, value) in &spec.headers {
            let key = HeaderName::from_bytes(key.as_bytes())
                .map_err(|_| bad(&spec.url_env, "a header name of `headers` is invalid"))?;
            let value = HeaderValue::from_str(value)
                .map_err(|_| bad(&spec.url_env, "a header value of `headers` is invalid"))?;
            headers.insert(key, value);
        }
        // Processors are the operator's own choice, so the outbound policy for tenants' URLs
        // does not apply; but a redirect would send the subject's identifiers (and the
        // credentials) somewhere the data map does not name, so none is followed.
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(spec.timeout)
            .connect_timeout(spec.timeout.min(Duration::from_secs(5)))
            .build()
            .map_err(|_| bad(&spec.url_env, "cannot build an HTTP client"))?;
        Ok(Self {
            client,
            base,
            auth,
            headers,
            pacer: Arc::new(Pacer::new(spec.requests_per_second)),
            max_retry_wait: spec.max_retry_wait,
        })
    }

    /// Checks that the processor answers at all (any status): the message names the kind of
    /// failure, never the URL.
    pub(crate) async fn ping(&self) -> Result<(), String> {
        self.client
            .get(&self.base)
            .headers(self.headers.clone())
            .send()
            .await
            .map(drop)
            .map_err(|e| describe(&e))
    }

    /// Sends `request` (paced, authenticated) and returns the answer. A `429` is waited for in
    /// place while the task's waits stay within `max_retry_wait`, else the task goes back on
    /// the queue for the `Retry-After` asked; connection failures are transient.
    pub(crate) async fn send(
        &self,
        store: &StoreName,
        request: &Prepared,
    ) -> Result<Answer, TaskError> {
        let place = || format!("store `{store}`: `{}`", request.label);
        let mut waited = Duration::ZERO;
        loop {
            self.pacer.wait().await;
            let built = self.build(request).map_err(|_| TaskError::Permanent {
                code: "processor_request_invalid",
                reason: format!("{}: the request cannot be built", place()),
            })?;
            let response = self.client.execute(built).await.map_err(|e| {
                TaskError::Transient(anyhow::anyhow!("{}", describe(&e)).context(place()))
            })?;
            let status = response.status().as_u16();
            if status == 429 {
                let after = retry_after(response.headers()).unwrap_or(DEFAULT_RETRY_AFTER);
                if waited + after <= self.max_retry_wait {
                    tracing::info!(
                        store = %store,
                        request = %request.label,
                        retry_after_ms = after.as_millis() as u64,
                        "processor rate limit; waiting"
                    );
                    tokio::time::sleep(after).await;
                    waited += after;
                    continue;
                }
                return Err(TaskError::Transient(
                    anyhow::Error::new(RetryAfter(after))
                        .context(format!("{}: answered 429 (rate limited)", place())),
                ));
            }
            let bytes = read_body(response)
                .await
                .map_err(|e| TaskError::Transient(anyhow::anyhow!("{e}").context(place())))?;
            let body = if bytes.iter().all(u8::is_ascii_whitespace) {
                Some(Json::Null)
            } else {
                serde_json::from_slice(&bytes).ok()
            };
            tracing::debug!(store = %store, request = %request.label, status, "processor answered");
            return Ok(Answer { status, body });
        }
    }

    fn build(&self, request: &Prepared) -> reqwest::Result<reqwest::Request> {
        let mut builder = self
            .client
            .request(
                request.method.clone(),
                format!("{}{}", self.base, request.path),
            )
            .headers(self.headers.clone());
        if !request.query.is_empty() {
            builder = builder.query(&request.query);
        }
        if let Some((content_type, body)) = &request.body {
            builder = builder
                .header(reqwest::header::CONTENT_TYPE, *content_type)
                .body(body.clone());
        }
        let mut built = builder.build()?;
        match &self.auth {
            None => {}
            Some(Credentials::Bearer(token)) => {
                let value = HeaderValue::from_str(&format!("Bearer {}", token.expose_secret()));
                if let Ok(mut value) = value {
                    value.set_sensitive(true);
                    built
                        .headers_mut()
                        .insert(reqwest::header::AUTHORIZATION, value);
                }
            }
            Some(Credentials::Basic(user, password)) => {
                let rebuilt = reqwest::RequestBuilder::from_parts(self.client.clone(), built)
                    .basic_auth(
                        user.expose_secret(),
                        password.as_ref().map(|p| p.expose_secret()),
                    );
                built = rebuilt.build()?;
            }
            Some(Credentials::Hmac { header, secret }) => {
                let timestamp = chrono::Utc::now().timestamp();
                let url = built.url();
                let target = match url.query() {
                    Some(query) => format!("{}?{query}", url.path()),
                    None => url.path().to_owned(),
                };
                let body = request.body.as_ref().map(|(_, b)| b.as_slice());
                let signature = sign(secret, timestamp, built.method().as_str(), &target, body);
                if let Ok(mut value) =
                    HeaderValue::from_str(&format!("t={timestamp},v1={signature}"))
                {
                    value.set_sensitive(true);
                    built.headers_mut().insert(header.clone(), value);
                }
            }
        }
        Ok(built)
    }
}

/// `hex(HMAC-SHA256(secret, "<t>.<METHOD>.<path and query>.<body>"))`.
fn sign(
    secret: &SecretString,
    timestamp: i64,
    method: &str,
    target: &str,
    body: Option<&[u8]>,
) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.expose_secret().as_bytes()) else {
        return String::new();
    };
    mac.update(format!("{timestamp}.{method}.{target}.").as_bytes());
    mac.update(body.unwrap_or_default());
    hex::encode(mac.finalize().into_bytes())
}

/// A `reqwest` error in words, without its URL (which holds the subject's identifiers).
fn describe(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "cannot connect"
    } else if error.is_body() || error.is_decode() {
        "the answer broke off"
    } else {
        "the request failed"
    };
    // `without_url` drops the URL from the message; the source chain of a connection error
    // names addresses and system errors, never the path or query.
    let mut message = kind.to_owned();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

async fn read_body(mut response: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| describe(&e))? {
        if bytes.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(format!("the answer is over {MAX_BODY_BYTES} bytes"));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// `Retry-After` in seconds (the HTTP-date form is read as the default delay).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    let seconds: f64 = value.trim().parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds.min(3600.0)))
}

/// Spaces requests at least `1 / requests_per_second` apart, across the tasks of a process.
struct Pacer {
    interval: Option<Duration>,
    next: Mutex<Instant>,
}

impl Pacer {
    fn new(requests_per_second: Option<u32>) -> Self {
        Self {
            interval: requests_per_second
                .filter(|n| *n > 0)
                .map(|n| Duration::from_secs(1) / n),
            next: Mutex::new(Instant::now()),
        }
    }

    async fn wait(&self) {
        let Some(interval) = self.interval else {
            return;
        };
        // Held while sleeping: waiters line up and leave one interval apart.
        let mut next = self.next.lock().await;
        let now = Instant::now();
        if *next > now {
            tokio::time::sleep_until(*next).await;
        }
        *next = (*next).max(now) + interval;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_read_in_seconds() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(reqwest::header::RETRY_AFTER, HeaderValue::from_static("2"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(2)));
        headers.insert(
            reqwest::header::RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn signatures_cover_time_method_target_and_body() {
        let secret = SecretString::from("s3cret");
        let a = sign(&secret, 1, "POST", "/v1/x?a=1", Some(b"{}"));
        assert_eq!(a.len(), 64);
        assert_ne!(a, sign(&secret, 2, "POST", "/v1/x?a=1", Some(b"{}")));
        assert_ne!(a, sign(&secret, 1, "POST", "/v1/x?a=2", Some(b"{}")));
        assert_ne!(a, sign(&secret, 1, "POST", "/v1/x?a=1", Some(b"{ }")));
    }

    #[tokio::test]
    async fn the_pacer_spaces_requests() {
        let pacer = Pacer::new(Some(20));
        let started = Instant::now();
        for _ in 0..5 {
            pacer.wait().await;
        }
        assert!(started.elapsed() >= Duration::from_millis(200));
    }
}
