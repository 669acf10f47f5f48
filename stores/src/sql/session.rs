//! What a backend must do: open transactions, run statements, read the catalogs, classify its
//! errors. Written once as traits so the task flows serve both databases.

use std::future::Future;

use super::dialect::Dialect;
use super::schema::{LiveSchema, TableName};
use super::statement::Statement;

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
    /// Rolls back (a dry run: every change counted, none kept).
    fn rollback(self) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
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

            async fn rollback(self) -> Result<(), sqlx::Error> {
                self.0.rollback().await
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
    pub(crate) action: &'static str,
    pub(crate) collection: Option<String>,
    pub(crate) error: sqlx::Error,
}

pub(crate) trait During<T> {
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
