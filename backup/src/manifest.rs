//! The manifest written next to each backup object: what it holds and how to check it, readable
//! without the ledger.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The manifest format written by this version.
pub const FORMAT: u32 = 1;

/// What one backup object holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Manifest format version.
    pub format: u32,
    /// The backup's id (the ledger's `backup.id`).
    pub backup_id: Uuid,
    /// The store, as the data map names it.
    pub store: String,
    /// Its kind: `postgres`, `mysql`, `redis`, `s3`.
    pub kind: String,
    /// The dump tool (`pg_dump`, `mariadb-dump`, `redis-cli`, `tar`).
    pub tool: String,
    /// Its `--version` line.
    pub tool_version: String,
    /// What the dump is: `pg_dump custom format`, `SQL`, `Redis RDB`, `tar`.
    pub format_of_dump: String,
    /// The encrypted object, next to this manifest.
    pub object_key: String,
    /// When the dump started.
    pub started_at: DateTime<Utc>,
    /// When the upload completed.
    pub finished_at: DateTime<Utc>,
    /// Bytes of the dump.
    pub plaintext_bytes: u64,
    /// Bytes after zstd.
    pub compressed_bytes: u64,
    /// Bytes of the object.
    pub ciphertext_bytes: u64,
    /// Hex SHA-256 of the object.
    pub ciphertext_sha256: String,
    /// The layers, outermost last: `zstd`, then `openpgp`.
    pub compression: String,
    /// zstd level.
    pub zstd_level: i32,
    /// `SEIPDv1` or `SEIPDv2`.
    pub encryption: String,
    /// Fingerprints of the certificates the object is encrypted to.
    pub recipients: Vec<String>,
    /// The last position in the ledger's erasure records (`erasure_log.seq`) this backup may
    /// predate: a restore replays every erasure recorded after it.
    pub erasure_seq: i64,
    /// When retention deletes the backup.
    pub expires_at: DateTime<Utc>,
    /// Parts of the multipart upload.
    pub parts: usize,
    /// The audit chain's latest signed checkpoint when the backup was made (audit anchors:
    /// `lethe-api audit verify --from-backups` checks the chain against it); `null` when none
    /// could be had (no api answered and none was published yet).
    #[serde(default)]
    pub audit_checkpoint: Option<lethe_common::anchors::Checkpoint>,
}
