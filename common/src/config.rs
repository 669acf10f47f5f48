//! Typed configuration: one TOML file plus `LETHE__SECTION__KEY` environment overrides.
//!
//! Every daemon reads the same file, so an operator keeps one file per deployment. This module
//! types the sections every daemon shares (`nats`, `ledger`, `s3`, `telemetry`, `privacy`) and
//! the worker section's shape; each daemon owns the type of its own section (`[api]`,
//! `[retention]`, `[backups]`, ...) and reads it with [`Settings::section`]. Unknown keys are
//! refused (a typo must not silently fall back to a default): at the top level by every
//! daemon, inside a daemon's section by that daemon. An error names the key and the source it
//! came from.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use secrecy::SecretString;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};

use crate::telemetry::TelemetrySettings;

/// Environment variable naming the configuration file when `--config` is not given.
pub const CONFIG_ENV: &str = "LETHE_CONFIG";
/// Prefix of the environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "LETHE__";
/// Where backups live in Lethe's bucket unless `backups.prefix` says otherwise.
pub const DEFAULT_BACKUPS_PREFIX: &str = "backups/";

/// The configuration every Lethe daemon reads: the shared sections, typed, and the file itself
/// (with its overrides), from which each daemon reads its own section.
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
    // The daemons' own sections: accepted here, typed and checked by their daemons.
    #[serde(default)]
    #[expect(dead_code, reason = "read by its daemon through `source`")]
    api: IgnoredAny,
    #[serde(default)]
    #[expect(dead_code, reason = "read by its daemon through `source`")]
    eraser: IgnoredAny,
    #[serde(default)]
    #[expect(dead_code, reason = "read by its daemon through `source`")]
    exporter: IgnoredAny,
    #[serde(default)]
    #[expect(dead_code, reason = "read by its daemon through `source`")]
    backup: IgnoredAny,
    #[serde(default)]
    #[expect(dead_code, reason = "read by its daemon through `source`")]
    retention: IgnoredAny,
    #[serde(default)]
    #[expect(dead_code, reason = "read by its daemon through `source`")]
    backups: IgnoredAny,
    /// Directory of the configuration file, against which relative paths are resolved.
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// Secrets the data map names by variable (`url_env`, ...) given in code rather than in
    /// the environment; never read from the file.
    #[serde(skip)]
    pub credentials: Credentials,
    /// The file and its overrides, for the daemons' own sections.
    #[serde(skip)]
    source: Source,
}

/// The configuration's sources, merged. Its `Debug` names no value: the file holds secrets.
#[derive(Clone)]
struct Source(Figment);

impl Default for Source {
    fn default() -> Self {
        Source(Figment::new())
    }
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Source(..)")
    }
}

/// A daemon's own section of the configuration file (`[api]`, `[retention]`, ...), read with
/// [`Settings::section`].
pub trait Section: DeserializeOwned {
    /// Its key.
    const KEY: &'static str;
    /// Its value when the file has no such section.
    fn absent() -> Self;
    /// Checks what the types alone cannot; the message names the key at fault.
    fn validate(&self) -> Result<(), ConfigError> {
        Ok(())
    }
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
    /// Server URL(s): one URL, several comma-separated (`nats://a:4222,nats://b:4222`), or a
    /// TOML list; kept comma-separated. The client starts with any of them and reconnects to
    /// the others (and to the servers they announce) when one goes away.
    #[serde(deserialize_with = "one_or_many_urls")]
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
    /// Every server URL of `url`, in order.
    pub fn server_urls(&self) -> Vec<String> {
        crate::nats::server_urls(&self.url)
    }

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

/// `nats.url` as a string (possibly comma-separated) or a list of strings, joined with commas.
fn one_or_many_urls<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(url) => url,
        OneOrMany::Many(urls) => urls.join(","),
    })
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
    /// Most tasks of one kind and store carried out together (the eraser: one store
    /// transaction for them all); only what has already arrived is batched. 1: one at a time.
    #[serde(default = "WorkerSettings::default_batch_size")]
    pub batch_size: usize,
}

impl WorkerSettings {
    fn default_concurrency() -> usize {
        8
    }

    /// Tasks carried out together at most, unless the section says otherwise.
    pub fn default_batch_size() -> usize {
        64
    }

    /// The settings of a worker whose section is absent: operations on `127.0.0.1:<port>`,
    /// every store, the default concurrency and drain timeout.
    pub fn with_port(port: u16) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], port)),
            stores: Vec::new(),
            concurrency: Self::default_concurrency(),
            drain_timeout: default_drain_timeout(),
            batch_size: Self::default_batch_size(),
        }
    }

    /// Refuses a concurrency or batch size of 0.
    pub fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if self.concurrency == 0 {
            return Err(ConfigError::Invalid(format!(
                "{key}.concurrency: must be at least 1"
            )));
        }
        if self.batch_size == 0 {
            return Err(ConfigError::Invalid(format!(
                "{key}.batch_size: must be at least 1"
            )));
        }
        Ok(())
    }
}

/// How long in-flight work may take to finish on shutdown, unless a section says otherwise.
pub fn default_drain_timeout() -> Duration {
    Duration::from_secs(30)
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
            .map_err(|e| ConfigError::Invalid(describe_figment_error(e, None)))?;
        settings.source = Source(figment);
        settings.base_dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        settings.validate()?;
        Ok(settings)
    }

    /// Parses settings from a TOML string, without environment overrides (for tests).
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let figment = Figment::from(Toml::string(text));
        let mut settings: Settings = figment
            .extract()
            .map_err(|e| ConfigError::Invalid(describe_figment_error(e, None)))?;
        settings.source = Source(figment);
        settings.base_dir = PathBuf::from(".");
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        crate::nats::Names::new(&self.nats.prefix)
            .map_err(|e| ConfigError::Invalid(format!("nats.prefix: {e}")))?;
        crate::nats::check_server_urls(&self.nats.url)
            .map_err(|e| ConfigError::Invalid(format!("nats.url: {e}")))?;
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
        Ok(())
    }

    /// The same settings with the credential `name` given as `value` (see [`Credentials`]).
    #[must_use]
    pub fn with_credential(mut self, name: impl Into<String>, value: SecretString) -> Self {
        self.credentials.insert(name, value);
        self
    }

    /// The daemon section `T` (its defaults where the file has none), checked.
    pub fn section<T: Section>(&self) -> Result<T, ConfigError> {
        let section = if self.source.0.contains(T::KEY) {
            self.source
                .0
                .extract_inner::<T>(T::KEY)
                .map_err(|e| ConfigError::Invalid(describe_figment_error(e, Some(T::KEY))))?
        } else {
            T::absent()
        };
        section.validate()?;
        Ok(section)
    }

    /// The worker section `key` (`[eraser]`, `[exporter]`, `[backup]`): operations on
    /// `127.0.0.1:<default_port>` where the file names no address.
    pub fn worker(
        &self,
        key: &'static str,
        default_port: u16,
    ) -> Result<WorkerSettings, ConfigError> {
        let worker = if self.source.0.contains(key) {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Partial {
                listen: Option<SocketAddr>,
                #[serde(default)]
                stores: Vec<String>,
                concurrency: Option<usize>,
                #[serde(default, with = "humantime_serde")]
                drain_timeout: Option<Duration>,
                batch_size: Option<usize>,
            }
            let partial: Partial = self
                .source
                .0
                .extract_inner(key)
                .map_err(|e| ConfigError::Invalid(describe_figment_error(e, Some(key))))?;
            let defaults = WorkerSettings::with_port(default_port);
            WorkerSettings {
                listen: partial.listen.unwrap_or(defaults.listen),
                stores: partial.stores,
                concurrency: partial.concurrency.unwrap_or(defaults.concurrency),
                drain_timeout: partial.drain_timeout.unwrap_or(defaults.drain_timeout),
                batch_size: partial.batch_size.unwrap_or(defaults.batch_size),
            }
        } else {
            WorkerSettings::with_port(default_port)
        };
        worker.validate(key)?;
        Ok(worker)
    }

    /// The value of `key` (a dotted path: `backups.prefix`) if the file or an override sets
    /// it: for the few keys one daemon reads of another's section.
    pub fn value<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, ConfigError> {
        if !self.source.0.contains(key) {
            return Ok(None);
        }
        self.source
            .0
            .extract_inner(key)
            .map(Some)
            .map_err(|e| ConfigError::Invalid(describe_figment_error(e, Some(key))))
    }

    /// Where backups live in Lethe's bucket (`backups.prefix`): the backup daemon writes there,
    /// retention prunes there.
    pub fn backups_prefix(&self) -> Result<String, ConfigError> {
        Ok(self
            .value("backups.prefix")?
            .unwrap_or_else(|| DEFAULT_BACKUPS_PREFIX.to_owned()))
    }

    /// Sets `key` (a dotted path: `api.listen`) to `value` over what the file says, as an
    /// environment override would: for programs and tests that adjust a loaded configuration.
    pub fn set<V: Serialize>(&mut self, key: &str, value: V) -> &mut Self {
        self.source = Source(
            std::mem::take(&mut self.source)
                .0
                .merge(Serialized::default(key, value)),
        );
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
fn describe_figment_error(error: figment::Error, section: Option<&str>) -> String {
    error
        .into_iter()
        .map(|mut e| {
            // An error inside a section names its key from the section down.
            if let Some(section) = section {
                let mut path: Vec<String> = section.split('.').map(str::to_owned).collect();
                if !e.path.starts_with(&path) {
                    path.append(&mut e.path);
                    e.path = path;
                }
            }
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
        assert_eq!(settings.worker("eraser", 9181).unwrap().listen.port(), 9181);
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
    fn a_daemon_section_is_read_with_its_defaults_overrides_and_key_named_errors() {
        let settings =
            Settings::from_toml(&format!("{MINIMAL}\n[eraser]\nconcurrency = 3\n")).unwrap();
        let eraser = settings.worker("eraser", 9181).unwrap();
        assert_eq!((eraser.concurrency, eraser.listen.port()), (3, 9181));
        assert_eq!(settings.worker("exporter", 9182).unwrap().concurrency, 8);
        let mut settings = settings;
        settings.set("eraser.listen", "127.0.0.1:0");
        assert_eq!(settings.worker("eraser", 9181).unwrap().listen.port(), 0);
        let typo = Settings::from_toml(&format!("{MINIMAL}\n[eraser]\nconcurency = 3\n")).unwrap();
        let message = typo.worker("eraser", 9181).unwrap_err().to_string();
        assert!(message.contains("eraser"), "{message}");
        assert!(message.contains("concurency"), "{message}");
        let zero = Settings::from_toml(&format!("{MINIMAL}\n[eraser]\nconcurrency = 0\n")).unwrap();
        let message = zero.worker("eraser", 9181).unwrap_err().to_string();
        assert!(message.contains("eraser.concurrency"), "{message}");
        assert_eq!(settings.value::<String>("backups.prefix").unwrap(), None);
    }

    #[test]
    fn several_nats_urls_are_taken_as_a_list_or_comma_separated() {
        let list = "[nats]\nurl = [\"nats://a:4222\", \"nats://b:4222\"]\n";
        let settings = Settings::from_toml(list).unwrap();
        assert_eq!(settings.nats.url, "nats://a:4222,nats://b:4222");
        assert_eq!(settings.nats.server_urls().len(), 2);
        let text = "[nats]\nurl = \"nats://a:4222, nats://b:4222\"\n";
        assert_eq!(
            Settings::from_toml(text).unwrap().nats.server_urls().len(),
            2
        );
        let bad = "[nats]\nurl = \"nats://a:4222,http://b\"\n";
        let message = Settings::from_toml(bad).unwrap_err().to_string();
        assert!(message.contains("nats.url: URL 2 of 2"), "{message}");
    }

    #[test]
    fn bad_prefix_is_refused() {
        let text = "[nats]\nurl = \"nats://x\"\nprefix = \"Bad.Prefix\"\n";
        let message = Settings::from_toml(text).unwrap_err().to_string();
        assert!(message.contains("nats.prefix"), "{message}");
    }
}
