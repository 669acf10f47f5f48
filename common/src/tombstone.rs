//! Tombstones: the record of a completed change (erasure, rectification, restriction,
//! objection and their lifting) that outlives the ledger. The coordinator writes one to Lethe's
//! bucket for every such request before it records the request completed, encrypted to the
//! backup recipients (`backups.recipients`): the api holds their public certificates only, so
//! nothing that writes tombstones can read them. A restore decrypts them with the operator's
//! secret key and replays them, in order, into a restored store, whether the ledger is still
//! there, older (restored from its own backup) or gone.
//!
//! An object is `tombstones/<completion time>-<request id>.json.gpg`: its name holds the time
//! (sortable, for ordering and for retention) and the request id, never an identifier.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::messages::Identities;
use crate::openpgp::Recipients;

/// Where tombstones live in Lethe's bucket.
pub const PREFIX: &str = "tombstones/";
/// The tombstone format written by this version.
pub const FORMAT: u32 = 1;
/// How far before a backup's start a restore begins replaying tombstones. Replaying a change
/// that the backup already holds changes nothing (every change is idempotent, and later ones
/// are replayed after it), so the margin only absorbs clocks: the coordinator's (completion
/// time) and the backup host's (start time). Retention keeps a tombstone as long as a backup
/// that started less than this after it remains.
pub const REPLAY_MARGIN: Duration = Duration::from_secs(3600);
/// The completion time in an object's name: sortable, microseconds.
const TIME_FORMAT: &str = "%Y%m%dT%H%M%S%.6fZ";
const SUFFIX: &str = ".json.gpg";

/// The change a tombstone records: the request kinds that change the stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// The subject's data was erased.
    Erasure,
    /// Named fields were set to new values (`changes`).
    Rectification,
    /// A restriction of processing was set.
    Restriction,
    /// A restriction was lifted.
    LiftRestriction,
    /// An objection was recorded.
    Objection,
    /// An objection was lifted.
    LiftObjection,
}

impl Change {
    /// The change a request of `kind` (as the ledger names it) makes; `None` for a request
    /// that changes nothing (access, portability).
    pub fn of_request_kind(kind: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(kind.to_owned())).ok()
    }

    /// As the ledger and the API name the request kind.
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Erasure => "erasure",
            Change::Rectification => "rectification",
            Change::Restriction => "restriction",
            Change::LiftRestriction => "lift_restriction",
            Change::Objection => "objection",
            Change::LiftObjection => "lift_objection",
        }
    }
}

/// What a restore needs to replay one completed change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tombstone {
    /// Format version.
    pub format: u32,
    /// The request.
    pub request_id: Uuid,
    /// Its tenant.
    pub tenant_id: Uuid,
    /// Its tenant's name, which tenant-scoped stores know it by (a restore without the ledger
    /// cannot look it up). Absent in tombstones written before tenant scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The change.
    pub kind: Change,
    /// When the coordinator completed it: the order of replay.
    pub completed_at: DateTime<Utc>,
    /// The subject's identities after the closure (every identity the stores were searched
    /// with).
    pub identities: Identities,
    /// A rectification's new values (field -> value); empty otherwise.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub changes: BTreeMap<String, serde_json::Value>,
}

impl Tombstone {
    /// Its object's key in Lethe's bucket.
    pub fn key(&self) -> String {
        format!(
            "{PREFIX}{}-{}{SUFFIX}",
            self.completed_at.format(TIME_FORMAT),
            self.request_id
        )
    }

    /// The tombstone as an OpenPGP message encrypted to `recipients` (JSON inside).
    pub fn seal(&self, recipients: &Recipients) -> anyhow::Result<Vec<u8>> {
        let plaintext = serde_json::to_vec(self)?;
        let mut sealed = Vec::with_capacity(plaintext.len() + 1024);
        let mut message = recipients.encrypt(&mut sealed, "tombstone.json")?;
        message.write_all(&plaintext)?;
        message.finalize()?;
        Ok(sealed)
    }

    /// Reads a decrypted tombstone; the error never quotes its content.
    pub fn parse(plaintext: &[u8]) -> anyhow::Result<Self> {
        let tombstone: Self = serde_json::from_slice(plaintext).map_err(|e| {
            anyhow::anyhow!("not a tombstone (line {}, column {})", e.line(), e.column())
        })?;
        if tombstone.format > FORMAT {
            anyhow::bail!(
                "a tombstone of format {} (this version reads up to {FORMAT})",
                tombstone.format
            );
        }
        Ok(tombstone)
    }
}

/// The certificates tombstones are encrypted to: `backups.recipients` (and `backups.seipd`),
/// checked as the backup daemon checks them, for a daemon that does not own `[backups]`.
pub fn recipients(settings: &crate::Settings) -> anyhow::Result<Recipients> {
    let paths: Vec<std::path::PathBuf> = settings.value("backups.recipients")?.unwrap_or_default();
    let seipd = settings.value("backups.seipd")?.unwrap_or_default();
    Ok(Recipients::load(&paths, &settings.base_dir, seipd)?)
}

/// The completion time and request id in a tombstone's key (`None` for another object).
pub fn key_parts(key: &str) -> Option<(DateTime<Utc>, Uuid)> {
    let name = key.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    let (time, id) = name.split_once('-')?;
    let time = NaiveDateTime::parse_from_str(time, TIME_FORMAT).ok()?;
    Some((time.and_utc(), Uuid::parse_str(id).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_names_the_time_and_the_request_only_and_reads_back() {
        let tombstone = Tombstone {
            format: FORMAT,
            request_id: Uuid::now_v7(),
            tenant_id: Uuid::new_v4(),
            tenant: Some("acme".into()),
            kind: Change::Rectification,
            completed_at: DateTime::from_timestamp(1_780_000_000, 123_456_000).unwrap_or_default(),
            identities: BTreeMap::from([("email".into(), vec!["a@example.org".into()])]),
            changes: BTreeMap::from([("first_name".into(), "Ada".into())]),
        };
        let key = tombstone.key();
        assert!(key.starts_with("tombstones/20260528T"), "{key}");
        assert!(!key.contains("example"), "{key}");
        assert_eq!(
            key_parts(&key),
            Some((tombstone.completed_at, tombstone.request_id))
        );
        assert_eq!(key_parts("tombstones/x.json.gpg"), None);
        let json = serde_json::to_vec(&tombstone).unwrap_or_default();
        assert_eq!(Tombstone::parse(&json).ok(), Some(tombstone));
        assert_eq!(Change::of_request_kind("access"), None);
        assert_eq!(
            Change::of_request_kind("lift_objection"),
            Some(Change::LiftObjection)
        );
    }
}
