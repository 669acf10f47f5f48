//! Typed configuration: one TOML file plus `LETHE__SECTION__KEY` environment overrides.
//!
//! Every daemon reads the same file and takes the sections it needs, so an operator keeps one
//! file per deployment. Unknown keys are refused (a typo must not silently fall back to a
//! default), and an error names the key and the source it came from.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use secrecy::SecretString;
use serde::Deserialize;

use crate::telemetry::TelemetrySettings;

/// Environment variable naming the configuration file when `--config` is not given.
pub const CONFIG_ENV: &str = "LETHE_CONFIG";
/// Prefix of the environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "LETHE__";

/// Everything a Lethe daemon can be configured with. Each daemon uses the sections it needs and
/// checks their presence with [`Settings::require`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Path of the data map, relative to the configuration file.
    pub data_map: Option<PathBuf>,
    /// Logging.
    #[serde(default)]
    pub telemetry: TelemetrySettings,
    /// Keyed hashing of identifiers.
    pub privacy: Option<PrivacySettings>,
    /// The NATS server and the names of Lethe's streams on it.
    pub nats: NatsSettings,
    /// The ledger database (PostgreSQL). Needed by the api, backup and retention daemons only.
    pub ledger: Option<LedgerSettings>,
    /// Lethe's own S3 bucket (exports, backups, staging).
    pub s3: Option<S3Settings>,
    /// The api daemon.
    #[serde(default = "ApiSettings::default")]
    pub api: ApiSettings,
    /// The eraser daemon.
    #[serde(default = "WorkerSettings::eraser")]
    pub eraser: WorkerSettings,
    /// The exporter daemon.
    #[serde(default = "WorkerSettings::exporter")]
    pub exporter: WorkerSettings,
    /// The backup daemon.
    #[serde(default = "WorkerSettings::backup")]
    pub backup: WorkerSettings,
    /// The retention daemon: its worker settings and the retention policies it enforces.
    #[serde(default)]
    pub retention: RetentionSettings,
    /// What the backup daemon backs up, how, when, and to whom it encrypts.
    #[serde(default)]
    pub backups: BackupsSettings,
    /// Directory of the configuration file, against which relative paths are resolved.
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// Secrets the data map names by variable (`url_env`, ...) given in code rather than in
    /// the environment; never read from the file.
    #[serde(skip)]
    pub credentials: Credentials,
}

/// Where the secrets a data map names by variable (`url_env`, `access_key_id_env`, ...) come
/// from: values a program gives in code ([`Settings::with_credential`]: a restore target typed
/// on the command line, a server the program started itself, a test's private store) first,
/// then the process environment.
#[derive(Clone, Default)]
pub struct Credentials {
    given: std::collections::BTreeMap<String, SecretString>,
}

impl Credentials {
    /// The value of `name`, if given or set in the environment (and not empty).
    pub fn get(&self, name: &str) -> Option<SecretString> {
        if let Some(value) = self.given.get(name) {
            return Some(value.clone());
        }
        std::env::var(name)
            .ok()
            .filter(|v| !v.is_empty())
            .map(SecretString::from)
    }

    /// Every value given in code, by name (to hand to a child process's environment).
    pub fn given(&self) -> impl Iterator<Item = (&str, &SecretString)> {
        self.given.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Gives `name` the value `value`, whatever the environment holds.
    pub fn insert(&mut self, name: impl Into<String>, value: SecretString) {
        self.given.insert(name.into(), value);
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names only: the values are secrets.
        f.debug_set().entries(self.given.keys()).finish()
    }
}

/// Keyed hashing of identifiers, so logs and minimised ledger rows can refer to a subject
/// without holding the identifier.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacySettings {
    /// HMAC-SHA256 key; at least 32 characters.
    pub hash_key: SecretString,
}

/// Where NATS is and how Lethe's streams and consumers are shaped.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSettings {
    /// Server URL(s), comma-separated.
    pub url: String,
    /// Prefix of every subject, stream and consumer name; lets several deployments (or tests)
    /// share one server without seeing each other's messages.
    #[serde(default = "NatsSettings::default_prefix")]
    pub prefix: String,
    /// Optional credentials file (NATS `.creds`).
    pub credentials_file: Option<PathBuf>,
    /// How long the first connection may take before start-up fails.
    #[serde(
        default = "NatsSettings::default_connect_timeout",
        with = "humantime_serde"
    )]
    pub connect_timeout: Duration,
    /// Replicas of each stream (3 in a clustered deployment).
    #[serde(default = "NatsSettings::default_replicas")]
    pub replicas: usize,
    /// Maximum age of a task message: tasks carry identifiers, so they must not linger.
    #[serde(
        default = "NatsSettings::default_task_max_age",
        with = "humantime_serde"
    )]
    pub task_max_age: Duration,
    /// Maximum age of an event on the events stream.
    #[serde(
        default = "NatsSettings::default_event_max_age",
        with = "humantime_serde"
    )]
    pub event_max_age: Duration,
    /// Window in which JetStream drops a message whose `Nats-Msg-Id` it has already stored.
    #[serde(
        default = "NatsSettings::default_duplicate_window",
        with = "humantime_serde"
    )]
    pub duplicate_window: Duration,
    /// Deliveries of one task before it is dead-lettered.
    #[serde(default = "NatsSettings::default_max_deliver")]
    pub max_deliver: i64,
    /// How long a worker may hold a task without acknowledging or signalling progress.
    #[serde(default = "NatsSettings::default_ack_wait", with = "humantime_serde")]
    pub ack_wait: Duration,
    /// Unacknowledged tasks one durable consumer hands out at once, across all its processes.
    #[serde(default = "NatsSettings::default_max_ack_pending")]
    pub max_ack_pending: i64,
}

impl NatsSettings {
    fn default_prefix() -> String {
        "lethe".to_owned()
    }
    fn default_connect_timeout() -> Duration {
        Duration::from_secs(5)
    }
    fn default_replicas() -> usize {
        1
    }
    fn default_task_max_age() -> Duration {
        Duration::from_secs(7 * 24 * 3600)
    }
    fn default_event_max_age() -> Duration {
        Duration::from_secs(30 * 24 * 3600)
    }
    fn default_duplicate_window() -> Duration {
        Duration::from_secs(2 * 3600)
    }
    fn default_max_deliver() -> i64 {
        10
    }
    fn default_ack_wait() -> Duration {
        Duration::from_secs(30)
    }
    fn default_max_ack_pending() -> i64 {
        1000
    }
}

/// The ledger database.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerSettings {
    /// PostgreSQL URL; may hold a password, so it is never printed.
    pub url: SecretString,
    /// Pool size.
    #[serde(default = "LedgerSettings::default_max_connections")]
    pub max_connections: u32,
    /// How long start-up waits for the database.
    #[serde(
        default = "LedgerSettings::default_connect_timeout",
        with = "humantime_serde"
    )]
    pub connect_timeout: Duration,
}

impl LedgerSettings {
    fn default_max_connections() -> u32 {
        16
    }
    fn default_connect_timeout() -> Duration {
        Duration::from_secs(5)
    }
}

/// When the S3 client adds checksums to requests and checks them on responses.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ChecksumMode {
    /// Only where the operation requires one: what most S3-compatible servers support.
    #[default]
    WhenRequired,
    /// On every request that supports one (AWS's default).
    WhenSupported,
}

/// An S3-compatible object store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Settings {
    /// Endpoint URL; unset means AWS S3 itself.
    pub endpoint: Option<String>,
    /// Region.
    #[serde(default = "S3Settings::default_region")]
    pub region: String,
    /// Lethe's bucket.
    pub bucket: String,
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: SecretString,
    /// Path-style addressing (`endpoint/bucket/key`), which most S3-compatible servers need.
    #[serde(default = "S3Settings::default_path_style")]
    pub force_path_style: bool,
    /// Checksums on requests and responses.
    #[serde(default)]
    pub checksums: ChecksumMode,
}

impl S3Settings {
    fn default_region() -> String {
        "us-east-1".to_owned()
    }
    fn default_path_style() -> bool {
        true
    }
}

/// The api daemon.
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
        }
    }
}

/// A worker daemon (eraser, exporter, backup, retention).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    pub listen: SocketAddr,
    /// The stores this process serves; empty means every store of the data map. An eraser next
    /// to one isolated store names only that store and holds only its credentials.
    #[serde(default)]
    pub stores: Vec<String>,
    /// Tasks handled at once by this process.
    #[serde(default = "WorkerSettings::default_concurrency")]
    pub concurrency: usize,
    /// How long in-flight tasks may take to finish on shutdown; unfinished ones are left
    /// unacknowledged, so JetStream redelivers them.
    #[serde(default = "default_drain_timeout", with = "humantime_serde")]
    pub drain_timeout: Duration,
}

impl WorkerSettings {
    fn default_concurrency() -> usize {
        8
    }
    fn with_port(port: u16) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], port)),
            stores: Vec::new(),
            concurrency: Self::default_concurrency(),
            drain_timeout: default_drain_timeout(),
        }
    }
    fn eraser() -> Self {
        Self::with_port(9181)
    }
    fn exporter() -> Self {
        Self::with_port(9182)
    }
    fn backup() -> Self {
        Self::with_port(9183)
    }
}

fn default_drain_timeout() -> Duration {
    Duration::from_secs(30)
}

/// The hard ceiling on how long a backup is kept (DESIGN §7): a longer
/// `retention.backups_max_age` needs `retention.backups_max_age_override`.
pub const BACKUP_CEILING: Duration = Duration::from_secs(7 * 24 * 3600);

/// The retention daemon (`[retention]`): the worker settings every daemon has, and what it
/// deletes when. Every age is measured from the item's own creation time against the clock.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionSettings {
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    pub listen: SocketAddr,
    /// The stores whose log tables this process prunes (it needs their credentials); empty
    /// means every store of the data map that has a log table.
    pub stores: Vec<String>,
    /// Unused by retention (one run at a time); accepted so the section reads like every
    /// worker's.
    pub concurrency: usize,
    /// How long a running pass may take to finish on shutdown.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// When a run starts by itself: an interval (`1h`, counted from the previous run of this
    /// process), a cron expression in UTC (`15 3 * * *`) or `off`.
    pub schedule: String,
    /// Backups older than this are deleted (their objects, manifests and catalog rows). At
    /// most 7 days unless `backups_max_age_override` says why.
    #[serde(with = "humantime_serde")]
    pub backups_max_age: Duration,
    /// Why backups are kept longer than 7 days: required (and recorded in the log) when
    /// `backups_max_age` is over the ceiling.
    pub backups_max_age_override: Option<String>,
    /// Export archives older than this (or past their own `expires_at`) are deleted.
    #[serde(with = "humantime_serde")]
    pub exports_max_age: Duration,
    /// Staging leftovers and incomplete multipart uploads older than this are deleted.
    #[serde(with = "humantime_serde")]
    pub staging_max_age: Duration,
    /// Rows of a log table deleted per statement (one short transaction each).
    pub log_batch_size: u64,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9184)),
            stores: Vec::new(),
            concurrency: 1,
            drain_timeout: default_drain_timeout(),
            schedule: "1h".to_owned(),
            backups_max_age: BACKUP_CEILING,
            backups_max_age_override: None,
            exports_max_age: Duration::from_secs(7 * 24 * 3600),
            staging_max_age: Duration::from_secs(24 * 3600),
            log_batch_size: 1000,
        }
    }
}

impl RetentionSettings {
    /// The worker settings shared with the other daemons.
    pub fn worker(&self) -> WorkerSettings {
        WorkerSettings {
            listen: self.listen,
            stores: self.stores.clone(),
            concurrency: self.concurrency,
            drain_timeout: self.drain_timeout,
        }
    }

    /// Refuses a ceiling over 7 days without a stated reason, ages under an hour (which would
    /// delete work in progress), and batch sizes out of range.
    fn validate(&self) -> Result<(), ConfigError> {
        let reason = self
            .backups_max_age_override
            .as_deref()
            .map(str::trim)
            .filter(|r| !r.is_empty());
        if self.backups_max_age > BACKUP_CEILING && reason.is_none() {
            return Err(ConfigError::Invalid(format!(
                "retention.backups_max_age: {} is over the 7-day ceiling on backups; to keep \
                 backups longer, state why in retention.backups_max_age_override \
                 (environment variable {ENV_PREFIX}RETENTION__BACKUPS_MAX_AGE_OVERRIDE)",
                humantime_serde::re::humantime::format_duration(self.backups_max_age)
            )));
        }
        for (key, age) in [
            ("backups_max_age", self.backups_max_age),
            ("exports_max_age", self.exports_max_age),
            ("staging_max_age", self.staging_max_age),
        ] {
            if age < Duration::from_secs(3600) {
                return Err(ConfigError::Invalid(format!(
                    "retention.{key}: must be at least 1h (environment variable \
                     {ENV_PREFIX}RETENTION__{})",
                    key.to_ascii_uppercase()
                )));
            }
        }
        if !(1..=100_000).contains(&self.log_batch_size) {
            return Err(ConfigError::Invalid(format!(
                "retention.log_batch_size: must be between 1 and 100000 (environment variable \
                 {ENV_PREFIX}RETENTION__LOG_BATCH_SIZE)"
            )));
        }
        Ok(())
    }
}

/// The OpenPGP packet that carries a backup's encrypted data.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SeipdVersion {
    /// SEIPDv1 (RFC 4880, with MDC): what GnuPG 2.2 and every other implementation reads.
    #[default]
    V1,
    /// SEIPDv2 (RFC 9580, AEAD): needs an RFC 9580 implementation (Sequoia's `sq`, for one) to
    /// decrypt; GnuPG 2.2 cannot.
    V2,
}

/// A size in bytes, written as a whole number of bytes or with a binary unit (`8MiB`,
/// `512 KiB`, `1GiB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parses `8MiB`, `512 KiB`, `1GiB`, `4096` or `4096B`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: u64 = number
            .parse()
            .map_err(|_| format!("`{text}` is not a size (write e.g. 8MiB or 8388608)"))?;
        let factor: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            other => {
                return Err(format!(
                    "unknown size unit `{other}` (use B, KiB, MiB or GiB)"
                ));
            }
        };
        number
            .checked_mul(factor)
            .map(ByteSize)
            .ok_or_else(|| format!("`{text}` is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Bytes(n) => Ok(ByteSize(n)),
            Raw::Text(text) => ByteSize::parse(&text).map_err(serde::de::Error::custom),
        }
    }
}

/// The programs the backup daemon runs: names looked up on `PATH`, or absolute paths.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackupTools {
    /// PostgreSQL dumps.
    pub pg_dump: PathBuf,
    /// PostgreSQL restores.
    pub pg_restore: PathBuf,
    /// MariaDB / MySQL dumps.
    pub mariadb_dump: PathBuf,
    /// MariaDB / MySQL restores (the command-line client).
    pub mariadb: PathBuf,
    /// Redis RDB transfers.
    pub redis_cli: PathBuf,
    /// The Redis server a restore starts on the restored RDB to replay erasures.
    pub redis_server: PathBuf,
    /// GnuPG, for decrypting with the operator's agent (`--gpg`).
    pub gpg: PathBuf,
}

impl Default for BackupTools {
    fn default() -> Self {
        Self {
            pg_dump: "pg_dump".into(),
            pg_restore: "pg_restore".into(),
            mariadb_dump: "mariadb-dump".into(),
            mariadb: "mariadb".into(),
            redis_cli: "redis-cli".into(),
            redis_server: "redis-server".into(),
            gpg: "gpg".into(),
        }
    }
}

/// The backup daemon's backups (`[backups]`). The `[backup]` section holds its operations
/// address, the stores it backs up and its drain timeout, as for every worker.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackupsSettings {
    /// Files holding the operators' OpenPGP certificates (public keys only, ASCII-armored or
    /// binary; a file may hold several), relative to the configuration file. Every backup is
    /// encrypted to every one of them. The daemon refuses to start without one, or with one
    /// that is expired, revoked, unusable for encryption, or holding secret key material.
    pub recipients: Vec<PathBuf>,
    /// The packet format of the encrypted data.
    pub seipd: SeipdVersion,
    /// When each store is backed up: store name (or `default`, for every store not named) ->
    /// an interval (`24h`), a cron expression evaluated in UTC (`30 2 * * *`), or `off`.
    pub schedule: std::collections::BTreeMap<String, String>,
    /// How long a backup is kept: its `expires_at` is its start plus this.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Key prefix of backups and manifests in Lethe's bucket.
    pub prefix: String,
    /// Size of the first multipart-upload parts; later parts grow so that any backup stays
    /// under S3's 10,000-part limit. At least 5 MiB.
    pub part_size: ByteSize,
    /// Parts uploaded at once (memory holds this many parts plus the one being filled).
    pub upload_concurrency: usize,
    /// zstd compression level (1-19).
    pub zstd_level: i32,
    /// zstd worker threads (0: compress on the pipeline's own thread).
    pub zstd_workers: u32,
    /// Backups this process runs at once.
    pub concurrency: usize,
    /// How often a running backup logs its progress.
    #[serde(with = "humantime_serde")]
    pub progress_interval: Duration,
    /// The programs run.
    pub tools: BackupTools,
}

impl Default for BackupsSettings {
    fn default() -> Self {
        Self {
            recipients: Vec::new(),
            seipd: SeipdVersion::default(),
            schedule: std::collections::BTreeMap::from([("default".to_owned(), "24h".to_owned())]),
            max_age: Duration::from_secs(7 * 24 * 3600),
            prefix: "backups/".to_owned(),
            part_size: ByteSize(8 << 20),
            upload_concurrency: 2,
            zstd_level: 3,
            zstd_workers: 2,
            concurrency: 1,
            progress_interval: Duration::from_secs(30),
            tools: BackupTools::default(),
        }
    }
}

/// A configuration that cannot be used. The message names the key and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file is missing.
    #[error("configuration file {path} does not exist (set --config or {CONFIG_ENV})")]
    Missing {
        /// The path looked for.
        path: PathBuf,
    },
    /// The file or an override does not fit the schema.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// A section the daemon needs is absent.
    #[error("configuration key `{0}` is required by this daemon but missing")]
    MissingSection(&'static str),
}

impl Settings {
    /// Loads `path`, applies `LETHE__SECTION__KEY` overrides and validates the result.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        if !path.is_file() {
            return Err(ConfigError::Missing {
                path: path.to_owned(),
            });
        }
        let figment = Figment::from(Toml::file(path)).merge(Env::prefixed(ENV_PREFIX).split("__"));
        let mut settings: Settings = figment
            .extract()
            .map_err(|e| ConfigError::Invalid(describe_figment_error(e)))?;
        settings.base_dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        settings.validate()?;
        Ok(settings)
    }

    /// Parses settings from a TOML string, without environment overrides (for tests).
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let mut settings: Settings = Figment::from(Toml::string(text))
            .extract()
            .map_err(|e| ConfigError::Invalid(describe_figment_error(e)))?;
        settings.base_dir = PathBuf::from(".");
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        crate::nats::Names::new(&self.nats.prefix)
            .map_err(|e| ConfigError::Invalid(format!("nats.prefix: {e}")))?;
        if self.nats.max_deliver < 1 {
            return Err(ConfigError::Invalid(
                "nats.max_deliver: must be at least 1".into(),
            ));
        }
        if let Some(privacy) = &self.privacy {
            use secrecy::ExposeSecret;
            if privacy.hash_key.expose_secret().len() < 32 {
                return Err(ConfigError::Invalid(
                    "privacy.hash_key: must be at least 32 characters".into(),
                ));
            }
        }
        let retention = self.retention.worker();
        for (name, worker) in [
            ("eraser", &self.eraser),
            ("exporter", &self.exporter),
            ("backup", &self.backup),
            ("retention", &retention),
        ] {
            if worker.concurrency == 0 {
                return Err(ConfigError::Invalid(format!(
                    "{name}.concurrency: must be at least 1"
                )));
            }
        }
        self.retention.validate()?;
        Ok(())
    }

    /// The same settings with the credential `name` given as `value` (see [`Credentials`]).
    #[must_use]
    pub fn with_credential(mut self, name: impl Into<String>, value: SecretString) -> Self {
        self.credentials.insert(name, value);
        self
    }

    /// The ledger section, or an error naming it.
    pub fn require_ledger(&self) -> Result<&LedgerSettings, ConfigError> {
        self.ledger
            .as_ref()
            .ok_or(ConfigError::MissingSection("ledger"))
    }

    /// The S3 section, or an error naming it.
    pub fn require_s3(&self) -> Result<&S3Settings, ConfigError> {
        self.s3.as_ref().ok_or(ConfigError::MissingSection("s3"))
    }

    /// The privacy section, or an error naming it.
    pub fn require_privacy(&self) -> Result<&PrivacySettings, ConfigError> {
        self.privacy
            .as_ref()
            .ok_or(ConfigError::MissingSection("privacy"))
    }

    /// The data map's path, resolved against the configuration file's directory.
    pub fn data_map_path(&self) -> Result<PathBuf, ConfigError> {
        let path = self
            .data_map
            .as_ref()
            .ok_or(ConfigError::MissingSection("data_map"))?;
        Ok(self.base_dir.join(path))
    }
}

/// Figment's messages already name the key and the file or variable it came from; this only
/// puts the key first so the line reads well on its own.
fn describe_figment_error(error: figment::Error) -> String {
    error
        .into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let source = e
                .metadata
                .as_ref()
                .map(|m| match &m.source {
                    Some(source) => format!(" (from {} {source})", m.name),
                    // An override: name the very variable, which figment does not.
                    None if m.name.contains("environment") && !e.path.is_empty() => format!(
                        " (from environment variable {ENV_PREFIX}{})",
                        e.path.join("__").to_ascii_uppercase()
                    ),
                    None => format!(" (from {})", m.name),
                })
                .unwrap_or_default();
            if key.is_empty() {
                format!("{}{source}", e.kind)
            } else {
                format!("key `{key}`: {}{source}", e.kind)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [nats]
        url = "nats://127.0.0.1:4222"
    "#;

    #[test]
    fn minimal_configuration_takes_defaults() {
        let settings = Settings::from_toml(MINIMAL).unwrap();
        assert_eq!(settings.nats.prefix, "lethe");
        assert_eq!(settings.eraser.listen.port(), 9181);
        assert!(settings.ledger.is_none());
    }

    #[test]
    fn unknown_key_is_refused_and_named() {
        let err = Settings::from_toml(&format!("{MINIMAL}\nprefixx = \"x\"\n")).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("prefixx"), "{message}");
    }

    #[test]
    fn nested_unknown_key_names_its_section() {
        let text = "[nats]\nurl = \"nats://x\"\nreplicaz = 3\n";
        let message = Settings::from_toml(text).unwrap_err().to_string();
        assert!(message.contains("nats"), "{message}");
        assert!(message.contains("replicaz"), "{message}");
    }

    #[test]
    fn secrets_are_not_printed_by_debug() {
        let text = format!(
            "{MINIMAL}\n[ledger]\nurl = \"postgres://u:hunter2@db/lethe\"\n[privacy]\nhash_key = \"{}\"\n",
            "k".repeat(40)
        );
        let settings = Settings::from_toml(&text).unwrap();
        let printed = format!("{settings:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(!printed.contains("kkkkkkkk"), "{printed}");
    }

    #[test]
    fn the_backups_section_takes_sizes_durations_and_a_schedule_and_has_defaults() {
        let defaults = Settings::from_toml(MINIMAL).unwrap().backups;
        assert!(defaults.recipients.is_empty());
        assert_eq!(defaults.seipd, SeipdVersion::V1);
        assert_eq!(defaults.part_size, ByteSize(8 << 20));
        assert_eq!(defaults.max_age, Duration::from_secs(7 * 24 * 3600));
        let text = format!(
            "{MINIMAL}\n[backups]\nrecipients = [\"ops.asc\"]\nseipd = \"v2\"\npart_size = \"16 MiB\"\n\
             max_age = \"3d\"\nschedule = {{ default = \"24h\", accounts = \"30 2 * * *\" }}\n\
             [backups.tools]\npg_dump = \"/usr/lib/postgresql/16/bin/pg_dump\"\n"
        );
        let backups = Settings::from_toml(&text).unwrap().backups;
        assert_eq!(backups.seipd, SeipdVersion::V2);
        assert_eq!(backups.part_size, ByteSize(16 << 20));
        assert_eq!(backups.max_age, Duration::from_secs(3 * 24 * 3600));
        assert_eq!(backups.schedule["accounts"], "30 2 * * *");
        assert_eq!(
            backups.tools.pg_dump,
            PathBuf::from("/usr/lib/postgresql/16/bin/pg_dump")
        );
        assert_eq!(backups.tools.mariadb_dump, PathBuf::from("mariadb-dump"));
        let message = Settings::from_toml(&format!("{MINIMAL}\n[backups]\npart_size = \"8 MB\"\n"))
            .unwrap_err()
            .to_string();
        assert!(message.contains("backups.part_size"), "{message}");
        assert_eq!(ByteSize::parse("4096"), Ok(ByteSize(4096)));
        assert!(ByteSize::parse("lots").is_err());
    }

    #[test]
    fn the_retention_section_has_defaults_and_refuses_a_backup_ceiling_over_7_days_without_a_reason()
     {
        let defaults = Settings::from_toml(MINIMAL).unwrap().retention;
        assert_eq!(defaults.backups_max_age, BACKUP_CEILING);
        assert_eq!(defaults.exports_max_age, Duration::from_secs(7 * 24 * 3600));
        assert_eq!(defaults.staging_max_age, Duration::from_secs(24 * 3600));
        assert_eq!(defaults.listen.port(), 9184);
        let shorter = format!("{MINIMAL}\n[retention]\nbackups_max_age = \"3d\"\n");
        assert_eq!(
            Settings::from_toml(&shorter)
                .unwrap()
                .retention
                .backups_max_age,
            Duration::from_secs(3 * 24 * 3600)
        );
        let longer = format!("{MINIMAL}\n[retention]\nbackups_max_age = \"10d\"\n");
        let message = Settings::from_toml(&longer).unwrap_err().to_string();
        assert!(message.contains("retention.backups_max_age"), "{message}");
        assert!(message.contains("7-day ceiling"), "{message}");
        assert!(
            message.contains("LETHE__RETENTION__BACKUPS_MAX_AGE_OVERRIDE"),
            "{message}"
        );
        let blank = format!("{longer}backups_max_age_override = \"  \"\n");
        assert!(Settings::from_toml(&blank).is_err());
        let stated = format!("{longer}backups_max_age_override = \"legal hold, ticket 42\"\n");
        assert_eq!(
            Settings::from_toml(&stated)
                .unwrap()
                .retention
                .backups_max_age,
            Duration::from_secs(10 * 24 * 3600)
        );
        let tiny = format!("{MINIMAL}\n[retention]\nstaging_max_age = \"5m\"\n");
        let message = Settings::from_toml(&tiny).unwrap_err().to_string();
        assert!(message.contains("retention.staging_max_age"), "{message}");
        let typo = format!("{MINIMAL}\n[retention]\nbackup_max_age = \"3d\"\n");
        let message = Settings::from_toml(&typo).unwrap_err().to_string();
        assert!(message.contains("backup_max_age"), "{message}");
    }

    #[test]
    fn bad_prefix_is_refused() {
        let text = "[nats]\nurl = \"nats://x\"\nprefix = \"Bad.Prefix\"\n";
        let message = Settings::from_toml(text).unwrap_err().to_string();
        assert!(message.contains("nats.prefix"), "{message}");
    }
}
