//! The daemon's loop: run commands from NATS (`<prefix>.backup.run` for every store,
//! `<prefix>.backup.run.<store>` for one) and the built-in schedule.
//!
//! A run command is acknowledged once every store it names has a backup that started after
//! the command was published; while its backups run it keeps its lease with `Progress`. A
//! store that fails, or that another process is backing up at that moment, makes the command
//! come back later (`Nak` with backoff) until `nats.max_deliver`; a delivery again skips the
//! stores already backed up since the command. The generic worker loop handles request tasks
//! with results for the coordinator; run commands have neither, hence this small loop.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_nats::jetstream::AckKind;
use async_nats::jetstream::Message;
use async_nats::jetstream::consumer::PullConsumer;
use chrono::{DateTime, Utc};
use lethe_common::daemon::{acknowledge_command, consumer_drained, pull_commands};
use lethe_common::ids::StoreName;
use lethe_common::nats::retry_delay;
use lethe_common::worker::RunMode;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::runner::{Backups, Condition, Outcome};
use crate::schedule::NextDue as _;

/// How often the schedule is looked at.
const SCHEDULE_TICK: Duration = Duration::from_secs(30);

/// How the loop behaves.
#[derive(Debug, Clone)]
pub struct LoopConfig {
    /// The NATS prefix, to read store names from subjects.
    pub prefix: String,
    /// The consumer's ack wait; heartbeats go at a third of it.
    pub ack_wait: Duration,
    /// Deliveries of a command before it is given up.
    pub max_deliver: i64,
    /// Time running backups get on shutdown before they are interrupted.
    pub drain_timeout: Duration,
    /// How long one pull waits for commands.
    pub poll: Duration,
}

/// What a run command asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Every store.
    All,
    /// One store.
    Store(String),
}

/// Reads a run command's subject: `<prefix>.backup.run` or `<prefix>.backup.run.<store>`.
pub fn parse_subject(prefix: &str, subject: &str) -> Option<Command> {
    let rest = subject.strip_prefix(prefix)?.strip_prefix(".backup.run")?;
    if rest.is_empty() {
        return Some(Command::All);
    }
    let store = rest.strip_prefix('.')?;
    (!store.is_empty() && !store.contains('.')).then(|| Command::Store(store.to_owned()))
}

struct Shared {
    backups: Arc<Backups>,
    config: LoopConfig,
    permits: Semaphore,
    running: Mutex<BTreeSet<StoreName>>,
    /// Cancelled on shutdown: backups not yet started stay unstarted.
    shutdown: CancellationToken,
    /// Cancelled when the drain timeout is over: running backups are then interrupted.
    interrupt: CancellationToken,
}

/// Marks a store as being backed up by this process for as long as it lives.
struct Running<'a> {
    shared: &'a Shared,
    store: StoreName,
}

impl<'a> Running<'a> {
    fn claim(shared: &'a Shared, store: &StoreName) -> Option<Self> {
        let mut running = shared
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        running.insert(store.clone()).then(|| Self {
            shared,
            store: store.clone(),
        })
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.shared
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.store);
    }
}

impl Shared {
    async fn backup(&self, store: &StoreName, condition: Condition<'_>) -> anyhow::Result<Outcome> {
        let Some(_running) = Running::claim(self, store) else {
            return Ok(Outcome::Busy);
        };
        let _permit = tokio::select! {
            permit = self.permits.acquire() => {
                permit.map_err(|_| anyhow::anyhow!("the backup daemon is stopping"))?
            }
            // Not started yet: a command comes back to this or another process.
            () = self.shutdown.cancelled() => return Ok(Outcome::Busy),
        };
        if self.shutdown.is_cancelled() {
            return Ok(Outcome::Busy);
        }
        self.backups
            .backup_if(store, condition, &self.interrupt)
            .await
    }
}

/// Runs until `shutdown` (or, in [`RunMode::UntilIdle`], until no command is pending or
/// running; the schedule is then not consulted), then drains.
pub async fn run(
    backups: Arc<Backups>,
    mut consumer: PullConsumer,
    config: LoopConfig,
    shutdown: CancellationToken,
    mode: RunMode,
) -> anyhow::Result<()> {
    let shared = Arc::new(Shared {
        permits: Semaphore::new(backups.settings().concurrency),
        backups,
        config,
        running: Mutex::default(),
        shutdown: shutdown.clone(),
        interrupt: CancellationToken::new(),
    });
    let mut tasks: JoinSet<()> = JoinSet::new();
    let mut next_schedule = Instant::now();
    tracing::info!(mode = ?mode, "backup loop started");
    while !shutdown.is_cancelled() {
        while tasks.try_join_next().is_some() {}
        if mode == RunMode::UntilShutdown && Instant::now() >= next_schedule {
            schedule(&shared, &mut tasks).await;
            next_schedule = Instant::now() + SCHEDULE_TICK;
        }
        // One command at a time per free permit: the rest wait in the stream, where another
        // process may take them.
        let wanted = shared.permits.available_permits().max(1);
        let mut commands =
            pull_commands(&consumer, wanted, shared.config.poll, &shutdown, "backup").await;
        while let Some(message) = commands.next().await {
            tasks.spawn(handle(shared.clone(), message));
        }
        if mode == RunMode::UntilIdle
            && commands.received() == 0
            && tasks.is_empty()
            && consumer_drained(&mut consumer).await
        {
            break;
        }
    }
    drain(&shared, tasks).await;
    tracing::info!("backup loop stopped");
    Ok(())
}

async fn drain(shared: &Shared, mut tasks: JoinSet<()>) {
    if tasks.is_empty() {
        return;
    }
    tracing::info!(tasks = tasks.len(), "waiting for running backups");
    let finished = tokio::time::timeout(shared.config.drain_timeout, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if finished.is_err() {
        tracing::warn!(
            tasks = tasks.len(),
            "drain timeout: interrupting running backups (their uploads are aborted)"
        );
        shared.interrupt.cancel();
        while tasks.join_next().await.is_some() {}
    }
}

/// Starts the scheduled backups that are due.
async fn schedule(shared: &Arc<Shared>, tasks: &mut JoinSet<()>) {
    let now = Utc::now();
    let pool = shared.backups.pool().clone();
    let stores: Vec<StoreName> = shared
        .backups
        .schedules()
        .iter()
        .map(|(store, _)| store.clone())
        .collect();
    for store in stores {
        let running = shared
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&store);
        if running {
            continue;
        }
        let Some(schedule) = shared
            .backups
            .schedules()
            .iter()
            .find(|(s, _)| **s == store)
            .map(|(_, schedule)| schedule.clone())
        else {
            continue;
        };
        let last = match crate::catalog::last_runs(&pool, &store).await {
            Ok(last) => last,
            Err(error) => {
                tracing::warn!(store = %store, error = %error, "cannot read the backup catalog; the schedule waits");
                continue;
            }
        };
        let due = schedule.next_due(last, now);
        lethe_common::schedule::record_plan(&pool, "backup", store.as_str(), due).await;
        if due.is_none_or(|due| due > now) {
            continue;
        }
        let shared = shared.clone();
        tasks.spawn(async move {
            match shared.backup(&store, Condition::Due(&schedule)).await {
                Ok(Outcome::Completed(_) | Outcome::Busy | Outcome::Satisfied) => {}
                // Logged with its cause where it failed; the schedule tries again later.
                Err(_) => {}
            }
        });
    }
}

/// Carries out one run command.
async fn handle(shared: Arc<Shared>, message: Message) {
    let (deliveries, published) = match message.info() {
        Ok(info) => (
            u32::try_from(info.delivered).unwrap_or(u32::MAX),
            DateTime::<Utc>::from_timestamp(
                info.published.unix_timestamp(),
                info.published.nanosecond(),
            )
            .unwrap_or_else(Utc::now),
        ),
        Err(_) => (1, Utc::now()),
    };
    let subject = message.subject.to_string();
    let stores: Vec<StoreName> = match parse_subject(&shared.config.prefix, &subject) {
        Some(crate::daemon::Command::All) => shared.backups.stores().cloned().collect(),
        Some(crate::daemon::Command::Store(name)) => match shared.backups.store(&name) {
            Some(store) => vec![store.clone()],
            None => {
                tracing::warn!(subject = %subject, "run command for a store this process does not back up; dropped");
                acknowledge_command(&message, AckKind::Term, "backup").await;
                return;
            }
        },
        None => {
            tracing::warn!(subject = %subject, "not a backup run command; dropped");
            acknowledge_command(&message, AckKind::Term, "backup").await;
            return;
        }
    };
    tracing::info!(subject = %subject, stores = stores.len(), delivery = deliveries, "backup run command");
    let heartbeat = lethe_common::worker::heartbeat(&message, shared.config.ack_wait).drop_guard();
    let outcomes = futures::future::join_all(
        stores
            .iter()
            .map(|store| shared.backup(store, Condition::NoneSince(published))),
    )
    .await;
    drop(heartbeat);
    let unfinished: Vec<String> = stores
        .iter()
        .zip(&outcomes)
        .filter_map(|(store, outcome)| match outcome {
            Ok(Outcome::Completed(_) | Outcome::Satisfied) => None,
            Ok(Outcome::Busy) => Some(format!("{store} (being backed up by another process)")),
            Err(_) => Some(format!("{store} (failed)")),
        })
        .collect();
    if unfinished.is_empty() {
        acknowledge_command(&message, AckKind::Ack, "backup").await;
    } else if i64::from(deliveries) >= shared.config.max_deliver {
        tracing::error!(
            subject = %subject,
            stores = %unfinished.join(", "),
            deliveries,
            "backup run command given up after its last delivery"
        );
        acknowledge_command(&message, AckKind::Term, "backup").await;
    } else {
        let delay = retry_delay(deliveries);
        tracing::warn!(
            subject = %subject,
            stores = %unfinished.join(", "),
            retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            "backup run command unfinished; it will come back"
        );
        acknowledge_command(&message, AckKind::Nak(Some(delay)), "backup").await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_subjects_name_every_store_or_one() {
        assert_eq!(
            parse_subject("lethe", "lethe.backup.run"),
            Some(Command::All)
        );
        assert_eq!(
            parse_subject("lethe", "lethe.backup.run.accounts"),
            Some(Command::Store("accounts".into()))
        );
        assert_eq!(parse_subject("lethe", "lethe.backup.runx"), None);
        assert_eq!(parse_subject("lethe", "lethe.backup.run.a.b"), None);
        assert_eq!(parse_subject("lethe", "other.backup.run"), None);
    }
}
