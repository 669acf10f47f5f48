//! Which tasks a request needs, phase by phase, derived from the data map (DESIGN §2).
//!
//! 1. **resolve**: stores whose rows yield identities (email -> user_id, phone -> email) are
//!    asked first, in rounds across stores until no new identity appears (the closure: a
//!    store deriving `account_id` from another store's `user_id` is asked in the second);
//! 2. **act**: one task per concerned store, in parallel; for an erasure, stores that derive
//!    identities are held back to phase **act_last**, so they are erased only after every
//!    store that depends on their identities confirmed;
//! 3. **finalize**: exports are assembled into one archive.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use lethe_common::coverage;
use lethe_common::datamap::{DataMap, Store};
use lethe_common::ids::StoreName;
use lethe_common::messages::{Identities, TaskKind, UnknownName};

use crate::model::RequestKind;

/// A phase of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Deriving identities.
    Resolve,
    /// Acting in every store (but identity providers, for erasures).
    Act,
    /// Erasing the identity providers.
    ActLast,
    /// Assembling an export.
    Finalize,
    /// Nothing left.
    Done,
}

impl Phase {
    /// The name in the ledger.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Resolve => "resolve",
            Phase::Act => "act",
            Phase::ActLast => "act_last",
            Phase::Finalize => "finalize",
            Phase::Done => "done",
        }
    }
}

impl FromStr for Phase {
    type Err = UnknownName;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(match text {
            "resolve" => Phase::Resolve,
            "act" => Phase::Act,
            "act_last" => Phase::ActLast,
            "finalize" => Phase::Finalize,
            "done" => Phase::Done,
            _ => return Err(UnknownName::new("phase", text)),
        })
    }
}

lethe_common::ledger_text!(Phase);

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One task to issue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedTask {
    /// What to do.
    pub kind: TaskKind,
    /// Where (`None` for assemble).
    pub store: Option<StoreName>,
}

/// Plans requests against one data map.
#[derive(Debug, Clone)]
pub struct Planner {
    map: DataMap,
}

impl Planner {
    /// A planner for `map`.
    pub fn new(map: DataMap) -> Self {
        Self { map }
    }

    /// The data map.
    pub fn map(&self) -> &DataMap {
        &self.map
    }

    fn providers(&self) -> BTreeMap<&StoreName, BTreeSet<&str>> {
        self.map
            .stores
            .keys()
            .map(|name| (name, self.map.provided_by(name)))
            .filter(|(_, provided)| !provided.is_empty())
            .collect()
    }

    /// The kinds `store`'s resolve task searches with (empty: it yields no identity and gets
    /// no resolve task).
    pub fn resolving_kinds(&self, store: &StoreName) -> BTreeSet<String> {
        coverage::resolving_kinds(&self.map, store)
    }

    /// The kinds `store` is searched with by its other tasks.
    pub fn search_kinds(&self, store: &StoreName) -> BTreeSet<String> {
        coverage::search_kinds(&self.map, store)
    }

    /// The most resolve rounds a request runs. A hop across stores adds an identity kind the
    /// previous round did not have, so as many rounds as kinds (plus one that finds nothing
    /// new) close any chain of kinds; a request still growing after that is linked value to
    /// value (two accounts sharing a phone, and so on) and fails rather than erasing a part.
    pub fn max_rounds(&self) -> u32 {
        u32::try_from(self.map.identities.len())
            .unwrap_or(u32::MAX)
            .saturating_add(1)
    }

    /// Resolve tasks for the stores that yield identities and that `wanted` keeps.
    fn resolve_tasks(
        &self,
        wanted: impl Fn(&StoreName, &BTreeSet<String>) -> bool,
    ) -> Vec<PlannedTask> {
        self.map
            .stores
            .keys()
            .filter(|store| {
                let kinds = self.resolving_kinds(store);
                !kinds.is_empty() && wanted(store, &kinds)
            })
            .map(|store| PlannedTask {
                kind: TaskKind::Resolve,
                store: Some(store.clone()),
            })
            .collect()
    }

    /// The first phase of a new request and its tasks: a first resolve round on every store
    /// that yields identities and can search with one the request carries.
    pub fn start(
        &self,
        kind: RequestKind,
        identities: &Identities,
        changes: &BTreeSet<String>,
    ) -> (Phase, Vec<PlannedTask>) {
        let tasks = self.resolve_tasks(|_, kinds| {
            identities
                .iter()
                .any(|(k, values)| !values.is_empty() && kinds.contains(k))
        });
        if tasks.is_empty() {
            self.after(Phase::Resolve, kind, changes)
        } else {
            (Phase::Resolve, tasks)
        }
    }

    /// The next resolve round after one in which `grown` (identity kind -> stores that found
    /// new values of it) appeared: every store that searches with a kind another store grew.
    /// A store's own finds need no second look: its resolve task already followed them to a
    /// fixed point within the store. Empty when the closure is complete.
    pub fn next_round(&self, grown: &BTreeMap<String, BTreeSet<String>>) -> Vec<PlannedTask> {
        self.resolve_tasks(|store, kinds| {
            kinds.iter().any(|kind| {
                grown
                    .get(kind)
                    .is_some_and(|by| by.iter().any(|s| s != store.as_str()))
            })
        })
    }

    /// The phase that follows `finished` and its tasks, skipping phases with nothing to do.
    pub fn after(
        &self,
        finished: Phase,
        kind: RequestKind,
        changes: &BTreeSet<String>,
    ) -> (Phase, Vec<PlannedTask>) {
        let mut phase = finished;
        loop {
            phase = match phase {
                Phase::Resolve => Phase::Act,
                Phase::Act => Phase::ActLast,
                Phase::ActLast => Phase::Finalize,
                Phase::Finalize | Phase::Done => return (Phase::Done, Vec::new()),
            };
            let tasks = self.tasks(phase, kind, changes);
            if !tasks.is_empty() {
                return (phase, tasks);
            }
        }
    }

    fn tasks(
        &self,
        phase: Phase,
        kind: RequestKind,
        changes: &BTreeSet<String>,
    ) -> Vec<PlannedTask> {
        let providers = self.providers();
        let on = |kind: TaskKind, stores: Vec<&StoreName>| -> Vec<PlannedTask> {
            stores
                .into_iter()
                .map(|store| PlannedTask {
                    kind,
                    store: Some(store.clone()),
                })
                .collect()
        };
        let all: Vec<&StoreName> = self.map.stores.keys().collect();
        match (phase, kind) {
            (Phase::Act, RequestKind::Erasure) => on(
                TaskKind::Erase,
                all.into_iter()
                    .filter(|s| !providers.contains_key(s))
                    .collect(),
            ),
            (Phase::ActLast, RequestKind::Erasure) => {
                on(TaskKind::Erase, providers.keys().copied().collect())
            }
            (Phase::Act, RequestKind::Access | RequestKind::Portability) => {
                on(TaskKind::Collect, all)
            }
            (Phase::Finalize, RequestKind::Access | RequestKind::Portability) => {
                vec![PlannedTask {
                    kind: TaskKind::Assemble,
                    store: None,
                }]
            }
            (Phase::Act, RequestKind::Rectification) => on(
                TaskKind::Rectify,
                self.stores_where(|store| match store {
                    Store::Postgres(sql) | Store::Mysql(sql) => sql
                        .collections
                        .iter()
                        .any(|c| c.rectify.keys().any(|field| changes.contains(field))),
                    Store::Http(http) => http
                        .rectify
                        .as_ref()
                        .is_some_and(|r| r.fields.keys().any(|field| changes.contains(field))),
                    _ => false,
                }),
            ),
            (Phase::Act, RequestKind::Restriction | RequestKind::LiftRestriction) => {
                let task = if kind == RequestKind::Restriction {
                    TaskKind::Restrict
                } else {
                    TaskKind::LiftRestriction
                };
                on(
                    task,
                    self.stores_where(|store| match store {
                        Store::Postgres(sql) | Store::Mysql(sql) => {
                            sql.collections.iter().any(|c| c.restrict.is_some())
                        }
                        Store::Redis(redis) => redis.restrict.is_some(),
                        Store::Http(http) => http.restrict.is_some(),
                        Store::S3(_) => false,
                    }),
                )
            }
            (Phase::Act, RequestKind::Objection | RequestKind::LiftObjection) => {
                let task = if kind == RequestKind::Objection {
                    TaskKind::Object
                } else {
                    TaskKind::LiftObjection
                };
                on(
                    task,
                    self.stores_where(|store| match store {
                        Store::Postgres(sql) | Store::Mysql(sql) => {
                            sql.collections.iter().any(|c| c.object.is_some())
                        }
                        Store::Redis(redis) => redis.object.is_some(),
                        Store::Http(http) => http.object.is_some(),
                        Store::S3(_) => false,
                    }),
                )
            }
            _ => Vec::new(),
        }
    }

    fn stores_where(&self, keep: impl Fn(&Store) -> bool) -> Vec<&StoreName> {
        self.map
            .stores
            .iter()
            .filter(|(_, store)| keep(store))
            .map(|(name, _)| name)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAP: &str = r#"
        identities = ["email", "user_id"]
        [stores.accounts]
        kind = "postgres"
        url_env = "A"
        [[stores.accounts.collections]]
        table = "users"
        match = { email = "email" }
        provides = { user_id = "id" }
        erase = "delete"
        rectify = { first_name = "first_name" }
        restrict = { column = "restricted" }
        [stores.chat]
        kind = "mysql"
        url_env = "B"
        [[stores.chat.collections]]
        table = "messages"
        match = { user_id = "author_id" }
        erase = "delete"
        [stores.files]
        kind = "s3"
        bucket = "f"
        prefixes = ["a/{user_id}/"]
    "#;

    fn planner() -> Planner {
        Planner::new(DataMap::parse(MAP).unwrap())
    }

    fn stores(tasks: &[PlannedTask]) -> Vec<&str> {
        tasks
            .iter()
            .map(|t| t.store.as_ref().map_or("-", |s| s.as_str()))
            .collect()
    }

    #[test]
    fn an_erasure_by_email_resolves_then_erases_dependents_then_the_provider() {
        let planner = planner();
        let identities = Identities::from([("email".into(), vec!["x".into()])]);
        let none = BTreeSet::new();
        let (phase, tasks) = planner.start(RequestKind::Erasure, &identities, &none);
        assert_eq!((phase, stores(&tasks)), (Phase::Resolve, vec!["accounts"]));
        let (phase, tasks) = planner.after(phase, RequestKind::Erasure, &none);
        assert_eq!((phase, stores(&tasks)), (Phase::Act, vec!["chat", "files"]));
        assert!(tasks.iter().all(|t| t.kind == TaskKind::Erase));
        let (phase, tasks) = planner.after(phase, RequestKind::Erasure, &none);
        assert_eq!((phase, stores(&tasks)), (Phase::ActLast, vec!["accounts"]));
        assert_eq!(
            planner.after(phase, RequestKind::Erasure, &none).0,
            Phase::Done
        );
    }

    #[test]
    fn a_subject_with_every_derived_identity_skips_resolution() {
        let identities = Identities::from([("user_id".into(), vec!["7".into()])]);
        let (phase, _) = planner().start(RequestKind::Access, &identities, &BTreeSet::new());
        assert_eq!(phase, Phase::Act);
    }

    #[test]
    fn exports_collect_everywhere_then_assemble() {
        let planner = planner();
        let none = BTreeSet::new();
        let (phase, tasks) = planner.after(Phase::Resolve, RequestKind::Portability, &none);
        assert_eq!((phase, tasks.len()), (Phase::Act, 3));
        let (phase, tasks) = planner.after(phase, RequestKind::Portability, &none);
        assert_eq!(phase, Phase::Finalize);
        assert_eq!(
            tasks,
            vec![PlannedTask {
                kind: TaskKind::Assemble,
                store: None
            }]
        );
    }

    #[test]
    fn rectification_and_restriction_go_only_where_the_map_records_them() {
        let planner = planner();
        let changes = BTreeSet::from(["first_name".to_owned()]);
        let (_, tasks) = planner.after(Phase::Resolve, RequestKind::Rectification, &changes);
        assert_eq!(stores(&tasks), vec!["accounts"]);
        let (_, tasks) = planner.after(
            Phase::Resolve,
            RequestKind::LiftRestriction,
            &BTreeSet::new(),
        );
        assert_eq!(
            tasks,
            vec![PlannedTask {
                kind: TaskKind::LiftRestriction,
                store: Some(StoreName::parse("accounts").unwrap())
            }]
        );
    }

    const HOPS: &str = r#"
        identities = ["email", "user_id", "account_id"]
        [stores.a]
        kind = "postgres"
        url_env = "A"
        [[stores.a.collections]]
        table = "users"
        match = { email = "email" }
        provides = { user_id = "id" }
        erase = "delete"
        [stores.b]
        kind = "mysql"
        url_env = "B"
        [[stores.b.collections]]
        table = "accounts"
        match = { user_id = "user_id" }
        provides = { account_id = "id" }
        erase = "delete"
        [stores.c]
        kind = "redis"
        url_env = "C"
        keys = ["acct:{account_id}"]
    "#;

    #[test]
    fn a_store_deriving_from_another_stores_identity_gets_a_second_round() {
        let planner = Planner::new(DataMap::parse(HOPS).unwrap());
        let identities = Identities::from([("email".into(), vec!["x".into()])]);
        let (phase, tasks) = planner.start(RequestKind::Erasure, &identities, &BTreeSet::new());
        assert_eq!((phase, stores(&tasks)), (Phase::Resolve, vec!["a"]));
        let grown = BTreeMap::from([("user_id".to_owned(), BTreeSet::from(["a".to_owned()]))]);
        assert_eq!(stores(&planner.next_round(&grown)), vec!["b"]);
        // b's own finds need no second look at b, and nothing searches with account_id.
        let grown = BTreeMap::from([("account_id".to_owned(), BTreeSet::from(["b".to_owned()]))]);
        assert!(planner.next_round(&grown).is_empty());
        assert!(planner.max_rounds() >= 3);
    }
}
