//! Erasure of a batch of subjects in one transaction: the single task's steps (follow the
//! store's derivations, mask, delete children first, query again), each one statement per
//! collection over every subject of the batch. Every row found is tagged with the first
//! subject, in batch order, it belongs to, so each subject's counts are what erasing the
//! subjects one after the other in that order would report; the query after the erasure counts
//! for every subject all rows still matching it.

use std::collections::{BTreeMap, BTreeSet};

use lethe_common::messages::Identities;
use lethe_common::privacy::IdentityHasher;

use super::erase::mask_rows;
use super::resolve::{identity_columns, yields_others};
use super::verify::what_to_verify;
use crate::sql::batch_queries::{self, Owners, owner_of};
use crate::sql::plan::{ErasePlan, Plan};
use crate::sql::session::{During, Failure, Session};
use crate::values::usable_values;

/// What the batch did for one subject.
pub(crate) struct Erased {
    /// Records deleted or masked per collection.
    pub(crate) counts: BTreeMap<String, u64>,
    /// Records still matching per collection after the erasure (deleted collections) or
    /// still unmasked (masked collections).
    pub(crate) remaining: BTreeMap<String, u64>,
}

/// Erases every subject of `given` inside `session`, then queries the store again within it;
/// one [`Erased`] per subject, in order. The caller commits.
pub(crate) async fn erase_batch_in<S: Session>(
    session: &mut S,
    plan: &Plan,
    given: &[&Identities],
    hasher: &IdentityHasher,
) -> Result<Vec<Erased>, Failure> {
    let subjects = expand_all(session, plan, given).await?;
    let dialect = S::DIALECT;
    let zero: BTreeMap<String, u64> = plan
        .collections
        .iter()
        .map(|c| (c.name.clone(), 0))
        .collect();
    let mut counts = vec![zero; subjects.len()];

    // Masks first: deleting a parent may cut (SET NULL) or take (CASCADE) the link that finds
    // a masked row.
    for collection in &plan.collections {
        let ErasePlan::Mask(masks) = &collection.erase else {
            continue;
        };
        let Some(owners) = Owners::new(collection, &subjects) else {
            continue;
        };
        let name = Some(collection.name.as_str());
        let tags = session
            .texts(
                &batch_queries::lock_unmasked_owned(dialect, collection, &owners, masks),
                1,
            )
            .await
            .during("locking rows to mask", name)?;
        if tags.is_empty() {
            continue;
        }
        mask_rows(session, collection, &owners.union, masks, hasher).await?;
        tally(&mut counts, &collection.name, &tags);
    }

    for &index in &plan.delete_order {
        let collection = &plan.collections[index];
        let Some(owners) = Owners::new(collection, &subjects) else {
            continue;
        };
        let tags = session
            .texts(
                &batch_queries::delete_rows_owned(dialect, collection, &owners),
                1,
            )
            .await
            .during("deleting rows", Some(&collection.name))?;
        tally(&mut counts, &collection.name, &tags);
    }

    let remaining = verify_all(session, plan, &subjects).await?;
    Ok(counts
        .into_iter()
        .zip(remaining)
        .map(|(counts, remaining)| Erased { counts, remaining })
        .collect())
}

/// Adds each tagged row to its subject's count of `collection`.
fn tally(counts: &mut [BTreeMap<String, u64>], collection: &str, tags: &[Vec<Option<String>>]) {
    for tag in tags {
        let owner = owner_of(tag.first().and_then(Option::as_ref));
        if let Some(subject) = owner.and_then(|i| counts.get_mut(i)) {
            *subject.entry(collection.to_owned()).or_insert(0) += 1;
        }
    }
}

/// Follows the store's derivations for every subject at once, to a fixed point, as the single
/// task's `expand` does for one: each round one statement per collection naming two
/// identities or more, each row's values going to the subject it belongs to.
async fn expand_all<S: Session>(
    session: &mut S,
    plan: &Plan,
    given: &[&Identities],
) -> Result<Vec<Identities>, Failure> {
    let mut all: Vec<BTreeMap<String, BTreeSet<String>>> = given
        .iter()
        .map(|identities| {
            identities
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        usable_values(v).into_iter().map(str::to_owned).collect(),
                    )
                })
                .collect()
        })
        .collect();
    // The single task's bound, for the same reason (see `resolve::expand`).
    for _round in 0..=plan.collections.len() {
        let current: Vec<Identities> = all.iter().map(to_identities).collect();
        let mut grew = false;
        for collection in &plan.collections {
            let columns = identity_columns(collection);
            if !yields_others(&columns) {
                continue;
            }
            let Some(owners) = Owners::new(collection, &current) else {
                continue;
            };
            let statement =
                batch_queries::provided_values_owned(S::DIALECT, collection, &owners, &columns);
            let rows = session
                .texts(&statement, columns.len() + 1)
                .await
                .during("resolving identities", Some(&collection.name))?;
            for row in rows {
                let mut values = row.into_iter();
                let owner = owner_of(values.next().flatten().as_ref());
                let Some(subject) = owner.and_then(|i| all.get_mut(i)) else {
                    continue;
                };
                for ((identity, _), value) in columns.iter().zip(values) {
                    let Some(value) = value.filter(|v| !v.trim().is_empty()) else {
                        continue;
                    };
                    grew |= subject
                        .entry((*identity).to_owned())
                        .or_default()
                        .insert(value);
                }
            }
        }
        if !grew {
            break;
        }
    }
    Ok(all.iter().map(to_identities).collect())
}

fn to_identities(values: &BTreeMap<String, BTreeSet<String>>) -> Identities {
    values
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.clone(), v.iter().cloned().collect()))
        .collect()
}

/// Per subject, what still matches it: the single task's verification (`verify_in`), one
/// statement per collection for the whole batch.
async fn verify_all<S: Session>(
    session: &mut S,
    plan: &Plan,
    subjects: &[Identities],
) -> Result<Vec<BTreeMap<String, u64>>, Failure> {
    let mut remaining = vec![BTreeMap::new(); subjects.len()];
    for collection in &plan.collections {
        let Some(unmasked) = what_to_verify(collection) else {
            continue;
        };
        let Some(owners) = Owners::new(collection, subjects) else {
            continue;
        };
        let statement =
            batch_queries::count_remaining_each(S::DIALECT, collection, &owners, unmasked);
        let rows = session
            .texts(&statement, owners.len())
            .await
            .during("verifying the erasure", Some(&collection.name))?;
        let Some(row) = rows.into_iter().next() else {
            continue;
        };
        for (subject, left) in remaining.iter_mut().zip(row) {
            // SUM over no rows is NULL: nothing left.
            let left = left.and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
            subject.insert(collection.name.clone(), left);
        }
    }
    Ok(remaining)
}
