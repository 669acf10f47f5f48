//! What a run did (or, in a dry run, would do), target by target.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

/// Whether a run deletes or only reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Deletes.
    Delete,
    /// Lists what would be deleted and deletes nothing.
    DryRun,
}

/// How a run ended (failures of single items are in the report's `errors`).
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The run went through every policy.
    Completed(Box<Report>),
    /// Another process is running retention right now.
    Busy,
}

/// What one target's policy did.
#[derive(Debug, Clone, Serialize)]
pub struct Section<T> {
    /// Items deleted (or, in a dry run, that would be).
    pub deleted: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Each of them.
    pub items: Vec<T>,
    /// The creation time of the oldest item left.
    pub oldest_left: Option<DateTime<Utc>>,
    /// What could not be done; the next run tries again.
    pub errors: Vec<String>,
}

impl<T> Section<T> {
    /// Records what could not be done (`what`, then why); the next run tries again.
    pub(crate) fn error(&mut self, what: &str, error: impl std::fmt::Display) {
        self.errors.push(format!("{what}: {error}"));
    }
}

impl<T> Default for Section<T> {
    fn default() -> Self {
        Self {
            deleted: 0,
            bytes: 0,
            items: Vec::new(),
            oldest_left: None,
            errors: Vec::new(),
        }
    }
}

/// A backup deleted.
#[derive(Debug, Clone, Serialize)]
pub struct BackupItem {
    /// Its id.
    pub backup_id: Uuid,
    /// Its store.
    pub store: String,
    /// Its status before.
    pub status: String,
    /// The object.
    pub object_key: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// Its size.
    pub bytes: u64,
}

/// An export archive deleted.
#[derive(Debug, Clone, Serialize)]
pub struct ExportItem {
    /// The request, if the catalog knows it (an orphaned archive has none).
    pub request_id: Option<Uuid>,
    /// The archive.
    pub object_key: String,
    /// When it was made (catalog) or written (orphan).
    pub created_at: Option<DateTime<Utc>>,
    /// Its size.
    pub bytes: u64,
    /// Whether the catalog named it.
    pub in_catalog: bool,
}

/// The staging leftovers of one request. Keys inside a staging area can name a subject's
/// objects, so only the request's prefix is reported.
#[derive(Debug, Clone, Serialize)]
pub struct StagingItem {
    /// `staging/<request>/`.
    pub prefix: String,
    /// Objects deleted under it.
    pub objects: u64,
    /// Their bytes.
    pub bytes: u64,
    /// The newest of them.
    pub newest: Option<DateTime<Utc>>,
}

/// An unfinished multipart upload aborted.
#[derive(Debug, Clone, Serialize)]
pub struct UploadItem {
    /// The first two levels of its key (the rest can name a subject's object).
    pub prefix: String,
    /// When it was started.
    pub initiated: Option<DateTime<Utc>>,
}

/// What listing unfinished uploads found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct UploadsSection {
    /// The uploads aborted.
    #[serde(flatten)]
    pub section: Section<UploadItem>,
}

/// One log table.
#[derive(Debug, Clone, Serialize)]
pub struct LogItem {
    /// The store.
    pub store: String,
    /// The table.
    pub table: String,
    /// Rows older than this were deleted.
    pub before: DateTime<Utc>,
    /// Rows deleted.
    pub rows: u64,
    /// Statements (batches) run.
    pub batches: u64,
    /// The oldest row left.
    pub oldest_left: Option<DateTime<Utc>>,
    /// Why the table could not be pruned, if it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A request whose identities were minimised.
#[derive(Debug, Clone, Serialize)]
pub struct IdentityItem {
    /// The request.
    pub request_id: Uuid,
    /// Its kind.
    pub kind: String,
    /// Its erasure record (completed erasures).
    pub erasure_seq: Option<i64>,
}

/// The identities minimised.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IdentitiesSection {
    /// Requests minimised.
    #[serde(flatten)]
    pub section: Section<IdentityItem>,
    /// Erasures up to this record were minimised: every backup a restore can use was taken
    /// after them (`None`: no such backup, every settled erasure was).
    pub replay_window: Option<i64>,
}

/// A tombstone deleted (its key names the request and the time, never the subject).
#[derive(Debug, Clone, Serialize)]
pub struct TombstoneItem {
    /// The request it records.
    pub request_id: Uuid,
    /// When the request completed.
    pub completed_at: DateTime<Utc>,
}

/// What a run did.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// A dry run deletes nothing.
    pub dry_run: bool,
    /// The clock of the run.
    pub now: DateTime<Utc>,
    /// Backups.
    pub backups: Section<BackupItem>,
    /// Export archives.
    pub exports: Section<ExportItem>,
    /// Staging leftovers.
    pub staging: Section<StagingItem>,
    /// Unfinished multipart uploads.
    pub uploads: UploadsSection,
    /// Log tables.
    pub logs: Vec<LogItem>,
    /// Identities in the ledger.
    pub identities: IdentitiesSection,
    /// Tombstones no backup needs any more.
    pub tombstones: Section<TombstoneItem>,
    /// How long the run took.
    pub duration_ms: u64,
}

impl Report {
    /// Every error of the run.
    pub fn errors(&self) -> usize {
        self.backups.errors.len()
            + self.exports.errors.len()
            + self.staging.errors.len()
            + self.uploads.section.errors.len()
            + self.identities.section.errors.len()
            + self.tombstones.errors.len()
            + self.logs.iter().filter(|l| l.error.is_some()).count()
    }

    /// Log rows deleted.
    pub fn log_rows(&self) -> u64 {
        self.logs.iter().map(|l| l.rows).sum()
    }

    /// Whether the run deleted (or would delete) nothing at all.
    pub fn is_empty(&self) -> bool {
        self.backups.deleted == 0
            && self.exports.deleted == 0
            && self.staging.deleted == 0
            && self.uploads.section.deleted == 0
            && self.log_rows() == 0
            && self.identities.section.deleted == 0
            && self.tombstones.deleted == 0
    }
}
