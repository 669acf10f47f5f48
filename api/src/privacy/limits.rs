//! The privacy center's rate limits, per email address and per client IP, in memory (each api
//! process counts its own; a limit exists to slow abuse, not to be exact). An address is
//! counted under its keyed hash, never as itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type Windows = HashMap<[u8; 32], Vec<Instant>>;

/// Sliding-window counters.
#[derive(Clone, Default)]
pub struct RateLimits {
    windows: Arc<Mutex<Windows>>,
}

impl RateLimits {
    /// Counts one attempt under `key`; false when `limit` attempts were already made within
    /// `window`.
    pub fn allow(&self, key: [u8; 32], limit: u32, window: Duration) -> bool {
        let Ok(mut windows) = self.windows.lock() else {
            // A poisoned lock means a panic elsewhere; failing closed keeps the limit.
            return false;
        };
        let now = Instant::now();
        if windows.len() > 50_000 {
            windows.retain(|_, hits| hits.iter().any(|at| now.duration_since(*at) < window));
        }
        let hits = windows.entry(key).or_default();
        hits.retain(|at| now.duration_since(*at) < window);
        if hits.len() >= limit as usize {
            return false;
        }
        hits.push(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_refused_past_its_limit_and_others_are_not() {
        let limits = RateLimits::default();
        let window = Duration::from_secs(60);
        assert!(limits.allow([1; 32], 2, window));
        assert!(limits.allow([1; 32], 2, window));
        assert!(!limits.allow([1; 32], 2, window));
        assert!(limits.allow([2; 32], 2, window));
    }
}
