//! The api's own section of the configuration file, `[api]`.

use std::net::SocketAddr;
use std::time::Duration;

use lethe_common::config::{ConfigError, Section, default_drain_timeout};
use secrecy::SecretString;
use serde::Deserialize;
use url::Url;

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
    /// Most results the coordinator applies in one ledger transaction (only what has already
    /// arrived; 1: one transaction per result).
    #[serde(default = "ApiSettings::default_coordinator_batch_size")]
    pub coordinator_batch_size: usize,
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
    /// How often the api publishes a signed checkpoint of the audit chain's head on the
    /// events stream (audit anchors; one is also made with every backup).
    #[serde(
        default = "ApiSettings::default_audit_checkpoint_interval",
        with = "humantime_serde"
    )]
    pub audit_checkpoint_interval: Duration,
    /// The operator console and the privacy center (`[api.pages]`).
    #[serde(default)]
    pub pages: PagesSettings,
    /// The SMTP server the privacy center mails through (`[api.smtp]`). Without it the privacy
    /// center answers, but no link is sent (and the log says so once per attempt).
    pub smtp: Option<SmtpSettings>,
    /// Where webhooks and callbacks may go (`[api.outbound]`).
    #[serde(default)]
    pub outbound: OutboundSettings,
    /// Write a tombstone of every completed change to Lethe's bucket, encrypted to
    /// `backups.recipients` (on by default: the api then refuses to start without a usable
    /// recipient certificate).
    #[serde(default = "ApiSettings::default_tombstones")]
    pub tombstones: bool,
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
    fn default_audit_checkpoint_interval() -> Duration {
        Duration::from_secs(3600)
    }
    fn default_key_cache_ttl() -> Duration {
        Duration::from_secs(10)
    }
    fn default_coordinator_concurrency() -> usize {
        16
    }
    fn default_coordinator_batch_size() -> usize {
        64
    }
    fn default_webhook_timeout() -> Duration {
        Duration::from_secs(10)
    }
    fn default_tombstones() -> bool {
        true
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
            coordinator_batch_size: Self::default_coordinator_batch_size(),
            webhook_timeout: Self::default_webhook_timeout(),
            export_link_ttl: Self::default_export_link_ttl(),
            export_ttl: Self::default_export_ttl(),
            audit_checkpoint_interval: Self::default_audit_checkpoint_interval(),
            pages: PagesSettings::default(),
            smtp: None,
            outbound: OutboundSettings::default(),
            tombstones: Self::default_tombstones(),
        }
    }
}

impl Section for ApiSettings {
    const KEY: &'static str = "api";

    fn absent() -> Self {
        Self::default()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.audit_checkpoint_interval < Duration::from_secs(1) {
            return Err(ConfigError::Invalid(
                "api.audit_checkpoint_interval: must be at least 1s".into(),
            ));
        }
        Ok(())
    }
}

/// The console's and privacy center's settings (`[api.pages]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PagesSettings {
    /// The address people reach the api at: the base of the links Lethe mails. An `https`
    /// address also marks the cookies `Secure`.
    pub public_url: Url,
    /// How long a console login lasts.
    #[serde(with = "humantime_serde")]
    pub session_ttl: Duration,
    /// How long a privacy center link may wait to be followed before the request is purged.
    #[serde(with = "humantime_serde")]
    pub verification_ttl: Duration,
    /// Privacy center submissions one email address may make per `limit_window`.
    pub limit_per_address: u32,
    /// Privacy center submissions one client IP may make per `limit_window`.
    pub limit_per_ip: u32,
    /// The window of both rate limits.
    #[serde(with = "humantime_serde")]
    pub limit_window: Duration,
    /// How often expired verifications are purged and finished exports mailed.
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
}

impl Default for PagesSettings {
    fn default() -> Self {
        Self {
            public_url: Url::parse("http://127.0.0.1:8080/").unwrap_or_else(|_| unreachable!()),
            session_ttl: Duration::from_secs(8 * 3600),
            verification_ttl: Duration::from_secs(24 * 3600),
            limit_per_address: 3,
            limit_per_ip: 30,
            limit_window: Duration::from_secs(3600),
            sweep_interval: Duration::from_secs(5),
        }
    }
}

/// How the privacy center's mail leaves (`[api.smtp]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpSettings {
    /// The SMTP server.
    pub host: String,
    /// Its port (25, 465 for `tls`, 587 for `starttls`; the local catcher listens on 1025).
    #[serde(default = "SmtpSettings::default_port")]
    pub port: u16,
    /// `none` (a local catcher), `starttls` or `tls`.
    #[serde(default)]
    pub security: SmtpSecurity,
    /// Login name, if the server wants one.
    pub username: Option<String>,
    /// Its password.
    pub password: Option<SecretString>,
    /// The sender, e.g. `Privacy <privacy@example.com>`.
    pub from: String,
    /// How long one delivery may take.
    #[serde(default = "SmtpSettings::default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

impl SmtpSettings {
    fn default_port() -> u16 {
        25
    }
    fn default_timeout() -> Duration {
        Duration::from_secs(10)
    }
}

/// Transport security towards the SMTP server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    /// Plain SMTP: only for a catcher on this machine.
    None,
    /// Upgrade with STARTTLS (required).
    #[default]
    Starttls,
    /// TLS from the first byte.
    Tls,
}
