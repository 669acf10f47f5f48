//! The incident gauges on `/metrics`.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::clock::Clock;
use super::deadlines::overdue_counts;

/// Keeps the incident gauges current: `lethe_incidents_open` and
/// `lethe_incidents_overdue{deadline="tenants"|"authority"}`.
pub async fn run_gauges(pool: PgPool, clock: Clock, shutdown: CancellationToken) {
    while !shutdown.is_cancelled() {
        match overdue_counts(&pool, clock.now()).await {
            Ok((tenants, authority, open)) => {
                metrics::gauge!("lethe_incidents_overdue", "deadline" => "tenants")
                    .set(tenants as f64);
                metrics::gauge!("lethe_incidents_overdue", "deadline" => "authority")
                    .set(authority as f64);
                metrics::gauge!("lethe_incidents_open").set(open as f64);
            }
            Err(error) => tracing::warn!(error = %error, "cannot refresh the incident gauges"),
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(2)) => {},
            () = shutdown.cancelled() => {},
        }
    }
}
