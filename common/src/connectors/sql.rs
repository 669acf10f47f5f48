//! What the PostgreSQL and MariaDB connectors share: the live-schema check, the plan it yields
//! (quoted names, key types, the foreign-key order of deletions), the statements of each task
//! built for either dialect with bound values, and the task flows themselves. The backends
//! (`postgres.rs`, `mysql.rs`) only open transactions, run statements and read the catalogs.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;

use futures::StreamExt as _;
use tokio::sync::OnceCell;

use super::{CollectSink, Flag, SchemaCheck, still_holds, too_many, usable_values};
use crate::datamap::{Collection, EraseStrategy, Mask};
use crate::ids::StoreName;
use crate::messages::{Identities, TaskReport};
use crate::privacy::IdentityHasher;
use crate::worker::TaskError;

/// What a `redact` mask writes.
const REDACTED: &str = "[redacted]";
/// A `hash` mask writes 64 lowercase hex digits (HMAC-SHA256); a `random` mask 32.
const HASH_PATTERN: &str = "^[0-9a-f]{64}$";
const RANDOM_PATTERN: &str = "^[0-9a-f]{32}$";
/// Old-value -> hash pairs per statement when hashing a column.
const HASH_PAIRS_PER_STATEMENT: usize = 500;

// ---------------------------------------------------------------------------------------------
// Dialects and statements
// ---------------------------------------------------------------------------------------------

/// The SQL spoken by a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Postgres,
    Mysql,
}

impl Dialect {
    /// A quoted identifier. Names come from the data map, where they are checked to be plain
    /// identifiers; quoting keeps reserved words usable and the text inert.
    pub(crate) fn ident(self, name: &str) -> String {
        match self {
            Dialect::Postgres => format!("\"{}\"", name.replace('"', "\"\"")),
            Dialect::Mysql => format!("`{}`", name.replace('`', "``")),
        }
    }

    /// A quoted, possibly schema-qualified table name.
    pub(crate) fn table(self, name: &str) -> String {
        name.split('.')
            .map(|part| self.ident(part))
            .collect::<Vec<_>>()
            .join(".")
    }

    fn as_text(self, expression: &str) -> String {
        match self {
            Dialect::Postgres => format!("CAST({expression} AS text)"),
            Dialect::Mysql => format!("CAST({expression} AS CHAR)"),
        }
    }

    fn matches_pattern(self, expression: &str, pattern: &str) -> String {
        match self {
            Dialect::Postgres => format!("{expression} ~ '{pattern}'"),
            Dialect::Mysql => format!("{expression} REGEXP '{pattern}'"),
        }
    }

    fn random_text(self) -> &'static str {
        match self {
            Dialect::Postgres => "md5(random()::text)",
            Dialect::Mysql => "MD5(RAND())",
        }
    }

    fn distinct_from(self, left: &str, right: &str) -> String {
        match self {
            Dialect::Postgres => format!("{left} IS DISTINCT FROM {right}"),
            Dialect::Mysql => format!("NOT ({left} <=> {right})"),
        }
    }

    /// The "already masked" test of one column: what the mask writes (NULL counts as masked
    /// for every mask: there is nothing left to hide).
    fn masked(self, column: &str, mask: Mask) -> String {
        match mask {
            Mask::Null => format!("{column} IS NULL"),
            Mask::Redact => format!("({column} IS NULL OR {column} = '{REDACTED}')"),
            Mask::Hash => format!(
                "({column} IS NULL OR {})",
                self.matches_pattern(column, HASH_PATTERN)
            ),
            Mask::Random => format!(
                "({column} IS NULL OR {})",
                self.matches_pattern(column, RANDOM_PATTERN)
            ),
        }
    }
}

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
struct Sql {
    dialect: Dialect,
    sql: String,
    binds: Vec<Bind>,
}

impl Sql {
    fn new(dialect: Dialect) -> Self {
        Self {
            dialect,
            sql: String::with_capacity(256),
            binds: Vec::new(),
        }
    }

    fn push(&mut self, text: &str) -> &mut Self {
        self.sql.push_str(text);
        self
    }

    /// Binds `value` and returns its placeholder, to be placed by the caller.
    fn param(&mut self, value: Bind) -> String {
        self.binds.push(value);
        match self.dialect {
            Dialect::Postgres => format!("${}", self.binds.len()),
            Dialect::Mysql => "?".to_owned(),
        }
    }

    /// Binds `value` here.
    fn bind(&mut self, value: Bind) -> &mut Self {
        let placeholder = self.param(value);
        self.sql.push_str(&placeholder);
        self
    }

    /// `column = ANY($n)` (one array parameter) or `column IN (?, ?, ...)`.
    fn push_in(&mut self, column: &str, values: &KeyValues) {
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

    /// `(c1 IN (...) OR c2 IN (...))`, columns qualified with `alias` if given.
    fn push_match(&mut self, matcher: &Matcher, alias: Option<&str>) {
        self.push("(");
        for (i, (column, values)) in matcher.0.iter().enumerate() {
            if i > 0 {
                self.push(" OR ");
            }
            let column = match alias {
                Some(alias) => format!("{alias}.{column}"),
                None => column.clone(),
            };
            self.push_in(&column, values);
        }
        self.push(")");
    }

    fn finish(self) -> Statement {
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
    fn len(&self) -> usize {
        match self {
            KeyValues::Ints(v) => v.len(),
            KeyValues::Texts(v) | KeyValues::Uuids(v) => v.len(),
        }
    }

    /// The values that can equal a value of a column of `family`. An integer column only
    /// meets values in canonical decimal form ("7", not "007" or "+7"), so a text identity can
    /// never be converted into somebody else's id.
    fn for_column(family: Family, values: &[String]) -> Option<Self> {
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

/// How a task's values find a collection's rows: per match column, the values to compare.
#[derive(Debug, Clone)]
struct Matcher(Vec<(String, KeyValues)>);

impl Matcher {
    /// `None` when the task has no usable value for any identity the collection matches on:
    /// then the collection holds nothing of the subject as far as this task can tell.
    fn new(collection: &CollectionPlan, identities: &Identities) -> Option<Self> {
        let parts: Vec<(String, KeyValues)> = collection
            .matches
            .iter()
            .filter_map(|m| {
                let values = identities.get(&m.identity)?;
                Some((m.column.clone(), KeyValues::for_column(m.family, values)?))
            })
            .collect();
        (!parts.is_empty()).then_some(Self(parts))
    }
}

// ---------------------------------------------------------------------------------------------
// The live schema and the plan
// ---------------------------------------------------------------------------------------------

/// What a column's type allows it to take part in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    Integer,
    Text,
    Uuid,
    Boolean,
    Time,
    Other,
}

/// One column of the live schema.
#[derive(Debug, Clone)]
pub(crate) struct ColumnInfo {
    pub(crate) name: String,
    /// The type as the database prints it (`bigint`, `varchar(255)`), for messages and for
    /// PostgreSQL casts.
    pub(crate) type_name: String,
    pub(crate) family: Family,
    pub(crate) nullable: bool,
    /// Longest text the column takes, if bounded.
    pub(crate) max_chars: Option<i64>,
}

/// The parts of the live schema the data map refers to.
#[derive(Debug, Clone, Default)]
pub(crate) struct LiveSchema {
    /// The schema (PostgreSQL) or database (MariaDB) of unqualified table names.
    pub(crate) default_schema: String,
    /// Columns by (schema, table).
    pub(crate) tables: BTreeMap<QualifiedTable, Vec<ColumnInfo>>,
    /// Foreign keys.
    pub(crate) foreign_keys: Vec<ForeignKey>,
}

/// A table of the live schema: (schema, table).
pub(crate) type QualifiedTable = (String, String);

/// A foreign key: (child table, parent table).
pub(crate) type ForeignKey = (QualifiedTable, QualifiedTable);

/// A table named by the data map: (schema, table), the schema `None` when unqualified.
pub(crate) type TableName = (Option<String>, String);

fn split_table(table: &str) -> TableName {
    match table.split_once('.') {
        Some((schema, name)) => (Some(schema.to_owned()), name.to_owned()),
        None => (None, table.to_owned()),
    }
}

/// Everything a task needs to know about the store, checked against the live schema once.
#[derive(Debug)]
pub(crate) struct Plan {
    collections: Vec<CollectionPlan>,
    /// Indices of the `delete` collections, children before parents.
    delete_order: Vec<usize>,
}

#[derive(Debug)]
struct CollectionPlan {
    /// As in the data map: the key of `TaskReport.counts`.
    name: String,
    /// Quoted.
    table: String,
    matches: Vec<MatchColumn>,
    /// (identity, quoted column).
    provides: Vec<(String, String)>,
    erase: ErasePlan,
    /// field -> target column.
    rectify: BTreeMap<String, Target>,
    restrict: Option<String>,
    object: Option<String>,
    /// Every column of the table, in table order (what a collect task exports).
    columns: Vec<ColumnInfo>,
}

#[derive(Debug)]
struct MatchColumn {
    identity: String,
    column: String,
    family: Family,
}

#[derive(Debug)]
enum ErasePlan {
    Delete,
    Retain,
    Mask(Vec<(String, Mask)>),
}

#[derive(Debug)]
struct Target {
    column: String,
    /// PostgreSQL: the column's type, to cast the text value to.
    type_name: String,
}

/// Identities whose values are free text (addresses, numbers as people write them): they are
/// only ever compared with text columns. Any other identity may live in integer, UUID or text
/// columns.
fn is_text_identity(identity: &str) -> bool {
    ["email", "phone"]
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
    live: &LiveSchema,
) -> Result<Plan, Vec<String>> {
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
        let mut flag_column = |flag: &Option<crate::datamap::FlagColumn>, what: &str| {
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
            columns: columns.clone(),
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

// ---------------------------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------------------------

/// A database the connector runs statements on.
pub(crate) trait Backend: Send + Sync + 'static {
    /// Its transactions.
    type Session: Session;
    /// Opens a transaction with the store's lock and statement timeouts set.
    fn begin(&self) -> impl Future<Output = Result<Self::Session, sqlx::Error>> + Send;
    /// Opens a read-only transaction for a collect task: one consistent snapshot for every
    /// collection, times in UTC, a statement timeout long enough to stream a large table.
    fn begin_read(&self) -> impl Future<Output = Result<Self::Session, sqlx::Error>> + Send;
    /// Reads the columns of `tables` and the foreign keys among their schemas.
    fn load_schema(
        &self,
        tables: &[TableName],
    ) -> impl Future<Output = Result<LiveSchema, sqlx::Error>> + Send;
    /// Classifies an error of this database.
    fn fault(error: &sqlx::Error) -> Fault;
}

/// One open transaction.
pub(crate) trait Session: Send {
    /// Its SQL.
    const DIALECT: Dialect;
    /// Rows affected.
    fn execute(
        &mut self,
        statement: &Statement,
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send;
    /// The single integer a `SELECT COUNT(*)` returns.
    fn count(
        &mut self,
        statement: &Statement,
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send;
    /// How many rows the query returns.
    fn rows(
        &mut self,
        statement: &Statement,
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send;
    /// Every row, each as `columns` nullable texts.
    fn texts(
        &mut self,
        statement: &Statement,
        columns: usize,
    ) -> impl Future<Output = Result<Vec<Vec<Option<String>>>, sqlx::Error>> + Send;
    /// Every row of a query whose one column is the JSON text of the row, as a stream read
    /// from the server as it is consumed (never the whole result in memory).
    fn json_rows<'s>(
        &'s mut self,
        statement: &'s Statement,
    ) -> futures::stream::BoxStream<'s, Result<String, sqlx::Error>>;
    /// Commits.
    fn commit(self) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
}

/// Implements [`Session`] for `$session`, a newtype over an open sqlx transaction, in a
/// backend module that defines `bind_all` (binding a statement's values the way its driver
/// wants them) and imports `StreamExt`, `BoxStream` and `Row`: the two drivers' calls are the
/// same, only their types differ.
macro_rules! impl_session {
    ($session:ty, $dialect:expr) => {
        impl Session for $session {
            const DIALECT: Dialect = $dialect;

            async fn execute(&mut self, statement: &Statement) -> Result<u64, sqlx::Error> {
                let done = bind_all(sqlx::query(&statement.sql), &statement.binds)
                    .execute(&mut *self.0)
                    .await?;
                Ok(done.rows_affected())
            }

            async fn count(&mut self, statement: &Statement) -> Result<u64, sqlx::Error> {
                let row = bind_all(sqlx::query(&statement.sql), &statement.binds)
                    .fetch_one(&mut *self.0)
                    .await?;
                let n: i64 = row.try_get(0)?;
                Ok(u64::try_from(n).unwrap_or(0))
            }

            async fn rows(&mut self, statement: &Statement) -> Result<u64, sqlx::Error> {
                let rows = bind_all(sqlx::query(&statement.sql), &statement.binds)
                    .fetch_all(&mut *self.0)
                    .await?;
                Ok(rows.len() as u64)
            }

            async fn texts(
                &mut self,
                statement: &Statement,
                columns: usize,
            ) -> Result<Vec<Vec<Option<String>>>, sqlx::Error> {
                let rows = bind_all(sqlx::query(&statement.sql), &statement.binds)
                    .fetch_all(&mut *self.0)
                    .await?;
                rows.iter()
                    .map(|row| (0..columns).map(|i| row.try_get(i)).collect())
                    .collect()
            }

            fn json_rows<'s>(
                &'s mut self,
                statement: &'s Statement,
            ) -> BoxStream<'s, Result<String, sqlx::Error>> {
                bind_all(sqlx::query(&statement.sql), &statement.binds)
                    .fetch(&mut *self.0)
                    .map(|row| row.and_then(|row| row.try_get::<String, _>(0)))
                    .boxed()
            }

            async fn commit(self) -> Result<(), sqlx::Error> {
                self.0.commit().await
            }
        }
    };
}
pub(crate) use impl_session;

/// What an error means for the task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fault {
    /// Worth retrying: the description names the kind of failure, never a value.
    Transient(String),
    /// Will fail again: a stable code and a description without values.
    Permanent { code: &'static str, detail: String },
}

/// Describes what sqlx reports besides database errors, by kind only.
pub(crate) fn describe_non_database(error: &sqlx::Error) -> Fault {
    use sqlx::Error as E;
    match error {
        E::Io(e) => Fault::Transient(format!("I/O error: {}", e.kind())),
        E::Tls(_) => Fault::Transient("TLS error".to_owned()),
        E::Protocol(_) => Fault::Transient("protocol error (connection lost?)".to_owned()),
        E::PoolTimedOut => Fault::Transient("timed out waiting for a connection".to_owned()),
        E::PoolClosed => Fault::Transient("the connection pool is closed".to_owned()),
        E::WorkerCrashed => Fault::Transient("the connection worker crashed".to_owned()),
        E::Configuration(_) => Fault::Permanent {
            code: "store_config",
            detail: "the connection configuration is invalid".to_owned(),
        },
        E::RowNotFound
        | E::TypeNotFound { .. }
        | E::ColumnIndexOutOfBounds { .. }
        | E::ColumnNotFound(_)
        | E::ColumnDecode { .. }
        | E::Decode(_)
        | E::Encode(_) => Fault::Permanent {
            code: "store_error",
            detail: "a value could not be encoded or decoded (does the column type fit?)"
                .to_owned(),
        },
        _ => Fault::Transient("database client error".to_owned()),
    }
}

/// An error and what the connector was doing.
#[derive(Debug)]
pub(crate) struct Failure {
    action: &'static str,
    collection: Option<String>,
    error: sqlx::Error,
}

trait During<T> {
    fn during(self, action: &'static str, collection: Option<&str>) -> Result<T, Failure>;
}

impl<T> During<T> for Result<T, sqlx::Error> {
    fn during(self, action: &'static str, collection: Option<&str>) -> Result<T, Failure> {
        self.map_err(|error| Failure {
            action,
            collection: collection.map(str::to_owned),
            error,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The connector
// ---------------------------------------------------------------------------------------------

/// A PostgreSQL or MariaDB store.
pub(crate) struct SqlConnector<B> {
    store: StoreName,
    backend: B,
    collections: Vec<Collection>,
    hasher: IdentityHasher,
    plan: OnceCell<Arc<Plan>>,
}

impl<B: Backend> SqlConnector<B> {
    pub(crate) fn new(
        store: StoreName,
        backend: B,
        collections: Vec<Collection>,
        hasher: IdentityHasher,
    ) -> Self {
        Self {
            store,
            backend,
            collections,
            hasher,
            plan: OnceCell::new(),
        }
    }

    fn task_error(&self, failure: Failure) -> TaskError {
        let place = match &failure.collection {
            Some(collection) => format!("store `{}`, collection `{collection}`", self.store),
            None => format!("store `{}`", self.store),
        };
        match B::fault(&failure.error) {
            Fault::Transient(detail) => TaskError::Transient(
                anyhow::anyhow!("{detail}").context(format!("{place}: {} failed", failure.action)),
            ),
            Fault::Permanent { code, detail } => TaskError::Permanent {
                code,
                reason: format!("{place}: {} failed: {detail}", failure.action),
            },
        }
    }

    async fn load_plan(&self) -> Result<Result<Plan, Vec<String>>, TaskError> {
        let tables: Vec<TableName> = self
            .collections
            .iter()
            .map(|c| split_table(&c.table))
            .collect();
        let live = self
            .backend
            .load_schema(&tables)
            .await
            .during("reading the live schema", None)
            .map_err(|f| self.task_error(f))?;
        Ok(build_plan(
            B::Session::DIALECT,
            &self.store,
            &self.collections,
            &live,
        ))
    }

    pub(crate) async fn check_schema(&self) -> Result<SchemaCheck, TaskError> {
        match self.load_plan().await? {
            Ok(plan) => {
                // A concurrent first task may have set it meanwhile: the same plan either way.
                let _ = self.plan.set(Arc::new(plan));
                Ok(SchemaCheck::Fits)
            }
            Err(problems) => Ok(SchemaCheck::Problems(problems)),
        }
    }

    /// The plan, checking the live schema on first use.
    async fn plan(&self) -> Result<Arc<Plan>, TaskError> {
        self.plan
            .get_or_try_init(|| async {
                match self.load_plan().await? {
                    Ok(plan) => Ok(Arc::new(plan)),
                    Err(problems) => Err(TaskError::Permanent {
                        code: "datamap_mismatch",
                        reason: format!(
                            "store `{}`: the data map does not fit the live schema: {}",
                            self.store,
                            problems.join("; ")
                        ),
                    }),
                }
            })
            .await
            .cloned()
    }

    async fn begin(&self) -> Result<B::Session, TaskError> {
        self.backend
            .begin()
            .await
            .during("opening a transaction", None)
            .map_err(|f| self.task_error(f))
    }

    pub(crate) async fn resolve(&self, identities: &Identities) -> Result<TaskReport, TaskError> {
        self.check_size(identities)?;
        let plan = self.plan().await?;
        let mut session = self.begin().await?;
        let (_, derived, counts) = expand(&mut session, &plan, identities)
            .await
            .map_err(|f| self.task_error(f))?;
        session
            .commit()
            .await
            .during("ending the transaction", None)
            .map_err(|f| self.task_error(f))?;
        Ok(TaskReport {
            counts,
            derived,
            ..TaskReport::default()
        })
    }

    pub(crate) async fn erase(&self, identities: &Identities) -> Result<TaskReport, TaskError> {
        self.check_size(identities)?;
        let plan = self.plan().await?;
        let mut session = self.begin().await?;
        let (identities, counts) = erase_in(&mut session, &plan, identities, &self.hasher)
            .await
            .map_err(|f| self.task_error(f))?;
        session
            .commit()
            .await
            .during("committing the erasure", None)
            .map_err(|f| self.task_error(f))?;

        // Queried again after the commit, in a transaction of its own.
        let mut session = self.begin().await?;
        let remaining = verify_in(&mut session, &plan, &identities)
            .await
            .map_err(|f| self.task_error(f))?;
        session
            .commit()
            .await
            .during("ending the verification", None)
            .map_err(|f| self.task_error(f))?;
        let total: u64 = remaining.values().sum();
        if total > 0 {
            let names: Vec<String> = remaining
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(c, n)| format!("{c}: {n}"))
                .collect();
            return Err(still_holds(&self.store, total, &names));
        }
        Ok(TaskReport {
            counts,
            remaining: Some(0),
            ..TaskReport::default()
        })
    }

    pub(crate) async fn rectify(
        &self,
        identities: &Identities,
        changes: &BTreeMap<String, serde_json::Value>,
    ) -> Result<TaskReport, TaskError> {
        self.check_size(identities)?;
        let plan = self.plan().await?;
        let mut session = self.begin().await?;
        let counts = rectify_in(&mut session, &plan, identities, changes)
            .await
            .map_err(|f| self.task_error(f))?;
        session
            .commit()
            .await
            .during("committing the rectification", None)
            .map_err(|f| self.task_error(f))?;
        Ok(TaskReport {
            counts,
            ..TaskReport::default()
        })
    }

    pub(crate) async fn set_flag(
        &self,
        identities: &Identities,
        flag: Flag,
        value: bool,
    ) -> Result<TaskReport, TaskError> {
        self.check_size(identities)?;
        let plan = self.plan().await?;
        let mut session = self.begin().await?;
        let counts = flag_in(&mut session, &plan, identities, flag, value)
            .await
            .map_err(|f| self.task_error(f))?;
        session
            .commit()
            .await
            .during("committing the flag change", None)
            .map_err(|f| self.task_error(f))?;
        Ok(TaskReport {
            counts,
            ..TaskReport::default()
        })
    }

    /// Streams the subject's rows of every collection into `sink`, in one read-only
    /// transaction, after following the store's own derivations.
    pub(crate) async fn collect<K: CollectSink>(
        &self,
        identities: &Identities,
        sink: &mut K,
    ) -> Result<TaskReport, TaskError> {
        self.check_size(identities)?;
        let plan = self.plan().await?;
        let mut session = self
            .backend
            .begin_read()
            .await
            .during("opening a transaction", None)
            .map_err(|f| self.task_error(f))?;
        let (identities, _, _) = expand(&mut session, &plan, identities)
            .await
            .map_err(|f| self.task_error(f))?;
        let mut counts = BTreeMap::new();
        for collection in &plan.collections {
            sink.begin(&collection.name).await?;
            let mut rows = 0u64;
            if let Some(matcher) = Matcher::new(collection, &identities) {
                let statement = select_json(B::Session::DIALECT, collection, &matcher);
                let mut stream = session.json_rows(&statement);
                while let Some(row) = stream.next().await {
                    let row = row
                        .during("reading rows", Some(&collection.name))
                        .map_err(|f| self.task_error(f))?;
                    // The database escapes line breaks inside JSON strings; a raw one would
                    // break the record framing downstream.
                    if row.as_bytes().contains(&b'\n') {
                        return Err(TaskError::Permanent {
                            code: "store_error",
                            reason: format!(
                                "store `{}`, collection `{}`: the database returned a row that is not one line of JSON",
                                self.store, collection.name
                            ),
                        });
                    }
                    sink.record(row.as_bytes()).await?;
                    rows += 1;
                }
            }
            sink.end().await?;
            counts.insert(collection.name.clone(), rows);
        }
        session
            .commit()
            .await
            .during("ending the transaction", None)
            .map_err(|f| self.task_error(f))?;
        Ok(TaskReport {
            counts,
            ..TaskReport::default()
        })
    }

    /// Checks the number of values a task names, before any statement is built.
    fn check_size(&self, identities: &Identities) -> Result<(), TaskError> {
        let values: usize = identities.values().map(Vec::len).sum();
        if values > super::MAX_VALUES {
            return Err(too_many(&self.store, "identity values"));
        }
        Ok(())
    }
}

// Log tables: retention deletes their old rows in short batches.

/// The statements of one log table, quoted for the dialect, the cut-off always bound.
pub(crate) struct LogStatements {
    /// Session settings that make time comparisons and formatting UTC.
    pub(crate) utc: Statement,
    /// Deletes at most one batch of rows older than the cut-off.
    pub(crate) delete_batch: Statement,
    /// Counts the rows older than the cut-off.
    pub(crate) count: Statement,
    /// The oldest row's time as RFC 3339 text (one row, one nullable column).
    pub(crate) oldest: Statement,
}

/// The cut-off as both dialects read it from text: UTC, microseconds.
fn cutoff_text(dialect: Dialect, before: chrono::DateTime<chrono::Utc>) -> String {
    match dialect {
        Dialect::Postgres => before.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string(),
        Dialect::Mysql => before.format("%Y-%m-%d %H:%M:%S%.6f").to_string(),
    }
}

/// Builds the statements of log table `table` whose time is in `timestamp`.
pub(crate) fn log_statements(
    dialect: Dialect,
    table: &str,
    timestamp: &str,
    before: chrono::DateTime<chrono::Utc>,
    batch: u64,
) -> LogStatements {
    let quoted = dialect.table(table);
    let column = dialect.ident(timestamp);
    let cutoff = Bind::Text(Some(cutoff_text(dialect, before)));
    match dialect {
        Dialect::Postgres => LogStatements {
            utc: Statement {
                sql: "SET LOCAL TimeZone = 'UTC'".to_owned(),
                binds: Vec::new(),
            },
            // Row ids of one batch, oldest first (an index on the time column makes this a
            // range scan), skipping rows the application holds locked; the time condition is
            // repeated so a row id that meanwhile names another row (or another partition's
            // row) is never deleted unless it is old too.
            delete_batch: Statement {
                sql: format!(
                    "DELETE FROM {quoted} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {quoted} \
                     WHERE {column} < CAST($1 AS timestamptz) ORDER BY {column} LIMIT {batch} \
                     FOR UPDATE SKIP LOCKED)) AND {column} < CAST($1 AS timestamptz)"
                ),
                binds: vec![cutoff.clone()],
            },
            count: Statement {
                sql: format!(
                    "SELECT COUNT(*) FROM {quoted} WHERE {column} < CAST($1 AS timestamptz)"
                ),
                binds: vec![cutoff],
            },
            oldest: Statement {
                sql: format!(
                    "SELECT to_char(CAST(MIN({column}) AS timestamptz), \
                     'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') FROM {quoted}"
                ),
                binds: Vec::new(),
            },
        },
        Dialect::Mysql => LogStatements {
            // TIMESTAMP columns compare and print in the session's zone.
            utc: Statement {
                sql: "SET time_zone = '+00:00'".to_owned(),
                binds: Vec::new(),
            },
            delete_batch: Statement {
                sql: format!(
                    "DELETE FROM {quoted} WHERE {column} < ? ORDER BY {column} LIMIT {batch}"
                ),
                binds: vec![cutoff.clone()],
            },
            count: Statement {
                sql: format!("SELECT COUNT(*) FROM {quoted} WHERE {column} < ?"),
                binds: vec![cutoff],
            },
            oldest: Statement {
                sql: format!(
                    "SELECT DATE_FORMAT(MIN({column}), '%Y-%m-%dT%H:%i:%sZ') FROM {quoted}"
                ),
                binds: Vec::new(),
            },
        },
    }
}

impl<B: Backend> SqlConnector<B> {
    /// The collections the data map marks as log tables.
    pub(crate) fn log_tables(&self) -> Vec<(String, crate::datamap::LogTable)> {
        self.collections
            .iter()
            .filter_map(|c| Some((c.table.clone(), c.log.clone()?)))
            .collect()
    }

    /// The statements of log table `table` (checked against the live schema first).
    async fn log_plan(
        &self,
        table: &str,
        before: chrono::DateTime<chrono::Utc>,
        batch: u64,
    ) -> Result<LogStatements, TaskError> {
        self.plan().await?;
        let Some(log) = self
            .collections
            .iter()
            .find(|c| c.table == table)
            .and_then(|c| c.log.as_ref())
        else {
            return Err(TaskError::Permanent {
                code: "not_a_log_table",
                reason: format!(
                    "store `{}`: `{table}` is not a log table of the data map",
                    self.store
                ),
            });
        };
        Ok(log_statements(
            B::Session::DIALECT,
            table,
            &log.timestamp,
            before,
            batch,
        ))
    }

    /// A transaction of its own with the UTC settings made.
    async fn log_session(
        &self,
        table: &str,
        statements: &LogStatements,
    ) -> Result<B::Session, TaskError> {
        let mut session = self.begin().await?;
        session
            .execute(&statements.utc)
            .await
            .during("setting the time zone", Some(table))
            .map_err(|f| self.task_error(f))?;
        Ok(session)
    }

    async fn log_commit(&self, table: &str, session: B::Session) -> Result<(), TaskError> {
        session
            .commit()
            .await
            .during("committing", Some(table))
            .map_err(|f| self.task_error(f))
    }

    /// Deletes at most `batch` rows of log table `table` older than `before`, in one short
    /// transaction; returns how many.
    pub(crate) async fn delete_log_batch(
        &self,
        table: &str,
        before: chrono::DateTime<chrono::Utc>,
        batch: u64,
    ) -> Result<u64, TaskError> {
        let statements = self.log_plan(table, before, batch).await?;
        let mut session = self.log_session(table, &statements).await?;
        let deleted = session
            .execute(&statements.delete_batch)
            .await
            .during("deleting old log rows", Some(table))
            .map_err(|f| self.task_error(f))?;
        self.log_commit(table, session).await?;
        Ok(deleted)
    }

    /// Counts the rows of log table `table` older than `before`.
    pub(crate) async fn count_log_rows(
        &self,
        table: &str,
        before: chrono::DateTime<chrono::Utc>,
    ) -> Result<u64, TaskError> {
        let statements = self.log_plan(table, before, 1).await?;
        let mut session = self.log_session(table, &statements).await?;
        let count = session
            .count(&statements.count)
            .await
            .during("counting old log rows", Some(table))
            .map_err(|f| self.task_error(f))?;
        self.log_commit(table, session).await?;
        Ok(count)
    }

    /// The time of the oldest row of log table `table`, if it has rows.
    pub(crate) async fn oldest_log_row(
        &self,
        table: &str,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, TaskError> {
        let statements = self.log_plan(table, chrono::Utc::now(), 1).await?;
        let mut session = self.log_session(table, &statements).await?;
        let rows = session
            .texts(&statements.oldest, 1)
            .await
            .during("reading the oldest log row", Some(table))
            .map_err(|f| self.task_error(f))?;
        self.log_commit(table, session).await?;
        Ok(rows
            .into_iter()
            .next()
            .and_then(|row| row.into_iter().next().flatten())
            .and_then(|text| chrono::DateTime::parse_from_rfc3339(&text).ok())
            .map(|t| t.with_timezone(&chrono::Utc)))
    }
}

// The task flows, written once for both backends. Each takes an open transaction.

/// The given identities plus everything the store derives from them (to a fixed point), the
/// derived values alone, and the rows that provided them per collection in the last round.
async fn expand<S: Session>(
    session: &mut S,
    plan: &Plan,
    given: &Identities,
) -> Result<(Identities, Identities, BTreeMap<String, u64>), Failure> {
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
            let mut sql = Sql::new(S::DIALECT);
            sql.push("SELECT ");
            for (i, (_, column)) in collection.provides.iter().enumerate() {
                if i > 0 {
                    sql.push(", ");
                }
                sql.push(&S::DIALECT.as_text(column));
            }
            sql.push(" FROM ").push(&collection.table).push(" WHERE ");
            sql.push_match(&matcher, None);
            let rows = session
                .texts(&sql.finish(), collection.provides.len())
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
    Ok((to_identities(all), to_identities(derived), counts))
}

/// Masks, then deletes children first; returns the expanded identities (for the
/// verification) and the records changed per collection.
async fn erase_in<S: Session>(
    session: &mut S,
    plan: &Plan,
    given: &Identities,
    hasher: &IdentityHasher,
) -> Result<(Identities, BTreeMap<String, u64>), Failure> {
    let (identities, _, _) = expand(session, plan, given).await?;
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
        let Some(matcher) = Matcher::new(collection, &identities) else {
            continue;
        };
        let name = Some(collection.name.as_str());
        let unmasked = all_masked(dialect, masks);

        // Lock the rows to mask; their number is the count (a concurrent task waiting on the
        // same rows then finds them masked and counts none).
        let mut sql = Sql::new(dialect);
        sql.push("SELECT 1 FROM ")
            .push(&collection.table)
            .push(" WHERE ");
        sql.push_match(&matcher, None);
        sql.push(" AND NOT ").push(&unmasked).push(" FOR UPDATE");
        let rows = session
            .rows(&sql.finish())
            .await
            .during("locking rows to mask", name)?;
        if rows == 0 {
            continue;
        }

        for (column, _) in masks.iter().filter(|(_, m)| *m == Mask::Hash) {
            hash_column(session, collection, &matcher, column, hasher).await?;
        }
        let others: Vec<&(String, Mask)> = masks.iter().filter(|(_, m)| *m != Mask::Hash).collect();
        if !others.is_empty() {
            let mut sql = Sql::new(dialect);
            sql.push("UPDATE ").push(&collection.table).push(" SET ");
            for (i, (column, mask)) in others.iter().enumerate() {
                if i > 0 {
                    sql.push(", ");
                }
                sql.push(column).push(" = ");
                match mask {
                    Mask::Null => sql.push("NULL"),
                    Mask::Redact => sql.push(&format!("'{REDACTED}'")),
                    Mask::Random => sql.push(dialect.random_text()),
                    Mask::Hash => sql.push(column),
                };
            }
            sql.push(" WHERE ");
            sql.push_match(&matcher, None);
            let owned: Vec<(String, Mask)> = others.iter().map(|m| (*m).clone()).collect();
            sql.push(" AND NOT ").push(&all_masked(dialect, &owned));
            session
                .execute(&sql.finish())
                .await
                .during("masking rows", name)?;
        }
        counts.insert(collection.name.clone(), rows);
    }

    for &index in &plan.delete_order {
        let collection = &plan.collections[index];
        let Some(matcher) = Matcher::new(collection, &identities) else {
            continue;
        };
        let mut sql = Sql::new(dialect);
        sql.push("DELETE FROM ")
            .push(&collection.table)
            .push(" WHERE ");
        sql.push_match(&matcher, None);
        let deleted = session
            .execute(&sql.finish())
            .await
            .during("deleting rows", Some(&collection.name))?;
        counts.insert(collection.name.clone(), deleted);
    }
    Ok((identities, counts))
}

/// The subject's rows of `collection`, each as the JSON text of one object with every column
/// (PostgreSQL: `row_to_json`; MariaDB: `JSON_OBJECT` over the live schema's columns, binary
/// columns as hex, boolean columns as `true`/`false`).
fn select_json(dialect: Dialect, collection: &CollectionPlan, matcher: &Matcher) -> Statement {
    let mut sql = Sql::new(dialect);
    match dialect {
        Dialect::Postgres => {
            sql.push("SELECT CAST(row_to_json(lethe_row) AS text) FROM ");
        }
        Dialect::Mysql => {
            sql.push("SELECT CAST(JSON_OBJECT(");
            for (i, column) in collection.columns.iter().enumerate() {
                if i > 0 {
                    sql.push(", ");
                }
                sql.bind(Bind::Text(Some(column.name.clone())));
                sql.push(", ");
                let value = mysql_json_value(
                    &format!("lethe_row.{}", dialect.ident(&column.name)),
                    column,
                );
                sql.push(&value);
            }
            sql.push(") AS CHAR) FROM ");
        }
    }
    sql.push(&collection.table).push(" AS lethe_row WHERE ");
    sql.push_match(matcher, Some("lethe_row"));
    sql.finish()
}

/// A MariaDB column as a `JSON_OBJECT` value.
fn mysql_json_value(expression: &str, column: &ColumnInfo) -> String {
    let type_name = column.type_name.to_ascii_lowercase();
    let binary = [
        "binary",
        "varbinary",
        "tinyblob",
        "blob",
        "mediumblob",
        "longblob",
        "geometry",
        "point",
        "linestring",
        "polygon",
        "multipoint",
        "multilinestring",
        "multipolygon",
        "geometrycollection",
    ]
    .iter()
    .any(|t| type_name.starts_with(t));
    if column.family == Family::Boolean {
        format!(
            "IF({expression} IS NULL, NULL, IF({expression}, JSON_EXTRACT('true', '$'), JSON_EXTRACT('false', '$')))"
        )
    } else if type_name.starts_with("bit") {
        format!("CAST({expression} AS UNSIGNED)")
    } else if binary {
        format!("HEX({expression})")
    } else {
        expression.to_owned()
    }
}

/// `(m1 AND m2 ...)`: every masked column of a row holds what its mask writes.
fn all_masked(dialect: Dialect, masks: &[(String, Mask)]) -> String {
    let parts: Vec<String> = masks
        .iter()
        .map(|(column, mask)| dialect.masked(column, *mask))
        .collect();
    format!("({})", parts.join(" AND "))
}

/// Replaces each distinct old value of `column` among the subject's rows by its keyed hash:
/// the distinct values are read, hashed here (the key never reaches the database), and written
/// back by a join with the (old, new) pairs, a few hundred pairs per statement.
async fn hash_column<S: Session>(
    session: &mut S,
    collection: &CollectionPlan,
    matcher: &Matcher,
    column: &str,
    hasher: &IdentityHasher,
) -> Result<(), Failure> {
    let dialect = S::DIALECT;
    let name = Some(collection.name.as_str());
    let mut sql = Sql::new(dialect);
    sql.push("SELECT DISTINCT ")
        .push(&dialect.as_text(column))
        .push(" FROM ")
        .push(&collection.table)
        .push(" WHERE ");
    sql.push_match(matcher, None);
    sql.push(" AND NOT ")
        .push(&dialect.masked(column, Mask::Hash));
    let old: Vec<String> = session
        .texts(&sql.finish(), 1)
        .await
        .during("reading values to hash", name)?
        .into_iter()
        .filter_map(|mut row| row.pop().flatten())
        .collect();
    for chunk in old.chunks(HASH_PAIRS_PER_STATEMENT) {
        let new: Vec<String> = chunk.iter().map(|v| hasher.digest("mask", v)).collect();
        let mut sql = Sql::new(dialect);
        match dialect {
            Dialect::Postgres => {
                sql.push("UPDATE ")
                    .push(&collection.table)
                    .push(" AS lethe_t SET ")
                    .push(column)
                    .push(" = lethe_m.lethe_new FROM (SELECT unnest(")
                    .bind(Bind::Texts(chunk.to_vec()))
                    .push("::text[]) AS lethe_old, unnest(")
                    .bind(Bind::Texts(new))
                    .push("::text[]) AS lethe_new) AS lethe_m WHERE lethe_t.")
                    .push(column)
                    .push(" = lethe_m.lethe_old AND ");
            }
            Dialect::Mysql => {
                sql.push("UPDATE ")
                    .push(&collection.table)
                    .push(" AS lethe_t JOIN (");
                for (i, (old, new)) in chunk.iter().zip(new).enumerate() {
                    if i > 0 {
                        sql.push(" UNION ALL ");
                    }
                    sql.push("SELECT ")
                        .bind(Bind::Text(Some(old.clone())))
                        .push(" AS lethe_old, ")
                        .bind(Bind::Text(Some(new)))
                        .push(" AS lethe_new");
                }
                sql.push(") AS lethe_m ON lethe_t.")
                    .push(column)
                    .push(" = lethe_m.lethe_old SET lethe_t.")
                    .push(column)
                    .push(" = lethe_m.lethe_new WHERE ");
            }
        }
        sql.push_match(matcher, Some("lethe_t"));
        session
            .execute(&sql.finish())
            .await
            .during("hashing values", name)?;
    }
    Ok(())
}

/// Matches left per collection: rows of `delete` collections still matching, rows of masked
/// collections whose masked columns do not hold what the mask writes. Retained collections
/// legitimately keep their rows and are not counted.
async fn verify_in<S: Session>(
    session: &mut S,
    plan: &Plan,
    identities: &Identities,
) -> Result<BTreeMap<String, u64>, Failure> {
    let dialect = S::DIALECT;
    let mut remaining = BTreeMap::new();
    for collection in &plan.collections {
        let condition = match &collection.erase {
            ErasePlan::Retain => continue,
            ErasePlan::Mask(masks) if masks.is_empty() => continue,
            ErasePlan::Delete => None,
            ErasePlan::Mask(masks) => Some(all_masked(dialect, masks)),
        };
        let Some(matcher) = Matcher::new(collection, identities) else {
            continue;
        };
        let mut sql = Sql::new(dialect);
        sql.push("SELECT COUNT(*) FROM ")
            .push(&collection.table)
            .push(" WHERE ");
        sql.push_match(&matcher, None);
        if let Some(masked) = condition {
            sql.push(" AND NOT ").push(&masked);
        }
        let left = session
            .count(&sql.finish())
            .await
            .during("verifying the erasure", Some(&collection.name))?;
        remaining.insert(collection.name.clone(), left);
    }
    Ok(remaining)
}

/// A rectified value as text (the database converts it to the column's type), or NULL.
fn change_text(value: &serde_json::Value, dialect: Dialect) -> Option<String> {
    match value {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Bool(b) => Some(match (dialect, b) {
            (Dialect::Postgres, true) => "true".to_owned(),
            (Dialect::Postgres, false) => "false".to_owned(),
            (Dialect::Mysql, true) => "1".to_owned(),
            (Dialect::Mysql, false) => "0".to_owned(),
        }),
        other => Some(other.to_string()),
    }
}

async fn rectify_in<S: Session>(
    session: &mut S,
    plan: &Plan,
    given: &Identities,
    changes: &BTreeMap<String, serde_json::Value>,
) -> Result<BTreeMap<String, u64>, Failure> {
    let dialect = S::DIALECT;
    let (identities, _, _) = expand(session, plan, given).await?;
    let mut counts = BTreeMap::new();
    for collection in &plan.collections {
        let targets: Vec<(&Target, Option<String>)> = changes
            .iter()
            .filter_map(|(field, value)| {
                Some((collection.rectify.get(field)?, change_text(value, dialect)))
            })
            .collect();
        if targets.is_empty() {
            continue;
        }
        let Some(matcher) = Matcher::new(collection, &identities) else {
            counts.insert(collection.name.clone(), 0);
            continue;
        };
        let value = |sql: &mut Sql, target: &Target, text: &Option<String>| {
            let placeholder = sql.param(Bind::Text(text.clone()));
            match dialect {
                Dialect::Postgres => format!("CAST({placeholder} AS {})", target.type_name),
                Dialect::Mysql => placeholder,
            }
        };
        let mut sql = Sql::new(dialect);
        sql.push("UPDATE ").push(&collection.table).push(" SET ");
        for (i, (target, text)) in targets.iter().enumerate() {
            if i > 0 {
                sql.push(", ");
            }
            let value = value(&mut sql, target, text);
            sql.push(&target.column).push(" = ").push(&value);
        }
        sql.push(" WHERE ");
        sql.push_match(&matcher, None);
        // Only rows that change are touched and counted, so running it again reports zero.
        sql.push(" AND (");
        for (i, (target, text)) in targets.iter().enumerate() {
            if i > 0 {
                sql.push(" OR ");
            }
            let value = value(&mut sql, target, text);
            sql.push(&dialect.distinct_from(&target.column, &value));
        }
        sql.push(")");
        let changed = session
            .execute(&sql.finish())
            .await
            .during("rectifying rows", Some(&collection.name))?;
        counts.insert(collection.name.clone(), changed);
    }
    Ok(counts)
}

async fn flag_in<S: Session>(
    session: &mut S,
    plan: &Plan,
    given: &Identities,
    flag: Flag,
    value: bool,
) -> Result<BTreeMap<String, u64>, Failure> {
    let dialect = S::DIALECT;
    let (identities, _, _) = expand(session, plan, given).await?;
    let mut counts = BTreeMap::new();
    for collection in &plan.collections {
        let column = match flag {
            Flag::Restrict => &collection.restrict,
            Flag::Object => &collection.object,
        };
        let Some(column) = column else { continue };
        let Some(matcher) = Matcher::new(collection, &identities) else {
            counts.insert(collection.name.clone(), 0);
            continue;
        };
        let mut sql = Sql::new(dialect);
        sql.push("UPDATE ")
            .push(&collection.table)
            .push(" SET ")
            .push(column)
            .push(" = ")
            .bind(Bind::Bool(value))
            .push(" WHERE ");
        sql.push_match(&matcher, None);
        let again = sql.param(Bind::Bool(value));
        sql.push(" AND ")
            .push(&dialect.distinct_from(column, &again));
        let changed = session
            .execute(&sql.finish())
            .await
            .during("setting the flag", Some(&collection.name))?;
        counts.insert(collection.name.clone(), changed);
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datamap::DataMap;

    fn column(name: &str, type_name: &str, family: Family, nullable: bool) -> ColumnInfo {
        ColumnInfo {
            name: name.to_owned(),
            type_name: type_name.to_owned(),
            family,
            nullable,
            max_chars: type_name
                .strip_prefix("varchar(")
                .and_then(|n| n.trim_end_matches(')').parse().ok()),
        }
    }

    fn table(name: &str) -> (String, String) {
        ("public".to_owned(), name.to_owned())
    }

    /// users <- access_log (foreign key), invoices <- users too.
    fn live() -> LiveSchema {
        let mut live = LiveSchema {
            default_schema: "public".to_owned(),
            ..LiveSchema::default()
        };
        live.tables.insert(
            table("users"),
            vec![
                column("id", "bigint", Family::Integer, false),
                column("email", "text", Family::Text, false),
                column("restricted", "boolean", Family::Boolean, false),
            ],
        );
        live.tables.insert(
            table("invoices"),
            vec![
                column("id", "bigint", Family::Integer, false),
                column("user_id", "bigint", Family::Integer, true),
                column("billing_name", "varchar(40)", Family::Text, true),
                column("amount", "bigint", Family::Integer, false),
            ],
        );
        live.tables.insert(
            table("access_log"),
            vec![
                column("user_id", "bigint", Family::Integer, false),
                column("ip", "text", Family::Text, false),
            ],
        );
        live.foreign_keys = vec![
            (table("access_log"), table("users")),
            (table("invoices"), table("users")),
        ];
        live
    }

    fn collections(text: &str) -> Vec<Collection> {
        let map = DataMap::parse(text).unwrap_or_else(|e| panic!("{e}"));
        match map.stores.into_values().next() {
            Some(crate::datamap::Store::Postgres(sql)) => sql.collections,
            _ => panic!("expected one postgres store"),
        }
    }

    fn store() -> StoreName {
        StoreName::parse("accounts").unwrap()
    }

    const GOOD: &str = r#"
        identities = ["email", "user_id"]
        [stores.accounts]
        kind = "postgres"
        url_env = "A_URL"
        [[stores.accounts.collections]]
        table = "users"
        match = { email = "email" }
        provides = { user_id = "id" }
        erase = "delete"
        restrict = { column = "restricted" }
        [[stores.accounts.collections]]
        table = "invoices"
        match = { user_id = "user_id" }
        erase = { mask = { billing_name = "redact" } }
        retain = "tax law"
        [[stores.accounts.collections]]
        table = "access_log"
        match = { user_id = "user_id" }
        erase = "delete"
    "#;

    #[test]
    fn deletions_run_children_first_whatever_the_data_map_order() {
        let plan = build_plan(Dialect::Postgres, &store(), &collections(GOOD), &live())
            .unwrap_or_else(|p| panic!("{p:?}"));
        let names: Vec<&str> = plan
            .delete_order
            .iter()
            .map(|&i| plan.collections[i].name.as_str())
            .collect();
        assert_eq!(names, ["access_log", "users"]);
    }

    #[test]
    fn a_cycle_of_foreign_keys_falls_back_to_data_map_order() {
        let mut live = live();
        live.foreign_keys
            .push((table("users"), table("access_log")));
        let plan = build_plan(Dialect::Postgres, &store(), &collections(GOOD), &live)
            .unwrap_or_else(|p| panic!("{p:?}"));
        assert_eq!(plan.delete_order, [0, 2]);
    }

    #[test]
    fn every_mismatch_with_the_live_schema_is_listed() {
        let text = r#"
            identities = ["email", "user_id"]
            [stores.accounts]
            kind = "postgres"
            url_env = "A_URL"
            [[stores.accounts.collections]]
            table = "nope"
            match = { email = "email" }
            erase = "delete"
            [[stores.accounts.collections]]
            table = "invoices"
            match = { email = "user_id" }
            erase = { mask = { billing_name = "hash", amount = "null", gone = "redact" } }
            retain = "tax law"
            restrict = { column = "user_id" }
        "#;
        let problems = build_plan(Dialect::Postgres, &store(), &collections(text), &live())
            .err()
            .unwrap_or_default()
            .join("\n");
        for expected in [
            "table `nope` does not exist in schema `public`",
            "column `user_id` (match `email`) is bigint, but `email` values are text",
            "column `billing_name` (mask hash) is varchar(40); the hash mask writes 64",
            "column `amount` (mask null) is NOT NULL",
            "column `gone` (mask redact) does not exist in table `invoices`",
            "column `user_id` (restrict) is bigint; a flag must be boolean",
        ] {
            assert!(
                problems.contains(expected),
                "{expected:?} not in:\n{problems}"
            );
        }
    }

    #[test]
    fn integer_columns_only_meet_canonical_integers() {
        let values: Vec<String> = ["7", "007", "+7", "x@y", "", "8", "7"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        assert_eq!(
            KeyValues::for_column(Family::Integer, &values),
            Some(KeyValues::Ints(vec![7, 8]))
        );
        assert_eq!(
            KeyValues::for_column(Family::Integer, &["a".to_owned()]),
            None
        );
        assert_eq!(
            KeyValues::for_column(
                Family::Uuid,
                &["6F9619FF-8B86-D011-B42D-00C04FC964FF".into()]
            ),
            Some(KeyValues::Uuids(vec![
                "6f9619ff-8b86-d011-b42d-00c04fc964ff".to_owned()
            ]))
        );
    }

    fn delete_statement(dialect: Dialect) -> Statement {
        let matcher = Matcher(vec![
            (
                dialect.ident("email"),
                KeyValues::Texts(vec!["a".into(), "b".into()]),
            ),
            (dialect.ident("user_id"), KeyValues::Ints(vec![7])),
        ]);
        let mut sql = Sql::new(dialect);
        sql.push("DELETE FROM ")
            .push(&dialect.table("app.users"))
            .push(" WHERE ");
        sql.push_match(&matcher, None);
        sql.finish()
    }

    #[test]
    fn log_batches_bind_the_cut_off_and_repeat_the_time_condition() {
        let before = chrono::DateTime::parse_from_rfc3339("2025-01-02T03:04:05Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let pg = log_statements(Dialect::Postgres, "app.access_log", "at", before, 500);
        assert!(
            pg.delete_batch
                .sql
                .starts_with("DELETE FROM \"app\".\"access_log\"")
        );
        assert!(pg.delete_batch.sql.contains("LIMIT 500"));
        assert_eq!(
            pg.delete_batch
                .sql
                .matches("\"at\" < CAST($1 AS timestamptz)")
                .count(),
            2
        );
        assert!(!pg.delete_batch.sql.contains("2025"));
        assert_eq!(
            pg.delete_batch.binds,
            vec![Bind::Text(Some("2025-01-02 03:04:05.000000+00".into()))]
        );
        let my = log_statements(Dialect::Mysql, "visits", "at", before, 7);
        assert_eq!(
            my.delete_batch.sql,
            "DELETE FROM `visits` WHERE `at` < ? ORDER BY `at` LIMIT 7"
        );
        assert_eq!(
            my.count.binds,
            vec![Bind::Text(Some("2025-01-02 03:04:05.000000".into()))]
        );
    }

    #[test]
    fn values_are_bound_never_spliced_in_either_dialect() {
        let pg = delete_statement(Dialect::Postgres);
        assert_eq!(
            pg.sql,
            r#"DELETE FROM "app"."users" WHERE ("email" = ANY($1) OR "user_id" = ANY($2))"#
        );
        assert_eq!(
            pg.binds,
            [
                Bind::Texts(vec!["a".into(), "b".into()]),
                Bind::Ints(vec![7])
            ]
        );
        let my = delete_statement(Dialect::Mysql);
        assert_eq!(
            my.sql,
            "DELETE FROM `app`.`users` WHERE (`email` IN (?, ?) OR `user_id` IN (?))"
        );
        assert_eq!(
            my.binds,
            [
                Bind::Text(Some("a".into())),
                Bind::Text(Some("b".into())),
                Bind::Int(7)
            ]
        );
    }

    #[test]
    fn masked_values_are_recognised_so_masks_apply_once() {
        assert_eq!(
            Dialect::Postgres.masked("\"c\"", Mask::Hash),
            "(\"c\" IS NULL OR \"c\" ~ '^[0-9a-f]{64}$')"
        );
        assert_eq!(
            Dialect::Mysql.masked("`c`", Mask::Redact),
            "(`c` IS NULL OR `c` = '[redacted]')"
        );
        assert_eq!(Dialect::Mysql.masked("`c`", Mask::Null), "`c` IS NULL");
    }
}
