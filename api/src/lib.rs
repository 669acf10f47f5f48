#![doc = include_str!("../README.md")]

pub mod audit;
pub mod closure;
pub mod console;
pub mod coordinator;
pub mod deadlines;
pub mod error;
pub mod export;
pub mod extract;
pub mod incidents;
pub mod keys;
pub mod model;
pub mod openapi;
pub mod outbox;
pub mod pages;
pub mod plan;
pub mod privacy;
pub mod receipt;
pub mod requests;
pub mod routes;
pub mod settings;
pub mod tenants;
pub mod validate;
pub mod webhooks;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::consumer::PullConsumer;
use axum::extract::{DefaultBodyLimit, FromRef};
use axum::routing::{get, post};
use axum::{Json, Router};
use lethe_common::config::NatsSettings;
use lethe_common::datamap::DataMap;
use lethe_common::nats::{self, ConsumerSpec, Durable, Names, Publisher};
use lethe_common::ops::{self, Readiness};
use lethe_common::privacy::IdentityHasher;
use lethe_common::worker::RunMode;
use lethe_common::{Settings, ledger};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi;

use crate::coordinator::Coordinator;
use crate::error::ApiError;
use crate::extract::{BodyLimit, KeyCache};
use crate::plan::Planner;
use crate::receipt::ReceiptSigner;
use crate::settings::ApiSettings;

/// What request handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The ledger.
    pub pool: PgPool,
    /// NATS names.
    pub names: Names,
    /// Plans requests from the data map.
    pub planner: Arc<Planner>,
    /// Keyed hashing of identities.
    pub hasher: IdentityHasher,
    /// Recently checked API keys.
    pub keys: KeyCache,
    /// The body size limit.
    pub body_limit: BodyLimit,
    /// Signs receipts.
    pub receipts: Arc<ReceiptSigner>,
    /// Where exports are and how long their download links live.
    pub exports: export::Exports,
    /// Wakes the outbox relay.
    pub outbox: outbox::OutboxSignal,
    /// The breach register's clock and census client.
    pub incidents: incidents::Incidents,
    /// The console's and privacy center's settings, signer, mailer and rate limits.
    pub pages: pages::Pages,
    /// Where webhooks and callbacks may go.
    pub outbound: Arc<webhooks::OutboundPolicy>,
    /// Tenant names, which every task carries.
    pub tenants: tenants::TenantNames,
}

impl FromRef<AppState> for PgPool {
    fn from_ref(state: &AppState) -> Self {
        state.pool.clone()
    }
}

impl FromRef<AppState> for KeyCache {
    fn from_ref(state: &AppState) -> Self {
        state.keys.clone()
    }
}

impl FromRef<AppState> for BodyLimit {
    fn from_ref(state: &AppState) -> Self {
        state.body_limit
    }
}

/// The api daemon, built and ready to serve.
pub struct App {
    state: AppState,
    api: ApiSettings,
    nats: NatsSettings,
    publisher: Publisher,
    consumer: PullConsumer,
    listener: TcpListener,
    readiness: Readiness,
}

impl App {
    /// Opens and migrates the ledger, loads the data map, connects to NATS, provisions the
    /// streams and the coordinator's consumer, and binds the HTTP listener.
    pub async fn build(settings: &Settings) -> anyhow::Result<Self> {
        let api: ApiSettings = settings.section()?;
        let receipt_key = api.receipt_signing_key.as_ref().context(
            "api.receipt_signing_key is required (generate one: head -c 32 /dev/urandom | base64)",
        )?;
        let receipts = Arc::new(ReceiptSigner::from_seed(receipt_key)?);
        let hasher = IdentityHasher::new(settings.require_privacy()?.hash_key.clone());
        let map = DataMap::load(&settings.data_map_path()?)?;
        let pool = ledger::connect_and_migrate(settings.require_ledger()?).await?;
        let names = Names::new(&settings.nats.prefix)?;
        let client = nats::connect(&settings.nats, "lethe-api").await?;
        let publisher = Publisher::new(client.clone(), names.clone());
        nats::provision_streams(publisher.jetstream(), &names, &settings.nats).await?;
        let spec = ConsumerSpec {
            durable: Durable::Coordinator,
        };
        let consumer =
            nats::provision_consumer(publisher.jetstream(), &names, &settings.nats, &spec).await?;
        let outbound = webhooks::OutboundPolicy::new(&api.outbound)
            .map_err(|why| anyhow::anyhow!("api.outbound.allow_hosts: {why}"))?;
        let listener = ops::bind(api.listen).await?;
        let incidents = incidents::Incidents::new(client.clone());
        let pages = pages::Pages {
            settings: Arc::new(api.pages.clone()),
            signer: hasher.clone(),
            mailer: privacy::mailer::Mailer::new(api.smtp.as_ref())?,
            limits: privacy::limits::RateLimits::default(),
        };
        let readiness = Readiness::new()
            .ledger(pool.clone())
            .check("nats", move || {
                let state = client.connection_state();
                async move {
                    match state {
                        async_nats::connection::State::Connected => Ok(()),
                        other => Err(format!("{other}")),
                    }
                }
            });
        Ok(Self {
            state: AppState {
                pool,
                names,
                planner: Arc::new(Planner::new(map)),
                hasher,
                keys: KeyCache::new(api.key_cache_ttl),
                body_limit: BodyLimit(api.body_limit_bytes),
                receipts,
                exports: export::Exports::new(settings, api.export_link_ttl),
                outbox: outbox::OutboxSignal::default(),
                incidents,
                pages,
                outbound: Arc::new(outbound),
                tenants: tenants::TenantNames::default(),
            },
            api,
            nats: settings.nats.clone(),
            publisher,
            consumer,
            listener,
            readiness,
        })
    }

    /// The bound HTTP address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The shared state (tests drive the coordinator and the relay through it).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves HTTP and runs the coordinator, the outbox relay, the audit sealer, webhook
    /// delivery and the deadline gauges until `shutdown`; then lets in-flight work finish.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let background = CancellationToken::new();
        let mut tasks = tokio::task::JoinSet::new();
        let coordinator = Coordinator::new(
            self.state.pool.clone(),
            self.state.planner.clone(),
            self.state.names.clone(),
            self.state.outbox.clone(),
        )
        .with_export_ttl(self.api.export_ttl);
        let results =
            coordinator.results_loop(self.consumer, self.publisher.clone(), &self.nats, &self.api);
        let stop = background.clone();
        tasks.spawn(async move {
            if let Err(error) = results.run(stop, RunMode::UntilShutdown).await {
                tracing::error!(error = %error, "the coordinator stopped");
            }
        });
        let relay = outbox::Relay::new(
            self.state.pool.clone(),
            self.publisher.jetstream().clone(),
            self.state.outbox.clone(),
        );
        tasks.spawn(relay.run(background.clone()));
        tasks.spawn(audit::run_sealer(
            self.state.pool.clone(),
            background.clone(),
        ));
        let outbound =
            webhooks::Outbound::new(self.state.outbound.clone(), self.api.webhook_timeout);
        tasks.spawn(webhooks::run(
            self.state.pool.clone(),
            outbound,
            background.clone(),
        ));
        tasks.spawn(refresh_gauges(self.state.pool.clone(), background.clone()));
        tasks.spawn(incidents::run_gauges(
            self.state.pool.clone(),
            self.state.incidents.clock.clone(),
            background.clone(),
        ));

        tasks.spawn(privacy::sweeper::run(
            self.state.pool.clone(),
            self.state.pages.mailer.clone(),
            self.state.pages.settings.public_url.clone(),
            self.state.pages.settings.sweep_interval,
            background.clone(),
        ));

        let router = router(self.state).merge(ops::router("api", self.readiness));
        tracing::info!(address = %self.listener.local_addr()?, "api listening");
        // With the peer's address, for the privacy center's per-client rate limit.
        let served = axum::serve(
            self.listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
        background.cancel();
        let drain = tokio::time::timeout(self.api.drain_timeout, async {
            while tasks.join_next().await.is_some() {}
        });
        if drain.await.is_err() {
            tracing::warn!("background work did not stop within the drain timeout");
        }
        served?;
        tracing::info!("api stopped");
        Ok(())
    }
}

/// The HTTP API's routes.
pub fn router(state: AppState) -> Router {
    let limit = state.body_limit.0;
    Router::new()
        .route("/v1/requests", post(routes::create).get(routes::list))
        .route("/v1/requests/{id}", get(routes::show))
        .route("/v1/requests/{id}/cancel", post(routes::cancel))
        .route("/v1/requests/{id}/extend", post(routes::extend))
        .route("/v1/requests/{id}/receipt", get(routes::receipt))
        .route("/v1/requests/{id}/export", get(export::download))
        .route("/v1/receipt-key", get(routes::receipt_key))
        .route("/v1/incidents", post(incidents::open).get(incidents::list))
        .route(
            "/v1/incidents/{id}",
            get(incidents::show).patch(incidents::update),
        )
        .route("/v1/incidents/{id}/estimate", post(incidents::estimate))
        .route("/v1/incidents/{id}/notify", post(incidents::notify))
        .route(
            "/v1/incidents/{id}/acknowledge",
            post(incidents::acknowledge),
        )
        .route("/v1/incidents/{id}/close", post(incidents::close))
        .merge(pages::router())
        .route(
            "/openapi.json",
            get(|| async { Json(openapi::ApiDoc::openapi()) }),
        )
        .fallback(|| async { ApiError::NotFound })
        .layer(DefaultBodyLimit::max(limit))
        // A span per request (joining the caller's `traceparent`); the operations endpoints
        // (probes, metrics) are merged in later, untraced, so polling them makes no traces.
        .layer(axum::middleware::from_fn(
            lethe_common::telemetry::http_span,
        ))
        .with_state(state)
}

/// Keeps the overdue and due-soon gauges current.
async fn refresh_gauges(pool: PgPool, shutdown: CancellationToken) {
    while !shutdown.is_cancelled() {
        let counts: Result<(i64, i64, i64), _> = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE due_at < now()),
                    count(*) FILTER (WHERE due_at >= now() AND due_at < now() + interval '48 hours'),
                    count(*)
             FROM request WHERE status IN ('received', 'verifying', 'in_progress')",
        )
        .fetch_one(&pool)
        .await;
        match counts {
            Ok((overdue, due_soon, open)) => {
                metrics::gauge!("lethe_requests_overdue").set(overdue as f64);
                metrics::gauge!("lethe_requests_due_within_48h").set(due_soon as f64);
                metrics::gauge!("lethe_requests_open").set(open as f64);
            }
            Err(error) => tracing::warn!(error = %error, "cannot refresh the deadline gauges"),
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(15)) => {},
            () = shutdown.cancelled() => {},
        }
    }
}
