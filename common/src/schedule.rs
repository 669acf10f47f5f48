//! When a daemon's periodic work (a backup, a retention run) starts by itself: an interval, a
//! cron expression in UTC, or never. Each daemon decides what its previous run is (and whether
//! failures are retried sooner); this module only reads the setting and finds the next time.

use std::str::FromStr as _;
use std::time::Duration;

use chrono::{DateTime, Utc};
use croner::Cron;

/// The shortest interval accepted: anything shorter is more likely a typo (`10s` for `10m`)
/// than a wish, and runs are not meant to overlap.
const MIN_INTERVAL: Duration = Duration::from_secs(60);

/// A schedule of runs.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// Never by schedule (on demand only).
    Off,
    /// This long after the previous run (the first run at once).
    Every(Duration),
    /// At the times a cron expression names, evaluated in UTC.
    Cron(Box<Cron>),
}

impl Schedule {
    /// Parses `off` (or `never`), an interval of at least a minute (`6h`, `1d`, `90m`) or a cron
    /// expression (`30 2 * * *`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("off") || text.eq_ignore_ascii_case("never") {
            return Ok(Schedule::Off);
        }
        if let Ok(interval) = humantime_serde::re::humantime::parse_duration(text) {
            if interval < MIN_INTERVAL {
                return Err(format!("`{text}` is shorter than a minute"));
            }
            return Ok(Schedule::Every(interval));
        }
        // Fewer fields cannot be a cron expression; saying so beats croner's parse error.
        if text.split_whitespace().count() >= 5 {
            return Cron::from_str(text)
                .map(|cron| Schedule::Cron(Box::new(cron)))
                .map_err(|e| format!("`{text}` is not a cron expression: {e}"));
        }
        Err(format!(
            "`{text}` is neither an interval (e.g. 1h), a cron expression (e.g. 30 2 * * *) nor off"
        ))
    }

    /// When the next run is due by the schedule alone, given when the previous run counted from
    /// happened (`None`: none yet) and now; `None` when never. An interval is due `now` when
    /// there was no previous run, else an interval after it; a cron expression at its first slot
    /// after the previous run (or after `now`), so a slot missed while down is caught up once.
    /// Due times in the past mean now.
    pub fn next_after(
        &self,
        previous: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Off => None,
            Schedule::Every(interval) => match previous {
                None => Some(now),
                Some(previous) => Some(previous + chrono::Duration::from_std(*interval).ok()?),
            },
            Schedule::Cron(cron) => cron
                .find_next_occurrence(&previous.unwrap_or(now), false)
                .ok(),
        }
    }
}

/// Records in the ledger when `daemon`'s `item` runs next by its schedule (`None`: never), for
/// the console's backups page. Best effort: the plan is informative, so a failure (e.g. a ledger
/// not migrated yet) is logged and the schedule goes on.
pub async fn record_plan(
    pool: &sqlx::PgPool,
    daemon: &str,
    item: &str,
    next_at: Option<DateTime<Utc>>,
) {
    let recorded = sqlx::query(
        "INSERT INTO schedule_plan (daemon, item, next_at, planned_at) VALUES ($1, $2, $3, now())
         ON CONFLICT (daemon, item) DO UPDATE SET next_at = EXCLUDED.next_at, planned_at = now()",
    )
    .bind(daemon)
    .bind(item)
    .bind(next_at)
    .execute(pool)
    .await;
    if let Err(error) = recorded {
        tracing::warn!(daemon, item, error = %error, "cannot record the next scheduled run");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    #[test]
    fn intervals_cron_expressions_and_off_are_understood_and_nonsense_is_refused() {
        assert!(
            matches!(Schedule::parse(" 6h ").unwrap(), Schedule::Every(d) if d.as_secs() == 21_600)
        );
        assert!(matches!(Schedule::parse("1m").unwrap(), Schedule::Every(_)));
        assert!(matches!(Schedule::parse("off").unwrap(), Schedule::Off));
        assert!(matches!(Schedule::parse("Never").unwrap(), Schedule::Off));
        assert!(matches!(
            Schedule::parse("30 2 * * *").unwrap(),
            Schedule::Cron(_)
        ));
        let short = Schedule::parse("10s").unwrap_err();
        assert!(short.contains("shorter than a minute"), "{short}");
        let bad_cron = Schedule::parse("61 2 * * *").unwrap_err();
        assert!(bad_cron.contains("not a cron expression"), "{bad_cron}");
        for nonsense in ["soon", "whenever"] {
            let error = Schedule::parse(nonsense).unwrap_err();
            assert!(error.contains("neither an interval"), "{error}");
        }
    }

    #[test]
    fn intervals_run_at_once_then_every_interval_and_cron_at_its_slots() {
        let now = at("2026-01-10T12:00:00Z");
        let hourly = Schedule::parse("1h").unwrap();
        assert_eq!(hourly.next_after(None, now), Some(now));
        assert_eq!(
            hourly.next_after(Some(at("2026-01-10T09:30:00Z")), now),
            Some(at("2026-01-10T10:30:00Z"))
        );
        let nightly = Schedule::parse("15 3 * * *").unwrap();
        assert_eq!(
            nightly.next_after(None, now),
            Some(at("2026-01-11T03:15:00Z"))
        );
        // The slot of the 10th was missed: due now.
        assert_eq!(
            nightly.next_after(Some(at("2026-01-09T03:15:05Z")), now),
            Some(at("2026-01-10T03:15:00Z"))
        );
        assert!(Schedule::Off.next_after(None, now).is_none());
    }
}
