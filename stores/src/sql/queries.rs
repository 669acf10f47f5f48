//! The statement of every step of every task flow, built for either dialect with every value
//! bound: pure functions from the plan and the subject's values to [`Statement`]s. The flows
//! (`flows/`) decide which to run, in what order, in which transaction.

use lethe_common::datamap::Mask;

use super::dialect::{Dialect, REDACTED};
use super::plan::{CollectionPlan, Target};
use super::schema::{ColumnInfo, Family};
use super::statement::{Bind, Matcher, Sql, Statement};

/// `SELECT <identity columns as text> FROM t WHERE <match>`: the identities a collection
/// yields for the subject, one column per `(identity, column)` of `columns` (its `match` and
/// `provides` columns: a row found by phone also yields its email).
pub(crate) fn provided_values(
    dialect: Dialect,
    collection: &CollectionPlan,
    matcher: &Matcher,
    columns: &[(&str, &str)],
) -> Statement {
    let mut sql = Sql::new(dialect);
    sql.push("SELECT ");
    for (i, (_, column)) in columns.iter().enumerate() {
        if i > 0 {
            sql.push(", ");
        }
        sql.push(&dialect.as_text(column));
    }
    sql.push(" FROM ").push(&collection.table).push(" WHERE ");
    sql.push_match(matcher, None);
    sql.finish()
}

/// `(m1 AND m2 ...)`: every masked column of a row holds what its mask writes.
pub(crate) fn all_masked(dialect: Dialect, masks: &[(String, Mask)]) -> String {
    let parts: Vec<String> = masks
        .iter()
        .map(|(column, mask)| dialect.masked(column, *mask))
        .collect();
    format!("({})", parts.join(" AND "))
}

/// Locks the subject's rows of a masked collection that are not masked yet; their number is
/// what the mask changes.
pub(crate) fn lock_unmasked(
    dialect: Dialect,
    collection: &CollectionPlan,
    matcher: &Matcher,
    masks: &[(String, Mask)],
) -> Statement {
    let mut sql = Sql::new(dialect);
    sql.push("SELECT 1 FROM ")
        .push(&collection.table)
        .push(" WHERE ");
    sql.push_match(matcher, None);
    sql.push(" AND NOT ")
        .push(&all_masked(dialect, masks))
        .push(" FOR UPDATE");
    sql.finish()
}

/// Writes the `null`, `redact` and `random` masks of the subject's unmasked rows (the `hash`
/// mask needs the key and is written by [`hash_update`]).
pub(crate) fn mask_update(
    dialect: Dialect,
    collection: &CollectionPlan,
    matcher: &Matcher,
    masks: &[(String, Mask)],
) -> Statement {
    let mut sql = Sql::new(dialect);
    sql.push("UPDATE ").push(&collection.table).push(" SET ");
    for (i, (column, mask)) in masks.iter().enumerate() {
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
    sql.push_match(matcher, None);
    sql.push(" AND NOT ").push(&all_masked(dialect, masks));
    sql.finish()
}

/// `DELETE FROM t WHERE <match>`.
pub(crate) fn delete_rows(
    dialect: Dialect,
    collection: &CollectionPlan,
    matcher: &Matcher,
) -> Statement {
    let mut sql = Sql::new(dialect);
    sql.push("DELETE FROM ")
        .push(&collection.table)
        .push(" WHERE ");
    sql.push_match(matcher, None);
    sql.finish()
}

/// The distinct values of `column` among the subject's rows that are not hashed yet.
pub(crate) fn unhashed_values(
    dialect: Dialect,
    collection: &CollectionPlan,
    matcher: &Matcher,
    column: &str,
) -> Statement {
    let mut sql = Sql::new(dialect);
    sql.push("SELECT DISTINCT ")
        .push(&dialect.as_text(column))
        .push(" FROM ")
        .push(&collection.table)
        .push(" WHERE ");
    sql.push_match(matcher, None);
    sql.push(" AND NOT ")
        .push(&dialect.masked(column, Mask::Hash));
    sql.finish()
}

/// Replaces each old value of `column` among the subject's rows by its hash: a join with the
/// (old, new) pairs.
pub(crate) fn hash_update(
    dialect: Dialect,
    collection: &CollectionPlan,
    matcher: &Matcher,
    column: &str,
    old: &[String],
    new: Vec<String>,
) -> Statement {
    let mut sql = Sql::new(dialect);
    match dialect {
        Dialect::Postgres => {
            sql.push("UPDATE ")
                .push(&collection.table)
                .push(" AS lethe_t SET ")
                .push(column)
                .push(" = lethe_m.lethe_new FROM (SELECT unnest(")
                .bind(Bind::Texts(old.to_vec()))
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
            for (i, (old, new)) in old.iter().zip(new).enumerate() {
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
    sql.finish()
}

/// Counts the subject's rows still matching, or, with `unmasked`, those whose masked columns
/// do not hold what the masks write.
pub(crate) fn count_remaining(
    dialect: Dialect,
    collection: &CollectionPlan,
    matcher: &Matcher,
    unmasked: Option<&[(String, Mask)]>,
) -> Statement {
    let mut sql = Sql::new(dialect);
    sql.push("SELECT COUNT(*) FROM ")
        .push(&collection.table)
        .push(" WHERE ");
    sql.push_match(matcher, None);
    if let Some(masks) = unmasked {
        sql.push(" AND NOT ").push(&all_masked(dialect, masks));
    }
    sql.finish()
}

/// The subject's rows of `collection`, each as the JSON text of one object with every column
/// (PostgreSQL: `row_to_json`; MariaDB: `JSON_OBJECT` over the live schema's columns, binary
/// columns as hex, boolean columns as `true`/`false`).
pub(crate) fn select_json(
    dialect: Dialect,
    collection: &CollectionPlan,
    matcher: &Matcher,
) -> Statement {
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

/// A rectified value as text (the database converts it to the column's type), or NULL.
pub(crate) fn change_text(value: &serde_json::Value, dialect: Dialect) -> Option<String> {
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

/// Sets the rectified columns of the subject's rows, touching only rows that change (so
/// running it again reports zero).
pub(crate) fn rectify_update(
    dialect: Dialect,
    collection: &CollectionPlan,
    matcher: &Matcher,
    targets: &[(&Target, Option<String>)],
) -> Statement {
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
    sql.push_match(matcher, None);
    sql.push(" AND (");
    for (i, (target, text)) in targets.iter().enumerate() {
        if i > 0 {
            sql.push(" OR ");
        }
        let value = value(&mut sql, target, text);
        sql.push(&dialect.distinct_from(&target.column, &value));
    }
    sql.push(")");
    sql.finish()
}

/// Sets a flag column of the subject's rows to `value` where it differs.
pub(crate) fn flag_update(
    dialect: Dialect,
    collection: &CollectionPlan,
    matcher: &Matcher,
    column: &str,
    value: bool,
) -> Statement {
    let mut sql = Sql::new(dialect);
    sql.push("UPDATE ")
        .push(&collection.table)
        .push(" SET ")
        .push(column)
        .push(" = ")
        .bind(Bind::Bool(value))
        .push(" WHERE ");
    sql.push_match(matcher, None);
    let again = sql.param(Bind::Bool(value));
    sql.push(" AND ")
        .push(&dialect.distinct_from(column, &again));
    sql.finish()
}

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
