//! Audit anchors: signed checkpoints of the audit chain's head, kept outside the ledger.
//!
//! The audit chain (the api's `audit` module) proves that no sealed event was changed or
//! removed *given* its first and last hashes; someone who can write the ledger can rewrite it
//! from its first event with consistent hashes, or cut its end, and the chain still checks out.
//! A checkpoint states "the chain had reached position N with head hash H at time T", signed
//! with the receipt key (Ed25519). Checkpoints go where the ledger's writer cannot reach them:
//! the events stream, every backup's manifest, and any file an operator keeps. `audit verify`
//! checks the chain against them.
//!
//! This module is the contract: the checkpoint and its signed bytes, how it travels as an
//! event, and how a daemon asks the api for a fresh one (core NATS request/reply, as the
//! breach census does). The api signs and verifies (it holds the key).

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::messages::Event;
use crate::nats::Names;

/// The event kind of a checkpoint on the events stream (`<prefix>.event.audit.checkpoint`).
pub const CHECKPOINT_EVENT: &str = "audit.checkpoint";

/// The first line of the signed bytes: what they are and in which version.
const SIGNED_FORMAT: &str = "lethe-audit-checkpoint/1";

/// A signed statement of the audit chain's head. Holds positions, hashes and a time: nothing
/// about any person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// The head's place in the chain (`audit_event.chain_pos`): the number of sealed events.
    pub chain_pos: i64,
    /// The head event's hash (`audit_event.hash`), hex.
    pub head_hash: String,
    /// When the checkpoint was made (microsecond precision, as signed).
    pub at: DateTime<Utc>,
    /// Which key signed it (the receipt key's id, as `GET /v1/receipt-key` shows it).
    pub key_id: String,
    /// The Ed25519 signature of [`Checkpoint::signed_bytes`], base64.
    pub signature: String,
}

impl Checkpoint {
    /// The exact bytes a checkpoint's signature covers: four lines of text,
    /// `lethe-audit-checkpoint/1`, `chain_pos=<n>`, `head_hash=<hex>` and
    /// `at=<RFC 3339, microseconds, Z>`, each ending in `\n`. Anyone can rebuild them from the
    /// JSON and check the signature with the published key (`openssl pkeyutl -verify -rawin`).
    pub fn signed_bytes(chain_pos: i64, head_hash: &str, at: DateTime<Utc>) -> Vec<u8> {
        format!(
            "{SIGNED_FORMAT}\nchain_pos={chain_pos}\nhead_hash={head_hash}\nat={}\n",
            at.to_rfc3339_opts(SecondsFormat::Micros, true)
        )
        .into_bytes()
    }

    /// The bytes this checkpoint's signature covers.
    pub fn payload(&self) -> Vec<u8> {
        Self::signed_bytes(self.chain_pos, &self.head_hash, self.at)
    }

    /// The checkpoint as an event of the events stream: kind `audit.checkpoint`, the
    /// position as a count, and the checkpoint itself, as JSON, in `detail`.
    pub fn to_event(&self) -> Result<Event, serde_json::Error> {
        Ok(Event {
            kind: CHECKPOINT_EVENT.to_owned(),
            request_id: None,
            tenant_id: None,
            counts: [(
                "chain_pos".to_owned(),
                u64::try_from(self.chain_pos).unwrap_or(0),
            )]
            .into(),
            detail: Some(serde_json::to_string(self)?),
            at: self.at,
        })
    }

    /// The checkpoint an `audit.checkpoint` event carries, if it is one.
    pub fn from_event(event: &Event) -> Option<Self> {
        (event.kind == CHECKPOINT_EVENT)
            .then(|| serde_json::from_str(event.detail.as_deref()?).ok())
            .flatten()
    }
}

/// The api's answer to a checkpoint request: a fresh checkpoint, or why there is none.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointReply {
    /// The checkpoint (`None` when the chain has no sealed event yet, or on error).
    pub checkpoint: Option<Checkpoint>,
    /// Why there is none, when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// How long a daemon waits for the api's answer to a checkpoint request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Asks an api process for a fresh checkpoint (which it also publishes on the events
/// stream). `Ok(None)`: the chain has no sealed event yet. An error says why no answer came.
pub async fn request(
    client: &async_nats::Client,
    names: &Names,
) -> Result<Option<Checkpoint>, String> {
    let asked = client.request(names.checkpoint_subject(), bytes::Bytes::new());
    let message = match tokio::time::timeout(REQUEST_TIMEOUT, asked).await {
        Err(_) => return Err(format!("no answer within {REQUEST_TIMEOUT:?}")),
        Ok(Err(error)) => {
            return Err(match error.kind() {
                async_nats::RequestErrorKind::NoResponders => "no api process is running".into(),
                async_nats::RequestErrorKind::TimedOut => "no answer in time".into(),
                _ => "the request could not be sent".into(),
            });
        }
        Ok(Ok(message)) => message,
    };
    let reply: CheckpointReply = serde_json::from_slice(&message.payload)
        .map_err(|_| "the answer is not a checkpoint reply".to_owned())?;
    match reply.error {
        Some(error) => Err(format!("the api could not make one: {error}")),
        None => Ok(reply.checkpoint),
    }
}

/// The latest checkpoint published on the events stream, if any is still there
/// (`nats.event_max_age`).
pub async fn latest_published(
    jetstream: &async_nats::jetstream::Context,
    names: &Names,
) -> Result<Option<Checkpoint>, String> {
    let stream = jetstream
        .get_stream(names.events_stream())
        .await
        .map_err(|e| format!("cannot open the events stream: {e}"))?;
    let last = stream
        .get_last_raw_message_by_subject(&names.event_subject(CHECKPOINT_EVENT))
        .await;
    let message = match last {
        Ok(message) => message,
        Err(error)
            if error.kind()
                == async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
        {
            return Ok(None);
        }
        Err(error) => return Err(format!("cannot read the events stream: {error}")),
    };
    let event: Event = serde_json::from_slice(&message.payload)
        .map_err(|_| "the latest checkpoint event is not an event".to_owned())?;
    Checkpoint::from_event(&event)
        .map(Some)
        .ok_or_else(|| "the latest checkpoint event holds no checkpoint".to_owned())
}

/// The checkpoint to put into a backup's manifest: a fresh one from the api, else the latest
/// on the events stream (logged), else none (logged: the backup is still made).
pub async fn for_backup(client: &async_nats::Client, names: &Names) -> Option<Checkpoint> {
    match request(client, names).await {
        Ok(checkpoint) => return checkpoint,
        Err(why) => {
            tracing::warn!(reason = %why, "no fresh audit checkpoint from the api; using the latest published one")
        }
    }
    let jetstream = async_nats::jetstream::new(client.clone());
    match latest_published(&jetstream, names).await {
        Ok(Some(checkpoint)) => Some(checkpoint),
        Ok(None) => {
            tracing::warn!("no audit checkpoint published yet; the backup's manifest has none");
            None
        }
        Err(why) => {
            tracing::warn!(reason = %why, "cannot read the latest audit checkpoint; the backup's manifest has none");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Checkpoint {
        Checkpoint {
            chain_pos: 42,
            head_hash: "ab".repeat(32),
            at: DateTime::from_timestamp_micros(1_765_000_000_123_456).unwrap_or_default(),
            key_id: "0011223344556677".into(),
            signature: "c2ln".into(),
        }
    }

    #[test]
    fn the_signed_bytes_are_four_lines_naming_position_hash_and_time() {
        let text = String::from_utf8(sample().payload()).unwrap_or_default();
        assert_eq!(
            text,
            format!(
                "lethe-audit-checkpoint/1\nchain_pos=42\nhead_hash={}\nat=2025-12-06T05:46:40.123456Z\n",
                "ab".repeat(32)
            )
        );
    }

    #[test]
    fn a_checkpoint_travels_as_an_event_and_back() {
        let checkpoint = sample();
        let event = checkpoint.to_event().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(event.kind, CHECKPOINT_EVENT);
        assert_eq!(event.counts.get("chain_pos"), Some(&42));
        let json = serde_json::to_vec(&event).unwrap_or_default();
        let back: Event = serde_json::from_slice(&json).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(Checkpoint::from_event(&back), Some(checkpoint));
        let other = Event {
            kind: "request.completed".into(),
            ..back
        };
        assert_eq!(Checkpoint::from_event(&other), None);
    }
}
