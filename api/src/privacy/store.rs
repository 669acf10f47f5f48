//! The privacy center's rows in the ledger (`privacy_verification`): pending requests waiting
//! for their link, and the download links of those that were filed.

use chrono::{DateTime, Utc};
use lethe_common::ids::{RequestId, TenantId};
use sqlx::PgPool;
use sqlx::types::Json;
use uuid::Uuid;

/// A request waiting for its emailed link.
#[derive(Debug, sqlx::FromRow)]
pub struct Pending {
    /// Its id (also the idempotency key of the request it files).
    pub id: Uuid,
    /// Whose privacy center it came through.
    pub tenant_id: TenantId,
    /// Access, erasure, ...
    pub kind: String,
    /// The address the link went to.
    pub email: String,
    /// For rectification.
    pub changes: Option<Json<serde_json::Value>>,
    /// The request it filed, once verified.
    pub request_id: Option<RequestId>,
}

/// The tenant called `name`.
pub async fn tenant(pool: &PgPool, name: &str) -> sqlx::Result<Option<TenantId>> {
    sqlx::query_scalar("SELECT id FROM tenant WHERE name = $1")
        .bind(name)
        .fetch_optional(pool)
        .await
}

/// Records a pending request whose link carries the token hashed to `token_sha256`.
pub async fn insert(
    pool: &PgPool,
    tenant: TenantId,
    kind: &str,
    email: &str,
    changes: Option<serde_json::Value>,
    token_sha256: &[u8],
    expires_at: DateTime<Utc>,
) -> sqlx::Result<Uuid> {
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO privacy_verification (id, tenant_id, kind, email, changes, token_sha256, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(id)
    .bind(tenant)
    .bind(kind)
    .bind(email)
    .bind(changes.map(Json))
    .bind(token_sha256)
    .bind(expires_at)
    .execute(pool)
    .await?;
    Ok(id)
}

/// The tenant's live (unexpired) verification for a link token, verified or not.
pub async fn by_token(
    pool: &PgPool,
    tenant: TenantId,
    token_sha256: &[u8],
) -> sqlx::Result<Option<Pending>> {
    sqlx::query_as(
        "SELECT id, tenant_id, kind, email, changes, request_id FROM privacy_verification
         WHERE tenant_id = $1 AND token_sha256 = $2 AND (verified_at IS NOT NULL OR expires_at > now())",
    )
    .bind(tenant)
    .bind(token_sha256)
    .fetch_optional(pool)
    .await
}

/// Marks a verification as followed and filed as `request`. The address is kept only while an
/// access result still has to be mailed to it.
pub async fn verified(pool: &PgPool, id: Uuid, request: RequestId) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE privacy_verification SET verified_at = now(), request_id = $2,
             email = CASE WHEN kind IN ('access', 'portability') THEN email ELSE '' END
         WHERE id = $1",
    )
    .bind(id)
    .bind(request)
    .execute(pool)
    .await?;
    Ok(())
}

/// Deletes the verifications whose link was not followed in time; returns how many.
pub async fn purge_expired(pool: &PgPool) -> sqlx::Result<u64> {
    Ok(sqlx::query(
        "DELETE FROM privacy_verification WHERE verified_at IS NULL AND expires_at <= now()",
    )
    .execute(pool)
    .await?
    .rows_affected())
}

/// A finished access or portability request whose download link is still to be mailed.
#[derive(Debug, sqlx::FromRow)]
pub struct DueDownload {
    /// The verification.
    pub id: Uuid,
    /// The tenant's name (for the link).
    pub tenant: String,
    /// Where to mail it.
    pub email: String,
    /// How the request ended.
    pub status: String,
}

/// Filed access and portability requests that finished and whose mail was not sent.
pub async fn due_downloads(pool: &PgPool) -> sqlx::Result<Vec<DueDownload>> {
    sqlx::query_as(
        "SELECT v.id, t.name AS tenant, v.email, r.status FROM privacy_verification v
         JOIN request r ON r.id = v.request_id JOIN tenant t ON t.id = v.tenant_id
         WHERE v.download_sent_at IS NULL AND v.kind IN ('access', 'portability')
           AND r.status IN ('completed', 'failed', 'cancelled', 'rejected')
         LIMIT 100",
    )
    .fetch_all(pool)
    .await
}

/// Records that the download mail went out (with the link's token hash) and forgets the address.
pub async fn download_sent(
    pool: &PgPool,
    id: Uuid,
    token_sha256: Option<&[u8]>,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE privacy_verification SET download_sent_at = now(), download_sha256 = $2, email = ''
         WHERE id = $1",
    )
    .bind(id)
    .bind(token_sha256)
    .execute(pool)
    .await?;
    Ok(())
}

/// The request a download token belongs to, within a tenant.
pub async fn download(
    pool: &PgPool,
    tenant: TenantId,
    token_sha256: &[u8],
) -> sqlx::Result<Option<RequestId>> {
    sqlx::query_scalar(
        "SELECT request_id FROM privacy_verification WHERE tenant_id = $1 AND download_sha256 = $2",
    )
    .bind(tenant)
    .bind(token_sha256)
    .fetch_optional(pool)
    .await
    .map(Option::flatten)
}
