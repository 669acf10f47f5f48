//! What a restore replays, and replaying it: every change completed since the backup was
//! taken, in order of completion, so that nothing erased comes back and no correction,
//! restriction or objection (or its lifting) is undone by a restore.
//!
//! Two sources, merged by request: the ledger's erasure records after the backup's position
//! (`erasure_log.seq > erasure_seq`), when the ledger is there; and the tombstones in the
//! bucket completed since the backup started (less [`REPLAY_MARGIN`]), when the operator's key
//! is given. Tombstones record every kind of change and outlive the ledger: with the ledger
//! gone, or restored from its own (older) backup, they alone carry what happened since.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use lethe_common::messages::Identities;
use lethe_common::privacy::IdentityHasher;
use lethe_common::s3::Client;
use lethe_common::tombstone::{Change, REPLAY_MARGIN};
use lethe_stores::{Connector, Flag, ServedStore};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::catalog::{self, BackupRow};
use crate::tombstones::{self, Opener};

/// Where a change to replay was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The ledger's erasure records.
    Ledger,
    /// A tombstone (also for an erasure the ledger records, once minimised there).
    Tombstone,
}

/// One change to replay.
#[derive(Debug, Clone)]
struct Pending {
    at: DateTime<Utc>,
    request_id: Uuid,
    seq: Option<i64>,
    kind: Change,
    /// The filing tenant's name: tenant-scoped stores replay within it.
    tenant: Option<String>,
    identities: Option<Identities>,
    changes: BTreeMap<String, serde_json::Value>,
    source: Source,
}

/// Everything a restore of one backup replays, read once before the first store is touched.
#[derive(Debug, Clone)]
pub struct Plan {
    after_seq: i64,
    since: DateTime<Utc>,
    ledger_read: bool,
    tombstones_read: Option<usize>,
    changes: Vec<Pending>,
}

/// One change replayed.
#[derive(Debug, Clone, Serialize)]
pub struct Replayed {
    /// Position in the ledger's erasure records, for an erasure the ledger records.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<i64>,
    /// The request.
    pub request_id: Uuid,
    /// The change: `erasure`, `rectification`, `restriction`, `lift_restriction`,
    /// `objection`, `lift_objection`.
    pub kind: Change,
    /// Where it was read.
    pub source: Source,
    /// When it was completed (recorded).
    pub recorded_at: DateTime<Utc>,
    /// Rows, keys or objects changed per collection in the restored target.
    pub counts: BTreeMap<String, u64>,
}

/// A change that could not be replayed.
#[derive(Debug, Clone, Serialize)]
pub struct Unreplayable {
    /// Position in the ledger's erasure records.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<i64>,
    /// The request.
    pub request_id: Uuid,
    /// Why.
    pub reason: String,
}

/// What a replay did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplayReport {
    /// The ledger's erasure records replayed: those after this position.
    pub after_seq: i64,
    /// The tombstones replayed: those completed at or after this time (the backup's start
    /// less a margin for clocks).
    pub tombstones_since: Option<DateTime<Utc>>,
    /// Whether the ledger was read (absent: gone, empty or unreachable).
    pub ledger_read: bool,
    /// Tombstones read, when the operator's key was given.
    pub tombstones_read: Option<usize>,
    /// Every change replayed, in order.
    pub replayed: Vec<Replayed>,
    /// Changes that could not be replayed (their identities were minimised in the ledger and
    /// no tombstone holds them): the restored data may still hold those subjects.
    pub unreplayable: Vec<Unreplayable>,
}

impl Plan {
    /// Reads what a restore of `backup` replays: the ledger's erasure records after it (with
    /// `pool`) and the tombstones since it (with `opener`).
    pub async fn read(
        backup: &BackupRow,
        pool: Option<&PgPool>,
        s3: &Client,
        bucket: &str,
        opener: Option<&mut Opener>,
    ) -> anyhow::Result<Self> {
        let since = backup.started_at
            - chrono::Duration::from_std(REPLAY_MARGIN).unwrap_or(chrono::Duration::zero());
        let mut by_request: BTreeMap<Uuid, Pending> = BTreeMap::new();
        if let Some(pool) = pool {
            for erasure in catalog::erasures_after(pool, backup.erasure_seq).await? {
                by_request.insert(
                    erasure.request_id,
                    Pending {
                        at: erasure.recorded_at,
                        request_id: erasure.request_id,
                        seq: Some(erasure.seq),
                        kind: Change::Erasure,
                        tenant: Some(erasure.tenant),
                        identities: erasure.identities.map(|j| j.0),
                        changes: BTreeMap::new(),
                        source: Source::Ledger,
                    },
                );
            }
        }
        let mut tombstones_read = None;
        if let Some(opener) = opener {
            let read = tombstones::since(s3, bucket, since, opener).await?;
            if read.foreign > 0 {
                tracing::warn!(
                    objects = read.foreign,
                    "objects under the tombstones prefix are no tombstones; left alone"
                );
            }
            tombstones_read = Some(read.tombstones.len());
            for tombstone in read.tombstones {
                let entry = by_request
                    .entry(tombstone.request_id)
                    .or_insert_with(|| Pending {
                        at: tombstone.completed_at,
                        request_id: tombstone.request_id,
                        seq: None,
                        kind: tombstone.kind,
                        tenant: None,
                        identities: None,
                        changes: BTreeMap::new(),
                        source: Source::Tombstone,
                    });
                // The coordinator's completion time orders changes across both sources; the
                // tombstone holds what the ledger may have minimised.
                entry.at = tombstone.completed_at;
                entry.kind = tombstone.kind;
                if entry.tenant.is_none() {
                    entry.tenant = tombstone.tenant;
                }
                if entry.identities.is_none() {
                    entry.identities = Some(tombstone.identities);
                    entry.source = Source::Tombstone;
                }
                entry.changes = tombstone.changes;
            }
        }
        let mut changes: Vec<Pending> = by_request.into_values().collect();
        changes.sort_by_key(|c| (c.at, c.request_id));
        Ok(Self {
            after_seq: backup.erasure_seq,
            since,
            ledger_read: pool.is_some(),
            tombstones_read,
            changes,
        })
    }

    /// Replays every change, in order, against `target` with the eraser's connectors.
    pub async fn apply(
        &self,
        target: &ServedStore,
        hasher: IdentityHasher,
    ) -> anyhow::Result<ReplayReport> {
        let connector = Connector::new(target, hasher)?;
        let mut report = ReplayReport {
            after_seq: self.after_seq,
            tombstones_since: self.tombstones_read.map(|_| self.since),
            ledger_read: self.ledger_read,
            tombstones_read: self.tombstones_read,
            ..ReplayReport::default()
        };
        for change in &self.changes {
            let Some(identities) = &change.identities else {
                tracing::warn!(request.id = %change.request_id, erasure.seq = change.seq, "erasure cannot be replayed: its identities were minimised and no tombstone holds them");
                report.unreplayable.push(Unreplayable {
                    seq: change.seq,
                    request_id: change.request_id,
                    reason: "its identities were minimised and no tombstone holds them; the \
                             subject may remain in the restored data"
                        .into(),
                });
                continue;
            };
            let tenant = change.tenant.as_deref();
            // A replay changes the restored target for real: never a dry run.
            let flag = |flag, value| connector.set_flag(identities, tenant, flag, value, false);
            let done = match change.kind {
                Change::Erasure => connector.erase(identities, tenant, false).await,
                Change::Rectification => {
                    connector
                        .rectify(identities, tenant, &change.changes, false)
                        .await
                }
                Change::Restriction => flag(Flag::Restrict, true).await,
                Change::LiftRestriction => flag(Flag::Restrict, false).await,
                Change::Objection => flag(Flag::Object, true).await,
                Change::LiftObjection => flag(Flag::Object, false).await,
            }
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot replay {} {} in store `{}`: {e}",
                    change.kind.as_str(),
                    change.request_id,
                    target.name
                )
            })?;
            tracing::info!(
                store = %target.name,
                request.id = %change.request_id,
                change = change.kind.as_str(),
                changed = done.counts.values().sum::<u64>(),
                "change replayed"
            );
            report.replayed.push(Replayed {
                seq: change.seq,
                request_id: change.request_id,
                kind: change.kind,
                source: change.source,
                recorded_at: change.at,
                counts: done.counts,
            });
        }
        Ok(report)
    }
}
