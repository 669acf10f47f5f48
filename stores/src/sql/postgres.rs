//! PostgreSQL: transactions with lock and statement timeouts, the catalog queries of the live
//! schema check, and which SQLSTATEs are worth a retry.

use std::collections::BTreeSet;

use futures::StreamExt as _;
use futures::stream::BoxStream;
use sqlx::postgres::{PgArguments, PgDatabaseError};
use sqlx::query::Query;
use sqlx::{PgPool, Postgres, Row as _, Transaction};

use super::dialect::Dialect;
use super::schema::{ColumnInfo, Family, LiveSchema, TableName};
use super::session::{Backend, Fault, Session, describe_non_database, impl_session};
use super::statement::{Bind, Statement};

/// How long a statement waits for a row lock before the task is retried later (an application
/// transaction holding the subject's rows must not hold the eraser forever).
const LOCK_TIMEOUT: &str = "SET LOCAL lock_timeout = '15s'";
/// Longest statement of a task.
const STATEMENT_TIMEOUT: &str = "SET LOCAL statement_timeout = '300s'";
/// Longest statement of a collect task, which streams a whole collection of the subject.
const READ_STATEMENT_TIMEOUT: &str = "SET LOCAL statement_timeout = '3600s'";

/// A PostgreSQL store.
pub(crate) struct PgBackend {
    pool: PgPool,
}

impl PgBackend {
    pub(crate) fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

/// An open PostgreSQL transaction.
pub(crate) struct PgSession(Transaction<'static, Postgres>);

fn bind_all<'q>(
    mut query: Query<'q, Postgres, PgArguments>,
    binds: &'q [Bind],
) -> Query<'q, Postgres, PgArguments> {
    for bind in binds {
        query = match bind {
            Bind::Bool(v) => query.bind(*v),
            Bind::Int(v) => query.bind(*v),
            Bind::Text(v) => query.bind(v.as_deref()),
            Bind::Ints(v) => query.bind(v.as_slice()),
            Bind::Texts(v) => query.bind(v.as_slice()),
        };
    }
    query
}

impl_session!(PgSession, Dialect::Postgres);

fn family(base_type: &str) -> Family {
    match base_type {
        "int2" | "int4" | "int8" => Family::Integer,
        "text" | "varchar" | "bpchar" | "citext" | "name" => Family::Text,
        "uuid" => Family::Uuid,
        "bool" => Family::Boolean,
        "timestamp" | "timestamptz" | "date" => Family::Time,
        _ => Family::Other,
    }
}

impl Backend for PgBackend {
    type Session = PgSession;

    async fn begin(&self) -> Result<PgSession, sqlx::Error> {
        let mut transaction = self.pool.begin().await?;
        sqlx::query(LOCK_TIMEOUT).execute(&mut *transaction).await?;
        sqlx::query(STATEMENT_TIMEOUT)
            .execute(&mut *transaction)
            .await?;
        Ok(PgSession(transaction))
    }

    async fn begin_read(&self) -> Result<PgSession, sqlx::Error> {
        let mut transaction = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *transaction)
            .await?;
        sqlx::query(LOCK_TIMEOUT).execute(&mut *transaction).await?;
        sqlx::query(READ_STATEMENT_TIMEOUT)
            .execute(&mut *transaction)
            .await?;
        sqlx::query("SET LOCAL TimeZone = 'UTC'")
            .execute(&mut *transaction)
            .await?;
        Ok(PgSession(transaction))
    }

    async fn load_schema(&self, tables: &[TableName]) -> Result<LiveSchema, sqlx::Error> {
        let mut connection = self.pool.acquire().await?;
        let default_schema: String = sqlx::query_scalar("SELECT current_schema()::text")
            .fetch_one(&mut *connection)
            .await?;
        let schemas: Vec<String> = tables
            .iter()
            .map(|(schema, _)| schema.clone().unwrap_or_else(|| default_schema.clone()))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let names: Vec<String> = tables.iter().map(|(_, name)| name.clone()).collect();
        // Domains are described by their base type.
        let rows = sqlx::query(
            "SELECT n.nspname::text, c.relname::text, a.attname::text, \
                    format_type(a.atttypid, a.atttypmod), \
                    COALESCE(bt.typname, t.typname)::text, \
                    NOT a.attnotnull, \
                    CASE WHEN COALESCE(bt.oid, t.oid) IN (1042, 1043) AND a.atttypmod > 4 \
                         THEN (a.atttypmod - 4)::int8 END \
             FROM pg_attribute a \
             JOIN pg_class c ON c.oid = a.attrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_type t ON t.oid = a.atttypid \
             LEFT JOIN pg_type bt ON t.typtype = 'd' AND bt.oid = t.typbasetype \
             WHERE a.attnum > 0 AND NOT a.attisdropped \
               AND c.relkind IN ('r', 'p', 'v', 'm', 'f') \
               AND n.nspname = ANY($1) AND c.relname = ANY($2) \
             ORDER BY 1, 2, a.attnum",
        )
        .bind(&schemas)
        .bind(&names)
        .fetch_all(&mut *connection)
        .await?;
        let mut live = LiveSchema {
            default_schema,
            ..LiveSchema::default()
        };
        for row in rows {
            let base: String = row.try_get(4)?;
            live.tables
                .entry((row.try_get(0)?, row.try_get(1)?))
                .or_default()
                .push(ColumnInfo {
                    name: row.try_get(2)?,
                    type_name: row.try_get(3)?,
                    family: family(&base),
                    nullable: row.try_get(5)?,
                    max_chars: row.try_get(6)?,
                });
        }
        let keys = sqlx::query(
            "SELECT cn.nspname::text, cc.relname::text, pn.nspname::text, pc.relname::text \
             FROM pg_constraint con \
             JOIN pg_class cc ON cc.oid = con.conrelid \
             JOIN pg_namespace cn ON cn.oid = cc.relnamespace \
             JOIN pg_class pc ON pc.oid = con.confrelid \
             JOIN pg_namespace pn ON pn.oid = pc.relnamespace \
             WHERE con.contype = 'f' AND cn.nspname = ANY($1) AND pn.nspname = ANY($1)",
        )
        .bind(&schemas)
        .fetch_all(&mut *connection)
        .await?;
        for row in keys {
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
        let code = database.code().map(|c| c.into_owned()).unwrap_or_default();
        // Names of constraints and tables help operators and hold no values; the message and
        // detail can quote values and are left out.
        let mut detail = format!("SQLSTATE {code}");
        if let Some(pg) = database.try_downcast_ref::<PgDatabaseError>() {
            if let Some(constraint) = pg.constraint() {
                detail.push_str(&format!(", constraint `{constraint}`"));
            }
            if let Some(column) = pg.column() {
                detail.push_str(&format!(", column `{column}`"));
            }
        }
        let class = code.get(..2).unwrap_or_default();
        match (class, code.as_str()) {
            // Connection exceptions, serialization failures and deadlocks, lack of resources,
            // operator intervention (shutdown, statement timeout), lock not available.
            ("08" | "40" | "53" | "57" | "58", _) | (_, "55P03" | "55006") => {
                Fault::Transient(detail)
            }
            (_, "42P01" | "42703" | "42704" | "42883") => Fault::Permanent {
                code: "schema_mismatch",
                detail: format!("{detail} (a table, column or type the data map names is gone)"),
            },
            ("23", _) => Fault::Permanent {
                code: "constraint_violation",
                detail,
            },
            ("22", _) => Fault::Permanent {
                code: "invalid_value",
                detail,
            },
            (_, "42501") => Fault::Permanent {
                code: "permission_denied",
                detail,
            },
            _ => Fault::Permanent {
                code: "store_error",
                detail,
            },
        }
    }
}
