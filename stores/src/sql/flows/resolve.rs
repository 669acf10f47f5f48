//! Resolution: the identities a store derives from the given ones, to a fixed point.

use std::collections::{BTreeMap, BTreeSet};

use lethe_common::messages::Identities;

use crate::sql::plan::Plan;
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
    /// Rows that provided identities, per providing collection, in the last round.
    pub(crate) counts: BTreeMap<String, u64>,
}

/// Follows the store's derivations (`users.email -> users.id`) from `given` until nothing new
/// appears.
pub(crate) async fn expand<S: Session>(
    session: &mut S,
    plan: &Plan,
    given: &Identities,
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
    // Derivations form no cycle (the data map is refused otherwise), so this ends; the bound
    // only guards against a pathological store.
    for _round in 0..=plan.collections.len() {
        let current: Identities = all
            .iter()
            .map(|(k, v)| (k.clone(), v.iter().cloned().collect()))
            .collect();
        let mut grew = false;
        for collection in plan.collections.iter().filter(|c| !c.provides.is_empty()) {
            let Some(matcher) = Matcher::new(collection, &current) else {
                counts.insert(collection.name.clone(), 0);
                continue;
            };
            let statement = queries::provided_values(S::DIALECT, collection, &matcher);
            let rows = session
                .texts(&statement, collection.provides.len())
                .await
                .during("resolving identities", Some(&collection.name))?;
            counts.insert(collection.name.clone(), rows.len() as u64);
            for row in rows {
                for ((identity, _), value) in collection.provides.iter().zip(row) {
                    let Some(value) = value.filter(|v| !v.trim().is_empty()) else {
                        continue;
                    };
                    derived
                        .entry(identity.clone())
                        .or_default()
                        .insert(value.clone());
                    grew |= all.entry(identity.clone()).or_default().insert(value);
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
