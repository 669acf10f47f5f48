//! Webhook delivery: the coordinator only writes a delivery row; this worker POSTs it with an
//! HMAC-SHA256 signature, retries with backoff, and records every attempt. A slow or dead
//! endpoint never holds up the coordinator.
//!
//! Signature header: `Lethe-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`,
//! keyed with the tenant's webhook secret.

use std::time::Duration;

use chrono::Utc;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use sqlx::PgPool;
use sqlx::types::Json;
use tokio_util::sync::CancellationToken;

/// Header carrying the signature.
pub const SIGNATURE_HEADER: &str = "Lethe-Signature";
/// Attempts before a delivery is abandoned.
pub const MAX_ATTEMPTS: i32 = 12;

/// The signature header value for `body` sent at `timestamp`.
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// Delay before attempt `attempts + 1`: 5 s doubling, at most an hour.
pub fn backoff(attempts: i32) -> Duration {
    let exponent = u32::try_from(attempts.clamp(0, 10)).unwrap_or(0);
    Duration::from_secs((5u64 << exponent).min(3600))
}

#[derive(sqlx::FromRow)]
struct Due {
    id: i64,
    url: String,
    payload: Json<serde_json::Value>,
    attempts: i32,
    secret: Option<String>,
}

/// Delivers due webhooks until `shutdown`.
pub async fn run(pool: PgPool, client: reqwest::Client, shutdown: CancellationToken) {
    while !shutdown.is_cancelled() {
        match deliver_due(&pool, &client).await {
            Ok(n) if n > 0 => continue,
            Ok(_) => {}
            Err(error) => tracing::warn!(error = %error, "cannot deliver webhooks; retrying"),
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(500)) => {},
            () = shutdown.cancelled() => {},
        }
    }
}

/// Attempts every due delivery once; returns how many were attempted.
pub async fn deliver_due(pool: &PgPool, client: &reqwest::Client) -> sqlx::Result<usize> {
    // Claim a batch by pushing its next attempt out: another process skips it meanwhile.
    let due: Vec<Due> = sqlx::query_as(
        "WITH claimed AS (
             SELECT id FROM webhook_delivery
             WHERE delivered_at IS NULL AND abandoned_at IS NULL AND next_attempt_at <= now()
             ORDER BY next_attempt_at LIMIT 16 FOR UPDATE SKIP LOCKED
         )
         UPDATE webhook_delivery d SET next_attempt_at = now() + interval '2 minutes'
         FROM claimed, tenant t
         WHERE d.id = claimed.id AND t.id = d.tenant_id
         RETURNING d.id, d.url, d.payload, d.attempts, t.webhook_secret AS secret",
    )
    .fetch_all(pool)
    .await?;
    let count = due.len();
    for delivery in due {
        let body = serde_json::to_vec(&delivery.payload.0).unwrap_or_default();
        let timestamp = Utc::now().timestamp();
        let signature = sign(delivery.secret.as_deref().unwrap_or(""), timestamp, &body);
        let outcome = client
            .post(&delivery.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, signature)
            .body(body)
            .send()
            .await;
        let attempt = delivery.attempts + 1;
        let (status, error) = match &outcome {
            Ok(response) => (Some(i32::from(response.status().as_u16())), None),
            // The error names the host and the kind of failure, never the payload.
            Err(error) => (None, Some(error.to_string())),
        };
        let delivered = status.is_some_and(|s| (200..300).contains(&s));
        sqlx::query("INSERT INTO webhook_attempt (delivery_id, attempt, status, error) VALUES ($1, $2, $3, $4)")
            .bind(delivery.id)
            .bind(attempt)
            .bind(status)
            .bind(&error)
            .execute(pool)
            .await?;
        let next = chrono::Duration::from_std(backoff(attempt)).unwrap_or_default();
        sqlx::query(
            "UPDATE webhook_delivery SET attempts = $2,
                 delivered_at = CASE WHEN $3 THEN now() END,
                 abandoned_at = CASE WHEN NOT $3 AND $2 >= $4 THEN now() END,
                 next_attempt_at = now() + $5
             WHERE id = $1",
        )
        .bind(delivery.id)
        .bind(attempt)
        .bind(delivered)
        .bind(MAX_ATTEMPTS)
        .bind(next)
        .execute(pool)
        .await?;
        if delivered || attempt >= MAX_ATTEMPTS {
            // Incident notifications are steps of the breach register: the chain records them.
            // The delivery itself is recorded either way; a lost audit event is logged.
            if let Err(error) =
                crate::incidents::delivery_settled(pool, delivery.id, delivered, attempt).await
            {
                tracing::warn!(delivery.id = delivery.id, error = %error, "cannot record the end of an incident notification");
            }
        }
        metrics::counter!("lethe_webhook_attempts_total", "outcome" => if delivered { "delivered" } else { "failed" }).increment(1);
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_bind_the_timestamp_and_body() {
        let a = sign("secret", 1_700_000_000, b"{}");
        assert!(a.starts_with("t=1700000000,v1="));
        assert_ne!(a, sign("secret", 1_700_000_001, b"{}"));
        assert_ne!(a, sign("other", 1_700_000_000, b"{}"));
        assert_eq!(backoff(0), Duration::from_secs(5));
        assert_eq!(backoff(20), Duration::from_secs(3600));
    }
}
