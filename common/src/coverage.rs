//! The identity graph of a data map, and the coverage check built on it: for each identity a
//! request may carry, which collections, key templates and prefixes it reaches, directly or
//! through the closure (every identity a row found yields, hop after hop, across stores).
//!
//! Pure over the [`DataMap`]: the coordinator plans resolve rounds with it, the eraser prints
//! and logs the check (`lethe-eraser coverage`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

use crate::datamap::{DataMap, Store, TENANT_PLACEHOLDER, placeholders};
use crate::ids::StoreName;

/// The kinds a store searches with: the `match` identities of its collections, or the
/// placeholders of its key and prefix templates.
pub fn search_kinds(map: &DataMap, store: &StoreName) -> BTreeSet<String> {
    places(map)
        .into_iter()
        .filter(|p| &p.store == store)
        .flat_map(|p| p.needs.into_kinds())
        .collect()
}

/// The kinds a store's resolve task searches with: the `match` identities of its collections
/// that name two identities or more (a row found by its only identity yields nothing new).
/// Empty for a store that yields no identity, which therefore gets no resolve task.
pub fn resolving_kinds(map: &DataMap, store: &StoreName) -> BTreeSet<String> {
    match map.stores.get(store) {
        Some(Store::Postgres(sql) | Store::Mysql(sql)) => sql
            .collections
            .iter()
            .filter(|c| {
                let kinds: BTreeSet<&String> = c.matches.keys().chain(c.provides.keys()).collect();
                kinds.len() > 1
            })
            .flat_map(|c| c.matches.keys().cloned())
            .collect(),
        _ => BTreeSet::new(),
    }
}

/// Edges `from -> to`: a row found by `from` names `to` (in `match` or `provides`).
pub fn yields(map: &DataMap) -> BTreeMap<String, BTreeSet<String>> {
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (_, collection) in map.sql_collections() {
        let named: BTreeSet<&String> = collection
            .matches
            .keys()
            .chain(collection.provides.keys())
            .collect();
        for from in collection.matches.keys() {
            for to in &named {
                if *to != from {
                    edges.entry(from.clone()).or_default().insert((*to).clone());
                }
            }
        }
    }
    edges
}

/// Every kind reachable from `start` through [`yields`], `start` included.
pub fn closure_of(map: &DataMap, start: &BTreeSet<String>) -> BTreeSet<String> {
    let edges = yields(map);
    let mut seen = start.clone();
    let mut queue: VecDeque<String> = start.iter().cloned().collect();
    while let Some(kind) = queue.pop_front() {
        for next in edges.get(&kind).into_iter().flatten() {
            if seen.insert(next.clone()) {
                queue.push_back(next.clone());
            }
        }
    }
    seen
}

/// The identities some collection `provides`: derived for other stores, and so rarely
/// carried by a request itself.
pub fn derived_kinds(map: &DataMap) -> BTreeSet<String> {
    map.sql_collections()
        .flat_map(|(_, c)| c.provides.keys().cloned())
        .collect()
}

/// What finds a place's records.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Needs {
    /// Any one of these (a table's `match`).
    Any(BTreeSet<String>),
    /// All of these (a template's placeholders).
    All(BTreeSet<String>),
}

impl Needs {
    fn met_by(&self, known: &BTreeSet<String>) -> bool {
        match self {
            Needs::Any(kinds) => kinds.iter().any(|k| known.contains(k)),
            Needs::All(kinds) => kinds.iter().all(|k| known.contains(k)),
        }
    }

    fn into_kinds(self) -> BTreeSet<String> {
        match self {
            Needs::Any(kinds) | Needs::All(kinds) => kinds,
        }
    }
}

/// A collection, key template or prefix template of one store.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Place {
    store: StoreName,
    name: String,
    needs: Needs,
}

impl Place {
    fn label(&self) -> String {
        format!("{}.{}", self.store, self.name)
    }
}

fn places(map: &DataMap) -> Vec<Place> {
    let mut out = Vec::new();
    // `{tenant}` is the filing tenant, which every task carries: no identity needs to reach it.
    let template = |store: &StoreName, t: &String| Place {
        store: store.clone(),
        name: t.clone(),
        needs: Needs::All(
            placeholders(t)
                .unwrap_or_default()
                .into_iter()
                .filter(|n| n != TENANT_PLACEHOLDER)
                .collect(),
        ),
    };
    for (name, store) in &map.stores {
        match store {
            Store::Postgres(sql) | Store::Mysql(sql) => {
                out.extend(sql.collections.iter().map(|c| Place {
                    store: name.clone(),
                    name: c.table.clone(),
                    needs: Needs::Any(c.matches.keys().cloned().collect()),
                }));
            }
            Store::Redis(redis) => out.extend(redis.keys.iter().map(|t| template(name, t))),
            Store::S3(s3) => out.extend(s3.prefixes.iter().map(|t| template(name, t))),
            Store::Http(http) => out.push(Place {
                store: name.clone(),
                name: http.resolve.name.clone(),
                needs: Needs::All(http.search_kinds()),
            }),
        }
    }
    out
}

/// What one identity reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityReach {
    /// The identity a request carries.
    pub identity: String,
    /// Whether some collection `provides` it (derived, rarely carried by requests).
    pub derived: bool,
    /// The identities its closure adds.
    pub closure: BTreeSet<String>,
    /// Places found with the identity alone (`store.collection`, `store.template`).
    pub direct: Vec<String>,
    /// Places found only through identities the closure adds.
    pub through_closure: Vec<String>,
}

/// A place that a request may fail to reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// No identity reaches it, not even through the closure.
    Unreachable {
        /// `store.collection` or `store.template`.
        place: String,
    },
    /// Reached only from identities requests rarely carry (by default those other
    /// collections derive), which no identity requests do carry leads to.
    OnlyThroughRare {
        /// `store.collection` or `store.template`.
        place: String,
        /// The rarely carried identities that reach it.
        identities: BTreeSet<String>,
    },
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::Unreachable { place } => write!(
                f,
                "{place}: no identity reaches it, not even through the closure; a request never finds its records"
            ),
            Finding::OnlyThroughRare { place, identities } => write!(
                f,
                "{place}: reached only through {}, which requests rarely carry and no identity they carry leads to",
                identities
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

/// The coverage of a data map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coverage {
    /// Per declared identity, what it reaches.
    pub identities: Vec<IdentityReach>,
    /// What a request may miss.
    pub findings: Vec<Finding>,
}

/// The identities requests are taken to carry when the operator does not say: those no
/// collection derives.
pub fn usually_carried(map: &DataMap) -> BTreeSet<String> {
    let derived = derived_kinds(map);
    map.identities
        .iter()
        .filter(|k| !derived.contains(*k))
        .cloned()
        .collect()
}

/// Checks what each identity of `map` reaches; a place that no identity of `carried` reaches,
/// directly or through the closure, is reported.
pub fn check(map: &DataMap, carried: &BTreeSet<String>) -> Coverage {
    let places = places(map);
    let derived = derived_kinds(map);
    let mut reached_by: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut identities = Vec::new();
    for identity in &map.identities {
        let alone = BTreeSet::from([identity.clone()]);
        let closure = closure_of(map, &alone);
        let mut reach = IdentityReach {
            identity: identity.clone(),
            derived: derived.contains(identity),
            closure: closure.difference(&alone).cloned().collect(),
            direct: Vec::new(),
            through_closure: Vec::new(),
        };
        for place in &places {
            if place.needs.met_by(&alone) {
                reach.direct.push(place.label());
            } else if place.needs.met_by(&closure) {
                reach.through_closure.push(place.label());
            } else {
                continue;
            }
            reached_by
                .entry(place.label())
                .or_default()
                .insert(identity.clone());
        }
        identities.push(reach);
    }
    let findings = places
        .iter()
        .filter_map(|place| {
            let place = place.label();
            match reached_by.get(&place) {
                None => Some(Finding::Unreachable { place }),
                Some(by) if by.iter().all(|k| !carried.contains(k)) => {
                    Some(Finding::OnlyThroughRare {
                        place,
                        identities: by.clone(),
                    })
                }
                Some(_) => None,
            }
        })
        .collect();
    Coverage {
        identities,
        findings,
    }
}

impl fmt::Display for Coverage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for reach in &self.identities {
            let note = if reach.derived {
                " (derived: requests rarely carry it)"
            } else {
                ""
            };
            writeln!(f, "{}{note}", reach.identity)?;
            if !reach.closure.is_empty() {
                let kinds: Vec<&str> = reach.closure.iter().map(String::as_str).collect();
                writeln!(f, "  closure adds: {}", kinds.join(", "))?;
            }
            writeln!(f, "  directly: {}", list(&reach.direct))?;
            writeln!(f, "  through the closure: {}", list(&reach.through_closure))?;
        }
        if self.findings.is_empty() {
            writeln!(
                f,
                "every collection is reached from an identity requests carry"
            )?;
        } else {
            writeln!(f, "{} problem(s):", self.findings.len())?;
            for finding in &self.findings {
                writeln!(f, "  - {finding}")?;
            }
        }
        Ok(())
    }
}

fn list(places: &[String]) -> String {
    if places.is_empty() {
        "nothing".to_owned()
    } else {
        places.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = include_str!("../../config/datamap.toml");

    #[test]
    fn in_the_sample_a_phone_reaches_the_email_keyed_redis_key_through_the_users_row() {
        let map = DataMap::parse(SAMPLE).unwrap();
        let coverage = check(&map, &usually_carried(&map));
        let phone = coverage
            .identities
            .iter()
            .find(|r| r.identity == "phone")
            .unwrap();
        assert!(phone.closure.contains("email"), "{coverage}");
        assert!(
            phone
                .through_closure
                .contains(&"sessions.last_seen:{email}".to_owned()),
            "{coverage}"
        );
        assert!(coverage.findings.is_empty(), "{coverage}");
    }

    const HOPS: &str = r#"
        identities = ["email", "user_id", "account_id", "device_id"]
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
        [stores.d]
        kind = "s3"
        bucket = "d"
        prefixes = ["devices/{device_id}/"]
    "#;

    #[test]
    fn two_hops_reach_a_third_store_and_a_carried_identity_reaches_every_place() {
        let map = DataMap::parse(HOPS).unwrap();
        assert_eq!(
            closure_of(&map, &BTreeSet::from(["email".to_owned()])),
            BTreeSet::from(["email".into(), "user_id".into(), "account_id".into()])
        );
        assert_eq!(
            resolving_kinds(&map, &StoreName::parse("b").unwrap()),
            BTreeSet::from(["user_id".to_owned()])
        );
        assert!(resolving_kinds(&map, &StoreName::parse("c").unwrap()).is_empty());
        let coverage = check(&map, &usually_carried(&map));
        let email = &coverage.identities[0];
        assert_eq!(email.direct, vec!["a.users"]);
        assert_eq!(
            email.through_closure,
            vec!["b.accounts", "c.acct:{account_id}"]
        );
        assert_eq!(
            coverage.identities[3].direct,
            vec!["d.devices/{device_id}/"]
        );
        assert!(coverage.findings.is_empty(), "{coverage}");
    }

    #[test]
    fn a_template_needing_two_unrelated_identities_is_unreachable() {
        let map = DataMap::parse(
            r#"
            identities = ["email", "device_id"]
            [stores.c]
            kind = "redis"
            url_env = "C"
            keys = ["dev:{device_id}:{email}", "mail:{email}"]
            "#,
        )
        .unwrap();
        let coverage = check(&map, &usually_carried(&map));
        assert_eq!(
            coverage.findings,
            vec![Finding::Unreachable {
                place: "c.dev:{device_id}:{email}".to_owned()
            }]
        );
    }

    #[test]
    fn a_collection_only_a_rarely_carried_identity_reaches_is_reported() {
        let map = DataMap::parse(
            r#"
            identities = ["email", "phone", "user_id"]
            [stores.a]
            kind = "postgres"
            url_env = "A"
            [[stores.a.collections]]
            table = "users"
            match = { email = "email" }
            provides = { user_id = "id" }
            erase = "delete"
            [[stores.a.collections]]
            table = "sms"
            match = { phone = "phone" }
            erase = "delete"
            "#,
        )
        .unwrap();
        assert!(check(&map, &usually_carried(&map)).findings.is_empty());
        let coverage = check(&map, &BTreeSet::from(["email".to_owned()]));
        assert_eq!(
            coverage.findings,
            vec![Finding::OnlyThroughRare {
                place: "a.sms".to_owned(),
                identities: BTreeSet::from(["phone".to_owned()]),
            }]
        );
        assert!(coverage.to_string().contains("rarely carry"));
    }
}
