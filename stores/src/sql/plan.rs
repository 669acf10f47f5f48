//! The live-schema check and the plan it yields: per collection the quoted names, the match
//! columns and their types, the masks and flags, and the foreign-key order of deletions.

use std::collections::{BTreeMap, BTreeSet};

use lethe_common::datamap::{Collection, EraseStrategy, Mask, Matching, Normalization};
use lethe_common::ids::StoreName;

use super::dialect::{Dialect, REDACTED};
use super::schema::{ColumnInfo, Family, ForeignKey, LiveSchema, QualifiedTable, split_table};

/// Everything a task needs to know about the store, checked against the live schema once.
#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) collections: Vec<CollectionPlan>,
    /// Indices of the `delete` collections, children before parents.
    pub(crate) delete_order: Vec<usize>,
}

#[derive(Debug)]
pub(crate) struct CollectionPlan {
    /// As in the data map: the key of `TaskReport.counts`.
    pub(crate) name: String,
    /// Quoted.
    pub(crate) table: String,
    pub(crate) matches: Vec<MatchColumn>,
    /// (identity, quoted column).
    pub(crate) provides: Vec<(String, String)>,
    pub(crate) erase: ErasePlan,
    /// field -> target column.
    pub(crate) rectify: BTreeMap<String, Target>,
    pub(crate) restrict: Option<String>,
    pub(crate) object: Option<String>,
    /// Quoted: the column naming each row's tenant, if the collection has one.
    pub(crate) tenant: Option<String>,
    /// Every column of the table, in table order (what a collect task exports).
    pub(crate) columns: Vec<ColumnInfo>,
    /// The data map's normalisation (phone spellings need its default region).
    pub(crate) matching: Matching,
}

#[derive(Debug)]
pub(crate) struct MatchColumn {
    pub(crate) identity: String,
    pub(crate) column: String,
    pub(crate) family: Family,
    /// How the identity's values and the column's are brought to one spelling.
    pub(crate) normalization: Normalization,
}

#[derive(Debug)]
pub(crate) enum ErasePlan {
    Delete,
    Retain,
    Mask(Vec<(String, Mask)>),
}

#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) column: String,
    /// PostgreSQL: the column's type, to cast the text value to.
    pub(crate) type_name: String,
}

/// Identities whose values are free text (addresses, numbers as people write them, anything
/// normalised): they are only ever compared with text columns. Any other identity may live in
/// integer, UUID or text columns.
fn is_text_identity(matching: &Matching, identity: &str) -> bool {
    matching.rule(identity) != Normalization::None
        || ["email", "phone"]
            .iter()
            .any(|t| identity == *t || identity.ends_with(&format!("_{t}")))
}

fn family_name(family: Family) -> &'static str {
    match family {
        Family::Integer => "integer",
        Family::Text => "text",
        Family::Uuid => "uuid",
        Family::Boolean => "boolean",
        Family::Time => "date/time",
        Family::Other => "other",
    }
}

/// Checks `collections` against `live` and builds the plan, or lists every problem.
pub(crate) fn build_plan(
    dialect: Dialect,
    store: &StoreName,
    collections: &[Collection],
    matching: &Matching,
    live: &LiveSchema,
) -> Result<Plan, Vec<String>> {
    let is_text_identity = |identity: &str| is_text_identity(matching, identity);
    let mut problems = Vec::new();
    let find_table = |table: &str| -> (String, String, Option<&Vec<ColumnInfo>>) {
        let (schema, name) = split_table(table);
        let schema = schema.unwrap_or_else(|| live.default_schema.clone());
        let columns = live.tables.get(&(schema.clone(), name.clone()));
        (schema, name, columns)
    };
    let find_column = |columns: &'_ [ColumnInfo], name: &str| -> Option<ColumnInfo> {
        columns
            .iter()
            .find(|c| match dialect {
                Dialect::Postgres => c.name == name,
                Dialect::Mysql => c.name.eq_ignore_ascii_case(name),
            })
            .cloned()
    };

    // The types of the identities this store derives, for the types of its own match columns.
    let mut provided_here: BTreeMap<String, Family> = BTreeMap::new();
    for c in collections {
        if let (_, _, Some(columns)) = find_table(&c.table) {
            for (identity, column) in &c.provides {
                if let Some(info) = find_column(columns, column) {
                    provided_here.insert(identity.clone(), info.family);
                }
            }
        }
    }

    let mut plans = Vec::with_capacity(collections.len());
    let mut table_keys = Vec::with_capacity(collections.len());
    for (i, c) in collections.iter().enumerate() {
        let place = format!("stores.{store}.collections[{i}] ({})", c.table);
        let (schema, name, columns) = find_table(&c.table);
        let Some(columns) = columns else {
            problems.push(format!(
                "{place}: table `{name}` does not exist in {} `{schema}`",
                match dialect {
                    Dialect::Postgres => "schema",
                    Dialect::Mysql => "database",
                }
            ));
            continue;
        };
        let mut column = |name: &str, role: &str| -> Option<ColumnInfo> {
            let found = find_column(columns, name);
            if found.is_none() {
                problems.push(format!(
                    "{place}: column `{name}` ({role}) does not exist in table `{}`",
                    c.table
                ));
            }
            found
        };

        let mut matches = Vec::new();
        let mut provides = Vec::new();
        let mut masks = Vec::new();
        let mut rectify = BTreeMap::new();
        let mut type_problems = Vec::new();
        for (identity, name) in &c.matches {
            let Some(info) = column(name, &format!("match `{identity}`")) else {
                continue;
            };
            let allowed: &[Family] = if is_text_identity(identity) {
                &[Family::Text]
            } else {
                match provided_here.get(identity) {
                    Some(Family::Integer) => &[Family::Integer, Family::Text],
                    Some(Family::Uuid) => &[Family::Uuid, Family::Text],
                    Some(Family::Text) => &[Family::Text],
                    _ => &[Family::Integer, Family::Text, Family::Uuid],
                }
            };
            if !allowed.contains(&info.family) {
                let wanted: Vec<&str> = allowed.iter().map(|f| family_name(*f)).collect();
                let why = if is_text_identity(identity) {
                    format!("`{identity}` values are text")
                } else if let Some(family) = provided_here.get(identity) {
                    format!(
                        "this store derives `{identity}` from a {} column",
                        family_name(*family)
                    )
                } else {
                    format!("`{identity}` values are keys")
                };
                type_problems.push(format!(
                    "{place}: column `{name}` (match `{identity}`) is {}, but {why}: it must be {}",
                    info.type_name,
                    wanted.join(" or ")
                ));
                continue;
            }
            matches.push(MatchColumn {
                identity: identity.clone(),
                column: dialect.ident(&info.name),
                family: info.family,
                normalization: matching.rule(identity),
            });
        }
        for (identity, name) in &c.provides {
            let Some(info) = column(name, &format!("provides `{identity}`")) else {
                continue;
            };
            if !matches!(info.family, Family::Integer | Family::Text | Family::Uuid) {
                type_problems.push(format!(
                    "{place}: column `{name}` (provides `{identity}`) is {}; a derived identity \
                     must come from an integer, text or uuid column",
                    info.type_name
                ));
                continue;
            }
            provides.push((identity.clone(), dialect.ident(&info.name)));
        }
        if let EraseStrategy::Mask(columns) = &c.erase {
            for (name, mask) in columns {
                let role = format!("mask {}", mask_name(*mask));
                let Some(info) = column(name, &role) else {
                    continue;
                };
                if let Some(problem) = mask_problem(&info, *mask) {
                    type_problems.push(format!("{place}: column `{name}` ({role}) {problem}"));
                    continue;
                }
                masks.push((dialect.ident(&info.name), *mask));
            }
        }
        for (field, name) in &c.rectify {
            if let Some(info) = column(name, &format!("rectify `{field}`")) {
                rectify.insert(
                    field.clone(),
                    Target {
                        column: dialect.ident(&info.name),
                        type_name: info.type_name.clone(),
                    },
                );
            }
        }
        let mut flag_column = |flag: &Option<lethe_common::datamap::FlagColumn>, what: &str| {
            let flag = flag.as_ref()?;
            let info = column(&flag.column, what)?;
            if info.family != Family::Boolean {
                type_problems.push(format!(
                    "{place}: column `{}` ({what}) is {}; a flag must be boolean",
                    flag.column, info.type_name
                ));
                return None;
            }
            Some(dialect.ident(&info.name))
        };
        let restrict = flag_column(&c.restrict, "restrict");
        let object = flag_column(&c.object, "object");
        let tenant = c.tenant.as_ref().and_then(|name| {
            let info = column(name, "tenant")?;
            if info.family != Family::Text {
                type_problems.push(format!(
                    "{place}: column `{name}` (tenant) is {}; it holds tenant names, so it must be text",
                    info.type_name
                ));
                return None;
            }
            Some(dialect.ident(&info.name))
        });
        if let Some(log) = &c.log
            && let Some(info) = column(&log.timestamp, "log timestamp")
            && info.family != Family::Time
        {
            type_problems.push(format!(
                "{place}: column `{}` (log timestamp) is {}; it must be a date or timestamp",
                log.timestamp, info.type_name
            ));
        }
        problems.extend(type_problems);
        let erase = match &c.erase {
            EraseStrategy::Delete => ErasePlan::Delete,
            EraseStrategy::Retain => ErasePlan::Retain,
            EraseStrategy::Mask(_) => ErasePlan::Mask(masks),
        };
        table_keys.push((schema, name));
        plans.push(CollectionPlan {
            name: c.table.clone(),
            table: dialect.table(&c.table),
            matches,
            provides,
            erase,
            rectify,
            restrict,
            object,
            tenant,
            columns: columns.clone(),
            matching: matching.clone(),
        });
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let delete_order = delete_order(&plans, &table_keys, &live.foreign_keys);
    Ok(Plan {
        collections: plans,
        delete_order,
    })
}

fn mask_name(mask: Mask) -> &'static str {
    match mask {
        Mask::Null => "null",
        Mask::Redact => "redact",
        Mask::Hash => "hash",
        Mask::Random => "random",
    }
}

/// Why `column` cannot hold what `mask` writes, if it cannot.
fn mask_problem(column: &ColumnInfo, mask: Mask) -> Option<String> {
    let needed = match mask {
        Mask::Null => {
            return (!column.nullable)
                .then(|| "is NOT NULL; the null mask needs a nullable column".to_owned());
        }
        Mask::Redact => REDACTED.len() as i64,
        Mask::Hash => 64,
        Mask::Random => 32,
    };
    if column.family != Family::Text {
        return Some(format!(
            "is {}; the {} mask writes text",
            column.type_name,
            mask_name(mask)
        ));
    }
    match column.max_chars {
        Some(max) if max < needed => Some(format!(
            "is {}; the {} mask writes {needed} characters",
            column.type_name,
            mask_name(mask)
        )),
        _ => None,
    }
}

/// The `delete` collections, children before parents: a topological order of the foreign keys
/// among them, data-map order where the keys leave a choice (and for any cycle).
fn delete_order(
    plans: &[CollectionPlan],
    tables: &[QualifiedTable],
    foreign_keys: &[ForeignKey],
) -> Vec<usize> {
    let deleted: Vec<usize> = (0..plans.len())
        .filter(|&i| matches!(plans[i].erase, ErasePlan::Delete))
        .collect();
    // must_wait[p] = children of p that must be deleted before p.
    let mut waits_for: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
    for &parent in &deleted {
        for &child in &deleted {
            if child != parent
                && tables[child] != tables[parent]
                && foreign_keys
                    .iter()
                    .any(|(c, p)| *c == tables[child] && *p == tables[parent])
            {
                waits_for.entry(parent).or_default().insert(child);
            }
        }
    }
    let mut order = Vec::with_capacity(deleted.len());
    let mut placed = BTreeSet::new();
    while order.len() < deleted.len() {
        let next = deleted.iter().copied().find(|i| {
            !placed.contains(i)
                && waits_for
                    .get(i)
                    .is_none_or(|children| children.iter().all(|c| placed.contains(c)))
        });
        // A cycle of foreign keys: take the first remaining in data-map order.
        let next = next.or_else(|| deleted.iter().copied().find(|i| !placed.contains(i)));
        let Some(next) = next else { break };
        placed.insert(next);
        order.push(next);
    }
    order
}
