//! Logging with `tracing`: pretty for people, JSON for machines; and, when
//! `telemetry.otlp_endpoint` is set, the same spans exported as OpenTelemetry traces.
//!
//! Field conventions (see the README): identifiers of Lethe's own objects as dotted fields
//! (`request.id`, `task.store`), units in field names (`duration_ms`), and never an identifier
//! of a data subject: log [`crate::privacy::IdentityHasher`] digests instead. Spans follow the
//! same rules, since their fields are exported as span attributes.

use std::fmt;
use std::sync::OnceLock;

use axum::extract::{MatchedPath, Request};
use axum::http::Uri;
use axum::middleware::Next;
use axum::response::Response;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde::Deserialize;
use tracing::subscriber::Interest;
use tracing::{Instrument as _, Level, Metadata, Subscriber};
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::layer::{Context, Filter};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer};

use crate::nats::{TRACEPARENT, Traceparent};

/// Log output format.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Pretty,
    /// One JSON object per line.
    Json,
}

/// The `[telemetry]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    /// Output format.
    #[serde(default)]
    pub format: LogFormat,
    /// A `tracing` filter such as `info,lethe_eraser=debug`; `RUST_LOG` takes precedence.
    #[serde(default = "TelemetrySettings::default_filter")]
    pub filter: String,
    /// Base URL of an OpenTelemetry collector's OTLP/HTTP receiver, such as
    /// `http://localhost:4318`: spans go to `<url>/v1/traces` as protobuf. Unset (the
    /// default), nothing is exported.
    #[serde(default)]
    pub otlp_endpoint: Option<OtlpEndpoint>,
}

impl TelemetrySettings {
    fn default_filter() -> String {
        "info".to_owned()
    }
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            format: LogFormat::default(),
            filter: Self::default_filter(),
            otlp_endpoint: None,
        }
    }
}

/// An `http` or `https` URL of an OTLP/HTTP receiver, checked when the configuration is read so
/// that a typo fails at start-up rather than losing every span.
#[derive(Clone, PartialEq, Eq)]
pub struct OtlpEndpoint(String);

impl OtlpEndpoint {
    /// Where spans are sent: the base URL with `/v1/traces`, the signal path of OTLP/HTTP.
    pub fn traces_url(&self) -> String {
        format!("{}/v1/traces", self.0.trim_end_matches('/'))
    }
}

impl TryFrom<String> for OtlpEndpoint {
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        let uri: Uri = value
            .parse()
            .map_err(|error| format!("`{value}` is not a URL: {error}"))?;
        match (uri.scheme_str(), uri.authority()) {
            // Credentials stay out of the URL, which is printed: the exporter reads headers
            // (such as `Authorization`) from `OTEL_EXPORTER_OTLP_HEADERS`.
            (_, Some(authority)) if authority.as_str().contains('@') => Err(
                "the URL must not hold credentials: set them as headers in OTEL_EXPORTER_OTLP_HEADERS"
                    .to_owned(),
            ),
            (Some("http" | "https"), Some(_)) if uri.query().is_none() => Ok(Self(value)),
            _ => Err(format!(
                "`{value}` must be an http(s) URL without a query, such as http://localhost:4318"
            )),
        }
    }
}

impl<'de> Deserialize<'de> for OtlpEndpoint {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::try_from(text).map_err(serde::de::Error::custom)
    }
}

impl fmt::Debug for OtlpEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for OtlpEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The exporting tracer provider, kept so that [`shutdown`] can flush it on exit.
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Installs the global subscriber. Logs go to standard error, so that subcommands can print
/// their results on standard output. With `otlp_endpoint` set, Lethe's own spans (at `info`
/// and above, whatever the log filter) are also exported; call [`shutdown`] before exiting so
/// the last of them are sent. Calling it twice is harmless.
pub fn init(settings: &TelemetrySettings) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let provider =
        settings
            .otlp_endpoint
            .as_ref()
            .and_then(|endpoint| match tracer_provider(endpoint) {
                Ok(provider) => Some(provider),
                Err(error) => {
                    // Telemetry must not keep a daemon from its work: say so and go on without it.
                    eprintln!("warning: cannot export traces to {endpoint}: {error}");
                    None
                }
            });
    let installed = match &provider {
        // Without export, one global filter, as cheap as logging gets.
        None => tracing_subscriber::registry()
            .with(filter)
            .with(log_layer(settings.format))
            .try_init()
            .is_ok(),
        // With export, each layer has its own filter: the log filter must not decide which
        // spans are exported, nor the other way round.
        Some(provider) => {
            let otel = tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("lethe"))
                .with_filter(ExportedSpans);
            tracing_subscriber::registry()
                .with(log_layer(settings.format).with_filter(filter))
                .with(otel)
                .try_init()
                .is_ok()
        }
    };
    // A second call finds a subscriber installed already; the first one stays, with its
    // provider. This one's provider is dropped, which stops its export thread.
    if installed && let Some(provider) = provider {
        drop(PROVIDER.set(provider));
        tracing::info!("exporting spans to telemetry.otlp_endpoint over OTLP/HTTP");
    }
}

/// The log lines' layer, in `format`.
fn log_layer<S>(format: LogFormat) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_span_events(FmtSpan::NONE);
    match format {
        LogFormat::Pretty => layer.compact().boxed(),
        LogFormat::Json => layer
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .boxed(),
    }
}

/// What is exported: Lethe's own spans (and the events within them) at `info` and above.
/// Dependencies' spans (hyper's, the exporter's own HTTP client's) would be noise, and
/// exporting the exporter's would never end.
struct ExportedSpans;

impl ExportedSpans {
    fn wanted(metadata: &Metadata<'_>) -> bool {
        metadata.target().starts_with("lethe") && *metadata.level() <= Level::INFO
    }
}

impl<S> Filter<S> for ExportedSpans {
    fn enabled(&self, metadata: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        Self::wanted(metadata)
    }

    fn callsite_enabled(&self, metadata: &'static Metadata<'static>) -> Interest {
        // `sometimes`, not `always`: per-layer filters leave their verdicts in a thread-local
        // that `enabled` overwrites, and a callsite cached as `always` by every filter skips
        // `enabled`. A verdict left behind by a bare `enabled!` check (sqlx makes them before
        // each query) would then silently drop the next span from the export.
        if Self::wanted(metadata) {
            Interest::sometimes()
        } else {
            Interest::never()
        }
    }
}

fn tracer_provider(
    endpoint: &OtlpEndpoint,
) -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    // The blocking client, because the batch processor exports from a thread of its own,
    // outside the daemon's runtime; it needs no runtime of ours and flushes on shutdown even
    // after the runtime stopped. Batch size and delay follow the standard `OTEL_BSP_*`
    // variables.
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(endpoint.traces_url())
        .build()?;
    let resource = Resource::builder()
        .with_service_name(service_name())
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// The service's name in traces: `OTEL_SERVICE_NAME` if set, else the executable's name
/// (`lethe-api`, `lethe-eraser`, ...).
fn service_name() -> String {
    std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|name| !name.is_empty())
        .or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|path| path.file_stem()?.to_str().map(str::to_owned))
        })
        .unwrap_or_else(|| "lethe".to_owned())
}

/// Sends the spans not yet exported and stops exporting. Call once, as the process exits;
/// without an OTLP endpoint it does nothing. It blocks until the export finished or timed out.
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get()
        && let Err(error) = provider.shutdown()
    {
        eprintln!("warning: cannot flush the last traces: {error}");
    }
}

/// Axum middleware: one `http.request` span per request, named after the route (never the
/// path, which holds ids, nor the query), a child of the caller's W3C `traceparent` when the
/// request carries one.
pub async fn http_span(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned());
    let name = match &route {
        Some(route) => format!("{method} {route}"),
        None => method.to_string(),
    };
    let span = tracing::info_span!(
        "http.request",
        otel.name = %name,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = %method,
        http.route = route.as_deref().unwrap_or("-"),
        http.response.status_code = tracing::field::Empty,
    );
    let parent = request
        .headers()
        .get(TRACEPARENT)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<Traceparent>().ok());
    if let Some(parent) = parent {
        parent.make_parent_of(&span);
    }
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "error");
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_otlp_endpoint_is_an_http_url_and_gets_the_traces_path() {
        let endpoint = OtlpEndpoint::try_from("http://collector:4318/".to_owned()).unwrap();
        assert_eq!(endpoint.traces_url(), "http://collector:4318/v1/traces");
        assert!(OtlpEndpoint::try_from("collector:4318".to_owned()).is_err());
        assert!(OtlpEndpoint::try_from("grpc://collector:4317".to_owned()).is_err());
        assert!(OtlpEndpoint::try_from("http://collector:4318/?a=b".to_owned()).is_err());
        let refused = OtlpEndpoint::try_from("https://me:secret@collector".to_owned()).unwrap_err();
        assert!(!refused.contains("secret"));
    }
}
