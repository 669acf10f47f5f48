//! The breach register's clock, which tests can move forward.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, Utc};

/// The breach register's clock: the system time, shifted by an offset that only tests set
/// (so that they can let the 24 hours pass). Shared by clones.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    offset_ms: Arc<AtomicI64>,
}

impl Clock {
    /// Now, as the breach register sees it.
    pub fn now(&self) -> DateTime<Utc> {
        Utc::now() + chrono::Duration::milliseconds(self.offset_ms.load(Ordering::Relaxed))
    }

    /// Moves this clock (and its clones) forward by `by`. For tests.
    pub fn advance(&self, by: chrono::Duration) {
        self.offset_ms
            .fetch_add(by.num_milliseconds(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_moves_only_when_advanced() {
        let clock = Clock::default();
        let shared = clock.clone();
        let before = clock.now();
        shared.advance(chrono::Duration::hours(25));
        assert!(clock.now() - before >= chrono::Duration::hours(25));
    }
}
