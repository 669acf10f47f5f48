//! The API's vocabulary: kinds and statuses of requests, and the JSON shapes clients see.

use std::collections::BTreeMap;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use lethe_common::ids::RequestId;
use lethe_common::messages::UnknownName;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What the data subject asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RequestKind {
    /// A copy of their data (Art. 15).
    Access,
    /// Their data in a machine-readable format (Art. 20).
    Portability,
    /// Erasure (Art. 17).
    Erasure,
    /// Correction of named fields (Art. 16).
    Rectification,
    /// Restriction of processing (Art. 18).
    Restriction,
    /// Lifting a restriction.
    LiftRestriction,
    /// Objection to processing (Art. 21).
    Objection,
    /// Lifting an objection.
    LiftObjection,
}

impl RequestKind {
    /// The name in the API and the ledger.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestKind::Access => "access",
            RequestKind::Portability => "portability",
            RequestKind::Erasure => "erasure",
            RequestKind::Rectification => "rectification",
            RequestKind::Restriction => "restriction",
            RequestKind::LiftRestriction => "lift_restriction",
            RequestKind::Objection => "objection",
            RequestKind::LiftObjection => "lift_objection",
        }
    }
}

impl FromStr for RequestKind {
    type Err = UnknownName;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        serde_json::from_value(serde_json::Value::String(text.to_owned()))
            .map_err(|_| UnknownName::new("request kind", text))
    }
}

lethe_common::ledger_text!(RequestKind);

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RequestStatus {
    /// Accepted, not yet started.
    Received,
    /// Identity verification pending.
    Verifying,
    /// Stores are working on it.
    InProgress,
    /// Every store confirmed.
    Completed,
    /// A store could not do its part; see `failure`.
    Failed,
    /// Refused.
    Rejected,
    /// Cancelled by the client.
    Cancelled,
}

impl RequestStatus {
    /// The name in the API and the ledger.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestStatus::Received => "received",
            RequestStatus::Verifying => "verifying",
            RequestStatus::InProgress => "in_progress",
            RequestStatus::Completed => "completed",
            RequestStatus::Failed => "failed",
            RequestStatus::Rejected => "rejected",
            RequestStatus::Cancelled => "cancelled",
        }
    }

    /// Whether nothing more will happen to the request.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RequestStatus::Completed
                | RequestStatus::Failed
                | RequestStatus::Rejected
                | RequestStatus::Cancelled
        )
    }
}

impl FromStr for RequestStatus {
    type Err = UnknownName;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        serde_json::from_value(serde_json::Value::String(text.to_owned()))
            .map_err(|_| UnknownName::new("request status", text))
    }
}

lethe_common::ledger_text!(RequestStatus);

/// Where one task of a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Planned, not yet issued.
    Pending,
    /// Issued to the workers; waits for its result.
    Queued,
    /// The store confirmed.
    Done,
    /// The store could not do it; see `error`.
    Failed,
    /// Its request ended before it ran.
    Cancelled,
}

impl TaskStatus {
    /// The name in the API and the ledger.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Pending => "pending",
            TaskStatus::Queued => "queued",
            TaskStatus::Done => "done",
            TaskStatus::Failed => "failed",
            TaskStatus::Cancelled => "cancelled",
        }
    }
}

impl FromStr for TaskStatus {
    type Err = UnknownName;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        serde_json::from_value(serde_json::Value::String(text.to_owned()))
            .map_err(|_| UnknownName::new("task status", text))
    }
}

lethe_common::ledger_text!(TaskStatus);

/// The body of `POST /v1/requests`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRequest {
    /// What is asked for.
    pub kind: RequestKind,
    /// The data subject's identities, by the identity names of the data map, e.g.
    /// `{"email": "ada@example.com"}`. Each value is a string (or a list of strings).
    #[schema(value_type = Object)]
    pub subject: BTreeMap<String, IdentityValues>,
    /// For rectification: the fields to change and their new values.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub changes: Option<BTreeMap<String, serde_json::Value>>,
    /// Why, in the client's words (kept in the ledger, never logged).
    #[serde(default)]
    pub reason: Option<String>,
    /// Where to POST the outcome (signed with the tenant's webhook secret).
    #[serde(default)]
    pub callback_url: Option<String>,
    /// Count what the request would change, change nothing (erasure, rectification,
    /// restriction, objection and their lifting only). SQL stores run every statement in the
    /// task's transaction and roll it back; Redis and S3 count. A dry-run erasure's receipt
    /// says `"dry_run": true`, and a restore never replays it.
    #[serde(default)]
    pub dry_run: bool,
}

/// One identity given as a single value or several.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum IdentityValues {
    /// One value.
    One(ScalarValue),
    /// Several values.
    Many(Vec<ScalarValue>),
}

/// An identity value: text, or a whole number (user ids).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ScalarValue {
    /// Text.
    Text(String),
    /// A number, kept as its decimal text.
    Number(i64),
}

impl ScalarValue {
    /// The value as text.
    pub fn into_text(self) -> String {
        match self {
            ScalarValue::Text(text) => text,
            ScalarValue::Number(number) => number.to_string(),
        }
    }
}

impl IdentityValues {
    /// The values as text.
    pub fn into_texts(self) -> Vec<String> {
        match self {
            IdentityValues::One(value) => vec![value.into_text()],
            IdentityValues::Many(values) => {
                values.into_iter().map(ScalarValue::into_text).collect()
            }
        }
    }
}

/// The answer to an accepted request.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Accepted {
    /// The request's id.
    #[schema(value_type = String, format = Uuid)]
    pub id: RequestId,
    /// What was asked for.
    pub kind: RequestKind,
    /// Where it stands.
    pub status: RequestStatus,
    /// When it was received.
    pub received_at: DateTime<Utc>,
    /// When Lethe aims to be done (received + 7 days).
    pub target_at: DateTime<Utc>,
    /// The legal deadline (received + 1 calendar month, Art. 12(3)).
    pub due_at: DateTime<Utc>,
}
