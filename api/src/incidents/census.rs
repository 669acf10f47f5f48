//! Asking the affected stores' exporters over NATS how many subjects each tenant has there,
//! and recording the answers.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use lethe_common::ids::{ApiKeyId, StoreName, TenantId};
use lethe_common::messages::CensusReply;
use lethe_common::nats::Names;
use serde_json::json;
use sqlx::types::Json as SqlJson;
use uuid::Uuid;

use super::store::audit;
use crate::AppState;
use crate::error::ApiError;

/// How long the api waits for a store's census answer.
const CENSUS_TIMEOUT: Duration = Duration::from_secs(5);

/// Asks `store`'s exporter for its census; an error says why there is no answer.
async fn ask(
    client: &async_nats::Client,
    names: &Names,
    store: &str,
) -> Result<CensusReply, String> {
    let name = StoreName::parse(store).map_err(|_| "not a store name".to_owned())?;
    let request = client.request(names.census_subject(&name), bytes::Bytes::new());
    match tokio::time::timeout(CENSUS_TIMEOUT, request).await {
        Err(_) => Err(format!("no answer within {} s", CENSUS_TIMEOUT.as_secs())),
        Ok(Err(error)) => Err(match error.kind() {
            async_nats::RequestErrorKind::NoResponders => {
                "no exporter serving the store is running".to_owned()
            }
            async_nats::RequestErrorKind::TimedOut => "no answer in time".to_owned(),
            _ => "the request could not be sent".to_owned(),
        }),
        Ok(Ok(message)) => serde_json::from_slice::<CensusReply>(&message.payload)
            .map_err(|_| "the answer is not a census reply".to_owned()),
    }
}

/// Asks every affected store for its census, records each answer (or that none came), and
/// sets each affected tenant's estimate: the largest count any answering store attributes to
/// it (the same person in two stores is one person; the store holding the accounts holds them
/// all). A tenant's estimate stays empty when no answering store attributes subjects to
/// tenants.
pub(super) async fn estimate_and_record(
    state: &AppState,
    id: Uuid,
    by: ApiKeyId,
) -> Result<(), ApiError> {
    let stores: Vec<String> = sqlx::query_scalar("SELECT stores FROM incident WHERE id = $1")
        .bind(id)
        .fetch_optional(&state.pool)
        .await?
        .ok_or(ApiError::NotFound)?;
    let asked_at = Utc::now();
    let answers = futures::future::join_all(
        stores
            .iter()
            .map(|store| ask(&state.incidents.nats, &state.names, store)),
    )
    .await;
    let tenants: Vec<(TenantId, String)> = sqlx::query_as(
        "SELECT t.id, t.name FROM incident_tenant it JOIN tenant t ON t.id = it.tenant_id
         WHERE it.incident_id = $1",
    )
    .bind(id)
    .fetch_all(&state.pool)
    .await?;
    let mut estimates: BTreeMap<TenantId, i64> = BTreeMap::new();
    let mut answered = Vec::new();
    let mut unanswered = Vec::new();
    let mut tx = state.pool.begin().await?;
    for (store, answer) in stores.iter().zip(&answers) {
        match answer {
            Ok(reply) => {
                answered.push(store.clone());
                if reply.counted && reply.attributed {
                    for (tenant_id, name) in &tenants {
                        let count = reply.tenants.get(name).copied().unwrap_or(0);
                        let count = i64::try_from(count).unwrap_or(i64::MAX);
                        let entry = estimates.entry(*tenant_id).or_default();
                        *entry = (*entry).max(count);
                    }
                }
                sqlx::query(
                    "INSERT INTO incident_estimate
                         (incident_id, store, answered, counted, attributed, tenants, unattributed,
                          method, error, asked_at)
                     VALUES ($1, $2, true, $3, $4, $5, $6, $7, $8, $9)
                     ON CONFLICT (incident_id, store) DO UPDATE SET
                         answered = true, counted = $3, attributed = $4, tenants = $5,
                         unattributed = $6, method = $7, error = $8, asked_at = $9",
                )
                .bind(id)
                .bind(store)
                .bind(reply.counted)
                .bind(reply.attributed)
                .bind(SqlJson(&reply.tenants))
                .bind(
                    reply
                        .counted
                        .then(|| i64::try_from(reply.unattributed).unwrap_or(i64::MAX)),
                )
                .bind(&reply.method)
                .bind(&reply.error)
                .bind(asked_at)
                .execute(&mut *tx)
                .await?;
            }
            Err(reason) => {
                unanswered.push(store.clone());
                sqlx::query(
                    "INSERT INTO incident_estimate (incident_id, store, answered, error, asked_at)
                     VALUES ($1, $2, false, $3, $4)
                     ON CONFLICT (incident_id, store) DO UPDATE SET
                         answered = false, counted = false, attributed = false,
                         tenants = '{}'::jsonb, unattributed = NULL, method = NULL,
                         error = $3, asked_at = $4",
                )
                .bind(id)
                .bind(store)
                .bind(reason)
                .bind(asked_at)
                .execute(&mut *tx)
                .await?;
            }
        }
    }
    let ids: Vec<TenantId> = estimates.keys().copied().collect();
    let counts: Vec<i64> = estimates.values().copied().collect();
    sqlx::query(
        "UPDATE incident_tenant it SET subjects = x.n
         FROM UNNEST($2::uuid[], $3::bigint[]) AS x(t, n)
         WHERE it.incident_id = $1 AND it.tenant_id = x.t",
    )
    .bind(id)
    .bind(&ids)
    .bind(&counts)
    .execute(&mut *tx)
    .await?;
    audit(
        &mut tx,
        None,
        id,
        "incident.estimated",
        json!({
            "by_key": by,
            "answered": answered,
            "unanswered": unanswered,
            "subjects": counts.iter().sum::<i64>(),
        }),
    )
    .await?;
    tx.commit().await?;
    tracing::info!(incident.id = %id, answered = answered.len(), unanswered = unanswered.len(), "incident estimated");
    Ok(())
}
