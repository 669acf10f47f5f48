//! Deadline arithmetic (Art. 12(3)): a request is due one calendar month after receipt,
//! extendable once by up to two further months; Lethe's own target is seven days.

use chrono::{DateTime, Duration, Months, Utc};

/// Days Lethe aims to finish within.
pub const TARGET_DAYS: i64 = 7;
/// The most months an extension may add.
pub const MAX_EXTENSION_MONTHS: u32 = 2;

/// `received + 1 calendar month`; a day that does not exist in the next month falls on its
/// last day (31 January -> 28 or 29 February).
pub fn due_at(received: DateTime<Utc>) -> DateTime<Utc> {
    add_months(received, 1)
}

/// `received + 7 days`.
pub fn target_at(received: DateTime<Utc>) -> DateTime<Utc> {
    received + Duration::days(TARGET_DAYS)
}

/// The due date after extending by `months` (1 or 2).
pub fn extended(due: DateTime<Utc>, months: u32) -> DateTime<Utc> {
    add_months(due, months)
}

fn add_months(at: DateTime<Utc>, months: u32) -> DateTime<Utc> {
    // Only out of range near the end of representable time, which a request never reaches.
    at.checked_add_months(Months::new(months)).unwrap_or(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    #[test]
    fn one_calendar_month_clamps_to_the_end_of_shorter_months() {
        assert_eq!(
            due_at(at("2026-01-31T10:00:00Z")),
            at("2026-02-28T10:00:00Z")
        );
        assert_eq!(
            due_at(at("2028-01-31T10:00:00Z")),
            at("2028-02-29T10:00:00Z")
        );
        assert_eq!(
            due_at(at("2026-03-31T23:59:59Z")),
            at("2026-04-30T23:59:59Z")
        );
        assert_eq!(
            due_at(at("2026-12-15T00:00:00Z")),
            at("2027-01-15T00:00:00Z")
        );
    }

    #[test]
    fn leap_day_requests_fall_due_on_the_same_day_a_month_later() {
        assert_eq!(
            due_at(at("2028-02-29T08:00:00Z")),
            at("2028-03-29T08:00:00Z")
        );
    }

    #[test]
    fn the_target_is_seven_days_and_extensions_add_calendar_months() {
        assert_eq!(
            target_at(at("2026-02-25T00:00:00Z")),
            at("2026-03-04T00:00:00Z")
        );
        assert_eq!(
            extended(at("2026-02-28T00:00:00Z"), 2),
            at("2026-04-28T00:00:00Z")
        );
        assert_eq!(
            extended(at("2025-12-31T00:00:00Z"), 2),
            at("2026-02-28T00:00:00Z")
        );
    }
}
