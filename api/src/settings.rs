//! The api's own section of the configuration file, `[api]`.

use std::net::SocketAddr;
use std::time::Duration;

use lethe_common::config::{Section, default_drain_timeout};
use secrecy::SecretString;
use serde::Deserialize;

/// The api daemon (`[api]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSettings {
    /// Address of the HTTP API (which also serves `/healthz`, `/readyz` and `/metrics`).
    #[serde(default = "ApiSettings::default_listen")]
    pub listen: SocketAddr,
    /// Largest accepted request body, in bytes.
    #[serde(default = "ApiSettings::default_body_limit")]
    pub body_limit_bytes: usize,
    /// How long in-flight HTTP requests may take to finish on shutdown.
    #[serde(default = "default_drain_timeout", with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Ed25519 seed (32 bytes, base64) that signs erasure receipts. Keep it: receipts signed
    /// with a lost key can no longer be checked against the published key.
    pub receipt_signing_key: Option<SecretString>,
    /// How long a checked API key is trusted without asking the ledger again (a revoked key
    /// keeps working for at most this long).
    #[serde(
        default = "ApiSettings::default_key_cache_ttl",
        with = "humantime_serde"
    )]
    pub key_cache_ttl: Duration,
    /// Results the coordinator applies at once.
    #[serde(default = "ApiSettings::default_coordinator_concurrency")]
    pub coordinator_concurrency: usize,
    /// Time a webhook endpoint has to answer.
    #[serde(
        default = "ApiSettings::default_webhook_timeout",
        with = "humantime_serde"
    )]
    pub webhook_timeout: Duration,
    /// How long a download link handed out by `GET /v1/requests/{id}/export` stays valid
    /// (a presigned URL; at most 7 days, never past the export's own expiry).
    #[serde(
        default = "ApiSettings::default_export_link_ttl",
        with = "humantime_serde"
    )]
    pub export_link_ttl: Duration,
    /// How long an assembled export stays downloadable after it was assembled (its
    /// `expires_at`); retention deletes it afterwards.
    #[serde(default = "ApiSettings::default_export_ttl", with = "humantime_serde")]
    pub export_ttl: Duration,
    /// Where webhooks and callbacks may go (`[api.outbound]`).
    #[serde(default)]
    pub outbound: OutboundSettings,
}

/// The outbound URL policy (`[api.outbound]`): webhook and callback URLs are `https` and reach
/// public addresses only, unless the operator says otherwise here. Without it a tenant could
/// make Lethe POST to its own network (SSRF).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundSettings {
    /// Accept plain `http` URLs (development only: the payload and signature travel in clear).
    #[serde(default)]
    pub allow_http: bool,
    /// Hosts (`host` or `host:port`) and networks (CIDR, e.g. `10.1.0.0/16`) the operator
    /// trusts although they are not public.
    #[serde(default)]
    pub allow_hosts: Vec<String>,
}

impl ApiSettings {
    fn default_export_link_ttl() -> Duration {
        Duration::from_secs(15 * 60)
    }
    fn default_export_ttl() -> Duration {
        Duration::from_secs(7 * 24 * 3600)
    }
    fn default_key_cache_ttl() -> Duration {
        Duration::from_secs(10)
    }
    fn default_coordinator_concurrency() -> usize {
        16
    }
    fn default_webhook_timeout() -> Duration {
        Duration::from_secs(10)
    }
    fn default_listen() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 8080))
    }
    fn default_body_limit() -> usize {
        64 * 1024
    }
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            listen: Self::default_listen(),
            body_limit_bytes: Self::default_body_limit(),
            drain_timeout: default_drain_timeout(),
            receipt_signing_key: None,
            key_cache_ttl: Self::default_key_cache_ttl(),
            coordinator_concurrency: Self::default_coordinator_concurrency(),
            webhook_timeout: Self::default_webhook_timeout(),
            export_link_ttl: Self::default_export_link_ttl(),
            export_ttl: Self::default_export_ttl(),
            outbound: OutboundSettings::default(),
        }
    }
}

impl Section for ApiSettings {
    const KEY: &'static str = "api";

    fn absent() -> Self {
        Self::default()
    }
}
