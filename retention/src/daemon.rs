//! The daemon's loop: run commands from NATS (`<prefix>.retention.run`, body empty or
//! `{"dry_run": true}`) and the built-in schedule, one run at a time.
//!
//! A command is acknowledged once a run that started after it was published has finished; if
//! another process holds the retention lock, or the run fails, the command comes back later
//! (`Nak` with backoff) until `nats.max_deliver`. While a run goes on, `Progress` keeps the
//! command's lease. Runs are idempotent, so a command delivered twice only runs twice.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::AckKind;
use async_nats::jetstream::Message;
use async_nats::jetstream::consumer::PullConsumer;
use chrono::{DateTime, Utc};
use lethe_common::daemon::{acknowledge_command, consumer_drained, pull_commands};
use lethe_common::nats::retry_delay;
use lethe_common::worker::RunMode;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::policy::{Mode, Outcome, Retention};
use crate::schedule::NextDue as _;

/// How often the schedule is looked at.
const SCHEDULE_TICK: Duration = Duration::from_secs(30);

/// How the loop behaves.
#[derive(Debug, Clone)]
pub struct LoopConfig {
    /// The subject of run commands.
    pub run_subject: String,
    /// The consumer's ack wait; heartbeats go at a third of it.
    pub ack_wait: Duration,
    /// Deliveries of a command before it is given up.
    pub max_deliver: i64,
    /// Time a running pass gets on shutdown before it is interrupted (it is idempotent: the
    /// next run finishes it).
    pub drain_timeout: Duration,
    /// How long one pull waits for commands.
    pub poll: Duration,
}

/// The body of a run command.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Command {
    /// Report what would be deleted, delete nothing.
    #[serde(default)]
    pub dry_run: bool,
}

impl Command {
    /// Reads a command's body: empty, `{}` or `{"dry_run": true}`.
    pub fn parse(body: &[u8]) -> Option<Self> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Some(Self::default());
        }
        serde_json::from_slice(body).ok()
    }
}

/// Runs a pass, giving it the drain timeout after `shutdown` before interrupting it.
async fn pass(
    retention: &Retention,
    mode: Mode,
    shutdown: &CancellationToken,
    drain: Duration,
) -> Option<anyhow::Result<Outcome>> {
    // One span per run, scheduled or commanded: a trace of its own (nothing outside started it).
    let span = tracing::info_span!("retention.run", dry_run = mode == Mode::DryRun);
    let run = retention.run(Utc::now(), mode).instrument(span);
    tokio::select! {
        result = run => Some(result),
        () = async {
            shutdown.cancelled().await;
            tokio::time::sleep(drain).await;
        } => {
            tracing::warn!("drain timeout: the retention run was interrupted; the next run finishes it");
            None
        }
    }
}

/// Runs until `shutdown` (or, in [`RunMode::UntilIdle`], until no command is pending; the
/// schedule is then not consulted).
pub async fn run(
    retention: Arc<Retention>,
    mut consumer: PullConsumer,
    config: LoopConfig,
    shutdown: CancellationToken,
    mode: RunMode,
) -> anyhow::Result<()> {
    let started = Utc::now();
    let mut last_run: Option<DateTime<Utc>> = None;
    let mut next_look = tokio::time::Instant::now();
    tracing::info!(mode = ?mode, "retention loop started");
    while !shutdown.is_cancelled() {
        if mode == RunMode::UntilShutdown && tokio::time::Instant::now() >= next_look {
            next_look = tokio::time::Instant::now() + SCHEDULE_TICK;
            let due = retention.schedule().next_due(last_run, started);
            lethe_common::schedule::record_plan(retention.pool(), "retention", "run", due).await;
            if due.is_some_and(|due| due <= Utc::now()) {
                last_run = Some(Utc::now());
                match pass(&retention, Mode::Delete, &shutdown, config.drain_timeout).await {
                    Some(Ok(_)) | None => {}
                    Some(Err(error)) => {
                        tracing::error!(error = %format!("{error:#}"), "scheduled retention run failed")
                    }
                }
            }
        }
        let mut commands = pull_commands(&consumer, 1, config.poll, &shutdown, "retention").await;
        while let Some(message) = commands.next().await {
            if handle(&retention, &config, &message, &shutdown).await {
                last_run = Some(Utc::now());
            }
        }
        if mode == RunMode::UntilIdle
            && commands.received() == 0
            && consumer_drained(&mut consumer).await
        {
            break;
        }
    }
    tracing::info!("retention loop stopped");
    Ok(())
}

/// Carries out one run command; returns whether a run that deletes went through.
async fn handle(
    retention: &Retention,
    config: &LoopConfig,
    message: &Message,
    shutdown: &CancellationToken,
) -> bool {
    let deliveries = message
        .info()
        .map(|info| u32::try_from(info.delivered).unwrap_or(u32::MAX))
        .unwrap_or(1);
    let subject = message.subject.to_string();
    let command = if subject == config.run_subject {
        Command::parse(&message.payload)
    } else {
        None
    };
    let Some(command) = command else {
        tracing::warn!(subject = %subject, "not a retention run command; dropped");
        acknowledge_command(message, AckKind::Term, "retention").await;
        return false;
    };
    let mode = if command.dry_run {
        Mode::DryRun
    } else {
        Mode::Delete
    };
    tracing::info!(subject = %subject, dry_run = command.dry_run, delivery = deliveries, "retention run command");
    let heartbeat = lethe_common::worker::heartbeat(message, config.ack_wait).drop_guard();
    let result = pass(retention, mode, shutdown, config.drain_timeout).await;
    drop(heartbeat);
    let problem = match result {
        Some(Ok(Outcome::Completed(report))) if report.errors() == 0 => {
            acknowledge_command(message, AckKind::Ack, "retention").await;
            return mode == Mode::Delete;
        }
        Some(Ok(Outcome::Completed(report))) => {
            format!("{} item(s) could not be handled", report.errors())
        }
        Some(Ok(Outcome::Busy)) => "another process is running retention".to_owned(),
        Some(Err(error)) => format!("{error:#}"),
        // Interrupted by shutdown: left unacknowledged, it comes back.
        None => return false,
    };
    if i64::from(deliveries) >= config.max_deliver {
        tracing::error!(subject = %subject, problem = %problem, deliveries, "retention run command given up after its last delivery");
        acknowledge_command(message, AckKind::Term, "retention").await;
    } else {
        let delay = retry_delay(deliveries);
        tracing::warn!(
            subject = %subject,
            problem = %problem,
            retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            "retention run command unfinished; it will come back"
        );
        acknowledge_command(message, AckKind::Nak(Some(delay)), "retention").await;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_body_is_empty_or_asks_for_a_dry_run() {
        assert!(!Command::parse(b"").unwrap().dry_run);
        assert!(!Command::parse(b"{}").unwrap().dry_run);
        assert!(Command::parse(br#"{"dry_run": true}"#).unwrap().dry_run);
        assert!(Command::parse(br#"{"dry": true}"#).is_none());
    }
}
