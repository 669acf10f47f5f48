//! Verification: the store queried again after an erasure.

use std::collections::BTreeMap;

use lethe_common::datamap::Mask;
use lethe_common::messages::Identities;

use crate::sql::plan::{CollectionPlan, ErasePlan, Plan};
use crate::sql::queries;
use crate::sql::session::{During, Failure, Session};
use crate::sql::statement::Matcher;

/// What the verification counts in `collection`: `None` for nothing (retained, or masked
/// without masks); rows still matching (`Some(None)`, deleted collections); rows whose masked
/// columns do not hold what the masks write (`Some(Some(masks))`).
pub(crate) fn what_to_verify(collection: &CollectionPlan) -> Option<Option<&[(String, Mask)]>> {
    match &collection.erase {
        ErasePlan::Retain => None,
        ErasePlan::Mask(masks) if masks.is_empty() => None,
        ErasePlan::Delete => Some(None),
        ErasePlan::Mask(masks) => Some(Some(masks.as_slice())),
    }
}

/// Matches left per collection: rows of `delete` collections still matching, rows of masked
/// collections whose masked columns do not hold what the mask writes. Retained collections
/// legitimately keep their rows and are not counted. Only `tenant`'s rows count in a
/// tenant-scoped task: another tenant's subject of the same email is not this erasure's.
pub(crate) async fn verify_in<S: Session>(
    session: &mut S,
    plan: &Plan,
    identities: &Identities,
    tenant: Option<&str>,
) -> Result<BTreeMap<String, u64>, Failure> {
    let mut remaining = BTreeMap::new();
    for collection in &plan.collections {
        let Some(unmasked) = what_to_verify(collection) else {
            continue;
        };
        let Some(matcher) = Matcher::new(collection, identities, tenant) else {
            continue;
        };
        let statement = queries::count_remaining(S::DIALECT, collection, &matcher, unmasked);
        let left = session
            .count(&statement)
            .await
            .during("verifying the erasure", Some(&collection.name))?;
        remaining.insert(collection.name.clone(), left);
    }
    Ok(remaining)
}
