//! Erasure: masks first, then deletes children before parents.

use std::collections::BTreeMap;

use lethe_common::datamap::Mask;
use lethe_common::messages::Identities;
use lethe_common::privacy::IdentityHasher;

use super::resolve::expand;
use crate::sql::plan::{CollectionPlan, ErasePlan, Plan};
use crate::sql::queries;
use crate::sql::session::{During, Failure, Session};
use crate::sql::statement::Matcher;

/// Old-value -> hash pairs per statement when hashing a column.
const HASH_PAIRS_PER_STATEMENT: usize = 500;

/// Masks, then deletes children first; returns the expanded identities (for the
/// verification) and the records changed per collection.
pub(crate) async fn erase_in<S: Session>(
    session: &mut S,
    plan: &Plan,
    given: &Identities,
    tenant: Option<&str>,
    hasher: &IdentityHasher,
) -> Result<(Identities, BTreeMap<String, u64>), Failure> {
    let identities = expand(session, plan, given, tenant).await?.all;
    let dialect = S::DIALECT;
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for collection in &plan.collections {
        counts.insert(collection.name.clone(), 0);
    }

    // Masks first: deleting a parent may cut (SET NULL) or take (CASCADE) the link that finds
    // a masked row.
    for collection in &plan.collections {
        let ErasePlan::Mask(masks) = &collection.erase else {
            continue;
        };
        let Some(matcher) = Matcher::new(collection, &identities, tenant) else {
            continue;
        };
        let name = Some(collection.name.as_str());

        // Lock the rows to mask; their number is the count (a concurrent task waiting on the
        // same rows then finds them masked and counts none).
        let rows = session
            .rows(&queries::lock_unmasked(
                dialect, collection, &matcher, masks,
            ))
            .await
            .during("locking rows to mask", name)?;
        if rows == 0 {
            continue;
        }

        mask_rows(session, collection, &matcher, masks, hasher).await?;
        counts.insert(collection.name.clone(), rows);
    }

    for &index in &plan.delete_order {
        let collection = &plan.collections[index];
        let Some(matcher) = Matcher::new(collection, &identities, tenant) else {
            continue;
        };
        let deleted = session
            .execute(&queries::delete_rows(dialect, collection, &matcher))
            .await
            .during("deleting rows", Some(&collection.name))?;
        counts.insert(collection.name.clone(), deleted);
    }
    Ok((identities, counts))
}

/// Masks the rows `matcher` finds: each `hash` column by [`hash_column`], the other masks in
/// one statement.
pub(crate) async fn mask_rows<S: Session>(
    session: &mut S,
    collection: &CollectionPlan,
    matcher: &Matcher,
    masks: &[(String, Mask)],
    hasher: &IdentityHasher,
) -> Result<(), Failure> {
    for (column, _) in masks.iter().filter(|(_, m)| *m == Mask::Hash) {
        hash_column(session, collection, matcher, column, hasher).await?;
    }
    let others: Vec<(String, Mask)> = masks
        .iter()
        .filter(|(_, m)| *m != Mask::Hash)
        .cloned()
        .collect();
    if !others.is_empty() {
        session
            .execute(&queries::mask_update(
                S::DIALECT,
                collection,
                matcher,
                &others,
            ))
            .await
            .during("masking rows", Some(&collection.name))?;
    }
    Ok(())
}

/// Replaces each distinct old value of `column` among the subject's rows by its keyed hash:
/// the distinct values are read, hashed here (the key never reaches the database), and written
/// back by a join with the (old, new) pairs, a few hundred pairs per statement.
pub(crate) async fn hash_column<S: Session>(
    session: &mut S,
    collection: &CollectionPlan,
    matcher: &Matcher,
    column: &str,
    hasher: &IdentityHasher,
) -> Result<(), Failure> {
    let dialect = S::DIALECT;
    let name = Some(collection.name.as_str());
    let old: Vec<String> = session
        .texts(
            &queries::unhashed_values(dialect, collection, matcher, column),
            1,
        )
        .await
        .during("reading values to hash", name)?
        .into_iter()
        .filter_map(|mut row| row.pop().flatten())
        .collect();
    for chunk in old.chunks(HASH_PAIRS_PER_STATEMENT) {
        let new: Vec<String> = chunk.iter().map(|v| hasher.digest("mask", v)).collect();
        session
            .execute(&queries::hash_update(
                dialect, collection, matcher, column, chunk, new,
            ))
            .await
            .during("hashing values", name)?;
    }
    Ok(())
}
