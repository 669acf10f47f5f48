//! The backup catalog in the ledger (`backup` table), the per-store advisory lock, and the
//! erasure records (`erasure_log`) a restore replays.

use chrono::{DateTime, Utc};
use lethe_common::ids::StoreName;
use lethe_common::messages::Identities;
use sha2::{Digest as _, Sha256};
use sqlx::pool::PoolConnection;
use sqlx::types::Json;
use sqlx::{PgPool, Postgres};
use uuid::Uuid;

/// The advisory-lock key of backups of `store`: the first 8 bytes of
/// `SHA-256("lethe.backup:<store>")`. Advisory locks are scoped to the ledger database, so
/// deployments with their own ledgers never contend.
pub fn lock_key(store: &StoreName) -> i64 {
    let digest = Sha256::digest(format!("lethe.backup:{store}").as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(bytes)
}

/// A session-level advisory lock on one store's backups, held on its own connection for as
/// long as the backup runs. If the process dies, the connection closes and the lock goes with
/// it.
pub struct StoreLock {
    connection: Option<PoolConnection<Postgres>>,
    key: i64,
}

impl StoreLock {
    /// Takes the lock of `store` if no other session holds it.
    pub async fn try_acquire(pool: &PgPool, store: &StoreName) -> anyhow::Result<Option<Self>> {
        let key = lock_key(store);
        let mut connection = pool.acquire().await?;
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut *connection)
            .await?;
        Ok(locked.then_some(Self {
            connection: Some(connection),
            key,
        }))
    }

    /// Releases the lock. A connection that cannot unlock is closed rather than returned to
    /// the pool still holding it.
    pub async fn release(mut self) {
        let Some(mut connection) = self.connection.take() else {
            return;
        };
        let unlocked = sqlx::query_scalar::<_, bool>("SELECT pg_advisory_unlock($1)")
            .bind(self.key)
            .fetch_one(&mut *connection)
            .await;
        if !matches!(unlocked, Ok(true)) {
            let _ = connection.detach();
        }
    }
}

impl Drop for StoreLock {
    fn drop(&mut self) {
        // Dropped without `release` (a cancelled future): never hand the locked session back.
        if let Some(connection) = self.connection.take() {
            let _ = connection.detach();
        }
    }
}

/// The position in the erasure records a backup started now covers: every erasure recorded
/// so far completed in every store before this backup began, so a restore of it replays those
/// recorded later.
pub async fn erasure_position(pool: &PgPool) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT COALESCE(max(seq), 0) FROM erasure_log")
        .fetch_one(pool)
        .await
}

/// A catalog row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BackupRow {
    /// Backup id.
    pub id: Uuid,
    /// Store.
    pub store: String,
    /// The encrypted dump.
    pub object_key: String,
    /// Its manifest.
    pub manifest_key: String,
    /// Tool and version.
    pub tool: String,
    /// Bytes of the dump.
    pub plaintext_bytes: Option<i64>,
    /// Bytes of the object.
    pub bytes: Option<i64>,
    /// Hex SHA-256 of the object.
    pub sha256: Option<String>,
    /// Recipients' fingerprints.
    pub recipients: Vec<String>,
    /// The last erasure record the backup may predate.
    pub erasure_seq: i64,
    /// `running`, `completed`, `failed`, `deleted`.
    pub status: String,
    /// Why it failed.
    pub error: Option<String>,
    /// Start.
    pub started_at: DateTime<Utc>,
    /// End.
    pub finished_at: Option<DateTime<Utc>>,
    /// When retention deletes it.
    pub expires_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, store, object_key, manifest_key, tool, plaintext_bytes, bytes, sha256, \
     recipients, erasure_seq, status, error, started_at, finished_at, expires_at";

/// Records a backup that starts.
pub async fn insert_running(pool: &PgPool, row: &BackupRow) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO backup (id, store, object_key, manifest_key, tool, recipients, erasure_seq, \
         status, started_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, 'running', $8, $9)",
    )
    .bind(row.id)
    .bind(&row.store)
    .bind(&row.object_key)
    .bind(&row.manifest_key)
    .bind(&row.tool)
    .bind(&row.recipients)
    .bind(row.erasure_seq)
    .bind(row.started_at)
    .bind(row.expires_at)
    .execute(pool)
    .await
    .map(drop)
}

/// Records a backup that completed.
pub async fn complete(
    pool: &PgPool,
    id: Uuid,
    plaintext_bytes: u64,
    bytes: u64,
    sha256: &str,
    finished_at: DateTime<Utc>,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE backup SET status = 'completed', plaintext_bytes = $2, bytes = $3, sha256 = $4, \
         finished_at = $5 WHERE id = $1",
    )
    .bind(id)
    .bind(i64::try_from(plaintext_bytes).unwrap_or(i64::MAX))
    .bind(i64::try_from(bytes).unwrap_or(i64::MAX))
    .bind(sha256)
    .bind(finished_at)
    .execute(pool)
    .await
    .map(drop)
}

/// Marks the `running` backups of `store` failed: called under the store's lock, so whatever
/// ran them stopped without finishing (a crash, a kill). Returns how many.
pub async fn fail_abandoned(pool: &PgPool, store: &StoreName) -> sqlx::Result<u64> {
    sqlx::query(
        "UPDATE backup SET status = 'failed', error = 'interrupted: the process running it stopped', \
         finished_at = now() WHERE store = $1 AND status = 'running'",
    )
    .bind(store.as_str())
    .execute(pool)
    .await
    .map(|done| done.rows_affected())
}

/// Records a backup that failed.
pub async fn fail(pool: &PgPool, id: Uuid, error: &str) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE backup SET status = 'failed', error = $2, finished_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(error)
    .execute(pool)
    .await
    .map(drop)
}

/// One backup.
pub async fn get(pool: &PgPool, id: Uuid) -> sqlx::Result<Option<BackupRow>> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM backup WHERE id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// The newest backups first, of one store or all.
pub async fn list(
    pool: &PgPool,
    store: Option<&StoreName>,
    limit: i64,
) -> sqlx::Result<Vec<BackupRow>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM backup WHERE ($1::text IS NULL OR store = $1) \
         ORDER BY started_at DESC LIMIT $2"
    ))
    .bind(store.map(StoreName::as_str))
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// When a store's newest completed backup and newest attempt (any status) started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LastRuns {
    /// Newest completed backup.
    pub completed: Option<DateTime<Utc>>,
    /// Newest backup of any status.
    pub attempted: Option<DateTime<Utc>>,
}

/// [`LastRuns`] of `store`.
pub async fn last_runs(pool: &PgPool, store: &StoreName) -> sqlx::Result<LastRuns> {
    let (completed, attempted): (Option<DateTime<Utc>>, Option<DateTime<Utc>>) = sqlx::query_as(
        "SELECT max(started_at) FILTER (WHERE status IN ('completed', 'deleted')), max(started_at) \
         FROM backup WHERE store = $1",
    )
    .bind(store.as_str())
    .fetch_one(pool)
    .await?;
    Ok(LastRuns {
        completed,
        attempted,
    })
}

/// Whether `store` has a completed backup that started at or after `since`.
pub async fn completed_since(
    pool: &PgPool,
    store: &StoreName,
    since: DateTime<Utc>,
) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM backup WHERE store = $1 AND status = 'completed' \
         AND started_at >= $2)",
    )
    .bind(store.as_str())
    .bind(since)
    .fetch_one(pool)
    .await
}

/// One completed erasure, as the coordinator recorded it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Erasure {
    /// Position in the erasure records.
    pub seq: i64,
    /// The erasure request.
    pub request_id: Uuid,
    /// The subject's identities; `None` once minimised by retention.
    pub identities: Option<Json<Identities>>,
    /// The name of the tenant that filed it (a tenant-scoped replay touches only its records).
    pub tenant: String,
    /// When it was recorded.
    pub recorded_at: DateTime<Utc>,
}

/// Every erasure recorded after position `seq`, in order.
pub async fn erasures_after(pool: &PgPool, seq: i64) -> sqlx::Result<Vec<Erasure>> {
    sqlx::query_as(
        "SELECT e.seq, e.request_id, e.identities, t.name AS tenant, e.recorded_at \
         FROM erasure_log e JOIN tenant t ON t.id = e.tenant_id WHERE e.seq > $1 ORDER BY e.seq",
    )
    .bind(seq)
    .fetch_all(pool)
    .await
}
