//! A task's identity values as the connectors use them: which are usable, every rendering of a
//! key or prefix template, and the bound on how many one task may name.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use lethe_common::datamap::{Matching, TENANT_PLACEHOLDER, placeholders, render};
use lethe_common::ids::StoreName;
use lethe_common::messages::Identities;
use lethe_common::worker::TaskError;

/// Most keys, prefixes or identity values one task may name in one store: a bound on the work
/// a malformed task can ask for.
pub(crate) const MAX_VALUES: usize = 10_000;

/// The values of one identity worth looking for: non-blank, each once, in order. A blank value
/// would match every row whose column is empty.
pub(crate) fn usable_values(values: &[String]) -> Vec<&str> {
    let mut seen = BTreeSet::new();
    values
        .iter()
        .map(String::as_str)
        .filter(|v| !v.trim().is_empty())
        .filter(|v| seen.insert(*v))
        .collect()
}

/// The task's values with, for every normalised identity, each value's normalised spelling
/// beside the value as given: a key or prefix template is tried with both, since a key may have
/// been written with either (`last_seen:Ada@Example.com` or `last_seen:ada@example.com`).
pub(crate) fn with_spellings(identities: &Identities, matching: &Matching) -> Identities {
    identities
        .iter()
        .map(|(name, values)| (name.clone(), matching.spellings(name, values)))
        .collect()
}

/// The task's values with the tenant's name as the `{tenant}` placeholder's one value, for
/// rendering key and prefix templates of a tenant-scoped task (unchanged without a tenant). A
/// `tenant` entry of the task's own is replaced: the name is the task's, never an identity.
pub(crate) fn with_tenant<'a>(
    identities: &'a Identities,
    tenant: Option<&str>,
) -> Cow<'a, Identities> {
    match tenant {
        None => Cow::Borrowed(identities),
        Some(tenant) => {
            let mut scoped = identities.clone();
            scoped.insert(TENANT_PLACEHOLDER.to_owned(), vec![tenant.to_owned()]);
            Cow::Owned(scoped)
        }
    }
}

/// Every rendering of `template` with the task's values: one per combination of the values of
/// its placeholders. Empty if a placeholder has no usable value.
pub(crate) fn render_all(template: &str, identities: &Identities) -> Vec<String> {
    let Ok(names) = placeholders(template) else {
        return Vec::new();
    };
    let mut rendered: Vec<String> = combinations(&names, identities)
        .iter()
        .filter_map(|values| render(template, values))
        .collect();
    rendered.sort();
    rendered.dedup();
    rendered
}

/// Every combination of the usable values of the identities `names` (one value each). Empty if
/// one of them has no usable value; a single empty combination when `names` is empty. Stops
/// growing past [`MAX_VALUES`] (callers refuse that many).
pub(crate) fn combinations<'a>(
    names: &'a [String],
    identities: &'a Identities,
) -> Vec<BTreeMap<&'a str, &'a str>> {
    let mut names: Vec<&str> = names.iter().map(String::as_str).collect();
    names.sort_unstable();
    names.dedup();
    let mut lists: Vec<(&str, Vec<&str>)> = Vec::with_capacity(names.len());
    for name in names {
        let values = identities
            .get(name)
            .map(|v| usable_values(v))
            .unwrap_or_default();
        if values.is_empty() {
            return Vec::new();
        }
        lists.push((name, values));
    }
    let mut combinations: Vec<BTreeMap<&str, &str>> = vec![BTreeMap::new()];
    for (name, values) in &lists {
        let mut next = Vec::with_capacity(combinations.len() * values.len());
        for combination in &combinations {
            for value in values {
                let mut extended = combination.clone();
                extended.insert(*name, *value);
                next.push(extended);
            }
        }
        combinations = next;
        if combinations.len() > MAX_VALUES {
            // Refused by the caller, which sees more combinations than it accepts.
            break;
        }
    }
    combinations
}

/// The report of an erasure that deleted or masked `counts`, or, when the query after it
/// found records left (`remaining`, per collection), the transient failure that runs it again.
pub(crate) fn erased(
    store: &StoreName,
    counts: std::collections::BTreeMap<String, u64>,
    remaining: &std::collections::BTreeMap<String, u64>,
) -> Result<lethe_common::messages::TaskReport, TaskError> {
    let total: u64 = remaining.values().sum();
    if total > 0 {
        let names: Vec<String> = remaining
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(c, n)| format!("{c}: {n}"))
            .collect();
        return Err(still_holds(store, total, &names));
    }
    Ok(lethe_common::messages::TaskReport {
        counts,
        remaining: Some(0),
        ..Default::default()
    })
}

/// Per template of the data map, its renderings for one subject (keys, prefixes).
pub(crate) type Rendered = Vec<(String, Vec<String>)>;

/// The error of a task that names more values than [`MAX_VALUES`].
pub(crate) fn too_many(store: &StoreName, what: &str) -> TaskError {
    TaskError::Permanent {
        code: "too_many_identities",
        reason: format!(
            "store `{store}`: the task names more than {MAX_VALUES} {what}; split the request"
        ),
    }
}

/// The error of an erasure after which the store still holds matches.
pub(crate) fn still_holds(store: &StoreName, remaining: u64, collections: &[String]) -> TaskError {
    TaskError::Transient(anyhow::anyhow!(
        "store `{store}` still holds {remaining} matching record(s) after the erasure (in {}); \
         the task will run again",
        collections.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(pairs: &[(&str, &[&str])]) -> Identities {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.iter().map(|s| (*s).to_owned()).collect()))
            .collect()
    }

    #[test]
    fn templates_render_for_every_combination_of_values() {
        let identities = ids(&[("user_id", &["1", "2", "1"]), ("email", &["a@x", " "])]);
        assert_eq!(
            render_all("s:{user_id}", &identities),
            vec!["s:1".to_owned(), "s:2".to_owned()]
        );
        assert_eq!(
            render_all("{email}/{user_id}/", &identities),
            vec!["a@x/1/".to_owned(), "a@x/2/".to_owned()]
        );
        assert!(render_all("p:{phone}", &identities).is_empty());
    }

    #[test]
    fn templates_are_tried_with_the_value_as_given_and_normalised() {
        let identities = ids(&[("email", &["Ada@Example.com"]), ("user_id", &["7"])]);
        let spelled = with_spellings(&identities, &Matching::default());
        assert_eq!(
            render_all("last_seen:{email}", &spelled),
            vec![
                "last_seen:Ada@Example.com".to_owned(),
                "last_seen:ada@example.com".to_owned()
            ]
        );
        assert_eq!(render_all("s:{user_id}", &spelled), vec!["s:7".to_owned()]);
    }

    #[test]
    fn blank_values_are_never_used() {
        let values = vec![
            String::new(),
            "  ".to_owned(),
            "7".to_owned(),
            "7".to_owned(),
        ];
        assert_eq!(usable_values(&values), vec!["7"]);
    }
}
