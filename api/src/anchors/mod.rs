//! Audit anchors (the contract is `lethe_common::anchors`): the api makes signed checkpoints
//! of the audit chain's head, every `api.audit_checkpoint_interval` and whenever a daemon asks
//! (the backup daemon, for each backup), publishes each on the events stream, and checks the
//! chain against checkpoints handed back to it (`lethe-api audit verify`).

mod key;
mod sources;
mod verify;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use lethe_common::anchors::{Checkpoint, CheckpointReply};
use lethe_common::nats::{Names, Publisher};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub use key::VerifyingKey;
pub use sources::{Found, from_backups, from_events, from_file};
pub use verify::{Report, verify_chain};

use crate::audit;
use crate::receipt::ReceiptSigner;

/// Makes a checkpoint of the chain's head now, sealing pending events first (as far as this
/// process can: another one sealing at the same moment seals the rest). `None` while no
/// event is sealed.
pub async fn make(pool: &PgPool, signer: &ReceiptSigner) -> sqlx::Result<Option<Checkpoint>> {
    while audit::seal(pool).await? > 0 {}
    let Some((chain_pos, hash)) = audit::head(pool).await? else {
        return Ok(None);
    };
    // Microseconds, as the signed text states the time.
    let now = Utc::now();
    let at = DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now);
    let head_hash = hex::encode(hash);
    let signature = signer.sign_bytes(&Checkpoint::signed_bytes(chain_pos, &head_hash, at));
    Ok(Some(Checkpoint {
        chain_pos,
        head_hash,
        at,
        key_id: signer.key_id().to_owned(),
        signature,
    }))
}

/// Makes a checkpoint and publishes it on the events stream.
pub async fn make_and_publish(
    pool: &PgPool,
    signer: &ReceiptSigner,
    publisher: &Publisher,
) -> anyhow::Result<Option<Checkpoint>> {
    let Some(checkpoint) = make(pool, signer)
        .await
        .context("cannot read the audit chain's head")?
    else {
        return Ok(None);
    };
    publisher
        .event(&checkpoint.to_event()?)
        .await
        .context("cannot publish the audit checkpoint")?;
    metrics::counter!("lethe_audit_checkpoints_total").increment(1);
    metrics::gauge!("lethe_audit_checkpoint_position").set(checkpoint.chain_pos as f64);
    tracing::info!(
        audit.chain_pos = checkpoint.chain_pos,
        "audit checkpoint published"
    );
    Ok(Some(checkpoint))
}

/// Publishes a checkpoint at start-up and then every `every`, until `shutdown`. A failed one
/// is logged and tried again at the next tick.
pub async fn run_periodic(
    pool: PgPool,
    signer: Arc<ReceiptSigner>,
    publisher: Publisher,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {},
            () = shutdown.cancelled() => return,
        }
        if let Err(error) = make_and_publish(&pool, &signer, &publisher).await {
            tracing::warn!(error = %format!("{error:#}"), "no audit checkpoint this time; trying again at the next interval");
        }
    }
}

/// Answers checkpoint requests (`<prefix>.audit.checkpoint`, in one queue group across api
/// processes) with a fresh checkpoint, also published on the events stream. Returns once the
/// server has the subscription; the answering task stops with `shutdown`.
pub async fn answer_requests(
    client: async_nats::Client,
    names: &Names,
    pool: PgPool,
    signer: Arc<ReceiptSigner>,
    publisher: Publisher,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut requests = client
        .queue_subscribe(names.checkpoint_subject(), names.checkpoint_queue())
        .await
        .context("cannot subscribe to audit checkpoint requests")?;
    client
        .flush()
        .await
        .context("cannot confirm the checkpoint subscription with the NATS server")?;
    Ok(tokio::spawn(async move {
        loop {
            let request = tokio::select! {
                request = requests.next() => match request {
                    Some(request) => request,
                    None => return,
                },
                () = shutdown.cancelled() => return,
            };
            let Some(reply_to) = request.reply else {
                continue;
            };
            let reply = match make_and_publish(&pool, &signer, &publisher).await {
                Ok(checkpoint) => CheckpointReply {
                    checkpoint,
                    error: None,
                },
                Err(error) => {
                    tracing::warn!(error = %format!("{error:#}"), "cannot answer an audit checkpoint request");
                    CheckpointReply {
                        checkpoint: None,
                        error: Some(format!("{error:#}")),
                    }
                }
            };
            let answered = match serde_json::to_vec(&reply) {
                Ok(body) => client
                    .publish(reply_to, body.into())
                    .await
                    .map_err(anyhow::Error::new),
                Err(error) => Err(error.into()),
            };
            if let Err(error) = answered {
                tracing::warn!(error = %format!("{error:#}"), "cannot answer an audit checkpoint request");
            }
        }
    }))
}
