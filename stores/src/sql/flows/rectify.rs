//! Rectification: the subject's rows of every collection declaring a changed field.

use std::collections::BTreeMap;

use lethe_common::messages::Identities;

use super::resolve::expand;
use crate::sql::plan::{Plan, Target};
use crate::sql::queries;
use crate::sql::session::{During, Failure, Session};
use crate::sql::statement::Matcher;

/// Sets the declared fields of `changes`; returns the rows changed per collection.
pub(crate) async fn rectify_in<S: Session>(
    session: &mut S,
    plan: &Plan,
    given: &Identities,
    tenant: Option<&str>,
    changes: &BTreeMap<String, serde_json::Value>,
) -> Result<BTreeMap<String, u64>, Failure> {
    let dialect = S::DIALECT;
    let identities = expand(session, plan, given, tenant).await?.all;
    let mut counts = BTreeMap::new();
    for collection in &plan.collections {
        let targets: Vec<(&Target, Option<String>)> = changes
            .iter()
            .filter_map(|(field, value)| {
                Some((
                    collection.rectify.get(field)?,
                    queries::change_text(value, dialect),
                ))
            })
            .collect();
        if targets.is_empty() {
            continue;
        }
        let Some(matcher) = Matcher::new(collection, &identities, tenant) else {
            counts.insert(collection.name.clone(), 0);
            continue;
        };
        let changed = session
            .execute(&queries::rectify_update(
                dialect, collection, &matcher, &targets,
            ))
            .await
            .during("rectifying rows", Some(&collection.name))?;
        counts.insert(collection.name.clone(), changed);
    }
    Ok(counts)
}
