//! Lethe's NATS contract (DESIGN §4): names under a configurable prefix, idempotent stream and
//! consumer provisioning, and publishing with `Nats-Msg-Id` and `traceparent` headers.

mod names;
mod provision;
mod trace;

use std::time::Duration;

use async_nats::jetstream;
use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use serde::Serialize;

pub use names::{Durable, Names, NamesError};
pub use provision::{
    ConsumerSpec, deprovision, provision_consumer, provision_streams, stream_configs,
};
pub use trace::Traceparent;

use crate::config::NatsSettings;
use crate::messages::{Event, TaskMessage, TaskResult};

/// Header carrying the W3C trace context, so one trace spans api -> worker -> result.
pub const TRACEPARENT: &str = "traceparent";

/// The oldest server Lethe accepts: older servers silently ignore settings it relies on
/// (consumers with several filter subjects, among others).
const MINIMUM_SERVER: (u64, u64) = (2, 10);

/// A NATS connection that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The server did not answer.
    #[error("cannot reach NATS at {url}: {source}")]
    Unreachable {
        /// The configured URL.
        url: String,
        /// Why.
        source: async_nats::ConnectError,
    },
    /// The credentials file could not be read.
    #[error("cannot read NATS credentials file {path}: {source}")]
    Credentials {
        /// The configured path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The server is too old.
    #[error(
        "NATS server at {url} is version {version}; Lethe needs {}.{} or newer with JetStream",
        MINIMUM_SERVER.0,
        MINIMUM_SERVER.1
    )]
    TooOld {
        /// The configured URL.
        url: String,
        /// What the server reported.
        version: String,
    },
}

/// Connects to NATS, failing fast (within `connect_timeout`) when the server is unreachable or
/// older than 2.10. After the first connection, the client reconnects by itself.
pub async fn connect(settings: &NatsSettings, client_name: &str) -> Result<Client, ConnectError> {
    let mut options = async_nats::ConnectOptions::new()
        .name(client_name)
        .connection_timeout(settings.connect_timeout);
    if let Some(path) = &settings.credentials_file {
        options =
            options
                .credentials_file(path)
                .await
                .map_err(|source| ConnectError::Credentials {
                    path: path.display().to_string(),
                    source,
                })?;
    }
    let client = options
        .connect(server_urls(&settings.url))
        .await
        .map_err(|source| ConnectError::Unreachable {
            url: settings.url.clone(),
            source,
        })?;
    let version = client.server_info().version;
    if !version_at_least(&version, MINIMUM_SERVER) {
        return Err(ConnectError::TooOld {
            url: settings.url.clone(),
            version,
        });
    }
    Ok(client)
}

/// The server URLs of a `nats.url` value: comma-separated, each trimmed, empty ones skipped.
/// A client given several starts with any of them and, when its server goes away, reconnects
/// to another (the servers of a cluster also announce each other to their clients).
pub fn server_urls(url: &str) -> Vec<String> {
    url.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Checks that `url` holds at least one server URL and that each is one the client accepts
/// (`nats://`, `tls://`, `ws://`, `wss://`, or a bare `host:port`). The message says which
/// one (by position, since a URL may hold a password) is wrong.
pub fn check_server_urls(url: &str) -> Result<(), String> {
    let urls = server_urls(url);
    if urls.is_empty() {
        return Err("no server URL".to_owned());
    }
    for (i, url) in urls.iter().enumerate() {
        if let Err(error) = url.parse::<async_nats::ServerAddr>() {
            return Err(format!("URL {} of {}: {error}", i + 1, urls.len()));
        }
    }
    Ok(())
}

fn version_at_least(version: &str, (major, minor): (u64, u64)) -> bool {
    let mut parts = version
        .trim_start_matches('v')
        .split(['.', '-'])
        .map(|p| p.parse::<u64>().unwrap_or(0));
    let found = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    found >= (major, minor)
}

/// Publishes Lethe's messages on JetStream under the configured names.
#[derive(Clone)]
pub struct Publisher {
    jetstream: jetstream::Context,
    names: Names,
}

/// A publish that JetStream did not confirm.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The body could not be encoded (a bug).
    #[error("cannot encode message: {0}")]
    Encode(#[from] serde_json::Error),
    /// The server refused or did not answer.
    #[error("JetStream did not accept the message on {subject}: {source}")]
    Rejected {
        /// Where it was going.
        subject: String,
        /// Why.
        source: async_nats::Error,
    },
}

impl Publisher {
    /// A publisher on `client` using `names`.
    pub fn new(client: Client, names: Names) -> Self {
        Self {
            jetstream: jetstream::new(client),
            names,
        }
    }

    /// The JetStream context.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.jetstream
    }

    /// The names in use.
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// Publishes a task and waits until JetStream stored it (or dropped it as a duplicate).
    pub async fn task(&self, task: &TaskMessage, trace: &Traceparent) -> Result<(), PublishError> {
        let subject = self.names.task_subject(task.task, task.store.as_ref());
        self.publish(subject, &task.message_id(), Some(trace), task)
            .await
    }

    /// Publishes a task's result.
    pub async fn result(
        &self,
        result: &TaskResult,
        trace: Option<&Traceparent>,
    ) -> Result<(), PublishError> {
        let subject = self
            .names
            .result_subject(result.task, result.store.as_ref());
        self.publish(subject, &result.message_id(), trace, result)
            .await
    }

    /// Publishes an event.
    pub async fn event(&self, event: &Event) -> Result<(), PublishError> {
        let subject = self.names.event_subject(&event.kind);
        self.publish(subject, &event.message_id(), None, event)
            .await
    }

    /// Publishes `body` as JSON on `subject` with the de-duplication id and trace context, and
    /// waits for JetStream's acknowledgement.
    pub async fn publish<T: Serialize>(
        &self,
        subject: String,
        message_id: &str,
        trace: Option<&Traceparent>,
        body: &T,
    ) -> Result<(), PublishError> {
        let payload = Bytes::from(serde_json::to_vec(body)?);
        self.publish_raw(subject, message_id, trace, payload).await
    }

    /// Publishes an already encoded body.
    pub async fn publish_raw(
        &self,
        subject: String,
        message_id: &str,
        trace: Option<&Traceparent>,
        payload: Bytes,
    ) -> Result<(), PublishError> {
        let mut headers = HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, message_id);
        if let Some(trace) = trace {
            headers.insert(TRACEPARENT, trace.to_string().as_str());
        }
        let rejected = |source: async_nats::Error| PublishError::Rejected {
            subject: subject.clone(),
            source,
        };
        let ack = self
            .jetstream
            .publish_with_headers(subject.clone(), headers, payload)
            .await
            .map_err(|e| rejected(e.into()))?;
        ack.await.map_err(|e| rejected(e.into()))?;
        Ok(())
    }
}

/// How long to wait before a task that failed for a passing reason is delivered again:
/// exponential from one second, capped at five minutes.
pub fn retry_delay(deliveries: u32) -> Duration {
    let exponent = deliveries.saturating_sub(1).min(16);
    Duration::from_secs((1u64 << exponent).min(300))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_versions_are_compared_numerically() {
        assert!(version_at_least("2.10.0", (2, 10)));
        assert!(version_at_least("2.15.1", (2, 10)));
        assert!(version_at_least("v3.0.0-beta", (2, 10)));
        assert!(!version_at_least("2.9.25", (2, 10)));
    }

    #[test]
    fn several_server_urls_are_split_on_commas_and_each_checked() {
        assert_eq!(
            server_urls(" nats://a:4222, nats://b:4222 ,,nats://c:4222"),
            ["nats://a:4222", "nats://b:4222", "nats://c:4222"]
        );
        assert!(check_server_urls("nats://a:4222,nats://b:4222").is_ok());
        assert!(check_server_urls(" , ").is_err());
        let error = check_server_urls("nats://a:4222,http://b:80").unwrap_err();
        assert!(error.starts_with("URL 2 of 2"), "{error}");
    }

    #[test]
    fn retry_delays_grow_and_are_capped() {
        assert_eq!(retry_delay(1), Duration::from_secs(1));
        assert_eq!(retry_delay(3), Duration::from_secs(4));
        assert_eq!(retry_delay(40), Duration::from_secs(300));
    }
}
