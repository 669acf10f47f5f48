//! The breach register's HTTP handlers.

use std::collections::BTreeSet;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use lethe_common::ids::{StoreName, TenantId};
use serde_json::json;
use uuid::Uuid;

use super::census::estimate_and_record;
use super::deadlines::deadlines;
use super::model::{
    AffectedTenants, IncidentList, IncidentQuery, IncidentStatus, IncidentSummary, IncidentUpdate,
    IncidentView, NewIncident, NotifyResult,
};
use super::notify::notify_tenants;
use super::store::{INFORMED, IncidentRow, audit, fetch, lock};
use super::validate::{check_text, check_time, parse_id};
use super::view::{current_view, view};
use crate::AppState;
use crate::error::{ApiError, Problem};
use crate::extract::{Caller, StrictJson};
use crate::keys::Scope;

/// The incident, if the caller may see it: an admin key sees every incident, any other key
/// (with `requests:read`) those affecting its tenant. 404 otherwise, as for no incident.
async fn visible(state: &AppState, caller: &Caller, id: &str) -> Result<IncidentRow, ApiError> {
    let id = parse_id(id)?;
    if !caller.0.has(Scope::Admin) {
        caller.require(Scope::RequestsRead)?;
        let affected: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM incident_tenant WHERE incident_id = $1 AND tenant_id = $2)",
        )
        .bind(id)
        .bind(caller.0.tenant_id)
        .fetch_one(&state.pool)
        .await?;
        if !affected {
            return Err(ApiError::NotFound);
        }
    }
    fetch(&state.pool, id).await?.ok_or(ApiError::NotFound)
}

/// Open an incident (admin): records it, asks every affected store for its subject counts,
/// and, with `notify`, notifies the affected tenants.
#[utoipa::path(
    post, path = "/v1/incidents", tag = "incidents",
    request_body = NewIncident,
    responses(
        (status = 201, description = "Opened", body = IncidentView),
        (status = 403, body = Problem), (status = 422, body = Problem),
    ),
    security(("bearer" = []))
)]
pub async fn open(
    State(state): State<AppState>,
    caller: Caller,
    StrictJson(body): StrictJson<NewIncident>,
) -> Result<(StatusCode, Json<IncidentView>), ApiError> {
    caller.require(Scope::Admin)?;
    let now = state.incidents.clock.now();
    check_time("detected_at", body.detected_at, None, now)?;
    check_text("description", &body.description)?;
    if body.stores.is_empty() {
        return Err(ApiError::unprocessable(
            "invalid_value",
            "stores",
            "name at least one affected store",
        ));
    }
    let mut stores = BTreeSet::new();
    for (i, store) in body.stores.iter().enumerate() {
        let known = StoreName::parse(store)
            .ok()
            .is_some_and(|name| state.planner.map().stores.contains_key(&name));
        if !known {
            return Err(ApiError::unprocessable(
                "unknown_store",
                format!("stores[{i}]"),
                format!("`stores[{i}]` is not a store of the data map"),
            ));
        }
        stores.insert(store.clone());
    }
    if body.data_categories.is_empty() || body.data_categories.len() > 50 {
        return Err(ApiError::unprocessable(
            "invalid_value",
            "data_categories",
            "name 1 to 50 categories of personal data",
        ));
    }
    for (i, category) in body.data_categories.iter().enumerate() {
        if category.trim().is_empty() || category.chars().count() > 200 {
            return Err(ApiError::unprocessable(
                "invalid_value",
                format!("data_categories[{i}]"),
                "a category is 1 to 200 characters",
            ));
        }
    }
    let tenants: Vec<(TenantId, String)> = match &body.tenants {
        AffectedTenants::All => {
            sqlx::query_as("SELECT id, name FROM tenant ORDER BY name")
                .fetch_all(&state.pool)
                .await?
        }
        AffectedTenants::Named(names) => {
            if names.is_empty() {
                return Err(ApiError::unprocessable(
                    "invalid_value",
                    "tenants",
                    "name at least one tenant, or \"all\"",
                ));
            }
            let found: Vec<(TenantId, String)> =
                sqlx::query_as("SELECT id, name FROM tenant WHERE name = ANY($1) ORDER BY name")
                    .bind(names)
                    .fetch_all(&state.pool)
                    .await?;
            if let Some(i) = names
                .iter()
                .position(|n| !found.iter().any(|(_, name)| name == n))
            {
                return Err(ApiError::unprocessable(
                    "unknown_tenant",
                    format!("tenants[{i}]"),
                    format!("`tenants[{i}]` names no tenant"),
                ));
            }
            found
        }
    };
    let id = Uuid::now_v7();
    let stores: Vec<String> = stores.into_iter().collect();
    let tenant_ids: Vec<TenantId> = tenants.iter().map(|(id, _)| *id).collect();
    let categories: Vec<String> = body
        .data_categories
        .iter()
        .map(|c| c.trim().to_owned())
        .collect();
    let mut tx = state.pool.begin().await?;
    sqlx::query(
        "INSERT INTO incident (id, status, detected_at, description, stores, data_categories,
                               all_tenants, opened_by)
         VALUES ($1, 'open', $2, $3, $4, $5, $6, $7)",
    )
    .bind(id)
    .bind(body.detected_at)
    .bind(body.description.trim())
    .bind(&stores)
    .bind(&categories)
    .bind(body.tenants == AffectedTenants::All)
    .bind(caller.0.key_id)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO incident_tenant (incident_id, tenant_id)
         SELECT $1, t FROM UNNEST($2::uuid[]) AS t",
    )
    .bind(id)
    .bind(&tenant_ids)
    .execute(&mut *tx)
    .await?;
    audit(
        &mut tx,
        None,
        id,
        "incident.opened",
        json!({
            "by_key": caller.0.key_id,
            "detected_at": body.detected_at,
            "stores": stores,
            "data_categories": categories,
            "tenants": tenant_ids,
        }),
    )
    .await?;
    tx.commit().await?;
    metrics::counter!("lethe_incidents_opened_total").increment(1);
    tracing::info!(incident.id = %id, stores = stores.len(), tenants = tenant_ids.len(), "incident opened");
    estimate_and_record(&state, id, caller.0.key_id).await?;
    if body.notify {
        notify_tenants(&state, id, caller.0.key_id).await?;
    }
    Ok((
        StatusCode::CREATED,
        Json(current_view(&state, id, &caller).await?),
    ))
}

/// Incidents: every incident for an admin key, those affecting the caller's tenant for any
/// other key (`requests:read`). The most recently detected first.
#[utoipa::path(
    get, path = "/v1/incidents", tag = "incidents",
    params(IncidentQuery),
    responses((status = 200, body = IncidentList), (status = 422, body = Problem)),
    security(("bearer" = []))
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<IncidentQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<IncidentList>, ApiError> {
    let only = if caller.0.has(Scope::Admin) {
        None
    } else {
        caller.require(Scope::RequestsRead)?;
        Some(caller.0.tenant_id)
    };
    let Query(query) = query.map_err(|rejection| {
        ApiError::unprocessable("invalid_query", "query", rejection.body_text())
    })?;
    if let Some(status) = &query.status
        && !matches!(status.as_str(), "open" | "contained" | "closed")
    {
        return Err(ApiError::unprocessable(
            "invalid_value",
            "status",
            "status is open, contained or closed",
        ));
    }
    #[derive(sqlx::FromRow)]
    struct Row {
        id: Uuid,
        status: IncidentStatus,
        detected_at: DateTime<Utc>,
        authority_notified_at: Option<DateTime<Utc>>,
        tenants: i64,
        notified: i64,
        acknowledged: i64,
    }
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT i.id, i.status, i.detected_at, i.authority_notified_at,
                count(it.tenant_id) AS tenants,
                count(it.tenant_id) FILTER (WHERE {INFORMED}) AS notified,
                count(it.acknowledged_at) AS acknowledged
         FROM incident i
         LEFT JOIN incident_tenant it
           ON it.incident_id = i.id AND ($1::uuid IS NULL OR it.tenant_id = $1)
         WHERE ($1::uuid IS NULL OR EXISTS (
                   SELECT 1 FROM incident_tenant x WHERE x.incident_id = i.id AND x.tenant_id = $1))
           AND ($2::text IS NULL OR i.status = $2)
         GROUP BY i.id
         ORDER BY i.detected_at DESC, i.id DESC
         LIMIT 200"
    ))
    .bind(only)
    .bind(&query.status)
    .fetch_all(&state.pool)
    .await?;
    let now = state.incidents.clock.now();
    let items = rows
        .into_iter()
        .map(|r| {
            let deadlines = deadlines(
                r.status,
                r.detected_at,
                r.authority_notified_at,
                r.notified < r.tenants,
                now,
            );
            IncidentSummary {
                id: r.id,
                status: r.status,
                detected_at: r.detected_at,
                overdue: deadlines.tenants_overdue || deadlines.authority_overdue,
                deadlines,
                tenants: r.tenants,
                notified: r.notified,
                acknowledged: r.acknowledged,
            }
        })
        .filter(|i| !query.overdue || i.overdue)
        .collect();
    Ok(Json(IncidentList { items }))
}

/// An incident: deadlines, affected tenants with their estimates, notifications (every
/// attempt) and acknowledgements; for an admin key also the per-store census answers and the
/// audit trail. A tenant's key sees only its own entry and the summary it was sent.
#[utoipa::path(
    get, path = "/v1/incidents/{id}", tag = "incidents",
    params(("id" = String, Path, description = "Incident id")),
    responses((status = 200, body = IncidentView), (status = 404, body = Problem)),
    security(("bearer" = []))
)]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<IncidentView>, ApiError> {
    let row = visible(&state, &caller, &id).await?;
    Ok(Json(view(&state, row, &caller).await?))
}

/// Update an incident (admin): containment, cause, measures, notification of the authority.
#[utoipa::path(
    patch, path = "/v1/incidents/{id}", tag = "incidents",
    params(("id" = String, Path, description = "Incident id")),
    request_body = IncidentUpdate,
    responses((status = 200, body = IncidentView), (status = 404, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = []))
)]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    StrictJson(body): StrictJson<IncidentUpdate>,
) -> Result<Json<IncidentView>, ApiError> {
    caller.require(Scope::Admin)?;
    let id = parse_id(&id)?;
    let now = state.incidents.clock.now();
    let mut tx = state.pool.begin().await?;
    let row = lock(&mut tx, id).await?.ok_or(ApiError::NotFound)?;
    row.ensure_open()?;
    let mut changed = Vec::new();
    if let Some(at) = body.contained_at {
        check_time("contained_at", at, Some(row.detected_at), now)?;
        changed.push("contained_at");
    }
    if let Some(at) = body.authority_notified_at {
        check_time("authority_notified_at", at, Some(row.detected_at), now)?;
        changed.push("authority_notified_at");
    }
    if let Some(cause) = &body.cause {
        check_text("cause", cause)?;
        changed.push("cause");
    }
    if let Some(measures) = &body.measures {
        check_text("measures", measures)?;
        changed.push("measures");
    }
    if changed.is_empty() {
        return Err(ApiError::unprocessable(
            "empty_update",
            "(body)",
            "give at least one of contained_at, cause, measures, authority_notified_at",
        ));
    }
    sqlx::query(
        "UPDATE incident SET
             contained_at = COALESCE($2, contained_at),
             authority_notified_at = COALESCE($3, authority_notified_at),
             cause = COALESCE($4, cause),
             measures = COALESCE($5, measures),
             status = CASE WHEN $2::timestamptz IS NOT NULL THEN 'contained' ELSE status END,
             updated_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .bind(body.contained_at)
    .bind(body.authority_notified_at)
    .bind(body.cause.as_deref().map(str::trim))
    .bind(body.measures.as_deref().map(str::trim))
    .execute(&mut *tx)
    .await?;
    // The texts stay in the incident; the chain records who changed which fields, and when.
    audit(
        &mut tx,
        None,
        id,
        "incident.updated",
        json!({
            "by_key": caller.0.key_id,
            "fields": changed,
            "contained_at": body.contained_at,
            "authority_notified_at": body.authority_notified_at,
        }),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(current_view(&state, id, &caller).await?))
}

/// Ask every affected store again for its subject counts (admin).
#[utoipa::path(
    post, path = "/v1/incidents/{id}/estimate", tag = "incidents",
    params(("id" = String, Path, description = "Incident id")),
    responses((status = 200, body = IncidentView), (status = 404, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = []))
)]
pub async fn estimate(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<IncidentView>, ApiError> {
    caller.require(Scope::Admin)?;
    let id = parse_id(&id)?;
    let row = fetch(&state.pool, id).await?.ok_or(ApiError::NotFound)?;
    row.ensure_open()?;
    estimate_and_record(&state, id, caller.0.key_id).await?;
    Ok(Json(current_view(&state, id, &caller).await?))
}

/// Notify every affected tenant not yet notified through its webhook (admin). A tenant whose
/// last notification was abandoned is notified again; one without a webhook URL is reported.
#[utoipa::path(
    post, path = "/v1/incidents/{id}/notify", tag = "incidents",
    params(("id" = String, Path, description = "Incident id")),
    responses((status = 200, body = NotifyResult), (status = 404, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = []))
)]
pub async fn notify(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<NotifyResult>, ApiError> {
    caller.require(Scope::Admin)?;
    let id = parse_id(&id)?;
    Ok(Json(notify_tenants(&state, id, caller.0.key_id).await?))
}

/// Acknowledge an incident for the caller's tenant (any key with `requests:read` of an
/// affected tenant; 404 for an incident that does not affect it).
#[utoipa::path(
    post, path = "/v1/incidents/{id}/acknowledge", tag = "incidents",
    params(("id" = String, Path, description = "Incident id")),
    responses((status = 200, body = IncidentView), (status = 404, body = Problem)),
    security(("bearer" = []))
)]
pub async fn acknowledge(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<IncidentView>, ApiError> {
    caller.require(Scope::RequestsRead)?;
    let id = parse_id(&id)?;
    let mut tx = state.pool.begin().await?;
    let acknowledged: Option<Option<DateTime<Utc>>> = sqlx::query_scalar(
        "SELECT acknowledged_at FROM incident_tenant
         WHERE incident_id = $1 AND tenant_id = $2 FOR UPDATE",
    )
    .bind(id)
    .bind(caller.0.tenant_id)
    .fetch_optional(&mut *tx)
    .await?;
    match acknowledged {
        None => return Err(ApiError::NotFound),
        // A repeated acknowledgement changes nothing: the first one counts.
        Some(Some(_)) => {}
        Some(None) => {
            sqlx::query(
                "UPDATE incident_tenant SET acknowledged_at = now(), acknowledged_by = $3
                 WHERE incident_id = $1 AND tenant_id = $2",
            )
            .bind(id)
            .bind(caller.0.tenant_id)
            .bind(caller.0.key_id)
            .execute(&mut *tx)
            .await?;
            audit(
                &mut tx,
                Some(caller.0.tenant_id),
                id,
                "incident.acknowledged",
                json!({ "by_key": caller.0.key_id }),
            )
            .await?;
        }
    }
    tx.commit().await?;
    // The tenant's own view, even for an admin key: it acknowledged as a tenant.
    let tenant_caller = Caller(crate::keys::Principal {
        scopes: vec![Scope::RequestsRead],
        ..caller.0.clone()
    });
    Ok(Json(current_view(&state, id, &tenant_caller).await?))
}

/// Close an incident (admin). Refused while an affected tenant has neither received a
/// notification nor acknowledged: closing must not hide a broken promise.
#[utoipa::path(
    post, path = "/v1/incidents/{id}/close", tag = "incidents",
    params(("id" = String, Path, description = "Incident id")),
    responses((status = 200, body = IncidentView), (status = 404, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = []))
)]
pub async fn close(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<IncidentView>, ApiError> {
    caller.require(Scope::Admin)?;
    let id = parse_id(&id)?;
    let mut tx = state.pool.begin().await?;
    let row = lock(&mut tx, id).await?.ok_or(ApiError::NotFound)?;
    row.ensure_open()?;
    let uninformed: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM incident_tenant it WHERE it.incident_id = $1 AND NOT {INFORMED}"
    ))
    .bind(id)
    .fetch_one(&mut *tx)
    .await?;
    if uninformed > 0 {
        return Err(ApiError::Conflict {
            code: "tenants_not_notified",
            detail: format!(
                "{uninformed} affected tenant(s) have neither received a notification nor acknowledged"
            ),
        });
    }
    sqlx::query(
        "UPDATE incident SET status = 'closed', closed_at = now(),
             contained_at = COALESCE(contained_at, now()), updated_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    audit(
        &mut tx,
        None,
        id,
        "incident.closed",
        json!({ "by_key": caller.0.key_id }),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(current_view(&state, id, &caller).await?))
}
