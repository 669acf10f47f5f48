//! The API, shaped like Stripe's: customers listed by email, retrieved, updated (form-encoded)
//! and deleted; charges listed by customer; lists paged with `limit` and `starting_after` and
//! answered as `{"object": "list", "data": [...], "has_more": ...}`; errors as
//! `{"error": {"type", "code", "message"}}`. Besides, `/healthz` and the test hooks under
//! `/admin/` (see `faults`). Every call is logged by its route template and status, never by
//! its path or query (they hold the customer's id and email).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::faults::{FaultPlan, Stats};
use crate::store::Store;

/// What the handlers share.
pub struct App {
    /// The customers and charges.
    pub store: Mutex<Store>,
    /// Calls and the fault plan.
    pub stats: Mutex<Stats>,
    /// The bearer token callers must present, when set.
    pub api_key: Option<String>,
}

type Shared = Arc<App>;

/// The whole router.
pub fn router(app: Shared) -> Router {
    let api = Router::new()
        .route("/v1/customers", get(list_customers))
        .route(
            "/v1/customers/{id}",
            get(get_customer)
                .post(update_customer)
                .delete(delete_customer),
        )
        .route("/v1/charges", get(list_charges))
        .layer(axum::middleware::from_fn_with_state(app.clone(), guard));
    Router::new()
        .merge(api)
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/admin/faults",
            axum::routing::post(set_faults).delete(clear_faults),
        )
        .route("/admin/stats", get(stats))
        .layer(axum::middleware::from_fn(log_call))
        .with_state(app)
}

/// One line per call: method, route template, status.
async fn log_call(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "(no route)".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    eprintln!(
        "lethe-sample-processor: {method} {route} {}",
        response.status().as_u16()
    );
    response
}

/// Checks the bearer token, counts the call and answers it from the fault plan if it says so.
async fn guard(State(app): State<Shared>, request: Request, next: Next) -> Response {
    if let Some(key) = &app.api_key {
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if presented != Some(key.as_str()) {
            return error(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "api_key_invalid",
                "Invalid API key provided",
            );
        }
    }
    let fault = match app.stats.lock() {
        Ok(mut stats) => stats.take_fault(request.method().as_str()),
        Err(_) => None,
    };
    match fault {
        Some(fault) => fault_answer(&fault, request.uri().query().unwrap_or_default()),
        None => next.run(request).await,
    }
}

fn fault_answer(fault: &FaultPlan, query: &str) -> Response {
    let status = StatusCode::from_u16(fault.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = match fault.status {
        429 => error(
            status,
            "rate_limit_error",
            "rate_limit",
            "Too many requests",
        ),
        500..=599 => error(
            status,
            "api_error",
            "internal",
            "Something went wrong on our side",
        ),
        // Like real processors, a refusal quotes what it refused: Lethe must never pass this on.
        _ => error(
            status,
            "invalid_request_error",
            "parameter_invalid",
            &format!("Invalid request: {}", decode(query)),
        ),
    };
    if let Some(seconds) = fault.retry_after
        && let Ok(value) = HeaderValue::from_str(&seconds.to_string())
    {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

fn error(status: StatusCode, kind: &str, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({ "error": { "type": kind, "code": code, "message": message } })),
    )
        .into_response()
}

fn missing(what: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "resource_missing",
        &format!("No such {what}"),
    )
}

fn unavailable() -> Response {
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "api_error",
        "store_unavailable",
        "The store is unavailable",
    )
}

#[derive(Deserialize)]
struct ListParams {
    email: Option<String>,
    customer: Option<String>,
    limit: Option<usize>,
    starting_after: Option<String>,
}

/// One page of `items` (sorted by id) after `starting_after`.
fn page(items: Vec<&Value>, params: &ListParams, url: &str) -> Response {
    let limit = params.limit.unwrap_or(10).clamp(1, 100);
    let after = params.starting_after.as_deref();
    let rest: Vec<&Value> = items
        .into_iter()
        .filter(|item| after.is_none_or(|a| item["id"].as_str().is_some_and(|id| id > a)))
        .collect();
    let has_more = rest.len() > limit;
    let data: Vec<&Value> = rest.into_iter().take(limit).collect();
    Json(json!({ "object": "list", "url": url, "has_more": has_more, "data": data }))
        .into_response()
}

async fn list_customers(State(app): State<Shared>, Query(params): Query<ListParams>) -> Response {
    let Ok(store) = app.store.lock() else {
        return unavailable();
    };
    let email = params.email.as_deref().map(str::to_lowercase);
    let items: Vec<&Value> = store
        .data
        .customers
        .values()
        .filter(|c| {
            email
                .as_deref()
                .is_none_or(|e| c["email"].as_str().is_some_and(|v| v.to_lowercase() == e))
        })
        .collect();
    page(items, &params, "/v1/customers")
}

async fn list_charges(State(app): State<Shared>, Query(params): Query<ListParams>) -> Response {
    let Ok(store) = app.store.lock() else {
        return unavailable();
    };
    let mut items: Vec<&Value> = store
        .data
        .charges
        .iter()
        .filter(|c| {
            params
                .customer
                .as_deref()
                .is_none_or(|id| c["customer"].as_str() == Some(id))
        })
        .collect();
    items.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    page(items, &params, "/v1/charges")
}

async fn get_customer(State(app): State<Shared>, Path(id): Path<String>) -> Response {
    let Ok(store) = app.store.lock() else {
        return unavailable();
    };
    match store.data.customers.get(&id) {
        Some(customer) => Json(customer.clone()).into_response(),
        None => missing("customer"),
    }
}

async fn delete_customer(State(app): State<Shared>, Path(id): Path<String>) -> Response {
    let Ok(mut store) = app.store.lock() else {
        return unavailable();
    };
    if store.data.customers.remove(&id).is_none() {
        return missing("customer");
    }
    if store.save().is_err() {
        return unavailable();
    }
    Json(json!({ "id": id, "object": "customer", "deleted": true })).into_response()
}

/// Form fields: `email`, `phone`, `name` (empty clears), `metadata[key]` (empty removes).
async fn update_customer(
    State(app): State<Shared>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let fields = parse_form(&body);
    let Ok(mut store) = app.store.lock() else {
        return unavailable();
    };
    let Some(customer) = store.data.customers.get_mut(&id) else {
        return missing("customer");
    };
    for (key, value) in fields {
        if let Some(name) = key
            .strip_prefix("metadata[")
            .and_then(|k| k.strip_suffix(']'))
        {
            let metadata = &mut customer["metadata"];
            if !metadata.is_object() {
                *metadata = json!({});
            }
            if let Some(map) = metadata.as_object_mut() {
                if value.is_empty() {
                    map.remove(name);
                } else {
                    map.insert(name.to_owned(), Value::String(value));
                }
            }
        } else if matches!(key.as_str(), "email" | "phone" | "name") {
            customer[key.as_str()] = if value.is_empty() {
                Value::Null
            } else {
                Value::String(value)
            };
        } else {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "parameter_unknown",
                &format!("Received unknown parameter: {key}"),
            );
        }
    }
    let answer = customer.clone();
    if store.save().is_err() {
        return unavailable();
    }
    Json(answer).into_response()
}

async fn set_faults(State(app): State<Shared>, Json(plan): Json<FaultPlan>) -> StatusCode {
    if let Ok(mut stats) = app.stats.lock() {
        stats.plan = (plan.count > 0).then_some(plan);
    }
    StatusCode::NO_CONTENT
}

async fn clear_faults(State(app): State<Shared>) -> StatusCode {
    if let Ok(mut stats) = app.stats.lock() {
        stats.plan = None;
    }
    StatusCode::NO_CONTENT
}

async fn stats(State(app): State<Shared>) -> Response {
    match app.stats.lock() {
        Ok(stats) => Json(stats.clone()).into_response(),
        Err(_) => unavailable(),
    }
}

/// `application/x-www-form-urlencoded` pairs, in order.
fn parse_form(body: &[u8]) -> BTreeMap<String, String> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(key), decode(value))
        })
        .collect()
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(high), Some(low)) => {
                        out.push(u8::try_from(high * 16 + low).unwrap_or(b'?'));
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_are_decoded() {
        let fields = parse_form(b"metadata%5Brestricted%5D=true&name=Ada+Lovelace&phone=&x=%zz");
        assert_eq!(fields["metadata[restricted]"], "true");
        assert_eq!(fields["name"], "Ada Lovelace");
        assert_eq!(fields["phone"], "");
        assert_eq!(fields["x"], "%zz");
    }
}
