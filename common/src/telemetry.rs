//! Logging with `tracing`: pretty for people, JSON for machines.
//!
//! Field conventions (see the README): identifiers of Lethe's own objects as dotted fields
//! (`request.id`, `task.store`), units in field names (`duration_ms`), and never an identifier
//! of a data subject: log [`crate::privacy::IdentityHasher`] digests instead.

use serde::Deserialize;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

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
        }
    }
}

/// Installs the global subscriber. Logs go to standard error, so that subcommands can print
/// their results on standard output. Calling it twice is harmless.
pub fn init(settings: &TelemetrySettings) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_span_events(FmtSpan::NONE);
    let result = match settings.format {
        LogFormat::Pretty => builder.compact().try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
    // A second call finds a subscriber installed already; the first one stays.
    drop(result);
}
