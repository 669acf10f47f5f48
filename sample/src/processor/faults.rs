//! The test hooks: a fault plan that makes the next N calls of the API answer a chosen status
//! (429 with `Retry-After`, 500, 400 ...) instead of doing their work, set with
//! `POST /admin/faults` and read back, with the calls counted, at `GET /admin/stats`.

use serde::{Deserialize, Serialize};

/// The next `count` calls (admin and health calls aside) answer `status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultPlan {
    /// The status to answer.
    pub status: u16,
    /// How many calls answer it.
    pub count: u32,
    /// `Retry-After` seconds sent with it (with a 429).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u32>,
    /// Only calls of this method (`DELETE`), when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

/// What the processor did, for tests to check.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Stats {
    /// API calls received (admin and health calls aside), faulted ones included.
    pub calls: u64,
    /// Calls answered from the fault plan.
    pub faulted: u64,
    /// What is left of the fault plan.
    pub plan: Option<FaultPlan>,
}

impl Stats {
    /// Counts a call of `method`; returns the fault to answer it with, if the plan has one.
    pub fn take_fault(&mut self, method: &str) -> Option<FaultPlan> {
        self.calls += 1;
        let plan = self.plan.as_mut()?;
        if plan
            .method
            .as_deref()
            .is_some_and(|m| !m.eq_ignore_ascii_case(method))
        {
            return None;
        }
        let fault = plan.clone();
        plan.count = plan.count.saturating_sub(1);
        if plan.count == 0 {
            self.plan = None;
        }
        self.faulted += 1;
        Some(fault)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_answers_its_count_of_calls_then_stops() {
        let mut stats = Stats {
            plan: Some(FaultPlan {
                status: 500,
                count: 2,
                retry_after: None,
                method: Some("DELETE".into()),
            }),
            ..Stats::default()
        };
        assert!(stats.take_fault("GET").is_none());
        assert!(stats.take_fault("DELETE").is_some());
        assert!(stats.take_fault("delete").is_some());
        assert!(stats.take_fault("DELETE").is_none());
        assert_eq!((stats.calls, stats.faulted), (4, 2));
    }
}
