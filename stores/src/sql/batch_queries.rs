//! The statements of a batch of subjects: one statement per collection and step over every
//! subject of the batch (`= ANY` of the union of their values), each row tagged with the
//! subject it belongs to. The per-subject conditions are the single-task ones
//! ([`Sql::push_match`]), so a row belongs to a subject exactly when the single task would have
//! found it.

use std::collections::BTreeSet;

use lethe_common::datamap::Mask;
use lethe_common::messages::Identities;

use super::dialect::Dialect;
use super::plan::CollectionPlan;
use super::queries::all_masked;
use super::statement::{KeyValues, MatchPart, Matcher, Sql, Statement};

/// How the subjects of a batch find one collection's rows: each subject's own matcher and the
/// union of them all.
pub(crate) struct Owners {
    /// Per subject, in batch order; `None` where the subject has no usable value here.
    each: Vec<Option<Matcher>>,
    /// Every value of every subject, per match column.
    pub(crate) union: Matcher,
}

impl Owners {
    /// `None` when no subject of the batch has a usable value for the collection.
    pub(crate) fn new(collection: &CollectionPlan, subjects: &[Identities]) -> Option<Self> {
        let each: Vec<Option<Matcher>> = subjects
            .iter()
            .map(|identities| Matcher::new(collection, identities, None))
            .collect();
        let mut parts: Vec<MatchPart> = Vec::new();
        for part in each.iter().flatten().flat_map(|m| m.parts.iter()) {
            match parts
                .iter_mut()
                .find(|p| p.column == part.column && p.normalization == part.normalization)
            {
                Some(existing) => existing.values = union(&existing.values, &part.values),
                None => parts.push(part.clone()),
            }
        }
        if parts.is_empty() {
            return None;
        }
        Some(Self {
            each,
            union: Matcher {
                parts,
                tenant: None,
            },
        })
    }

    /// How many subjects the batch has.
    pub(crate) fn len(&self) -> usize {
        self.each.len()
    }

    /// `CAST(CASE WHEN <subject 0's match> THEN 0 WHEN ... END AS text)`: the first subject,
    /// in batch order, a row belongs to (the one that erasing them one after the other would
    /// have counted it for).
    fn push_owner(&self, sql: &mut Sql) {
        let text = text_type(sql.dialect());
        sql.push("CAST(CASE");
        for (index, matcher) in self.each.iter().enumerate() {
            let Some(matcher) = matcher else { continue };
            sql.push(" WHEN ");
            sql.push_match(matcher, None);
            sql.push(&format!(" THEN {index}"));
        }
        sql.push(" END AS ").push(text).push(")");
    }

    /// `CAST(SUM(CASE WHEN <subject i's match> THEN 1 ELSE 0 END) AS text)` for every subject:
    /// how many of the rows found belong to each (a row may belong to several).
    fn push_each_count(&self, sql: &mut Sql) {
        let text = text_type(sql.dialect());
        for (index, matcher) in self.each.iter().enumerate() {
            if index > 0 {
                sql.push(", ");
            }
            let Some(matcher) = matcher else {
                sql.push("'0'");
                continue;
            };
            sql.push("CAST(SUM(CASE WHEN ");
            sql.push_match(matcher, None);
            sql.push(" THEN 1 ELSE 0 END) AS ").push(text).push(")");
        }
    }
}

/// The type a number is cast to, to be read as text.
fn text_type(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Postgres => "text",
        Dialect::Mysql => "CHAR",
    }
}

/// The subject (its index in the batch) a row tagged by [`Owners`] belongs to.
pub(crate) fn owner_of(tag: Option<&String>) -> Option<usize> {
    tag.and_then(|t| t.parse().ok())
}

/// `SELECT <owner>, <identity columns as text> FROM t WHERE <union>`: what each row yields,
/// and for which subject.
pub(crate) fn provided_values_owned(
    dialect: Dialect,
    collection: &CollectionPlan,
    owners: &Owners,
    columns: &[(&str, &str)],
) -> Statement {
    let mut sql = Sql::new(dialect);
    sql.push("SELECT ");
    owners.push_owner(&mut sql);
    for (_, column) in columns {
        sql.push(", ").push(&dialect.as_text(column));
    }
    sql.push(" FROM ").push(&collection.table).push(" WHERE ");
    sql.push_match(&owners.union, None);
    sql.finish()
}

/// Locks the batch's rows of a masked collection that are not masked yet, each tagged with
/// its subject: their number per subject is what the mask changes for it.
pub(crate) fn lock_unmasked_owned(
    dialect: Dialect,
    collection: &CollectionPlan,
    owners: &Owners,
    masks: &[(String, Mask)],
) -> Statement {
    let mut sql = Sql::new(dialect);
    sql.push("SELECT ");
    owners.push_owner(&mut sql);
    sql.push(" FROM ").push(&collection.table).push(" WHERE ");
    sql.push_match(&owners.union, None);
    sql.push(" AND NOT ")
        .push(&all_masked(dialect, masks))
        .push(" FOR UPDATE");
    sql.finish()
}

/// `DELETE FROM t WHERE <union> RETURNING <owner>`: the rows deleted, each tagged with its
/// subject (MariaDB has `DELETE ... RETURNING` since 10.0).
pub(crate) fn delete_rows_owned(
    dialect: Dialect,
    collection: &CollectionPlan,
    owners: &Owners,
) -> Statement {
    let mut sql = Sql::new(dialect);
    sql.push("DELETE FROM ")
        .push(&collection.table)
        .push(" WHERE ");
    sql.push_match(&owners.union, None);
    sql.push(" RETURNING ");
    owners.push_owner(&mut sql);
    sql.finish()
}

/// One row: per subject, how many of its rows still match or, with `unmasked`, are not
/// masked.
pub(crate) fn count_remaining_each(
    dialect: Dialect,
    collection: &CollectionPlan,
    owners: &Owners,
    unmasked: Option<&[(String, Mask)]>,
) -> Statement {
    let mut sql = Sql::new(dialect);
    sql.push("SELECT ");
    owners.push_each_count(&mut sql);
    sql.push(" FROM ").push(&collection.table).push(" WHERE ");
    sql.push_match(&owners.union, None);
    if let Some(masks) = unmasked {
        sql.push(" AND NOT ").push(&all_masked(dialect, masks));
    }
    sql.finish()
}

/// Every value of `a`, then those of `b` not in `a`.
fn union(a: &KeyValues, b: &KeyValues) -> KeyValues {
    fn merged<T: Clone + Ord>(a: &[T], b: &[T]) -> Vec<T> {
        let mut seen: BTreeSet<&T> = a.iter().collect();
        let mut all = a.to_vec();
        all.extend(b.iter().filter(|v| seen.insert(v)).cloned());
        all
    }
    match (a, b) {
        (KeyValues::Ints(a), KeyValues::Ints(b)) => KeyValues::Ints(merged(a, b)),
        (KeyValues::Texts(a), KeyValues::Texts(b)) => KeyValues::Texts(merged(a, b)),
        (KeyValues::Uuids(a), KeyValues::Uuids(b)) => KeyValues::Uuids(merged(a, b)),
        // One column has one family, so its values have one shape; keep the first otherwise.
        (a, _) => a.clone(),
    }
}
