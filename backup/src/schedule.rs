//! The built-in schedule: per store an interval or a cron expression (UTC), or nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use lethe_common::ids::StoreName;
use lethe_common::schedule::Schedule;

use crate::catalog::LastRuns;

/// The schedule key that applies to every store not named.
pub const DEFAULT_KEY: &str = "default";
/// The schedule of a store when neither it nor `default` is configured.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(24 * 3600);
/// How long after a failed attempt the schedule tries again (at most the interval).
pub const RETRY_AFTER: Duration = Duration::from_secs(15 * 60);

/// When a store's next backup is due: the shared [`Schedule`] counted from the last completed
/// backup, plus the retry of a failed attempt.
pub trait NextDue {
    /// When the next backup is due, given the store's last runs; `None` when never. Due times
    /// in the past mean now.
    fn next_due(&self, last: LastRuns, now: DateTime<Utc>) -> Option<DateTime<Utc>>;
}

impl NextDue for Schedule {
    fn next_due(&self, last: LastRuns, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // Counted from the last completed backup, so a cron slot missed while the daemon was
        // down is caught up once; a store never backed up is due now (interval) or waits for
        // the next slot (cron).
        let regular = self.next_after(last.completed, now)?;
        // After a failed attempt, wait a little before trying again.
        let retry = match (self, last.attempted) {
            (Schedule::Every(interval), Some(attempted))
                if last.completed.is_none_or(|c| attempted > c) =>
            {
                Some(attempted + chrono::Duration::from_std(RETRY_AFTER.min(*interval)).ok()?)
            }
            (Schedule::Cron(_), Some(attempted))
                if last.completed.is_none_or(|c| attempted > c) =>
            {
                Some(attempted + chrono::Duration::from_std(RETRY_AFTER).ok()?)
            }
            _ => None,
        };
        Some(retry.map_or(regular, |r| r.max(regular)))
    }
}

/// The schedule of every store backed up.
#[derive(Debug, Clone)]
pub struct Schedules(BTreeMap<StoreName, Schedule>);

impl Schedules {
    /// Reads `backups.schedule` for `stores`. A key that is neither `default` nor one of
    /// `stores` is refused (a typo would silently leave a store on the default).
    pub fn from_settings(
        configured: &BTreeMap<String, String>,
        stores: &[StoreName],
    ) -> Result<Self, String> {
        let mut problems = Vec::new();
        for key in configured.keys() {
            if key != DEFAULT_KEY && !stores.iter().any(|s| s.as_str() == key) {
                problems.push(format!(
                    "backups.schedule.{key}: no such store is backed up by this process"
                ));
            }
        }
        let default = match configured.get(DEFAULT_KEY) {
            Some(text) => Schedule::parse(text).unwrap_or_else(|e| {
                problems.push(format!("backups.schedule.{DEFAULT_KEY}: {e}"));
                Schedule::Off
            }),
            None => Schedule::Every(DEFAULT_INTERVAL),
        };
        let mut schedules = BTreeMap::new();
        for store in stores {
            let schedule = match configured.get(store.as_str()) {
                Some(text) => Schedule::parse(text).unwrap_or_else(|e| {
                    problems.push(format!("backups.schedule.{store}: {e}"));
                    Schedule::Off
                }),
                None => default.clone(),
            };
            schedules.insert(store.clone(), schedule);
        }
        if problems.is_empty() {
            Ok(Self(schedules))
        } else {
            Err(problems.join("; "))
        }
    }

    /// Each store and its schedule.
    pub fn iter(&self) -> impl Iterator<Item = (&StoreName, &Schedule)> {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn an_interval_counts_from_the_last_completed_backup_and_retries_failures_later() {
        let every = Schedule::parse("6h").unwrap();
        let now = at("2026-01-10T12:00:00Z");
        assert_eq!(every.next_due(LastRuns::default(), now), Some(now));
        let last = LastRuns {
            completed: Some(at("2026-01-10T09:00:00Z")),
            attempted: Some(at("2026-01-10T09:00:00Z")),
        };
        assert_eq!(every.next_due(last, now), Some(at("2026-01-10T15:00:00Z")));
        let failed = LastRuns {
            completed: Some(at("2026-01-10T00:00:00Z")),
            attempted: Some(at("2026-01-10T11:55:00Z")),
        };
        assert_eq!(
            every.next_due(failed, now),
            Some(at("2026-01-10T12:10:00Z"))
        );
    }

    #[test]
    fn a_cron_schedule_fires_at_its_next_slot_after_the_last_backup() {
        let nightly = Schedule::parse("30 2 * * *").unwrap();
        let now = at("2026-01-10T12:00:00Z");
        assert_eq!(
            nightly.next_due(LastRuns::default(), now),
            Some(at("2026-01-11T02:30:00Z"))
        );
        let last = LastRuns {
            completed: Some(at("2026-01-09T02:30:05Z")),
            attempted: Some(at("2026-01-09T02:30:05Z")),
        };
        // The slot of the 10th was missed: due now.
        assert_eq!(
            nightly.next_due(last, now),
            Some(at("2026-01-10T02:30:00Z"))
        );
    }

    #[test]
    fn unknown_stores_in_the_schedule_are_refused_and_the_default_applies_to_the_rest() {
        let stores = vec![
            StoreName::parse("accounts").unwrap(),
            StoreName::parse("chat").unwrap(),
        ];
        let configured = BTreeMap::from([
            ("default".to_owned(), "off".to_owned()),
            ("accounts".to_owned(), "1h".to_owned()),
        ]);
        let schedules = Schedules::from_settings(&configured, &stores).unwrap();
        let kinds: Vec<_> = schedules
            .iter()
            .map(|(s, k)| (s.to_string(), matches!(k, Schedule::Off)))
            .collect();
        assert_eq!(
            kinds,
            [("accounts".to_owned(), false), ("chat".to_owned(), true)]
        );
        let typo = BTreeMap::from([("acounts".to_owned(), "1h".to_owned())]);
        let error = Schedules::from_settings(&typo, &stores).unwrap_err();
        assert!(error.contains("backups.schedule.acounts"), "{error}");
    }
}
