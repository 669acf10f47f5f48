//! Reading a store's live shape for `lethe-eraser datamap suggest` and `datamap check`: the
//! tables, columns, types, foreign keys and indexes of a SQL database (its catalogs), the keys
//! of a Redis database (by sampling `SCAN`) and the object keys of a bucket (by sampling
//! `ListObjectsV2`), each with a bounded sample of values.
//!
//! Sampled values are for classifying columns in this process only: [`Samples`] prints its
//! count, never its values, and nothing here writes a value to a log line or an error.
//!
//! | module | job |
//! | --- | --- |
//! | `postgres` | `pg_catalog` queries: columns, foreign keys, indexes, samples |
//! | `mysql` | `information_schema` queries of MariaDB and MySQL |
//! | `keys` | Redis `SCAN` and S3 listings, sampled |

mod keys;
mod mysql;
mod postgres;

use std::fmt;

pub use keys::{sample_objects, sample_redis_keys};

use crate::connection::StoreConnection;
use crate::sql::Dialect;

/// How many rows of each table are sampled.
pub const SAMPLE_ROWS: u32 = 500;
/// How many Redis keys or S3 objects are sampled.
pub const SAMPLE_KEYS: usize = 5_000;

/// Values read from a store, kept in memory to classify what holds personal data. Its `Debug`
/// prints how many there are, never what they are.
#[derive(Clone, Default)]
pub struct Samples(Vec<String>);

impl Samples {
    /// The values (for classification in this process only).
    pub fn values(&self) -> &[String] {
        &self.0
    }

    /// How many values were sampled.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether nothing was sampled.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Vec<String>> for Samples {
    fn from(values: Vec<String>) -> Self {
        Self(values)
    }
}

impl fmt::Debug for Samples {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Samples({} values)", self.0.len())
    }
}

/// What a column's type holds, as far as a data map cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind {
    /// Whole numbers.
    Integer,
    /// Text.
    Text,
    /// UUIDs.
    Uuid,
    /// Booleans.
    Boolean,
    /// Dates and times.
    Time,
    /// Anything else (numbers with fractions, binary, JSON, ...).
    Other,
}

/// One column.
#[derive(Debug, Clone)]
pub struct Column {
    /// Its name.
    pub name: String,
    /// Its type as the database prints it.
    pub type_name: String,
    /// What the type holds.
    pub kind: ColumnKind,
    /// Whether it takes NULL.
    pub nullable: bool,
    /// Non-null values of the first [`SAMPLE_ROWS`] rows (integer, text and UUID columns).
    pub samples: Samples,
}

/// A foreign key of a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignKey {
    /// The referencing columns.
    pub columns: Vec<String>,
    /// The referenced table.
    pub parent: String,
    /// The referenced columns.
    pub parent_columns: Vec<String>,
    /// Whether deleting the parent row deletes this row too.
    pub cascades: bool,
}

/// An index of a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Index {
    /// Its columns, in order.
    pub columns: Vec<String>,
    /// Whether it is unique (the primary key's included).
    pub unique: bool,
}

/// One table of the database's default schema.
#[derive(Debug, Clone)]
pub struct Table {
    /// Its name.
    pub name: String,
    /// Its columns, in order.
    pub columns: Vec<Column>,
    /// Its primary key's columns.
    pub primary_key: Vec<String>,
    /// Its foreign keys.
    pub foreign_keys: Vec<ForeignKey>,
    /// Its indexes.
    pub indexes: Vec<Index>,
    /// Rows sampled (at most [`SAMPLE_ROWS`]).
    pub rows_sampled: usize,
}

impl Table {
    /// The column `name`.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// The tables of a SQL database's default schema (PostgreSQL `current_schema()`, MariaDB
/// `DATABASE()`).
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// The tables, by name.
    pub tables: Vec<Table>,
}

impl Catalog {
    /// The table `name`.
    pub fn table(&self, name: &str) -> Option<&Table> {
        self.tables.iter().find(|t| t.name == name)
    }
}

/// The store cannot be read. The message names what was being read, never a value.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {detail}")]
pub struct DiscoveryError {
    what: &'static str,
    detail: String,
}

impl DiscoveryError {
    fn sql(what: &'static str, error: &sqlx::Error) -> Self {
        // The database's own message can quote values; its code and kind are enough.
        let detail = match error.as_database_error() {
            Some(db) => format!(
                "database error {}",
                db.code().map(|c| c.into_owned()).unwrap_or_default()
            ),
            None => match crate::sql::describe_non_database(error) {
                crate::sql::Fault::Transient(d) => d,
                crate::sql::Fault::Permanent { detail, .. } => detail,
            },
        };
        Self { what, detail }
    }

    fn other(what: &'static str, detail: impl Into<String>) -> Self {
        Self {
            what,
            detail: detail.into(),
        }
    }
}

/// Reads the catalog of a SQL store, sampling [`SAMPLE_ROWS`] rows of every table.
pub async fn read_catalog(connection: &StoreConnection) -> Result<Catalog, DiscoveryError> {
    match connection {
        StoreConnection::Postgres(pool) => postgres::read(pool).await,
        StoreConnection::Mysql(pool) => mysql::read(pool).await,
        _ => Err(DiscoveryError::other(
            "reading the catalog",
            "the store is not a SQL database",
        )),
    }
}

/// Puts foreign keys and indexes read as rows `(table, name, column, ...)` together.
/// The columns of `table` worth sampling (integer, text, UUID) and the query that reads their
/// first [`SAMPLE_ROWS`] rows as text; `None` when it has no such column.
fn sample_query(dialect: Dialect, table: &Table) -> Option<(Vec<usize>, String)> {
    let sampled: Vec<usize> = (0..table.columns.len())
        .filter(|i| {
            matches!(
                table.columns[*i].kind,
                ColumnKind::Integer | ColumnKind::Text | ColumnKind::Uuid
            )
        })
        .collect();
    if sampled.is_empty() {
        return None;
    }
    let list: Vec<String> = sampled
        .iter()
        .map(|i| dialect.as_text(&dialect.ident(&table.columns[*i].name)))
        .collect();
    let query = format!(
        "SELECT {} FROM {} LIMIT {SAMPLE_ROWS}",
        list.join(", "),
        dialect.ident(&table.name)
    );
    Some((sampled, query))
}

/// Files what [`sample_query`] read (`rows` rows; per sampled column its non-null values)
/// under the sampled columns.
fn file_samples(table: &mut Table, sampled: &[usize], rows: usize, values: Vec<Vec<String>>) {
    table.rows_sampled = rows;
    for (slot, values) in values.into_iter().enumerate() {
        table.columns[sampled[slot]].samples = values.into();
    }
}

fn attach(
    tables: &mut [Table],
    foreign_keys: Vec<(String, ForeignKey)>,
    indexes: Vec<(String, Index)>,
) {
    for (table, key) in foreign_keys {
        if let Some(t) = tables.iter_mut().find(|t| t.name == table) {
            t.foreign_keys.push(key);
        }
    }
    for (table, index) in indexes {
        if let Some(t) = tables.iter_mut().find(|t| t.name == table) {
            t.indexes.push(index);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_never_print_their_values() {
        let samples = Samples::from(vec!["ada@example.com".to_owned()]);
        assert_eq!(format!("{samples:?}"), "Samples(1 values)");
    }
}
