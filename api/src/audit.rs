//! The audit chain. Events are appended with the state changes they record; the sealer then
//! gives each a place in the chain (`chain_pos`) and a hash over the previous event's hash and
//! its own content, so changing or removing a sealed event breaks every hash after it.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use sqlx::types::Json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Advisory-lock key that makes one sealer at a time chain events.
const SEALER_LOCK: i64 = 0x4c45_5448_4541_5544; // "LETHEAUD"

#[derive(Debug, sqlx::FromRow)]
struct EventRow {
    seq: i64,
    tenant_id: Option<Uuid>,
    request_id: Option<Uuid>,
    kind: String,
    detail: Json<serde_json::Value>,
    at: DateTime<Utc>,
    chain_pos: Option<i64>,
    prev_hash: Option<Vec<u8>>,
    hash: Option<Vec<u8>>,
}

/// The hash of an event at `chain_pos` following `prev`.
fn event_hash(prev: &[u8], chain_pos: i64, event: &EventRow) -> Vec<u8> {
    let mut hasher = Sha256::new();
    hasher.update(prev);
    hasher.update(chain_pos.to_be_bytes());
    hasher.update(event.seq.to_be_bytes());
    hasher.update(
        event
            .tenant_id
            .map(|id| id.into_bytes())
            .unwrap_or_default(),
    );
    hasher.update(
        event
            .request_id
            .map(|id| id.into_bytes())
            .unwrap_or_default(),
    );
    hasher.update(event.kind.as_bytes());
    hasher.update([0]);
    // serde_json keeps object keys sorted, so the same detail always serialises the same way.
    hasher.update(serde_json::to_vec(&event.detail.0).unwrap_or_default());
    hasher.update(event.at.timestamp_micros().to_be_bytes());
    hasher.finalize().to_vec()
}

/// The last sealed event's place in the chain and hash, if any is sealed.
pub async fn head<'e, E: sqlx::PgExecutor<'e>>(
    executor: E,
) -> sqlx::Result<Option<(i64, Vec<u8>)>> {
    sqlx::query_as(
        "SELECT chain_pos, hash FROM audit_event WHERE chain_pos IS NOT NULL ORDER BY chain_pos DESC LIMIT 1",
    )
    .fetch_optional(executor)
    .await
}

/// Chains every unsealed event; returns how many it sealed.
pub async fn seal(pool: &PgPool) -> sqlx::Result<usize> {
    let mut tx = pool.begin().await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(SEALER_LOCK)
        .fetch_one(&mut *tx)
        .await?;
    if !locked {
        return Ok(0);
    }
    let last = head(&mut *tx).await?;
    let (mut position, mut prev) = last.unwrap_or((0, vec![0u8; 32]));
    let events: Vec<EventRow> = sqlx::query_as(
        "SELECT seq, tenant_id, request_id, kind, detail, at, chain_pos, prev_hash, hash
         FROM audit_event WHERE chain_pos IS NULL ORDER BY seq LIMIT 5000",
    )
    .fetch_all(&mut *tx)
    .await?;
    if events.is_empty() {
        return Ok(0);
    }
    let mut seqs = Vec::with_capacity(events.len());
    let mut positions = Vec::with_capacity(events.len());
    let mut prevs = Vec::with_capacity(events.len());
    let mut hashes = Vec::with_capacity(events.len());
    for event in &events {
        position += 1;
        let hash = event_hash(&prev, position, event);
        seqs.push(event.seq);
        positions.push(position);
        prevs.push(prev.clone());
        hashes.push(hash.clone());
        prev = hash;
    }
    sqlx::query(
        "UPDATE audit_event AS e SET chain_pos = x.p, prev_hash = x.ph, hash = x.h
         FROM UNNEST($1::bigint[], $2::bigint[], $3::bytea[], $4::bytea[]) AS x(s, p, ph, h)
         WHERE e.seq = x.s",
    )
    .bind(&seqs)
    .bind(&positions)
    .bind(&prevs)
    .bind(&hashes)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(events.len())
}

/// Seals every 200 ms until `shutdown`.
pub async fn run_sealer(pool: PgPool, shutdown: CancellationToken) {
    while !shutdown.is_cancelled() {
        match seal(&pool).await {
            Ok(n) if n >= 5000 => continue,
            Ok(_) => {}
            Err(error) => tracing::warn!(error = %error, "cannot seal audit events; retrying"),
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(200)) => {},
            () = shutdown.cancelled() => {},
        }
    }
}

/// The outcome of checking the chain.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum Verification {
    /// Every sealed event checks out.
    Intact {
        /// Events checked.
        sealed: u64,
        /// Events not sealed yet.
        unsealed: u64,
    },
    /// The chain ends before a position a signed checkpoint states: events were removed
    /// from its end.
    Cut {
        /// The last position the chain holds (0: none).
        ends_at: i64,
        /// The position the checkpoint states.
        anchored: i64,
        /// When the checkpoint was made.
        anchored_at: DateTime<Utc>,
    },
    /// The first event whose link does not hold.
    Broken {
        /// Its place in the chain.
        chain_pos: i64,
        /// Its sequence number.
        seq: i64,
        /// What does not hold.
        problem: String,
    },
}

/// What a signed checkpoint states of the chain: the hash at one position, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor {
    /// The head's hash at that position.
    pub hash: Vec<u8>,
    /// When the checkpoint was made.
    pub at: DateTime<Utc>,
}

/// Recomputes the chain from its start and reports the first broken link.
pub async fn verify(pool: &PgPool) -> sqlx::Result<Verification> {
    verify_against(pool, &BTreeMap::new()).await
}

/// [`verify`], and the chain must also hold, at each position of `anchors`, the hash a signed
/// checkpoint states (a chain rewritten with consistent hashes does not), and reach the last
/// of them (a chain whose end was cut does not). Anchors are trusted as given: check their
/// signatures first.
pub async fn verify_against(
    pool: &PgPool,
    anchors: &BTreeMap<i64, Anchor>,
) -> sqlx::Result<Verification> {
    let mut prev = vec![0u8; 32];
    let mut expected = 0i64;
    let mut checked = 0u64;
    loop {
        let events: Vec<EventRow> = sqlx::query_as(
            "SELECT seq, tenant_id, request_id, kind, detail, at, chain_pos, prev_hash, hash
             FROM audit_event WHERE chain_pos > $1 ORDER BY chain_pos LIMIT 10000",
        )
        .bind(expected)
        .fetch_all(pool)
        .await?;
        if events.is_empty() {
            break;
        }
        for event in events {
            expected += 1;
            let position = event.chain_pos.unwrap_or_default();
            let broken = |problem: &str| Verification::Broken {
                chain_pos: expected,
                seq: event.seq,
                problem: problem.to_owned(),
            };
            if position != expected {
                return Ok(broken("an event is missing before this one"));
            }
            if event.prev_hash.as_deref() != Some(prev.as_slice()) {
                return Ok(broken("its link to the previous event does not match"));
            }
            let hash = event_hash(&prev, position, &event);
            if event.hash.as_deref() != Some(hash.as_slice()) {
                return Ok(broken("its content does not match its hash"));
            }
            if let Some(anchor) = anchors.get(&position)
                && anchor.hash != hash
            {
                return Ok(broken(&format!(
                    "its hash is not the one the signed checkpoint of {} states for this position: \
                     the chain was rewritten up to here",
                    anchor.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                )));
            }
            prev = hash;
            checked += 1;
        }
    }
    if let Some((&anchored, anchor)) = anchors.last_key_value()
        && anchored > expected
    {
        return Ok(Verification::Cut {
            ends_at: expected,
            anchored,
            anchored_at: anchor.at,
        });
    }
    let unsealed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_event WHERE chain_pos IS NULL")
            .fetch_one(pool)
            .await?;
    Ok(Verification::Intact {
        sealed: checked,
        unsealed: u64::try_from(unsealed).unwrap_or(0),
    })
}
