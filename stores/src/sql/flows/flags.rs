//! Restriction and objection flags: set or lifted on the subject's rows.

use std::collections::BTreeMap;

use lethe_common::messages::Identities;

use super::resolve::expand;
use crate::connector::Flag;
use crate::sql::plan::Plan;
use crate::sql::queries;
use crate::sql::session::{During, Failure, Session};
use crate::sql::statement::Matcher;

/// Sets `flag` to `value`; returns the rows whose flag changed per collection.
pub(crate) async fn flag_in<S: Session>(
    session: &mut S,
    plan: &Plan,
    given: &Identities,
    tenant: Option<&str>,
    flag: Flag,
    value: bool,
) -> Result<BTreeMap<String, u64>, Failure> {
    let identities = expand(session, plan, given, tenant).await?.all;
    let mut counts = BTreeMap::new();
    for collection in &plan.collections {
        let column = match flag {
            Flag::Restrict => &collection.restrict,
            Flag::Object => &collection.object,
        };
        let Some(column) = column else { continue };
        let Some(matcher) = Matcher::new(collection, &identities, tenant) else {
            counts.insert(collection.name.clone(), 0);
            continue;
        };
        let changed = session
            .execute(&queries::flag_update(
                S::DIALECT,
                collection,
                &matcher,
                column,
                value,
            ))
            .await
            .during("setting the flag", Some(&collection.name))?;
        counts.insert(collection.name.clone(), changed);
    }
    Ok(counts)
}
