//! Notifying the affected tenants through their webhooks, and recording how each delivery
//! ended.

use chrono::Utc;
use lethe_common::ids::{ApiKeyId, TenantId};
use serde_json::json;
use sqlx::PgPool;
use sqlx::types::Json as SqlJson;
use uuid::Uuid;

use super::NOTIFICATION_EVENT;
use super::deadlines::due_dates;
use super::model::{NotifyOutcome, NotifyResult};
use super::store::{EstimateRow, IncidentRow, audit, estimate_rows, lock};
use crate::AppState;
use crate::error::ApiError;

/// The tenant-readable text of a notification.
pub(super) fn summary(
    row: &IncidentRow,
    subjects: Option<i64>,
    estimates: &[EstimateRow],
) -> String {
    let mut text = format!(
        "Security incident {id}. On {detected} UTC we became aware of a personal data breach \
         affecting your account: {description} Data concerned: {categories}.",
        id = row.id,
        detected = row.detected_at.format("%Y-%m-%d %H:%M"),
        description = row.description.trim(),
        categories = row.data_categories.join(", "),
    );
    match subjects {
        Some(n) => text.push_str(&format!(
            " By our count, {n} of your users have data in the affected systems."
        )),
        None => text.push_str(" We could not yet count how many of your users are affected."),
    }
    let unattributed: Vec<String> = estimates
        .iter()
        .filter(|e| e.counted && !e.attributed)
        .map(|e| format!("{} ({} people)", e.store, e.unattributed.unwrap_or(0)))
        .collect();
    if !unattributed.is_empty() {
        text.push_str(&format!(
            " Some affected systems do not record which customer a person belongs to: {}; \
             some of them may be your users.",
            unattributed.join(", ")
        ));
    }
    if let Some(at) = row.contained_at {
        text.push_str(&format!(
            " The breach was contained on {} UTC.",
            at.format("%Y-%m-%d %H:%M")
        ));
    }
    if let Some(measures) = row.measures.as_deref().filter(|m| !m.trim().is_empty()) {
        text.push_str(&format!(" Measures taken: {}", measures.trim()));
    }
    text.push_str(&format!(
        " Please acknowledge this notice: POST /v1/incidents/{}/acknowledge with your API key.",
        row.id
    ));
    text
}

#[derive(sqlx::FromRow)]
struct NotifyRow {
    tenant_id: TenantId,
    name: String,
    webhook_url: Option<String>,
    subjects: Option<i64>,
    live: bool,
}

/// Queues a notification to every affected tenant that has none pending or delivered.
pub(super) async fn notify_tenants(
    state: &AppState,
    id: Uuid,
    by: ApiKeyId,
) -> Result<NotifyResult, ApiError> {
    let estimates = estimate_rows(&state.pool, id).await?;
    let mut tx = state.pool.begin().await?;
    let row = lock(&mut tx, id).await?.ok_or(ApiError::NotFound)?;
    row.ensure_open()?;
    let rows: Vec<NotifyRow> = sqlx::query_as(
        "SELECT it.tenant_id, t.name, t.webhook_url, it.subjects,
                EXISTS (SELECT 1 FROM incident_notification n
                        JOIN webhook_delivery d ON d.id = n.delivery_id
                        WHERE n.incident_id = it.incident_id AND n.tenant_id = it.tenant_id
                          AND d.abandoned_at IS NULL) AS live
         FROM incident_tenant it JOIN tenant t ON t.id = it.tenant_id
         WHERE it.incident_id = $1 ORDER BY t.name",
    )
    .bind(id)
    .fetch_all(&mut *tx)
    .await?;
    let (tenants_due_at, _) = due_dates(row.detected_at);
    let mut outcomes = Vec::with_capacity(rows.len());
    for tenant in rows {
        if tenant.live {
            outcomes.push(NotifyOutcome {
                tenant: tenant.name,
                outcome: "already_notified",
                delivery_id: None,
            });
            continue;
        }
        let Some(url) = tenant.webhook_url.filter(|u| !u.trim().is_empty()) else {
            audit(
                &mut tx,
                Some(tenant.tenant_id),
                id,
                "incident.notification_skipped",
                json!({ "by_key": by, "reason": "no_webhook" }),
            )
            .await?;
            outcomes.push(NotifyOutcome {
                tenant: tenant.name,
                outcome: "no_webhook",
                delivery_id: None,
            });
            continue;
        };
        let payload = json!({
            "event": NOTIFICATION_EVENT,
            "incident_id": id,
            "tenant": tenant.name,
            "status": row.status,
            "detected_at": row.detected_at,
            "notification_due_at": tenants_due_at,
            "description": row.description,
            "data_categories": row.data_categories,
            "stores": row.stores,
            "affected_subjects": tenant.subjects,
            "contained_at": row.contained_at,
            "measures": row.measures,
            "summary": summary(&row, tenant.subjects, &estimates),
            "acknowledge": format!("/v1/incidents/{id}/acknowledge"),
            "at": Utc::now(),
        });
        let delivery: i64 = sqlx::query_scalar(
            "INSERT INTO webhook_delivery (tenant_id, request_id, url, event, payload)
             VALUES ($1, NULL, $2, $3, $4) RETURNING id",
        )
        .bind(tenant.tenant_id)
        .bind(&url)
        .bind(NOTIFICATION_EVENT)
        .bind(SqlJson(payload))
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO incident_notification (delivery_id, incident_id, tenant_id)
             VALUES ($1, $2, $3)",
        )
        .bind(delivery)
        .bind(id)
        .bind(tenant.tenant_id)
        .execute(&mut *tx)
        .await?;
        audit(
            &mut tx,
            Some(tenant.tenant_id),
            id,
            "incident.notification_queued",
            json!({ "by_key": by, "delivery_id": delivery, "subjects": tenant.subjects }),
        )
        .await?;
        outcomes.push(NotifyOutcome {
            tenant: tenant.name,
            outcome: "queued",
            delivery_id: Some(delivery),
        });
    }
    tx.commit().await?;
    let queued = outcomes.iter().filter(|o| o.outcome == "queued").count();
    metrics::counter!("lethe_incident_notifications_total").increment(queued as u64);
    tracing::info!(incident.id = %id, queued, "incident notifications queued");
    Ok(NotifyResult { tenants: outcomes })
}

/// Called by the webhook worker when a delivery of an incident notification is delivered or
/// abandoned: records it in the audit chain.
pub async fn delivery_settled(
    pool: &PgPool,
    delivery_id: i64,
    delivered: bool,
    attempts: i32,
) -> sqlx::Result<()> {
    let owner: Option<(Uuid, TenantId)> = sqlx::query_as(
        "SELECT incident_id, tenant_id FROM incident_notification WHERE delivery_id = $1",
    )
    .bind(delivery_id)
    .fetch_optional(pool)
    .await?;
    let Some((incident, tenant)) = owner else {
        return Ok(());
    };
    let mut tx = pool.begin().await?;
    let kind = if delivered {
        "incident.notified"
    } else {
        "incident.notification_abandoned"
    };
    audit(
        &mut tx,
        Some(tenant),
        incident,
        kind,
        json!({ "delivery_id": delivery_id, "attempts": attempts }),
    )
    .await?;
    tx.commit().await
}
