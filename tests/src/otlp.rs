//! A tiny OTLP/HTTP trace receiver for tests: `POST /v1/traces` with a protobuf
//! `ExportTraceServiceRequest`, as the daemons send it when `telemetry.otlp_endpoint` points
//! here. It keeps every span it was sent, flattened into [`ReceivedSpan`]s.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message as _;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// One span as received.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// The sending process's `service.name`.
    pub service: String,
    /// The span's name.
    pub name: String,
    /// Its trace id, 32 hex characters.
    pub trace_id: String,
    /// Its span id, 16 hex characters.
    pub span_id: String,
    /// Its parent's span id (16 hex characters), empty for a root span.
    pub parent_span_id: String,
    /// Its attributes, values rendered as text.
    pub attributes: BTreeMap<String, String>,
    /// Its events (log lines within the span): name and attributes.
    pub events: Vec<(String, BTreeMap<String, String>)>,
}

impl ReceivedSpan {
    /// An attribute's value as text, if it has it.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }

    /// Everything the span carries, as text (to scan for identifiers).
    pub fn text(&self) -> String {
        let mut text = format!("{} {} {:?}", self.service, self.name, self.attributes);
        for (name, attributes) in &self.events {
            text.push_str(&format!(" {name} {attributes:?}"));
        }
        text
    }
}

type Received = Arc<Mutex<Vec<ReceivedSpan>>>;

/// The receiver, serving on 127.0.0.1 until dropped.
pub struct OtlpReceiver {
    address: SocketAddr,
    spans: Received,
    stop: CancellationToken,
}

impl OtlpReceiver {
    /// Starts a receiver on a free port.
    pub async fn start() -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let spans = Received::default();
        let stop = CancellationToken::new();
        let router = Router::new()
            .route("/v1/traces", post(receive))
            .with_state(spans.clone());
        let until = stop.clone();
        tokio::spawn(async move {
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(until.cancelled_owned())
                .await;
            if let Err(error) = served {
                eprintln!("the OTLP receiver stopped: {error}");
            }
        });
        Ok(Self {
            address,
            spans,
            stop,
        })
    }

    /// The base URL to configure as `telemetry.otlp_endpoint`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits until `found` finds what it looks for among the spans received so far (it is
    /// asked again each time more arrived); fails after `timeout` with `found`'s last word.
    pub async fn wait_for<T>(
        &self,
        timeout: Duration,
        mut found: impl FnMut(&[ReceivedSpan]) -> Result<T>,
    ) -> Result<T> {
        let deadline = Instant::now() + timeout;
        loop {
            let spans = self.spans();
            match found(&spans) {
                Ok(value) => return Ok(value),
                Err(error) if Instant::now() >= deadline => {
                    return Err(error.context(format!(
                        "after {timeout:?}, {} spans received: {}",
                        spans.len(),
                        summary(&spans)
                    )));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Each span as `service/name trace/span<-parent`, to explain a failed wait.
fn summary(spans: &[ReceivedSpan]) -> String {
    spans
        .iter()
        .map(|s| {
            format!(
                "\n  {}/{} {}/{}<-{}",
                s.service, s.name, s.trace_id, s.span_id, s.parent_span_id
            )
        })
        .collect()
}

async fn receive(State(spans): State<Received>, body: Bytes) -> (StatusCode, &'static str) {
    match decode(&body) {
        Ok(received) => {
            spans
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend(received);
            (StatusCode::OK, "")
        }
        Err(error) => {
            eprintln!("the OTLP receiver got an undecodable export: {error:#}");
            (StatusCode::BAD_REQUEST, "undecodable")
        }
    }
}

fn decode(body: &[u8]) -> Result<Vec<ReceivedSpan>> {
    let request =
        ExportTraceServiceRequest::decode(body).context("not an ExportTraceServiceRequest")?;
    let mut out = Vec::new();
    for resource_spans in request.resource_spans {
        let resource = resource_spans
            .resource
            .map(|r| attributes(&r.attributes))
            .unwrap_or_default();
        let Some(service) = resource.get("service.name").cloned() else {
            bail!("an export without service.name");
        };
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                out.push(ReceivedSpan {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex::encode(&span.trace_id),
                    span_id: hex::encode(&span.span_id),
                    parent_span_id: hex::encode(&span.parent_span_id),
                    attributes: attributes(&span.attributes),
                    events: span
                        .events
                        .into_iter()
                        .map(|e| (e.name, attributes(&e.attributes)))
                        .collect(),
                });
            }
        }
    }
    Ok(out)
}

fn attributes(pairs: &[KeyValue]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|kv| {
            (
                kv.key.clone(),
                kv.value.as_ref().map(text).unwrap_or_default(),
            )
        })
        .collect()
}

fn text(value: &AnyValue) -> String {
    match &value.value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::BytesValue(b)) => hex::encode(b),
        Some(any_value::Value::ArrayValue(a)) => {
            let items: Vec<String> = a.values.iter().map(text).collect();
            format!("[{}]", items.join(","))
        }
        Some(any_value::Value::KvlistValue(l)) => format!("{:?}", attributes(&l.values)),
        None => String::new(),
    }
}
