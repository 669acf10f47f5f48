//! One retention run: every policy applied once against a given clock, each deletion recorded
//! in the catalog and the audit chain, and a report of what was (or, in a dry run, would be)
//! deleted and of the oldest item left per target.
//!
//! Ages are measured from each item's own creation time (a backup's start, an export's
//! assembly, an object's `LastModified`, a log row's timestamp) against the clock the run is
//! given, never against the newest backup: a stopped backup schedule keeps nothing alive.
//!
//! Deletions are idempotent (deleting a key already gone succeeds, a catalog row is marked
//! once), so a run interrupted anywhere is simply run again; one advisory lock in the ledger
//! keeps two processes from running at once.

mod backups;
mod exports;
mod identities;
mod keys;
mod logs;
mod plan;
mod publish;
mod report;
mod staging;
mod tombstones;
mod uploads;

use std::time::{Duration, Instant};

use crate::settings::RetentionSettings;
use anyhow::Context as _;
use aws_sdk_s3::Client;
use chrono::{DateTime, Utc};
use lethe_common::Settings;
use lethe_common::nats::Publisher;
use lethe_common::s3 as s3util;
use lethe_common::schedule::Schedule;
use sqlx::PgPool;
use uuid::Uuid;

use crate::catalog::RunLock;

pub use identities::SETTLE;
pub use keys::{EXPORTS_PREFIX, STAGING_PREFIX};
pub use plan::{LogStore, Plan};
pub use report::{
    BackupItem, ExportItem, IdentitiesSection, IdentityItem, LogItem, Mode, Outcome, Report,
    Section, StagingItem, TombstoneItem, UploadItem, UploadsSection,
};

/// The retention runner: the policies, the ledger, the bucket, the log stores.
pub struct Retention {
    plan: Plan,
    pool: PgPool,
    s3: Client,
    bucket: String,
    events: Option<Publisher>,
}

fn before(now: DateTime<Utc>, age: Duration) -> DateTime<Utc> {
    now - chrono::Duration::from_std(age).unwrap_or(chrono::Duration::MAX)
}

fn bytes(value: Option<i64>) -> u64 {
    value.and_then(|b| u64::try_from(b).ok()).unwrap_or(0)
}

/// The earlier of two creation times, either of which may be unknown.
fn earliest(a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl Retention {
    /// A runner over an opened ledger and bucket; `events`, if given, receives the
    /// `retention` event of every run that deletes.
    pub fn new(
        plan: Plan,
        pool: PgPool,
        s3: Client,
        bucket: String,
        events: Option<Publisher>,
    ) -> Self {
        Self {
            plan,
            pool,
            s3,
            bucket,
            events,
        }
    }

    /// Checks the configuration, then opens (and migrates) the ledger and checks the bucket.
    pub async fn connect(settings: &Settings) -> anyhow::Result<Self> {
        settings.require_ledger()?;
        let bucket = settings.require_s3()?.bucket.clone();
        let plan = Plan::load(settings)?;
        let (pool, s3) = lethe_common::daemon::open_ledger_and_bucket(settings).await?;
        Ok(Self::new(plan, pool, s3, bucket, None))
    }

    /// The ledger.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// When runs start by themselves.
    pub fn schedule(&self) -> &Schedule {
        &self.plan.schedule
    }

    /// `[retention]`.
    pub fn settings(&self) -> &RetentionSettings {
        &self.plan.settings
    }

    /// Applies every policy once with the clock at `now`. A dry run takes no lock and changes
    /// nothing; a run that deletes holds the ledger's retention lock throughout, and returns
    /// [`Outcome::Busy`] if another process holds it.
    pub async fn run(&self, now: DateTime<Utc>, mode: Mode) -> anyhow::Result<Outcome> {
        let lock = match mode {
            Mode::DryRun => None,
            Mode::Delete => match RunLock::try_acquire(&self.pool)
                .await
                .context("while taking the retention lock in the ledger")?
            {
                Some(lock) => Some(lock),
                None => {
                    tracing::info!(
                        "another process is running retention; not starting a second run"
                    );
                    return Ok(Outcome::Busy);
                }
            },
        };
        let clock = Instant::now();
        let dry = mode == Mode::DryRun;
        let backups = self.backups(now, dry).await;
        let would_delete: Vec<Uuid> = if dry {
            backups.items.iter().map(|b| b.backup_id).collect()
        } else {
            Vec::new()
        };
        let exports = self.exports(now, dry).await;
        let staging = self.staging(now, dry).await;
        let uploads = self.uploads(now, dry).await;
        let logs = self.logs(now, dry).await;
        let identities = self.identities(now, dry, &would_delete).await;
        let tombstones = self.tombstones(now, dry, &would_delete).await;
        if let Some(lock) = lock {
            lock.release().await;
        }
        let report = Report {
            dry_run: dry,
            now,
            backups,
            exports,
            staging,
            uploads,
            logs,
            identities,
            tombstones,
            duration_ms: u64::try_from(clock.elapsed().as_millis()).unwrap_or(u64::MAX),
        };
        self.publish(&report).await;
        Ok(Outcome::Completed(Box::new(report)))
    }

    /// Deletes the objects of a catalogued item (`what`, as the report names it), then marks its
    /// catalog row deleted with `mark`: objects first, so that a row marked deleted never names
    /// an object still there. Whether this run counts the item: not when a step failed (the
    /// error goes into `section`), nor when another run marked the row first (it counted it).
    async fn delete_catalogued<T>(
        &self,
        section: &mut Section<T>,
        what: &str,
        objects_are: &str,
        keys: &[String],
        mark: impl Future<Output = sqlx::Result<bool>>,
    ) -> bool {
        if let Err(error) = s3util::delete_keys(&self.s3, &self.bucket, keys).await {
            section.error(what, &error);
            return false;
        }
        match mark.await {
            Ok(marked) => marked,
            Err(error) => {
                section.errors.push(format!(
                    "{what}: its {objects_are} deleted but the catalog could not be updated: {error}"
                ));
                false
            }
        }
    }
}
