//! The breach register. The privacy statements Lethe serves promise to notify customers (the
//! tenants) of a data breach within 24 hours of knowing about it, and GDPR Art. 33 gives the
//! controller 72 hours to notify the supervisory authority. An operator (an `admin` key) opens
//! an incident, Lethe asks the affected stores' exporters how many subjects each tenant has
//! there (counts only), notifies each affected tenant through its webhook (signed, retried,
//! every attempt recorded), and shows who was notified when and who acknowledged. Deadlines
//! are computed from `detected_at`; overdue incidents show in listings and on `/metrics`.
//! Every step appends an event to the audit chain.
//!
//! Time comes from a [`Clock`] so that tests can let 24 hours pass.

mod census;
mod clock;
mod deadlines;
mod gauges;
mod model;
mod notify;
mod routes;
mod store;
mod validate;
mod view;

pub use clock::Clock;
pub use deadlines::{due_dates, overdue_counts};
pub use gauges::run_gauges;
pub use model::{
    AffectedTenants, AttemptView, Deadlines, IncidentList, IncidentQuery, IncidentSummary,
    IncidentUpdate, IncidentView, NewIncident, NotificationView, NotifyOutcome, NotifyResult,
    StoreEstimate, TenantView,
};
pub use notify::delivery_settled;
// A glob, so that each handler's OpenAPI description (`__path_<handler>`) comes along.
pub use routes::*;

/// Hours from detection within which affected tenants must be notified.
pub const TENANT_NOTICE_HOURS: i64 = 24;
/// Hours from detection within which the supervisory authority must be notified (Art. 33).
pub const AUTHORITY_NOTICE_HOURS: i64 = 72;
/// The webhook event of a notification to a tenant.
pub const NOTIFICATION_EVENT: &str = "incident.notification";

/// What the breach register needs besides the ledger: the clock, and NATS to ask the stores'
/// exporters for their census.
#[derive(Clone)]
pub struct Incidents {
    /// The clock deadlines are judged by.
    pub clock: Clock,
    nats: async_nats::Client,
}

impl Incidents {
    /// The register, asking census questions over `nats`.
    pub fn new(nats: async_nats::Client) -> Self {
        Self {
            clock: Clock::default(),
            nats,
        }
    }
}
