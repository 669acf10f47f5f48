//! Resolution: the identities a store derives from the given ones, to a fixed point.
//!
//! Every column the data map names for an identity, in `match` or in `provides`, yields that
//! identity from every row found: a `users` row found by phone also yields its email, which
//! other stores (`last_seen:{email}`) are searched with. One statement per collection and
//! round, whatever the number of values (`= ANY`).

use std::collections::{BTreeMap, BTreeSet};

use lethe_common::messages::Identities;

use crate::sql::plan::{CollectionPlan, Plan};
use crate::sql::queries;
use crate::sql::session::{During, Failure, Session};
use crate::sql::statement::Matcher;
use crate::values::usable_values;

/// What one resolution found.
pub(crate) struct Expanded {
    /// The given identities plus everything derived.
    pub(crate) all: Identities,
    /// The derived values alone.
    pub(crate) derived: Identities,
    /// Rows that yielded identities, per collection naming two identities or more, in the
    /// last round.
    pub(crate) counts: BTreeMap<String, u64>,
}

/// Follows the store's derivations (`users.email -> users.id`) from `given` until nothing new
/// appears, within `tenant`'s rows in a tenant-scoped task.
pub(crate) async fn expand<S: Session>(
    session: &mut S,
    plan: &Plan,
    given: &Identities,
    tenant: Option<&str>,
) -> Result<Expanded, Failure> {
    let mut all: BTreeMap<String, BTreeSet<String>> = given
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                usable_values(v).into_iter().map(str::to_owned).collect(),
            )
        })
        .collect();
    let mut derived: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut counts = BTreeMap::new();
    // Each round that goes on adds a value, and a store holds finitely many, so this ends;
    // the bound only guards against a pathological store (the coordinator's rounds across
    // stores pick up whatever a cut-short expansion left).
    for _round in 0..=plan.collections.len() {
        let current: Identities = all
            .iter()
            .map(|(k, v)| (k.clone(), v.iter().cloned().collect()))
            .collect();
        let mut grew = false;
        for collection in &plan.collections {
            let columns = identity_columns(collection);
            if !yields_others(&columns) {
                // A row found by its only identity yields nothing the search did not know.
                continue;
            }
            let Some(matcher) = Matcher::new(collection, &current, tenant) else {
                counts.insert(collection.name.clone(), 0);
                continue;
            };
            let statement = queries::provided_values(S::DIALECT, collection, &matcher, &columns);
            let rows = session
                .texts(&statement, columns.len())
                .await
                .during("resolving identities", Some(&collection.name))?;
            counts.insert(collection.name.clone(), rows.len() as u64);
            for row in rows {
                for ((identity, _), value) in columns.iter().zip(row) {
                    let Some(value) = value.filter(|v| !v.trim().is_empty()) else {
                        continue;
                    };
                    derived
                        .entry((*identity).to_owned())
                        .or_default()
                        .insert(value.clone());
                    grew |= all.entry((*identity).to_owned()).or_default().insert(value);
                }
            }
        }
        if !grew {
            break;
        }
    }
    let to_identities = |m: BTreeMap<String, BTreeSet<String>>| -> Identities {
        m.into_iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k, v.into_iter().collect()))
            .collect()
    };
    Ok(Expanded {
        all: to_identities(all),
        derived: to_identities(derived),
        counts,
    })
}

/// Every `(identity, column)` the data map names on `collection`: its `match` columns, then
/// its `provides` columns.
pub(crate) fn identity_columns(collection: &CollectionPlan) -> Vec<(&str, &str)> {
    collection
        .matches
        .iter()
        .map(|m| (m.identity.as_str(), m.column.as_str()))
        .chain(
            collection
                .provides
                .iter()
                .map(|(identity, column)| (identity.as_str(), column.as_str())),
        )
        .collect()
}

/// Whether a row can yield an identity other than the one that found it: only then is the
/// collection worth a statement.
pub(crate) fn yields_others(columns: &[(&str, &str)]) -> bool {
    let kinds: BTreeSet<&str> = columns.iter().map(|(identity, _)| *identity).collect();
    kinds.len() > 1
}
