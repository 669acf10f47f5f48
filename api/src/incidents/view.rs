//! An incident as a caller may see it, assembled from the ledger.

use std::collections::BTreeMap;

use lethe_common::ids::TenantId;
use uuid::Uuid;

use super::deadlines::{deadlines, due_dates};
use super::model::{AttemptView, IncidentView, NotificationView, StoreEstimate, TenantView};
use super::notify::summary;
use super::store::{AttemptRow, IncidentRow, NotificationRow, estimate_rows, fetch, tenant_rows};
use crate::AppState;
use crate::error::ApiError;
use crate::extract::Caller;
use crate::keys::Scope;

/// The incident `row` as `caller` may see it: an admin key sees every tenant, the per-store
/// estimates and the audit trail; any other key its own tenant's entry and summary.
pub(super) async fn view(
    state: &AppState,
    row: IncidentRow,
    caller: &Caller,
) -> Result<IncidentView, ApiError> {
    let admin = caller.0.has(Scope::Admin);
    let only = (!admin).then_some(caller.0.tenant_id);
    let tenants = tenant_rows(&state.pool, row.id, only).await?;
    let notifications: Vec<NotificationRow> = sqlx::query_as(
        "SELECT n.tenant_id, d.id, d.created_at, d.delivered_at, d.abandoned_at
         FROM incident_notification n JOIN webhook_delivery d ON d.id = n.delivery_id
         WHERE n.incident_id = $1 AND ($2::uuid IS NULL OR n.tenant_id = $2) ORDER BY d.id",
    )
    .bind(row.id)
    .bind(only)
    .fetch_all(&state.pool)
    .await?;
    let attempts: Vec<AttemptRow> = sqlx::query_as(
        "SELECT a.delivery_id, a.attempt, a.at, a.status, a.error
         FROM webhook_attempt a JOIN incident_notification n ON n.delivery_id = a.delivery_id
         WHERE n.incident_id = $1 AND ($2::uuid IS NULL OR n.tenant_id = $2)
         ORDER BY a.delivery_id, a.attempt",
    )
    .bind(row.id)
    .bind(only)
    .fetch_all(&state.pool)
    .await?;
    let mut attempts_of: BTreeMap<i64, Vec<AttemptView>> = BTreeMap::new();
    for a in attempts {
        attempts_of
            .entry(a.delivery_id)
            .or_default()
            .push(AttemptView {
                attempt: a.attempt,
                at: a.at,
                status: a.status,
                error: a.error,
            });
    }
    let mut notifications_of: BTreeMap<TenantId, Vec<NotificationView>> = BTreeMap::new();
    for n in notifications {
        notifications_of
            .entry(n.tenant_id)
            .or_default()
            .push(NotificationView {
                delivery_id: n.id,
                queued_at: n.created_at,
                delivered_at: n.delivered_at,
                abandoned_at: n.abandoned_at,
                attempts: attempts_of.remove(&n.id).unwrap_or_default(),
            });
    }
    let (tenants_due_at, _) = due_dates(row.detected_at);
    let uninformed = tenants
        .iter()
        .any(|t| t.notified_at.is_none() && t.acknowledged_at.is_none());
    let deadlines = deadlines(
        row.status,
        row.detected_at,
        row.authority_notified_at,
        uninformed,
        state.incidents.clock.now(),
    );
    let estimates = estimate_rows(&state.pool, row.id).await?;
    let summary = match (admin, tenants.first()) {
        (false, Some(tenant)) => Some(summary(&row, tenant.subjects, &estimates)),
        _ => None,
    };
    let tenant_views = tenants
        .into_iter()
        .map(|t| TenantView {
            notified_late: t.notified_at.is_some_and(|at| at > tenants_due_at),
            notifications: notifications_of.remove(&t.tenant_id).unwrap_or_default(),
            tenant: t.name,
            tenant_id: t.tenant_id,
            subjects: t.subjects,
            notified_at: t.notified_at,
            acknowledged_at: t.acknowledged_at,
        })
        .collect();
    let audit = if admin {
        Some(
            sqlx::query_as(
                "SELECT kind, detail, at FROM audit_event
                 WHERE detail ? 'incident_id' AND detail ->> 'incident_id' = $1 ORDER BY seq",
            )
            .bind(row.id.to_string())
            .fetch_all(&state.pool)
            .await?,
        )
    } else {
        None
    };
    Ok(IncidentView {
        id: row.id,
        overdue: deadlines.tenants_overdue || deadlines.authority_overdue,
        deadlines,
        status: row.status,
        detected_at: row.detected_at,
        description: row.description,
        stores: row.stores,
        data_categories: row.data_categories,
        all_tenants: row.all_tenants,
        cause: row.cause,
        measures: row.measures,
        contained_at: row.contained_at,
        closed_at: row.closed_at,
        tenants: tenant_views,
        summary,
        estimates: admin.then(|| {
            estimates
                .into_iter()
                .map(|e| StoreEstimate {
                    store: e.store,
                    answered: e.answered,
                    counted: e.counted,
                    attributed: e.attributed,
                    tenants: e.tenants.0,
                    unattributed: e.unattributed,
                    method: e.method,
                    error: e.error,
                    asked_at: e.asked_at,
                })
                .collect()
        }),
        audit,
    })
}

/// Incident `id` as the ledger holds it now, as `caller` may see it: the answer of every step
/// that changes it.
pub(super) async fn current_view(
    state: &AppState,
    id: Uuid,
    caller: &Caller,
) -> Result<IncidentView, ApiError> {
    let row = fetch(&state.pool, id).await?.ok_or(ApiError::NotFound)?;
    view(state, row, caller).await
}
