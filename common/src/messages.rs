//! The JSON bodies that travel on Lethe's subjects: tasks for the workers, their results for
//! the coordinator, and events for outside consumers.
//!
//! Tasks carry identifiers (the worker needs them to find the subject's data) and therefore
//! live only on the work-queue stream, whose messages have a bounded age. Results carry counts
//! and derived identities (again work-queue, bounded). Events carry ids and counts only.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{RequestId, StoreName, TenantId};

/// A subject's identifiers by identity name (`email`, `user_id`, ...), each with one or more
/// values. Never logged.
pub type Identities = BTreeMap<String, Vec<String>>;

/// What a task asks a worker to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// Find the identities a store derives from the ones given (email -> user_id).
    Resolve,
    /// Delete or mask the subject's data in a store.
    Erase,
    /// Write the subject's data in a store to the export staging area.
    Collect,
    /// Put every store's collected fragments into one archive.
    Assemble,
    /// Change named fields of the subject's data.
    Rectify,
    /// Mark the subject's data as restricted (Art. 18).
    Restrict,
    /// Lift a restriction.
    LiftRestriction,
    /// Record an objection to processing (Art. 21).
    Object,
    /// Lift an objection.
    LiftObjection,
}

impl TaskKind {
    /// Every kind, in a stable order.
    pub const ALL: [TaskKind; 9] = [
        TaskKind::Resolve,
        TaskKind::Erase,
        TaskKind::Collect,
        TaskKind::Assemble,
        TaskKind::Rectify,
        TaskKind::Restrict,
        TaskKind::LiftRestriction,
        TaskKind::Object,
        TaskKind::LiftObjection,
    ];

    /// The name used in subjects, message ids and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::Resolve => "resolve",
            TaskKind::Erase => "erase",
            TaskKind::Collect => "collect",
            TaskKind::Assemble => "assemble",
            TaskKind::Rectify => "rectify",
            TaskKind::Restrict => "restrict",
            TaskKind::LiftRestriction => "lift_restriction",
            TaskKind::Object => "object",
            TaskKind::LiftObjection => "lift_objection",
        }
    }

    /// The subject family a task of this kind is published on (`<prefix>.<family>.<store>`).
    pub fn family(self) -> &'static str {
        match self {
            TaskKind::Resolve => "resolve",
            TaskKind::Erase => "erase",
            TaskKind::Collect | TaskKind::Assemble => "export",
            TaskKind::Rectify => "rectify",
            TaskKind::Restrict
            | TaskKind::LiftRestriction
            | TaskKind::Object
            | TaskKind::LiftObjection => "restrict",
        }
    }
}

impl std::str::FromStr for TaskKind {
    type Err = UnknownName;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        TaskKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == text)
            .ok_or_else(|| UnknownName::new("task kind", text))
    }
}

crate::ledger_text!(TaskKind);

/// A name that no variant of an enumeration has (a status or kind read from the ledger, say).
/// It is an error rather than read as some other variant: a state Lethe does not know is never
/// taken for one it does.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} `{name}`")]
pub struct UnknownName {
    /// What was being read (`request status`, ...).
    pub what: &'static str,
    /// The name found: an enumeration's value, never an identifier (cut short if long).
    pub name: String,
}

impl UnknownName {
    /// `name` is not a `what`.
    pub fn new(what: &'static str, name: &str) -> Self {
        Self {
            what,
            name: name.chars().take(40).collect(),
        }
    }
}

/// Stores an enumeration as its name in a PostgreSQL `text` column: encodes with `as_str`,
/// decodes with `FromStr`, so a name the enumeration does not know fails the read (sqlx's
/// `ColumnDecode` error) instead of turning into a default.
#[macro_export]
macro_rules! ledger_text {
    ($type:ty) => {
        impl ::sqlx::Type<::sqlx::Postgres> for $type {
            fn type_info() -> ::sqlx::postgres::PgTypeInfo {
                <&str as ::sqlx::Type<::sqlx::Postgres>>::type_info()
            }

            fn compatible(ty: &::sqlx::postgres::PgTypeInfo) -> bool {
                <&str as ::sqlx::Type<::sqlx::Postgres>>::compatible(ty)
            }
        }

        impl<'r> ::sqlx::Decode<'r, ::sqlx::Postgres> for $type {
            fn decode(
                value: ::sqlx::postgres::PgValueRef<'r>,
            ) -> ::std::result::Result<Self, ::sqlx::error::BoxDynError> {
                let text = <&str as ::sqlx::Decode<'r, ::sqlx::Postgres>>::decode(value)?;
                Ok(text.parse::<$type>()?)
            }
        }

        impl ::sqlx::Encode<'_, ::sqlx::Postgres> for $type {
            fn encode_by_ref(
                &self,
                buf: &mut ::sqlx::postgres::PgArgumentBuffer,
            ) -> ::std::result::Result<::sqlx::encode::IsNull, ::sqlx::error::BoxDynError> {
                <&str as ::sqlx::Encode<'_, ::sqlx::Postgres>>::encode_by_ref(&self.as_str(), buf)
            }
        }
    };
}

impl std::fmt::Display for TaskKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One unit of work for one store, published by the coordinator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskMessage {
    /// The request this task belongs to.
    pub request_id: RequestId,
    /// What to do.
    pub task: TaskKind,
    /// The store to do it in; absent for `assemble`, which spans every store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreName>,
    /// The subject's identities, where the task needs them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub identities: Identities,
    /// The name of the tenant that filed the request. In a tenant-scoped deployment the task
    /// touches only that tenant's rows, keys and objects (and fails without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Task-specific parameters (rectification's field changes, an export's recipient
    /// certificate, ...).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub params: serde_json::Value,
    /// Incremented when the coordinator issues the same task again after a failure, so the
    /// new message is not dropped as a duplicate of the old one.
    #[serde(default)]
    pub generation: u32,
    /// When the coordinator issued it.
    pub issued_at: DateTime<Utc>,
}

impl TaskMessage {
    /// The `Nats-Msg-Id` of this task: `<request_id>.<task>.<store>[.<generation>]`, so a
    /// task published twice (a relay retry, two coordinators) reaches a worker once.
    pub fn message_id(&self) -> String {
        message_id(
            self.request_id,
            self.task,
            self.store.as_ref(),
            self.generation,
        )
    }
}

/// The de-duplication id shared by a task and its result.
pub fn message_id(
    request_id: RequestId,
    task: TaskKind,
    store: Option<&StoreName>,
    generation: u32,
) -> String {
    let store = store.map_or("all", StoreName::as_str);
    if generation == 0 {
        format!("{request_id}.{task}.{store}")
    } else {
        format!("{request_id}.{task}.{store}.{generation}")
    }
}

/// What a worker reports for one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskResult {
    /// The request.
    pub request_id: RequestId,
    /// The task kind.
    pub task: TaskKind,
    /// The store, as in the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreName>,
    /// The task's generation, as in the task.
    #[serde(default)]
    pub generation: u32,
    /// Done or failed.
    pub outcome: TaskOutcome,
    /// How many times JetStream delivered the task.
    pub deliveries: u32,
    /// When the worker finished.
    pub finished_at: DateTime<Utc>,
}

impl TaskResult {
    /// The `Nats-Msg-Id` of this result.
    pub fn message_id(&self) -> String {
        format!(
            "{}.result",
            message_id(
                self.request_id,
                self.task,
                self.store.as_ref(),
                self.generation
            )
        )
    }
}

/// The end of a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case", deny_unknown_fields)]
pub enum TaskOutcome {
    /// The store committed the work.
    Done(TaskReport),
    /// The task cannot succeed (or ran out of deliveries); the request fails with this reason.
    Failed {
        /// Stable machine-readable code.
        code: String,
        /// Explanation for operators; never holds an identifier.
        reason: String,
    },
}

/// What a finished task did, by collection.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskReport {
    /// Rows, keys or objects affected, per collection.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub counts: BTreeMap<String, u64>,
    /// After an erasure: matches still found when the store was queried again (0 certifies it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining: Option<u64>,
    /// Identities derived by a `resolve` task.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub derived: Identities,
    /// Bytes written (exports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Object written (exports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_key: Option<String>,
    /// SHA-256 of the object written, lowercase hex (an assembled export).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// A status change, for outside consumers. Ids and counts only, never identifiers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// What happened, e.g. `request.completed`, `task.dead_lettered`, `retention.run`.
    pub kind: String,
    /// The request concerned, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<RequestId>,
    /// The tenant concerned, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<TenantId>,
    /// Counts that go with it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub counts: BTreeMap<String, u64>,
    /// Free-form detail without identifiers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// When.
    pub at: DateTime<Utc>,
}

impl Event {
    /// The `Nats-Msg-Id` of this event: kind, request and time, so the same event published
    /// twice (a relay retry) is stored once.
    pub fn message_id(&self) -> String {
        format!(
            "{}.{}.{}",
            self.kind,
            self.request_id.map(|id| id.to_string()).unwrap_or_default(),
            self.at.timestamp_micros()
        )
    }
}

/// A store's answer to a census request of the breach register: how many distinct subjects it
/// holds per tenant. Counts only, never an identifier.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CensusReply {
    /// The store counted.
    pub store: String,
    /// Whether the store could be counted (`false` for kinds without a census, or on error).
    pub counted: bool,
    /// Whether the store names its subjects' tenants (a collection declares `tenant`): only
    /// then is a tenant absent from `tenants` known to have no affected subject there.
    #[serde(default)]
    pub attributed: bool,
    /// Distinct subjects per tenant name, as the data map's `tenant` column holds it.
    #[serde(default)]
    pub tenants: BTreeMap<String, u64>,
    /// Distinct subjects the store holds without a tenant (no `tenant` column, or a null one).
    #[serde(default)]
    pub unattributed: u64,
    /// How the count was made, for operators (collections, identity, attribution).
    pub method: String,
    /// Why the store could not be counted; never holds an identifier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_message_round_trips_and_refuses_unknown_fields() {
        let task = TaskMessage {
            request_id: RequestId::new(),
            task: TaskKind::Erase,
            store: Some(StoreName::parse("accounts").unwrap()),
            identities: Identities::from([("email".into(), vec!["a@example.com".into()])]),
            tenant: Some("acme".into()),
            params: serde_json::Value::Null,
            generation: 0,
            issued_at: Utc::now(),
        };
        let json = serde_json::to_value(&task).unwrap();
        assert_eq!(
            serde_json::from_value::<TaskMessage>(json.clone()).unwrap(),
            task
        );
        let mut tampered = json;
        tampered["surprise"] = serde_json::json!(1);
        assert!(serde_json::from_value::<TaskMessage>(tampered).is_err());
    }

    #[test]
    fn message_ids_follow_the_contract() {
        let id = RequestId::new();
        let store = StoreName::parse("chat").unwrap();
        assert_eq!(
            message_id(id, TaskKind::Erase, Some(&store), 0),
            format!("{id}.erase.chat")
        );
        assert_eq!(
            message_id(id, TaskKind::Assemble, None, 2),
            format!("{id}.assemble.all.2")
        );
    }

    #[test]
    fn outcomes_are_tagged_by_status() {
        let done = TaskOutcome::Done(TaskReport::default());
        assert_eq!(serde_json::to_value(&done).unwrap()["status"], "done");
    }
}
