//! When a run starts by itself: an interval counted from this process's previous run, a cron
//! expression in UTC, or never. Runs are idempotent and cheap when there is nothing to delete,
//! so the schedule lives in memory: a restarted daemon runs once at start-up (interval) or at
//! the next slot (cron), and several processes on one schedule only find less to do.

use chrono::{DateTime, Utc};
use lethe_common::schedule::Schedule;

/// When the next retention run is due.
pub trait NextDue {
    /// When the next run is due, given when this process last ran (`None`: not yet) and when
    /// it started; `None` when never. An interval runs at start-up, then an interval after the
    /// previous run; cron at its next slot. Due times in the past mean now.
    fn next_due(
        &self,
        last: Option<DateTime<Utc>>,
        started: DateTime<Utc>,
    ) -> Option<DateTime<Utc>>;
}

impl NextDue for Schedule {
    fn next_due(
        &self,
        last: Option<DateTime<Utc>>,
        started: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        self.next_after(last, started)
    }
}
