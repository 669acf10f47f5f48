//! The ledger database: its pool and its migrations.

use std::time::Duration;

use secrecy::ExposeSecret;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::config::LedgerSettings;

/// The ledger's schema migrations (`migrations/`), applied by every daemon that uses the ledger
/// (concurrent runs are serialised by sqlx's advisory lock) and by tests.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// The ledger could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The URL is malformed.
    #[error("ledger.url is not a valid PostgreSQL URL: {0}")]
    BadUrl(sqlx::Error),
    /// The database did not answer.
    #[error("cannot reach the ledger database at {target}: {source}")]
    Unreachable {
        /// Host, port and database name (no credentials).
        target: String,
        /// Why.
        source: sqlx::Error,
    },
    /// A migration failed.
    #[error("cannot apply the ledger migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Opens a pool on the ledger, failing within `connect_timeout` if the database is down.
pub async fn connect(settings: &LedgerSettings) -> Result<PgPool, LedgerError> {
    let options: PgConnectOptions = settings
        .url
        .expose_secret()
        .parse()
        .map_err(LedgerError::BadUrl)?;
    let target = format!(
        "{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("")
    );
    PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(settings.connect_timeout)
        .idle_timeout(Some(Duration::from_secs(300)))
        .connect_with(options)
        .await
        .map_err(|source| LedgerError::Unreachable { target, source })
}

/// Opens the ledger and brings its schema up to date.
pub async fn connect_and_migrate(settings: &LedgerSettings) -> Result<PgPool, LedgerError> {
    let pool = connect(settings).await?;
    MIGRATOR.run(&pool).await?;
    Ok(pool)
}
