//! The request bodies, query parameters and views of the breach register's API.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use lethe_common::ids::TenantId;
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::requests::AuditRow;

/// Where an incident stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum IncidentStatus {
    /// Being handled.
    Open,
    /// The breach is stopped; notification may still be due.
    Contained,
    /// Handled; takes no more changes, and no deadline runs.
    Closed,
}

impl IncidentStatus {
    /// The name in the API and the ledger.
    pub fn as_str(self) -> &'static str {
        match self {
            IncidentStatus::Open => "open",
            IncidentStatus::Contained => "contained",
            IncidentStatus::Closed => "closed",
        }
    }
}

impl std::str::FromStr for IncidentStatus {
    type Err = lethe_common::messages::UnknownName;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        serde_json::from_value(serde_json::Value::String(text.to_owned()))
            .map_err(|_| lethe_common::messages::UnknownName::new("incident status", text))
    }
}

lethe_common::ledger_text!(IncidentStatus);

/// The tenants an incident affects: a list of tenant names, or `"all"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AffectedTenants {
    /// Every tenant known when the incident is opened.
    All,
    /// These tenants, by name.
    Named(Vec<String>),
}

impl<'de> Deserialize<'de> for AffectedTenants {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Word(String),
            List(Vec<String>),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Word(word) if word == "all" => Ok(AffectedTenants::All),
            Raw::Word(_) => Err(serde::de::Error::custom(
                "expected \"all\" or a list of tenant names",
            )),
            Raw::List(names) => Ok(AffectedTenants::Named(names)),
        }
    }
}

/// Opening an incident.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewIncident {
    /// When the breach became known: both deadlines run from here.
    pub detected_at: DateTime<Utc>,
    /// What happened, as tenants will read it (no personal data).
    pub description: String,
    /// The affected stores, by their data-map names.
    pub stores: Vec<String>,
    /// The categories of personal data concerned (e.g. "contact details", "IP addresses").
    pub data_categories: Vec<String>,
    /// The affected tenants' names, or `"all"`.
    #[schema(value_type = Object, example = json!(["acme", "globex"]))]
    pub tenants: AffectedTenants,
    /// Notify the affected tenants right away (after the estimate).
    #[serde(default)]
    pub notify: bool,
}

/// Updating an incident: any of the fields, each recorded.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IncidentUpdate {
    /// When the breach was contained (status becomes `contained`).
    pub contained_at: Option<DateTime<Utc>>,
    /// What caused it.
    pub cause: Option<String>,
    /// The measures taken (sent to tenants with later notifications).
    pub measures: Option<String>,
    /// When the supervisory authority was notified (Art. 33).
    pub authority_notified_at: Option<DateTime<Utc>>,
}

/// The deadlines of an incident and whether they are missed.
#[derive(Debug, Serialize, ToSchema)]
pub struct Deadlines {
    /// Affected tenants must be notified by then (`detected_at` + 24 h).
    pub tenants_due_at: DateTime<Utc>,
    /// The supervisory authority must be notified by then (`detected_at` + 72 h).
    pub authority_due_at: DateTime<Utc>,
    /// Past `tenants_due_at`, open, and some affected tenant neither notified nor
    /// acknowledging.
    pub tenants_overdue: bool,
    /// Past `authority_due_at`, open, and the authority not notified.
    pub authority_overdue: bool,
    /// When the authority was notified.
    pub authority_notified_at: Option<DateTime<Utc>>,
}

/// One attempt at delivering a notification.
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct AttemptView {
    /// Attempt number, from 1.
    pub attempt: i32,
    /// When.
    pub at: DateTime<Utc>,
    /// The HTTP status the tenant's endpoint answered.
    pub status: Option<i32>,
    /// Why no answer came.
    pub error: Option<String>,
}

/// A notification sent to a tenant.
#[derive(Debug, Serialize, ToSchema)]
pub struct NotificationView {
    /// The webhook delivery.
    pub delivery_id: i64,
    /// When it was queued.
    pub queued_at: DateTime<Utc>,
    /// When the tenant's endpoint accepted it.
    pub delivered_at: Option<DateTime<Utc>>,
    /// When Lethe gave up retrying.
    pub abandoned_at: Option<DateTime<Utc>>,
    /// Every attempt.
    pub attempts: Vec<AttemptView>,
}

/// An affected tenant.
#[derive(Debug, Serialize, ToSchema)]
pub struct TenantView {
    /// The tenant's name.
    pub tenant: String,
    /// Its id.
    #[schema(value_type = String, format = Uuid)]
    pub tenant_id: TenantId,
    /// Estimated affected subjects of this tenant (see the census method); absent when no
    /// affected store could attribute subjects to tenants.
    pub subjects: Option<i64>,
    /// When a notification first reached the tenant's endpoint.
    pub notified_at: Option<DateTime<Utc>>,
    /// Notified after the 24-hour deadline.
    pub notified_late: bool,
    /// When the tenant acknowledged.
    pub acknowledged_at: Option<DateTime<Utc>>,
    /// The notifications sent, with their attempts.
    pub notifications: Vec<NotificationView>,
}

/// A store's census answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct StoreEstimate {
    /// The store.
    pub store: String,
    /// Whether its exporter answered in time.
    pub answered: bool,
    /// Whether the store could be counted.
    pub counted: bool,
    /// Whether the store names its subjects' tenants.
    pub attributed: bool,
    /// Distinct subjects per tenant name.
    pub tenants: BTreeMap<String, i64>,
    /// Distinct subjects the store cannot attribute to a tenant.
    pub unattributed: Option<i64>,
    /// How the store counted.
    pub method: Option<String>,
    /// Why there is no count.
    pub error: Option<String>,
    /// When the store was asked.
    pub asked_at: DateTime<Utc>,
}

/// An incident. A tenant's key sees its own entry only, without the per-store estimates and
/// the audit trail.
#[derive(Debug, Serialize, ToSchema)]
pub struct IncidentView {
    /// Id.
    #[schema(value_type = String, format = Uuid)]
    pub id: Uuid,
    /// open, contained or closed.
    pub status: IncidentStatus,
    /// When the breach became known.
    pub detected_at: DateTime<Utc>,
    /// What happened.
    pub description: String,
    /// Affected stores.
    pub stores: Vec<String>,
    /// Categories of personal data concerned.
    pub data_categories: Vec<String>,
    /// Whether every tenant was affected.
    pub all_tenants: bool,
    /// What caused it.
    pub cause: Option<String>,
    /// Measures taken.
    pub measures: Option<String>,
    /// When it was contained.
    pub contained_at: Option<DateTime<Utc>>,
    /// When it was closed.
    pub closed_at: Option<DateTime<Utc>>,
    /// Deadlines.
    pub deadlines: Deadlines,
    /// A deadline is missed.
    pub overdue: bool,
    /// The affected tenants (a tenant's key: itself only).
    pub tenants: Vec<TenantView>,
    /// What the notification tells the tenant (a tenant's key only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// Per-store census answers (admin only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub estimates: Option<Vec<StoreEstimate>>,
    /// The audit trail (admin only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit: Option<Vec<AuditRow>>,
}

/// An incident in a listing.
#[derive(Debug, Serialize, ToSchema)]
pub struct IncidentSummary {
    /// Id.
    #[schema(value_type = String, format = Uuid)]
    pub id: Uuid,
    /// open, contained or closed.
    pub status: IncidentStatus,
    /// When the breach became known.
    pub detected_at: DateTime<Utc>,
    /// Deadlines.
    pub deadlines: Deadlines,
    /// A deadline is missed.
    pub overdue: bool,
    /// Affected tenants (a tenant's key: 1).
    pub tenants: i64,
    /// Of which notified or acknowledging.
    pub notified: i64,
    /// Of which acknowledging.
    pub acknowledged: i64,
}

/// A list of incidents, the most recently detected first.
#[derive(Debug, Serialize, ToSchema)]
pub struct IncidentList {
    /// The incidents (at most 200).
    pub items: Vec<IncidentSummary>,
}

/// Filters of the listing.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct IncidentQuery {
    /// Only incidents with a missed deadline.
    #[serde(default)]
    pub overdue: bool,
    /// Only this status: open, contained or closed.
    pub status: Option<String>,
}

/// What a notify step did for one tenant.
#[derive(Debug, Serialize, ToSchema)]
pub struct NotifyOutcome {
    /// The tenant's name.
    pub tenant: String,
    /// `queued`, `already_notified` (a delivery is pending or done) or `no_webhook` (the
    /// tenant has no webhook URL: set one, then notify again).
    pub outcome: &'static str,
    /// The queued delivery.
    pub delivery_id: Option<i64>,
}

/// The result of a notify step.
#[derive(Debug, Serialize, ToSchema)]
pub struct NotifyResult {
    /// One entry per affected tenant.
    pub tenants: Vec<NotifyOutcome>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants_are_a_list_or_all() {
        let all: AffectedTenants = serde_json::from_str("\"all\"").unwrap();
        assert_eq!(all, AffectedTenants::All);
        let named: AffectedTenants = serde_json::from_str("[\"acme\"]").unwrap();
        assert_eq!(named, AffectedTenants::Named(vec!["acme".to_owned()]));
        assert!(serde_json::from_str::<AffectedTenants>("\"some\"").is_err());
    }
}
