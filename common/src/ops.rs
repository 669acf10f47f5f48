//! The operations endpoints every daemon serves: `/healthz` (the process runs), `/readyz` (its
//! dependencies answer) and `/metrics` (Prometheus text format).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

type CheckFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
type CheckFn = Arc<dyn Fn() -> CheckFuture + Send + Sync>;

/// Named checks that must all pass for the daemon to be ready. A check's error message is
/// shown on `/readyz`, so it must not hold personal data or secrets.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Vec<(String, CheckFn)>,
}

impl Readiness {
    /// No checks yet: ready.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a check.
    pub fn check<F, Fut>(mut self, name: impl Into<String>, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let check: CheckFn = Arc::new(move || Box::pin(check()));
        self.checks.push((name.into(), check));
        self
    }

    /// Adds the check that the ledger (or any PostgreSQL pool) answers, named `ledger`.
    pub fn ledger(self, pool: sqlx::PgPool) -> Self {
        self.check("ledger", move || {
            let pool = pool.clone();
            async move {
                sqlx::query("SELECT 1")
                    .execute(&pool)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
        })
    }

    /// Runs every check (each bounded to two seconds) and reports them by name.
    pub async fn evaluate(&self) -> (bool, serde_json::Map<String, serde_json::Value>) {
        let mut report = serde_json::Map::new();
        let mut ready = true;
        for (name, check) in &self.checks {
            let outcome = match tokio::time::timeout(Duration::from_secs(2), check()).await {
                Ok(Ok(())) => json!("ok"),
                Ok(Err(message)) => {
                    ready = false;
                    json!(message)
                }
                Err(_) => {
                    ready = false;
                    json!("timed out")
                }
            };
            report.insert(name.clone(), outcome);
        }
        (ready, report)
    }
}

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder is installed; the handle still renders ours.
            drop(metrics::set_global_recorder(recorder));
            handle
        })
        .clone()
}

#[derive(Clone)]
struct OpsState {
    daemon: &'static str,
    readiness: Readiness,
    metrics: PrometheusHandle,
}

/// The routes `/healthz`, `/readyz` and `/metrics`, to serve alone or merge into an API.
pub fn router(daemon: &'static str, readiness: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(OpsState {
            daemon,
            readiness,
            metrics: metrics_handle(),
        })
}

async fn healthz(State(state): State<OpsState>) -> Json<serde_json::Value> {
    Json(json!({ "status": "ok", "daemon": state.daemon }))
}

async fn readyz(State(state): State<OpsState>) -> Response {
    let (ready, checks) = state.readiness.evaluate().await;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "daemon": state.daemon,
        "checks": checks,
    });
    (status, Json(body)).into_response()
}

async fn render_metrics(State(state): State<OpsState>) -> Response {
    state.metrics.run_upkeep();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

/// A listener that could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {address}: {source}")]
pub struct BindError {
    address: SocketAddr,
    source: std::io::Error,
}

/// Binds `address` (port 0 picks a free port; the bound address is returned by
/// [`TcpListener::local_addr`]).
pub async fn bind(address: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| BindError { address, source })
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then lets in-flight requests
/// finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
