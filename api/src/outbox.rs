//! The outbox relay: publishes the messages that state changes wrote to the ledger, then
//! deletes them. While NATS is unreachable the messages wait in the ledger; when it returns
//! they are published. A message published but not yet deleted when a relay dies is published
//! again by the next one and dropped by JetStream as a duplicate (`Nats-Msg-Id`).

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use bytes::Bytes;
use lethe_common::nats::TRACEPARENT;
use sqlx::PgPool;
use sqlx::types::Json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Rows relayed per transaction.
const BATCH: i64 = 500;

/// Wakes this process's relay when this process wrote to the outbox. In-process on purpose:
/// a PostgreSQL `NOTIFY` would serialise every committing transaction on the notification
/// queue's lock. Rows written by other processes are found by the relay's periodic poll (and
/// by their own relays).
#[derive(Debug, Clone, Default)]
pub struct OutboxSignal(Arc<Notify>);

impl OutboxSignal {
    /// Wakes the relay.
    pub fn wake(&self) {
        self.0.notify_one();
    }

    async fn woken(&self) {
        self.0.notified().await;
    }
}

/// How often the relay looks at the outbox without being woken.
const POLL: Duration = Duration::from_millis(500);
/// The longest one batch may take, publishing and acknowledgements included (each
/// acknowledgement has its own, shorter, timeout in the client).
const BATCH_TIMEOUT: Duration = Duration::from_secs(30);

/// Publishes the outbox to NATS.
pub struct Relay {
    pool: PgPool,
    jetstream: jetstream::Context,
    signal: OutboxSignal,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: i64,
    subject: String,
    message_id: String,
    traceparent: Option<String>,
    payload: Json<serde_json::Value>,
}

impl Relay {
    /// A relay from `pool` to `jetstream`, woken by `signal`.
    pub fn new(pool: PgPool, jetstream: jetstream::Context, signal: OutboxSignal) -> Self {
        Self {
            pool,
            jetstream,
            signal,
        }
    }

    /// Relays until `shutdown`: when woken, and every half second anyway.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut failures = 0u32;
        while !shutdown.is_cancelled() {
            // A batch that hangs (a publish or its acknowledgement stuck while the cluster
            // elects a leader, seen as a relay that stopped for good) is abandoned: its
            // transaction rolls back and the rows go again, de-duplicated by message id.
            let relayed = tokio::time::timeout(BATCH_TIMEOUT, self.relay_batch())
                .await
                .unwrap_or_else(|_| {
                    Err(anyhow::anyhow!(
                        "a batch took longer than {BATCH_TIMEOUT:?}; abandoned"
                    ))
                });
            match relayed {
                Ok(relayed) => {
                    failures = 0;
                    if relayed as i64 == BATCH {
                        continue;
                    }
                }
                Err(error) => {
                    failures += 1;
                    if failures == 1 || failures.is_multiple_of(30) {
                        tracing::warn!(error = %format!("{error:#}"), failures, "cannot relay the outbox; retrying");
                    }
                    metrics::counter!("lethe_outbox_failures_total").increment(1);
                    let delay = Duration::from_millis((200 * u64::from(failures)).min(5_000));
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {},
                        () = shutdown.cancelled() => {},
                    }
                    continue;
                }
            }
            tokio::select! {
                () = self.signal.woken() => {},
                () = tokio::time::sleep(POLL) => {},
                () = shutdown.cancelled() => {},
            }
        }
    }

    /// Publishes up to one batch and deletes what JetStream acknowledged. Returns how many.
    pub async fn relay_batch(&self) -> anyhow::Result<usize> {
        let mut tx = self.pool.begin().await?;
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT id, subject, message_id, traceparent, payload FROM outbox
             ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(BATCH)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        // Send everything, then wait for the acknowledgements together: one round trip per
        // batch instead of one per message.
        let mut pending = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut headers = HeaderMap::new();
            headers.insert(async_nats::header::NATS_MESSAGE_ID, row.message_id.as_str());
            if let Some(trace) = &row.traceparent {
                headers.insert(TRACEPARENT, trace.as_str());
            }
            let payload = Bytes::from(serde_json::to_vec(&row.payload.0)?);
            let ack = self
                .jetstream
                .publish_with_headers(row.subject.clone(), headers, payload)
                .await?;
            pending.push((row.id, ack));
        }
        let mut published = Vec::with_capacity(pending.len());
        let mut first_error = None;
        for (id, ack) in pending {
            match ack.await {
                Ok(_) => published.push(id),
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
            .bind(&published)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        metrics::counter!("lethe_outbox_published_total").increment(published.len() as u64);
        match first_error {
            Some(error) => Err(anyhow::Error::new(error).context("JetStream refused a message")),
            None => Ok(published.len()),
        }
    }
}
