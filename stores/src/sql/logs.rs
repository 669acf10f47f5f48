//! Log tables: retention deletes their rows older than the data map's limit in short batches,
//! each its own transaction.

use lethe_common::worker::TaskError;

use super::connector::SqlConnector;
use super::queries::{LogStatements, log_statements};
use super::session::{Backend, During, Session};

impl<B: Backend> SqlConnector<B> {
    /// The collections the data map marks as log tables.
    pub(crate) fn log_tables(&self) -> Vec<(String, lethe_common::datamap::LogTable)> {
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
