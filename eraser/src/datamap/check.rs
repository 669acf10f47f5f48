//! `datamap check`: the data map checked on its own and against the live stores (as the eraser
//! does at start-up), then its coverage: per identity every collection, key and prefix it
//! reaches and through which hops; the columns the classifier flags as personal data that no
//! collection covers (an erasure would leave them behind); tables with foreign keys into mapped
//! tables that are not mapped themselves. Names and counts only.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;

use lethe_common::Settings;
use lethe_common::coverage;
use lethe_common::datamap::{DataMap, EraseStrategy, Normalization, Store};
use lethe_common::privacy::IdentityHasher;
use lethe_stores::discovery::{Catalog, read_catalog, sample_objects, sample_redis_keys};
use lethe_stores::{Connector, SchemaCheck, ServedStore, StoreConnection};
use secrecy::SecretString;

use super::classify::classify;
use super::templates::{IdentityValues, patterns};

/// What the check found.
#[derive(Debug, Default)]
pub struct Report {
    /// The report, for the terminal.
    pub text: String,
    /// Every problem, one line each (the check fails when there is one).
    pub problems: Vec<String>,
}

/// Checks the data map of `settings` against the live stores it names.
pub async fn check(settings: &Settings) -> anyhow::Result<Report> {
    let map = DataMap::load(&settings.data_map_path()?)?;
    let mut report = Report::default();
    let served = lethe_stores::served(&map, &[], settings)?;
    // The schema check hashes nothing; a key is needed to build the connectors only.
    let key = settings.privacy.as_ref().map_or_else(
        || SecretString::from("datamap-check-needs-no-key-000000000"),
        |p| p.hash_key.clone(),
    );
    let hasher = IdentityHasher::new(key);
    for store in &served {
        let connector = Connector::new(store, hasher.clone())?;
        match connector.check_schema().await {
            Ok(SchemaCheck::Fits) => {}
            Ok(SchemaCheck::Problems(found)) => report.problems.extend(found),
            Err(error) => report.problems.push(format!(
                "store `{}`: cannot check the live schema: {error}",
                store.name
            )),
        }
    }

    let carried = coverage::usually_carried(&map);
    let reach = coverage::check(&map, &carried);
    let hops = routes(&map);
    let _ = writeln!(report.text, "Coverage, per identity (through which hops):");
    for identity in &reach.identities {
        let _ = writeln!(report.text, "{}", identity.identity);
        for place in &identity.direct {
            let _ = writeln!(report.text, "  {place}: directly");
        }
        for place in &identity.through_closure {
            let route = hops
                .get(&identity.identity)
                .map(|r| route_to(r, &map, place))
                .unwrap_or_default();
            let _ = writeln!(report.text, "  {place}: {route}");
        }
    }
    report
        .problems
        .extend(reach.findings.iter().map(|f| f.to_string()));

    let mut catalogs: Vec<(&ServedStore, Catalog)> = Vec::new();
    for store in &served {
        let Some(Store::Postgres(sql) | Store::Mysql(sql)) = map.stores.get(&store.name) else {
            continue;
        };
        let catalog = match read_catalog(&store.connection).await {
            Ok(catalog) => {
                catalogs.push((store, catalog.clone()));
                catalog
            }
            Err(error) => {
                report.problems.push(format!(
                    "store `{}`: cannot read the catalog: {error}",
                    store.name
                ));
                continue;
            }
        };
        let mapped = |table: &str| {
            sql.collections
                .iter()
                .find(|c| c.table.rsplit('.').next() == Some(table))
        };
        let mut uncovered = 0;
        for table in &catalog.tables {
            for finding in classify(table) {
                let covered = match mapped(&table.name).map(|c| &c.erase) {
                    None => false,
                    Some(EraseStrategy::Delete | EraseStrategy::Retain) => true,
                    Some(EraseStrategy::Mask(columns)) => columns.contains_key(&finding.column),
                };
                if !covered {
                    uncovered += 1;
                    report.problems.push(format!(
                        "store `{}`: uncovered personal data: table `{}` column `{}` ({}) is in no collection an erasure deletes or masks",
                        store.name,
                        table.name,
                        finding.column,
                        finding.category.as_str()
                    ));
                }
            }
            if mapped(&table.name).is_none() {
                for key in &table.foreign_keys {
                    if mapped(&key.parent).is_some() {
                        report.problems.push(format!(
                            "store `{}`: table `{}` has a foreign key ({}) into mapped table `{}` but is not mapped itself{}",
                            store.name,
                            table.name,
                            key.columns.join(", "),
                            key.parent,
                            if key.cascades { " (ON DELETE CASCADE deletes its rows, uncounted)" } else { "" }
                        ));
                    }
                }
            }
        }
        let _ = writeln!(
            report.text,
            "store `{}`: {} table(s) read, {} personal column(s) uncovered",
            store.name,
            catalog.tables.len(),
            uncovered
        );
    }
    let values = identity_values(&map, &catalogs);
    for store in &served {
        uncovered_keys(&map, store, &values, &mut report).await;
    }
    if report.problems.is_empty() {
        let _ = writeln!(
            report.text,
            "The data map fits the stores and covers what they hold."
        );
    } else {
        let _ = writeln!(report.text, "{} problem(s):", report.problems.len());
        for problem in &report.problems {
            let _ = writeln!(report.text, "  - {problem}");
        }
    }
    Ok(report)
}

/// Per starting identity: for every identity its closure reaches, the identity and the
/// collection (`store.table`) it was reached from.
type Routes = BTreeMap<String, (String, String)>;

fn routes(map: &DataMap) -> BTreeMap<String, Routes> {
    // from -> (to, via)
    let mut edges: BTreeMap<&str, Vec<(&str, String)>> = BTreeMap::new();
    for (store, collection) in map.sql_collections() {
        let via = format!("{store}.{}", collection.table);
        let named: BTreeSet<&str> = collection
            .matches
            .keys()
            .chain(collection.provides.keys())
            .map(String::as_str)
            .collect();
        for from in collection.matches.keys() {
            for to in named.iter().filter(|to| **to != from.as_str()) {
                edges.entry(from).or_default().push((to, via.clone()));
            }
        }
    }
    map.identities
        .iter()
        .map(|start| {
            let mut seen: Routes = BTreeMap::new();
            let mut queue = VecDeque::from([start.as_str()]);
            while let Some(kind) = queue.pop_front() {
                for (to, via) in edges.get(kind).into_iter().flatten() {
                    if *to != start && !seen.contains_key(*to) {
                        seen.insert((*to).to_owned(), (kind.to_owned(), via.clone()));
                        queue.push_back(to);
                    }
                }
            }
            (start.clone(), seen)
        })
        .collect()
}

/// `email -> customer_id (shop.customers) -> order_id (shop.orders)` for the identity that
/// finds `place` by the shortest chain.
fn route_to(routes: &Routes, map: &DataMap, place: &str) -> String {
    let needs = needs_of(map, place);
    let mut best: Option<Vec<String>> = None;
    for kind in needs {
        let mut chain = Vec::new();
        let mut current = kind.clone();
        while let Some((previous, via)) = routes.get(&current) {
            chain.push(format!("{current} ({via})"));
            current = previous.clone();
            if chain.len() > routes.len() {
                break;
            }
        }
        if chain.is_empty() {
            continue;
        }
        chain.push(current);
        chain.reverse();
        if best.as_ref().is_none_or(|b| chain.len() < b.len()) {
            best = Some(chain);
        }
    }
    best.map_or_else(|| "through the closure".to_owned(), |c| c.join(" -> "))
}

/// The identities that find `place` (`store.table` or `store.template`).
fn needs_of(map: &DataMap, place: &str) -> Vec<String> {
    for (name, store) in &map.stores {
        let Some(rest) = place.strip_prefix(&format!("{name}.")) else {
            continue;
        };
        return match store {
            Store::Postgres(sql) | Store::Mysql(sql) => sql
                .collections
                .iter()
                .filter(|c| c.table == rest)
                .flat_map(|c| c.matches.keys().cloned())
                .collect(),
            Store::Redis(_) | Store::S3(_) => {
                lethe_common::datamap::placeholders(rest).unwrap_or_default()
            }
            Store::Http(http) => http.search_kinds().into_iter().collect(),
        };
    }
    Vec::new()
}

/// The values the SQL stores hold of each identity (their `match` and `provides` columns),
/// sampled, in the map's order of identities.
fn identity_values(map: &DataMap, catalogs: &[(&ServedStore, Catalog)]) -> Vec<IdentityValues> {
    let matching = map.matching();
    map.identities
        .iter()
        .map(|identity| {
            let mut values = BTreeSet::new();
            for (store, catalog) in catalogs {
                let Some(Store::Postgres(sql) | Store::Mysql(sql)) = map.stores.get(&store.name)
                else {
                    continue;
                };
                for collection in &sql.collections {
                    let table = collection.table.rsplit('.').next().unwrap_or_default();
                    let column = collection
                        .matches
                        .get(identity)
                        .or_else(|| collection.provides.get(identity));
                    if let Some(c) = column.and_then(|c| catalog.table(table)?.column(c)) {
                        values.extend(c.samples.values().iter().cloned());
                    }
                }
            }
            IdentityValues {
                name: identity.clone(),
                email: matching.rule(identity) == Normalization::Email,
                values,
            }
        })
        .collect()
}

/// Redis keys and S3 objects, sampled, whose shape names an identity that no key template or
/// prefix of the store covers: an erasure would leave them.
async fn uncovered_keys(
    map: &DataMap,
    store: &ServedStore,
    values: &[IdentityValues],
    report: &mut Report,
) {
    let (sampled, separator, folders, templates): (_, char, bool, Vec<String>) =
        match (map.stores.get(&store.name), &store.connection) {
            (Some(Store::Redis(redis)), StoreConnection::Redis(handle)) => (
                sample_redis_keys(handle, &redis.key_prefix).await,
                ':',
                false,
                redis.keys.clone(),
            ),
            (Some(Store::S3(s3)), StoreConnection::S3(client)) => (
                sample_objects(client, &s3.bucket, "").await,
                '/',
                true,
                s3.prefixes.clone(),
            ),
            _ => return,
        };
    let keys = match sampled {
        Ok(keys) => keys,
        Err(error) => {
            report.problems.push(format!(
                "store `{}`: cannot sample its keys: {error}",
                store.name
            ));
            return;
        }
    };
    let mut uncovered = 0;
    for pattern in patterns(keys.values(), separator, folders, values) {
        let covered = templates.iter().any(|t| {
            *t == pattern.template || (folders && pattern.template.starts_with(t.as_str()))
        });
        if pattern.is_subjects() && !covered {
            uncovered += 1;
            report.problems.push(format!(
                "store `{}`: uncovered personal data: {} sampled key(s) shaped `{}` name an identity that no template covers",
                store.name, pattern.keys, pattern.template
            ));
        }
    }
    let _ = writeln!(
        report.text,
        "store `{}`: {} key(s) sampled, {uncovered} key shape(s) uncovered",
        store.name,
        keys.len()
    );
}
