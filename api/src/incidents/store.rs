//! The breach register's rows in the ledger and the queries shared by its steps.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use lethe_common::ids::TenantId;
use serde_json::json;
use sqlx::types::Json as SqlJson;
use sqlx::{PgExecutor, PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::model::IncidentStatus;
use crate::error::ApiError;
use crate::requests;

const INCIDENT_COLUMNS: &str = "id, status, detected_at, description, stores, data_categories, \
     all_tenants, cause, measures, contained_at, authority_notified_at, closed_at";

#[derive(Debug, sqlx::FromRow)]
pub(super) struct IncidentRow {
    pub(super) id: Uuid,
    pub(super) status: IncidentStatus,
    pub(super) detected_at: DateTime<Utc>,
    pub(super) description: String,
    pub(super) stores: Vec<String>,
    pub(super) data_categories: Vec<String>,
    pub(super) all_tenants: bool,
    pub(super) cause: Option<String>,
    pub(super) measures: Option<String>,
    pub(super) contained_at: Option<DateTime<Utc>>,
    pub(super) authority_notified_at: Option<DateTime<Utc>>,
    pub(super) closed_at: Option<DateTime<Utc>>,
}

impl IncidentRow {
    /// 409 for a closed incident: it takes no more changes.
    pub(super) fn ensure_open(&self) -> Result<(), ApiError> {
        if self.status == IncidentStatus::Closed {
            return Err(ApiError::Conflict {
                code: "incident_closed",
                detail: "the incident is closed".to_owned(),
            });
        }
        Ok(())
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(super) struct TenantRow {
    pub(super) tenant_id: TenantId,
    pub(super) name: String,
    pub(super) subjects: Option<i64>,
    pub(super) acknowledged_at: Option<DateTime<Utc>>,
    pub(super) notified_at: Option<DateTime<Utc>>,
}

#[derive(Debug, sqlx::FromRow)]
pub(super) struct NotificationRow {
    pub(super) tenant_id: TenantId,
    pub(super) id: i64,
    pub(super) created_at: DateTime<Utc>,
    pub(super) delivered_at: Option<DateTime<Utc>>,
    pub(super) abandoned_at: Option<DateTime<Utc>>,
}

#[derive(Debug, sqlx::FromRow)]
pub(super) struct AttemptRow {
    pub(super) delivery_id: i64,
    pub(super) attempt: i32,
    pub(super) at: DateTime<Utc>,
    pub(super) status: Option<i32>,
    pub(super) error: Option<String>,
}

#[derive(Debug, sqlx::FromRow)]
pub(super) struct EstimateRow {
    pub(super) store: String,
    pub(super) answered: bool,
    pub(super) counted: bool,
    pub(super) attributed: bool,
    pub(super) tenants: SqlJson<BTreeMap<String, i64>>,
    pub(super) unattributed: Option<i64>,
    pub(super) method: Option<String>,
    pub(super) error: Option<String>,
    pub(super) asked_at: DateTime<Utc>,
}

/// Incident `id`.
pub(super) async fn fetch(pool: &PgPool, id: Uuid) -> sqlx::Result<Option<IncidentRow>> {
    select(pool, id, "").await
}

/// Incident `id`, its row locked until `tx` ends.
pub(super) async fn lock(
    tx: &mut Transaction<'_, Postgres>,
    id: Uuid,
) -> sqlx::Result<Option<IncidentRow>> {
    select(&mut **tx, id, " FOR UPDATE").await
}

async fn select<'e>(
    executor: impl PgExecutor<'e>,
    id: Uuid,
    suffix: &str,
) -> sqlx::Result<Option<IncidentRow>> {
    sqlx::query_as(&format!(
        "SELECT {INCIDENT_COLUMNS} FROM incident WHERE id = $1{suffix}"
    ))
    .bind(id)
    .fetch_optional(executor)
    .await
}

/// Whether a tenant was informed: a notification reached it, or it acknowledged.
pub(super) const INFORMED: &str = "(it.acknowledged_at IS NOT NULL OR EXISTS (
        SELECT 1 FROM incident_notification n JOIN webhook_delivery d ON d.id = n.delivery_id
        WHERE n.incident_id = it.incident_id AND n.tenant_id = it.tenant_id
          AND d.delivered_at IS NOT NULL))";

pub(super) async fn tenant_rows(
    pool: &PgPool,
    id: Uuid,
    only: Option<TenantId>,
) -> sqlx::Result<Vec<TenantRow>> {
    sqlx::query_as(
        "SELECT it.tenant_id, t.name, it.subjects, it.acknowledged_at,
                (SELECT min(d.delivered_at) FROM incident_notification n
                 JOIN webhook_delivery d ON d.id = n.delivery_id
                 WHERE n.incident_id = it.incident_id AND n.tenant_id = it.tenant_id) AS notified_at
         FROM incident_tenant it JOIN tenant t ON t.id = it.tenant_id
         WHERE it.incident_id = $1 AND ($2::uuid IS NULL OR it.tenant_id = $2)
         ORDER BY t.name",
    )
    .bind(id)
    .bind(only)
    .fetch_all(pool)
    .await
}

pub(super) async fn estimate_rows(pool: &PgPool, id: Uuid) -> sqlx::Result<Vec<EstimateRow>> {
    sqlx::query_as(
        "SELECT store, answered, counted, attributed, tenants, unattributed, method, error, asked_at
         FROM incident_estimate WHERE incident_id = $1 ORDER BY store",
    )
    .bind(id)
    .fetch_all(pool)
    .await
}

/// Appends an audit event about incident `id`.
pub(super) async fn audit(
    tx: &mut Transaction<'_, Postgres>,
    tenant: Option<TenantId>,
    id: Uuid,
    kind: &str,
    mut detail: serde_json::Value,
) -> sqlx::Result<()> {
    if let Some(object) = detail.as_object_mut() {
        object.insert("incident_id".to_owned(), json!(id.to_string()));
    }
    requests::audit(tx, tenant, None, kind, detail).await
}
