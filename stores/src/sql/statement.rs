//! Statements built with bound values: the builder that numbers placeholders, and how a task's
//! identity values are shaped for the columns they are compared with.

use lethe_common::datamap::{Matching, Normalization};
use lethe_common::messages::Identities;

use super::dialect::Dialect;
use super::plan::CollectionPlan;
use super::schema::Family;
use crate::values::usable_values;

/// A value bound to a statement parameter.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Bind {
    Bool(bool),
    Int(i64),
    Text(Option<String>),
    /// A PostgreSQL `bigint[]`.
    Ints(Vec<i64>),
    /// A PostgreSQL `text[]`.
    Texts(Vec<String>),
}

/// SQL text and its bound values.
#[derive(Debug, Clone)]
pub(crate) struct Statement {
    pub(crate) sql: String,
    pub(crate) binds: Vec<Bind>,
}

/// Builds one statement, numbering PostgreSQL's placeholders.
pub(crate) struct Sql {
    dialect: Dialect,
    sql: String,
    binds: Vec<Bind>,
}

impl Sql {
    pub(crate) fn new(dialect: Dialect) -> Self {
        Self {
            dialect,
            sql: String::with_capacity(256),
            binds: Vec::new(),
        }
    }

    /// The dialect the statement is written in.
    pub(crate) fn dialect(&self) -> Dialect {
        self.dialect
    }

    pub(crate) fn push(&mut self, text: &str) -> &mut Self {
        self.sql.push_str(text);
        self
    }

    /// Binds `value` and returns its placeholder, to be placed by the caller.
    pub(crate) fn param(&mut self, value: Bind) -> String {
        self.binds.push(value);
        match self.dialect {
            Dialect::Postgres => format!("${}", self.binds.len()),
            Dialect::Mysql => "?".to_owned(),
        }
    }

    /// Binds `value` here.
    pub(crate) fn bind(&mut self, value: Bind) -> &mut Self {
        let placeholder = self.param(value);
        self.sql.push_str(&placeholder);
        self
    }

    /// `column = ANY($n)` (one array parameter) or `column IN (?, ?, ...)`.
    pub(crate) fn push_in(&mut self, column: &str, values: &KeyValues) {
        self.push(column);
        match (self.dialect, values) {
            (Dialect::Postgres, KeyValues::Ints(v)) => {
                self.push(" = ANY(").bind(Bind::Ints(v.clone())).push(")");
            }
            (Dialect::Postgres, KeyValues::Texts(v)) => {
                self.push(" = ANY(").bind(Bind::Texts(v.clone())).push(")");
            }
            (Dialect::Postgres, KeyValues::Uuids(v)) => {
                self.push(" = ANY(CAST(")
                    .bind(Bind::Texts(v.clone()))
                    .push(" AS uuid[]))");
            }
            (Dialect::Mysql, KeyValues::Ints(v)) => {
                self.push(" IN (");
                for (i, value) in v.iter().enumerate() {
                    if i > 0 {
                        self.push(", ");
                    }
                    self.bind(Bind::Int(*value));
                }
                self.push(")");
            }
            (Dialect::Mysql, KeyValues::Texts(v) | KeyValues::Uuids(v)) => {
                self.push(" IN (");
                for (i, value) in v.iter().enumerate() {
                    if i > 0 {
                        self.push(", ");
                    }
                    self.bind(Bind::Text(Some(value.clone())));
                }
                self.push(")");
            }
        }
    }

    /// `(c1 IN (...) OR c2 IN (...))`, columns qualified with `alias` if given and brought to
    /// the spelling their identity is normalised to (`lower(email)`, the phone's digits); in a
    /// tenant-scoped task on a collection with a tenant column, `AND tenant_column = $n` too
    /// (the tenant's name bound like every value).
    pub(crate) fn push_match(&mut self, matcher: &Matcher, alias: Option<&str>) {
        let qualified = |column: &str| match alias {
            Some(alias) => format!("{alias}.{column}"),
            None => column.to_owned(),
        };
        self.push("(");
        for (i, part) in matcher.parts.iter().enumerate() {
            if i > 0 {
                self.push(" OR ");
            }
            let expression = self
                .dialect
                .normalized(&qualified(&part.column), part.normalization);
            self.push_in(&expression, &part.values);
        }
        self.push(")");
        if let Some(tenant) = &matcher.tenant {
            self.push(" AND ")
                .push(&qualified(&tenant.column))
                .push(" = ")
                .bind(Bind::Text(Some(tenant.name.clone())));
        }
    }

    pub(crate) fn finish(self) -> Statement {
        Statement {
            sql: self.sql,
            binds: self.binds,
        }
    }
}

/// The values of one identity, shaped for the column they are compared with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeyValues {
    Ints(Vec<i64>),
    Texts(Vec<String>),
    Uuids(Vec<String>),
}

impl KeyValues {
    pub(crate) fn len(&self) -> usize {
        match self {
            KeyValues::Ints(v) => v.len(),
            KeyValues::Texts(v) | KeyValues::Uuids(v) => v.len(),
        }
    }

    /// The values that can equal a value of a column of `family`. An integer column only
    /// meets values in canonical decimal form ("7", not "007" or "+7"), so a text identity can
    /// never be converted into somebody else's id.
    pub(crate) fn for_column(family: Family, values: &[String]) -> Option<Self> {
        let values = usable_values(values);
        let shaped = match family {
            Family::Integer => KeyValues::Ints(
                values
                    .iter()
                    .filter_map(|v| v.parse::<i64>().ok().filter(|n| n.to_string() == *v))
                    .collect(),
            ),
            Family::Uuid => KeyValues::Uuids(
                values
                    .iter()
                    .filter_map(|v| uuid::Uuid::parse_str(v).ok())
                    .map(|u| u.hyphenated().to_string())
                    .collect(),
            ),
            _ => KeyValues::Texts(values.iter().map(|v| (*v).to_owned()).collect()),
        };
        (shaped.len() > 0).then_some(shaped)
    }
}

/// One match column of a [`Matcher`]: the column, how its values are normalised before the
/// comparison, and the values compared with.
#[derive(Debug, Clone)]
pub(crate) struct MatchPart {
    /// Quoted.
    pub(crate) column: String,
    pub(crate) normalization: Normalization,
    pub(crate) values: KeyValues,
}

/// The tenant condition of a [`Matcher`]: the collection's tenant column must hold the filing
/// tenant's name.
#[derive(Debug, Clone)]
pub(crate) struct TenantCondition {
    /// Quoted.
    pub(crate) column: String,
    pub(crate) name: String,
}

/// How a task's values find a collection's rows: per match column, the values to compare, and
/// in a tenant-scoped task the tenant the rows must belong to.
#[derive(Debug, Clone)]
pub(crate) struct Matcher {
    pub(crate) parts: Vec<MatchPart>,
    pub(crate) tenant: Option<TenantCondition>,
}

impl Matcher {
    /// `None` when the task has no usable value for any identity the collection matches on:
    /// then the collection holds nothing of the subject as far as this task can tell. `tenant`
    /// is the task's tenant in a tenant-scoped deployment (`None` in a global one); it
    /// confines collections that have a tenant column, while the others are found by values
    /// that tenant-scoped rows provided (the data map check makes sure of it).
    pub(crate) fn new(
        collection: &CollectionPlan,
        identities: &Identities,
        tenant: Option<&str>,
    ) -> Option<Self> {
        let parts: Vec<MatchPart> = collection
            .matches
            .iter()
            .filter_map(|m| {
                let values = identities.get(&m.identity)?;
                let values = match m.normalization {
                    Normalization::None => KeyValues::for_column(m.family, values)?,
                    normalization => {
                        normalized_values(&collection.matching, normalization, values)?
                    }
                };
                Some(MatchPart {
                    column: m.column.clone(),
                    normalization: m.normalization,
                    values,
                })
            })
            .collect();
        let tenant = collection
            .tenant
            .as_ref()
            .zip(tenant)
            .map(|(column, name)| TenantCondition {
                column: column.clone(),
                name: name.to_owned(),
            });
        (!parts.is_empty()).then_some(Self { parts, tenant })
    }
}

/// The values a normalised text column is compared with, in the spelling the column's
/// expression (`Dialect::normalized`) brings stored values to: emails trimmed and lowercased;
/// for phones every separator-free spelling of each number (`Matching::phone_candidates`).
fn normalized_values(
    matching: &Matching,
    normalization: Normalization,
    values: &[String],
) -> Option<KeyValues> {
    let values = usable_values(values);
    let mut shaped: Vec<String> = match normalization {
        Normalization::Email => values.iter().map(|v| v.trim().to_lowercase()).collect(),
        Normalization::Phone => matching.phone_candidates(&values),
        Normalization::None => values.iter().map(|v| (*v).to_owned()).collect(),
    };
    shaped.sort();
    shaped.dedup();
    shaped.retain(|v| !v.is_empty());
    (!shaped.is_empty()).then_some(KeyValues::Texts(shaped))
}
