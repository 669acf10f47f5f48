//! The record of a request's identity closure (DESIGN §11 "What a receipt certifies"): the
//! resolve rounds run across stores, and per round and store the identity kinds searched with
//! and the new identities found. Kinds and counts only, never values: the values themselves
//! live in the request's `identities`, which retention minimises; this record outlives them
//! and is what the receipt shows.

use std::collections::{BTreeMap, BTreeSet};

use lethe_common::messages::Identities;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::plan::{PlannedTask, Planner};

/// The closure of one request, as the ledger keeps it (`request.closure`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Closure {
    /// Resolve rounds run so far (0: no store yields identities the request could use).
    pub rounds: Vec<Round>,
    /// Values per identity kind known now: given, plus everything the rounds found.
    pub identities: BTreeMap<String, u64>,
    /// Whether resolution ended with nothing new found (erase and collect tasks then run with
    /// every identity in the closure).
    pub complete: bool,
}

/// One resolve round: the stores asked, each with what it searched with and found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Round {
    /// 1 for the first round.
    pub round: u32,
    /// Per store asked.
    pub stores: BTreeMap<String, Hop>,
}

/// What one store did in one round.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Hop {
    /// Values per identity kind the store was searched with.
    pub searched: BTreeMap<String, u64>,
    /// Values per identity kind found that the request did not know yet.
    pub found: BTreeMap<String, u64>,
    /// Rows found that yielded identities.
    pub rows: u64,
    /// Whether the store answered.
    pub done: bool,
}

/// Values per kind of `identities`.
pub fn counts(identities: &Identities) -> BTreeMap<String, u64> {
    identities
        .iter()
        .filter(|(_, values)| !values.is_empty())
        .map(|(kind, values)| (kind.clone(), values.len() as u64))
        .collect()
}

/// Values per kind of `derived` that `known` does not hold.
pub fn new_values(known: Option<&Identities>, derived: &Identities) -> BTreeMap<String, u64> {
    derived
        .iter()
        .filter_map(|(kind, values)| {
            let had: BTreeSet<&String> = known
                .and_then(|k| k.get(kind))
                .into_iter()
                .flatten()
                .collect();
            let fresh: BTreeSet<&String> = values.iter().filter(|v| !had.contains(v)).collect();
            (!fresh.is_empty()).then(|| (kind.clone(), fresh.len() as u64))
        })
        .collect()
}

impl Closure {
    /// The record of a request that starts with `identities` and the resolve `tasks` (none:
    /// the closure is complete at once).
    pub fn start(planner: &Planner, identities: &Identities, tasks: &[PlannedTask]) -> Self {
        let mut closure = Closure {
            identities: counts(identities),
            ..Closure::default()
        };
        if tasks.is_empty() {
            closure.complete = true;
        } else {
            closure.begin_round(planner, identities, tasks);
        }
        closure
    }

    /// The round now running (0 before the first).
    pub fn round(&self) -> u32 {
        self.rounds.last().map_or(0, |r| r.round)
    }

    /// Starts the next round with `tasks`, each store searched with what it matches on.
    pub fn begin_round(
        &mut self,
        planner: &Planner,
        identities: &Identities,
        tasks: &[PlannedTask],
    ) {
        let round = self.round() + 1;
        let stores = tasks
            .iter()
            .filter_map(|t| t.store.as_ref())
            .map(|store| {
                let kinds = planner.resolving_kinds(store);
                let searched = counts(identities)
                    .into_iter()
                    .filter(|(kind, _)| kinds.contains(kind))
                    .collect();
                (
                    store.as_str().to_owned(),
                    Hop {
                        searched,
                        ..Hop::default()
                    },
                )
            })
            .collect();
        self.rounds.push(Round { round, stores });
    }

    /// Records a store's resolve result of the current round: `rows` found, `found` new
    /// values per kind, and the request's identities after merging them.
    pub fn record(
        &mut self,
        store: &str,
        rows: u64,
        found: BTreeMap<String, u64>,
        identities: &Identities,
    ) {
        if let Some(hop) = self
            .rounds
            .last_mut()
            .and_then(|round| round.stores.get_mut(store))
        {
            hop.rows = rows;
            hop.found = found;
            hop.done = true;
        }
        self.identities = counts(identities);
    }

    /// Per identity kind, the stores that found new values of it in the current round.
    pub fn grown(&self) -> BTreeMap<String, BTreeSet<String>> {
        let mut grown: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (store, hop) in self.rounds.last().map(|r| &r.stores).into_iter().flatten() {
            for (kind, count) in &hop.found {
                if *count > 0 {
                    grown.entry(kind.clone()).or_default().insert(store.clone());
                }
            }
        }
        grown
    }

    /// Whether some round found rows.
    pub fn found_rows(&self) -> bool {
        self.rounds
            .iter()
            .flat_map(|r| r.stores.values())
            .any(|hop| hop.rows > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_values_the_request_did_not_know_count_as_new() {
        let known = Identities::from([("email".into(), vec!["a".into()])]);
        let derived = Identities::from([
            ("email".into(), vec!["a".into()]),
            ("user_id".into(), vec!["1".into(), "2".into()]),
        ]);
        assert_eq!(
            new_values(Some(&known), &derived),
            BTreeMap::from([("user_id".to_owned(), 2)])
        );
    }
}
