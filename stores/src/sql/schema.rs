//! The parts of a live schema the data map refers to, as the backends read them from the
//! catalogs.

use std::collections::BTreeMap;

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

pub(crate) fn split_table(table: &str) -> TableName {
    match table.split_once('.') {
        Some((schema, name)) => (Some(schema.to_owned()), name.to_owned()),
        None => (None, table.to_owned()),
    }
}
