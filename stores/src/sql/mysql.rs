//! MariaDB and MySQL: transactions with a lock-wait timeout, the `information_schema` queries
//! of the live schema check, and which errors are worth a retry.

use std::collections::BTreeSet;

use futures::StreamExt as _;
use futures::stream::BoxStream;
use sqlx::mysql::{MySqlArguments, MySqlDatabaseError};
use sqlx::query::Query;
use sqlx::{MySql, MySqlPool, Row as _, Transaction};

use super::dialect::Dialect;
use super::schema::{ColumnInfo, Family, LiveSchema, TableName};
use super::session::{Backend, Fault, Session, describe_non_database, impl_session};
use super::statement::{Bind, Statement};

/// How long a statement waits for a row lock before the task is retried later.
const LOCK_TIMEOUT: &str = "SET SESSION innodb_lock_wait_timeout = 15";

/// A MariaDB or MySQL store.
pub(crate) struct MySqlBackend {
    pool: MySqlPool,
}

impl MySqlBackend {
    pub(crate) fn new(pool: MySqlPool) -> Self {
        Self { pool }
    }
}

/// An open MariaDB transaction.
pub(crate) struct MySqlSession(Transaction<'static, MySql>);

fn bind_all<'q>(
    mut query: Query<'q, MySql, MySqlArguments>,
    binds: &'q [Bind],
) -> Query<'q, MySql, MySqlArguments> {
    for bind in binds {
        query = match bind {
            Bind::Bool(v) => query.bind(*v),
            Bind::Int(v) => query.bind(*v),
            Bind::Text(v) => query.bind(v.as_deref()),
            // The statement builder expands lists into one placeholder per value for MariaDB;
            // these never reach here.
            Bind::Ints(_) | Bind::Texts(_) => query,
        };
    }
    query
}

impl_session!(MySqlSession, Dialect::Mysql);

fn family(data_type: &str, column_type: &str) -> Family {
    match data_type {
        "tinyint" if column_type.starts_with("tinyint(1)") => Family::Boolean,
        "bit" if column_type == "bit(1)" => Family::Boolean,
        "tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint" => Family::Integer,
        "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" | "uuid" => {
            Family::Text
        }
        "datetime" | "timestamp" | "date" => Family::Time,
        _ => Family::Other,
    }
}

/// `?, ?, ...` for `n` values.
fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

impl Backend for MySqlBackend {
    type Session = MySqlSession;

    async fn begin(&self) -> Result<MySqlSession, sqlx::Error> {
        let mut transaction = self.pool.begin().await?;
        sqlx::query(LOCK_TIMEOUT).execute(&mut *transaction).await?;
        Ok(MySqlSession(transaction))
    }

    async fn begin_read(&self) -> Result<MySqlSession, sqlx::Error> {
        let mut transaction = self.pool.begin().await?;
        // TIMESTAMP columns read in UTC. A session setting: it stays on the pooled connection,
        // where it is as right for the next task.
        sqlx::query("SET time_zone = '+00:00'")
            .execute(&mut *transaction)
            .await?;
        Ok(MySqlSession(transaction))
    }

    async fn load_schema(&self, tables: &[TableName]) -> Result<LiveSchema, sqlx::Error> {
        let mut connection = self.pool.acquire().await?;
        let default_schema: Option<String> = sqlx::query_scalar("SELECT CAST(DATABASE() AS CHAR)")
            .fetch_one(&mut *connection)
            .await?;
        let default_schema = default_schema.unwrap_or_default();
        let schemas: Vec<String> = tables
            .iter()
            .map(|(schema, _)| schema.clone().unwrap_or_else(|| default_schema.clone()))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let names: Vec<String> = tables.iter().map(|(_, name)| name.clone()).collect();
        let sql = format!(
            "SELECT CAST(TABLE_SCHEMA AS CHAR), CAST(TABLE_NAME AS CHAR), \
                    CAST(COLUMN_NAME AS CHAR), CAST(COLUMN_TYPE AS CHAR), \
                    CAST(DATA_TYPE AS CHAR), CAST(IS_NULLABLE AS CHAR), \
                    CAST(CHARACTER_MAXIMUM_LENGTH AS SIGNED) \
             FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA IN ({}) AND TABLE_NAME IN ({}) \
             ORDER BY TABLE_SCHEMA, TABLE_NAME, ORDINAL_POSITION",
            placeholders(schemas.len()),
            placeholders(names.len())
        );
        let mut query = sqlx::query(&sql);
        for value in schemas.iter().chain(&names) {
            query = query.bind(value);
        }
        let rows = query.fetch_all(&mut *connection).await?;
        let mut live = LiveSchema {
            default_schema,
            ..LiveSchema::default()
        };
        for row in rows {
            let column_type: String = row.try_get(3)?;
            let data_type: String = row.try_get(4)?;
            let nullable: String = row.try_get(5)?;
            live.tables
                .entry((row.try_get(0)?, row.try_get(1)?))
                .or_default()
                .push(ColumnInfo {
                    name: row.try_get(2)?,
                    family: family(
                        &data_type.to_ascii_lowercase(),
                        &column_type.to_ascii_lowercase(),
                    ),
                    type_name: column_type,
                    nullable: nullable.eq_ignore_ascii_case("YES"),
                    max_chars: row.try_get(6)?,
                });
        }
        let sql = format!(
            "SELECT CAST(CONSTRAINT_SCHEMA AS CHAR), CAST(TABLE_NAME AS CHAR), \
                    CAST(UNIQUE_CONSTRAINT_SCHEMA AS CHAR), CAST(REFERENCED_TABLE_NAME AS CHAR) \
             FROM information_schema.REFERENTIAL_CONSTRAINTS \
             WHERE CONSTRAINT_SCHEMA IN ({})",
            placeholders(schemas.len())
        );
        let mut query = sqlx::query(&sql);
        for schema in &schemas {
            query = query.bind(schema);
        }
        for row in query.fetch_all(&mut *connection).await? {
            live.foreign_keys.push((
                (row.try_get(0)?, row.try_get(1)?),
                (row.try_get(2)?, row.try_get(3)?),
            ));
        }
        Ok(live)
    }

    fn fault(error: &sqlx::Error) -> Fault {
        let Some(database) = error.as_database_error() else {
            return describe_non_database(error);
        };
        let (number, state) = match database.try_downcast_ref::<MySqlDatabaseError>() {
            Some(e) => (e.number(), e.code().unwrap_or("HY000").to_owned()),
            None => (
                0,
                database.code().map(|c| c.into_owned()).unwrap_or_default(),
            ),
        };
        // The server's message can quote values ("Duplicate entry '...'"): only the numbers.
        let detail = format!("error {number} (SQLSTATE {state})");
        match number {
            // Lock wait timeout, deadlock, too many connections, server shutdown, gone away,
            // lost connection, query interrupted, connection killed, read-only (failover).
            1205 | 1213 | 1040 | 1053 | 2006 | 2013 | 1317 | 1927 | 1290 | 1792 => {
                Fault::Transient(detail)
            }
            1146 | 1054 | 1109 => Fault::Permanent {
                code: "schema_mismatch",
                detail: format!("{detail} (a table or column the data map names is gone)"),
            },
            1062 | 1451 | 1452 | 1048 | 1364 | 4025 => Fault::Permanent {
                code: "constraint_violation",
                detail,
            },
            1142 | 1143 | 1044 | 1045 => Fault::Permanent {
                code: "permission_denied",
                detail,
            },
            _ if state.starts_with("08") || state.starts_with("40") => Fault::Transient(detail),
            _ if state.starts_with("22") => Fault::Permanent {
                code: "invalid_value",
                detail,
            },
            _ => Fault::Permanent {
                code: "store_error",
                detail,
            },
        }
    }
}
