//! The ledger side of retention: the run lock, the catalog rows of backups and exports, the
//! erasure records and requests whose identities are minimised, and the audit events every
//! deletion leaves.

use chrono::{DateTime, Utc};
use sqlx::pool::PoolConnection;
use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use sqlx::types::Json;
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

/// The advisory-lock key of retention runs ("LETHERET"): one run at a time per ledger, across
/// every retention process.
const RUN_LOCK: i64 = 0x4c45_5448_4552_4554;

/// A session-level advisory lock held on its own connection for as long as a run lasts. If the
/// process dies, the connection closes and the lock goes with it.
pub struct RunLock {
    connection: Option<PoolConnection<Postgres>>,
}

impl RunLock {
    /// Takes the lock if no other session holds it.
    pub async fn try_acquire(pool: &PgPool) -> sqlx::Result<Option<Self>> {
        let mut connection = pool.acquire().await?;
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(RUN_LOCK)
            .fetch_one(&mut *connection)
            .await?;
        Ok(locked.then_some(Self {
            connection: Some(connection),
        }))
    }

    /// Releases the lock; a connection that cannot unlock is closed rather than returned to
    /// the pool still holding it.
    pub async fn release(mut self) {
        let Some(mut connection) = self.connection.take() else {
            return;
        };
        let unlocked = sqlx::query_scalar::<_, bool>("SELECT pg_advisory_unlock($1)")
            .bind(RUN_LOCK)
            .fetch_one(&mut *connection)
            .await;
        if !matches!(unlocked, Ok(true)) {
            let _ = connection.detach();
        }
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // Dropped without `release` (an interrupted run): never hand the locked session back.
        if let Some(connection) = self.connection.take() {
            let _ = connection.detach();
        }
    }
}

/// Appends an audit event within `tx`, as the api writes them: unsealed, chained later by the
/// api's sealer, so `lethe-api audit verify` covers retention's deletions too.
pub async fn audit(
    tx: &mut Transaction<'_, Postgres>,
    tenant: Option<Uuid>,
    request: Option<Uuid>,
    kind: &str,
    detail: serde_json::Value,
    at: DateTime<Utc>,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO audit_event (tenant_id, request_id, kind, detail, at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(tenant)
    .bind(request)
    .bind(kind)
    .bind(Json(detail))
    .bind(at)
    .execute(&mut **tx)
    .await
    .map(drop)
}

/// A backup past its age.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ExpiredBackup {
    /// Its id.
    pub id: Uuid,
    /// Its store.
    pub store: String,
    /// `completed` or `failed`.
    pub status: String,
    /// The encrypted dump.
    pub object_key: String,
    /// Its manifest.
    pub manifest_key: String,
    /// Bytes of the object.
    pub bytes: Option<i64>,
    /// When it started: its creation time.
    pub started_at: DateTime<Utc>,
}

/// Backups started at or before `cutoff`, or past their own `expires_at`, not deleted yet,
/// oldest first. Running backups are left to the backup daemon (which fails abandoned ones).
pub async fn expired_backups(
    pool: &PgPool,
    cutoff: DateTime<Utc>,
    now: DateTime<Utc>,
) -> sqlx::Result<Vec<ExpiredBackup>> {
    sqlx::query_as(
        "SELECT id, store, status, object_key, manifest_key, bytes, started_at FROM backup \
         WHERE deleted_at IS NULL AND status IN ('completed', 'failed') \
           AND (started_at <= $1 OR expires_at <= $2) \
         ORDER BY started_at, id",
    )
    .bind(cutoff)
    .bind(now)
    .fetch_all(pool)
    .await
}

/// Marks a backup deleted (a failed one keeps its status, so the schedule never takes it for
/// a completed backup) and records the audit event, in one transaction.
pub async fn mark_backup_deleted(
    pool: &PgPool,
    backup: &ExpiredBackup,
    now: DateTime<Utc>,
) -> sqlx::Result<bool> {
    let update = sqlx::query(
        "UPDATE backup SET deleted_at = $2, \
         status = CASE WHEN status = 'completed' THEN 'deleted' ELSE status END \
         WHERE id = $1 AND deleted_at IS NULL",
    )
    .bind(backup.id)
    .bind(now);
    let event = AuditEvent {
        tenant: None,
        request: None,
        kind: "retention.backup_deleted",
        detail: serde_json::json!({
            "backup_id": backup.id,
            "store": backup.store,
            "status": backup.status,
            "object_key": backup.object_key,
            "bytes": backup.bytes,
            "started_at": backup.started_at,
        }),
    };
    mark_deleted(pool, update, event, now).await
}

/// When the oldest completed backup not deleted (and not among `excluded`) started.
pub async fn oldest_backup(
    pool: &PgPool,
    excluded: &[Uuid],
) -> sqlx::Result<Option<DateTime<Utc>>> {
    sqlx::query_scalar(
        "SELECT min(started_at) FROM backup WHERE deleted_at IS NULL AND status = 'completed' \
         AND id <> ALL($1)",
    )
    .bind(excluded)
    .fetch_one(pool)
    .await
}

/// When the oldest backup a restore could still use started: completed and not deleted, or
/// running (a backup that reaches the bucket later), leaving out `excluded`.
pub async fn oldest_held_backup(
    pool: &PgPool,
    excluded: &[Uuid],
) -> sqlx::Result<Option<DateTime<Utc>>> {
    sqlx::query_scalar(
        "SELECT min(started_at) FROM backup WHERE deleted_at IS NULL \
         AND status IN ('completed', 'running') AND id <> ALL($1)",
    )
    .bind(excluded)
    .fetch_one(pool)
    .await
}

/// An export past its age.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ExpiredExport {
    /// The request.
    pub request_id: Uuid,
    /// Its tenant.
    pub tenant_id: Uuid,
    /// The archive.
    pub object_key: String,
    /// Its size.
    pub bytes: i64,
    /// When it was made.
    pub created_at: DateTime<Utc>,
}

/// Exports made at or before `cutoff`, or past their own `expires_at`, not deleted yet.
pub async fn expired_exports(
    pool: &PgPool,
    cutoff: DateTime<Utc>,
    now: DateTime<Utc>,
) -> sqlx::Result<Vec<ExpiredExport>> {
    sqlx::query_as(
        "SELECT e.request_id, r.tenant_id, e.object_key, e.bytes, e.created_at \
         FROM export e JOIN request r ON r.id = e.request_id \
         WHERE e.deleted_at IS NULL AND (e.created_at <= $1 OR e.expires_at <= $2) \
         ORDER BY e.created_at, e.request_id",
    )
    .bind(cutoff)
    .bind(now)
    .fetch_all(pool)
    .await
}

/// The archive keys of exports not deleted: an object under the exports prefix that none of
/// them names is an orphan.
pub async fn live_export_keys(pool: &PgPool) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar("SELECT object_key FROM export WHERE deleted_at IS NULL")
        .fetch_all(pool)
        .await
}

/// Marks an export deleted and records the audit event, in one transaction.
pub async fn mark_export_deleted(
    pool: &PgPool,
    export: &ExpiredExport,
    now: DateTime<Utc>,
) -> sqlx::Result<bool> {
    let update = sqlx::query(
        "UPDATE export SET deleted_at = $2 WHERE request_id = $1 AND deleted_at IS NULL",
    )
    .bind(export.request_id)
    .bind(now);
    let event = AuditEvent {
        tenant: Some(export.tenant_id),
        request: Some(export.request_id),
        kind: "retention.export_deleted",
        detail: serde_json::json!({
            "object_key": export.object_key,
            "bytes": export.bytes,
            "created_at": export.created_at,
        }),
    };
    mark_deleted(pool, update, event, now).await
}

/// An audit event, before it is recorded.
struct AuditEvent<'a> {
    tenant: Option<Uuid>,
    request: Option<Uuid>,
    kind: &'a str,
    detail: serde_json::Value,
}

/// Runs `update`, which marks one catalog row deleted, and records `event` if it did, in one
/// transaction. `false`: another run marked the row meanwhile, and its event is already
/// recorded.
async fn mark_deleted(
    pool: &PgPool,
    update: Query<'_, Postgres, PgArguments>,
    event: AuditEvent<'_>,
    now: DateTime<Utc>,
) -> sqlx::Result<bool> {
    let mut tx = pool.begin().await?;
    let updated = update.execute(&mut *tx).await?.rows_affected();
    if updated == 0 {
        tx.rollback().await?;
        return Ok(false);
    }
    audit(
        &mut tx,
        event.tenant,
        event.request,
        event.kind,
        event.detail,
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// Records the deletion of objects that no catalog row names (orphaned archives, staging
/// leftovers, aborted uploads).
pub async fn record_objects_deleted(
    pool: &PgPool,
    kind: &str,
    tenant: Option<Uuid>,
    request: Option<Uuid>,
    detail: serde_json::Value,
    now: DateTime<Utc>,
) -> sqlx::Result<()> {
    let mut tx = pool.begin().await?;
    audit(&mut tx, tenant, request, kind, detail, now).await?;
    tx.commit().await
}

/// A request seen from its id in a key: its tenant and whether it is still open.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RequestState {
    /// The request.
    pub id: Uuid,
    /// Its tenant.
    pub tenant_id: Uuid,
    /// Still being worked on: its staging area and uploads are not leftovers.
    pub open: bool,
}

/// The states of the requests among `ids` that exist.
pub async fn request_states(pool: &PgPool, ids: &[Uuid]) -> sqlx::Result<Vec<RequestState>> {
    sqlx::query_as(
        "SELECT id, tenant_id, status IN ('received', 'verifying', 'in_progress') AS open \
         FROM request WHERE id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(pool)
    .await
}

/// The object keys of backups running now, whose multipart uploads are not abandoned.
pub async fn running_backup_keys(
    pool: &PgPool,
    cutoff: DateTime<Utc>,
) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar("SELECT object_key FROM backup WHERE status = 'running' AND started_at > $1")
        .bind(cutoff)
        .fetch_all(pool)
        .await
}

/// The replay window: the lowest `erasure_seq` of the backups a restore could still use
/// (completed and not deleted, or running and younger than the backup age), leaving out
/// `excluded` (the backups a dry run would delete). `None` when there is no such backup.
pub async fn replay_window(
    pool: &PgPool,
    excluded: &[Uuid],
    backups_cutoff: DateTime<Utc>,
) -> sqlx::Result<Option<i64>> {
    sqlx::query_scalar(
        "SELECT min(erasure_seq) FROM backup WHERE deleted_at IS NULL AND id <> ALL($1) \
         AND (status = 'completed' OR (status = 'running' AND started_at > $2))",
    )
    .bind(excluded)
    .bind(backups_cutoff)
    .fetch_one(pool)
    .await
}

/// A request whose identities can be reduced to their keyed hash.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Minimisable {
    /// The request.
    pub request_id: Uuid,
    /// Its tenant.
    pub tenant_id: Uuid,
    /// Its kind.
    pub kind: String,
    /// Its erasure record, for a completed erasure.
    pub erasure_seq: Option<i64>,
}

/// Requests whose identities (and values and reasons) no restore can need any more, oldest
/// first, at most `limit`:
/// completed erasures recorded at or before `settled` whose record is at or below
/// `window` (every backup a restore could use was taken after them), and every other finished
/// request last changed at or before `settled` (no replay ever uses them).
pub async fn minimisable(
    pool: &PgPool,
    window: i64,
    settled: DateTime<Utc>,
    limit: i64,
) -> sqlx::Result<Vec<Minimisable>> {
    sqlx::query_as(
        "SELECT r.id AS request_id, r.tenant_id, r.kind, l.seq AS erasure_seq \
         FROM request r LEFT JOIN erasure_log l ON l.request_id = r.id \
         WHERE r.status IN ('completed', 'failed', 'rejected', 'cancelled') \
           AND (r.identities IS NOT NULL OR l.identities IS NOT NULL \
                OR r.params <> '{}'::jsonb OR r.reason IS NOT NULL \
                OR r.extension_reason IS NOT NULL) \
           AND CASE WHEN l.seq IS NOT NULL THEN l.seq <= $1 AND l.recorded_at <= $2 \
                    ELSE r.updated_at <= $2 END \
         ORDER BY COALESCE(l.recorded_at, r.updated_at), r.id LIMIT $3",
    )
    .bind(window)
    .bind(settled)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Sets the identities of `batch` to NULL in the requests and their erasure records (the
/// keyed `identity_hash` stays), with a rectification's values (`params`) and the free-text
/// reasons, with one audit event per request, in one transaction.
pub async fn minimise(
    pool: &PgPool,
    batch: &[Minimisable],
    now: DateTime<Utc>,
) -> sqlx::Result<u64> {
    let ids: Vec<Uuid> = batch.iter().map(|m| m.request_id).collect();
    let tenants: Vec<Uuid> = batch.iter().map(|m| m.tenant_id).collect();
    let details: Vec<Json<serde_json::Value>> = batch
        .iter()
        .map(|m| Json(serde_json::json!({ "kind": m.kind, "erasure_seq": m.erasure_seq })))
        .collect();
    let mut tx = pool.begin().await?;
    sqlx::query("UPDATE erasure_log SET identities = NULL WHERE request_id = ANY($1)")
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
    let updated = sqlx::query(
        // A rectification's new values and the free-text reasons describe the subject as much
        // as the identities do; no replay reads them.
        "UPDATE request SET identities = NULL, params = '{}'::jsonb, reason = NULL, \
             extension_reason = NULL, minimised_at = COALESCE(minimised_at, $2) \
         WHERE id = ANY($1)",
    )
    .bind(&ids)
    .bind(now)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    sqlx::query(
        "INSERT INTO audit_event (tenant_id, request_id, kind, detail, at) \
         SELECT t, r, 'request.minimised', d, $4 FROM UNNEST($1::uuid[], $2::uuid[], $3::jsonb[]) AS x(t, r, d)",
    )
    .bind(&tenants)
    .bind(&ids)
    .bind(&details)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(updated)
}

/// When the oldest request still holding identities was received.
pub async fn oldest_identities(pool: &PgPool) -> sqlx::Result<Option<DateTime<Utc>>> {
    sqlx::query_scalar("SELECT min(received_at) FROM request WHERE identities IS NOT NULL")
        .fetch_one(pool)
        .await
}
