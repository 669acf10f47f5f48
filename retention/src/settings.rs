//! The retention daemon's own section of the configuration file, `[retention]`.

use std::net::SocketAddr;
use std::time::Duration;

use lethe_common::config::{
    ConfigError, ENV_PREFIX, Section, WorkerSettings, default_drain_timeout,
};
use serde::Deserialize;

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
            batch_size: 1,
        }
    }

    /// Refuses a ceiling over 7 days without a stated reason, ages under an hour (which would
    /// delete work in progress), and batch sizes out of range.
    fn check(&self) -> Result<(), ConfigError> {
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

impl Section for RetentionSettings {
    const KEY: &'static str = "retention";

    fn absent() -> Self {
        Self::default()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.check()?;
        self.worker().validate(Self::KEY)
    }
}
