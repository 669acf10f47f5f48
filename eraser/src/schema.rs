//! The start-up check of the data map against the live schemas of the served stores.

use std::time::Duration;

use lethe_common::worker::TaskError;
use lethe_stores::{Connector, SchemaCheck};

/// How long one store's check may take before it is left to the first task.
const CHECK_TIMEOUT: Duration = Duration::from_secs(15);

/// The data map does not fit the live schemas.
#[derive(Debug, thiserror::Error)]
#[error(
    "the data map does not fit the live schemas; {} problem(s):\n  - {}",
    .0.len(),
    .0.join("\n  - ")
)]
pub struct SchemaMismatch(pub Vec<String>);

/// Checks every connector at once. Every problem of every store is listed in one error; a
/// store that cannot be reached now is only logged: its check is made on its first task, and
/// its tasks wait for it, as they would for any store that goes down later.
pub async fn check_all<'a>(
    connectors: impl Iterator<Item = &'a Connector>,
) -> Result<(), SchemaMismatch> {
    let checks = connectors.map(|connector| async move {
        let outcome = tokio::time::timeout(CHECK_TIMEOUT, connector.check_schema()).await;
        (connector.store().clone(), outcome)
    });
    let mut problems = Vec::new();
    for (store, outcome) in futures::future::join_all(checks).await {
        match outcome {
            Ok(Ok(SchemaCheck::Fits)) => {
                tracing::debug!(store = %store, "the data map fits the live schema");
            }
            Ok(Ok(SchemaCheck::Problems(found))) => problems.extend(found),
            Ok(Err(TaskError::Permanent { code, reason })) => {
                problems.push(format!("store `{store}`: {code}: {reason}"));
            }
            Ok(Err(TaskError::Transient(error))) => tracing::warn!(
                store = %store,
                error = %format!("{error:#}"),
                "cannot check the live schema now; it is checked on the store's first task"
            ),
            Err(_) => tracing::warn!(
                store = %store,
                timeout_s = CHECK_TIMEOUT.as_secs(),
                "the live schema check timed out; it is checked on the store's first task"
            ),
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(SchemaMismatch(problems))
    }
}
