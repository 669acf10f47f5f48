//! Connections to the stores of the data map, built from the credentials each store's
//! `*_env` keys name: environment variables by default, or values a program gives in code
//! (`Settings::with_credential`). Connections are lazy: a store that is down at start-up delays only
//! its own tasks (and shows on `/readyz`), it does not keep the daemon from starting.

use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{MySqlPool, PgPool};
use tokio::sync::OnceCell;

use lethe_common::config::{S3Settings, Settings};
use lethe_common::datamap::{DataMap, RedisStore, S3Store, SqlStore, Store};
use lethe_common::ids::StoreName;
use lethe_common::ops::Readiness;

/// A store whose connection cannot be set up from the configuration.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The credentials variable is unset (and no value was given in code).
    #[error(
        "store `{store}`: environment variable {variable} is not set (the data map names it in stores.{store}.{key})"
    )]
    MissingVariable {
        /// The store.
        store: StoreName,
        /// The variable.
        variable: String,
        /// The data-map key naming it.
        key: &'static str,
    },
    /// The URL is malformed.
    #[error("store `{store}`: the URL in {variable} is invalid: {message}")]
    BadUrl {
        /// The store.
        store: StoreName,
        /// The variable.
        variable: String,
        /// Why (never the URL itself, which may hold a password).
        message: String,
    },
    /// The store is not in the data map.
    #[error("store `{0}` is not in the data map")]
    Unknown(String),
    /// An S3 store needs Lethe's `[s3]` settings for what it does not name itself.
    #[error("store `{0}`: an S3 store without its own endpoint needs the [s3] section")]
    NoS3Settings(StoreName),
}

/// A live (lazily connecting) handle on one store.
#[derive(Clone)]
pub enum StoreConnection {
    /// PostgreSQL.
    Postgres(PgPool),
    /// MySQL or MariaDB.
    Mysql(MySqlPool),
    /// Redis.
    Redis(RedisHandle),
    /// S3.
    S3(aws_sdk_s3::Client),
    /// A processor's HTTP API.
    Http(crate::http::HttpHandle),
}

/// A Redis client whose connection manager is created on first use.
#[derive(Clone)]
pub struct RedisHandle {
    client: redis::Client,
    manager: Arc<OnceCell<redis::aio::ConnectionManager>>,
}

impl RedisHandle {
    /// The shared multiplexed connection, connecting on first use.
    pub async fn connection(&self) -> redis::RedisResult<redis::aio::ConnectionManager> {
        self.manager
            .get_or_try_init(|| async {
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(5)))
                    .set_response_timeout(Some(Duration::from_secs(30)));
                redis::aio::ConnectionManager::new_with_config(self.client.clone(), config).await
            })
            .await
            .cloned()
    }
}

fn require(
    settings: &Settings,
    store: &StoreName,
    name: &str,
    key: &'static str,
) -> Result<SecretString, StoreError> {
    settings
        .credentials
        .get(name)
        .ok_or_else(|| StoreError::MissingVariable {
            store: store.clone(),
            variable: name.to_owned(),
            key,
        })
}

/// Builds the connection of store `name` from its data-map entry and the credentials of
/// `settings`; an S3 store takes what it does not name itself from Lethe's `[s3]` settings.
pub fn connect(
    name: &StoreName,
    store: &Store,
    settings: &Settings,
) -> Result<StoreConnection, StoreError> {
    let variable = |name: &StoreName, variable: &str, key| require(settings, name, variable, key);
    let bad_url = |variable: &str, message: String| StoreError::BadUrl {
        store: name.clone(),
        variable: variable.to_owned(),
        message,
    };
    match store {
        Store::Postgres(SqlStore { url_env, .. }) => {
            let url = variable(name, url_env, "url_env")?;
            let options: PgConnectOptions = url
                .expose_secret()
                .parse()
                .map_err(|e: sqlx::Error| bad_url(url_env, e.to_string()))?;
            Ok(StoreConnection::Postgres(
                PgPoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(Duration::from_secs(5))
                    .connect_lazy_with(options),
            ))
        }
        Store::Mysql(SqlStore { url_env, .. }) => {
            let url = variable(name, url_env, "url_env")?;
            let options: MySqlConnectOptions = url
                .expose_secret()
                .parse()
                .map_err(|e: sqlx::Error| bad_url(url_env, e.to_string()))?;
            Ok(StoreConnection::Mysql(
                MySqlPoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(Duration::from_secs(5))
                    .connect_lazy_with(options),
            ))
        }
        Store::Redis(RedisStore { url_env, .. }) => {
            let url = variable(name, url_env, "url_env")?;
            let client = redis::Client::open(url.expose_secret())
                .map_err(|e| bad_url(url_env, e.to_string()))?;
            Ok(StoreConnection::Redis(RedisHandle {
                client,
                manager: Arc::new(OnceCell::new()),
            }))
        }
        Store::S3(s3) => Ok(StoreConnection::S3(lethe_common::s3::client(&s3_settings(
            name, s3, settings,
        )?))),
        Store::Http(http) => Ok(StoreConnection::Http(crate::http::HttpHandle::new(
            name,
            http,
            &|variable, key| require(settings, name, variable, key),
        )?)),
    }
}

fn s3_settings(
    name: &StoreName,
    store: &S3Store,
    settings: &Settings,
) -> Result<S3Settings, StoreError> {
    let variable = |name: &StoreName, variable: &str, key| require(settings, name, variable, key);
    let base = settings.s3.clone();
    let endpoint = match &store.endpoint_env {
        Some(env) => Some(
            variable(name, env, "endpoint_env")?
                .expose_secret()
                .to_owned(),
        ),
        None => base.as_ref().and_then(|s| s.endpoint.clone()),
    };
    let access_key_id = match &store.access_key_id_env {
        Some(env) => variable(name, env, "access_key_id_env")?
            .expose_secret()
            .to_owned(),
        None => base
            .as_ref()
            .map(|s| s.access_key_id.clone())
            .ok_or_else(|| StoreError::NoS3Settings(name.clone()))?,
    };
    let secret_access_key = match &store.secret_access_key_env {
        Some(env) => variable(name, env, "secret_access_key_env")?,
        None => base
            .as_ref()
            .map(|s| s.secret_access_key.clone())
            .ok_or_else(|| StoreError::NoS3Settings(name.clone()))?,
    };
    Ok(S3Settings {
        endpoint,
        region: base
            .as_ref()
            .map_or_else(|| "us-east-1".to_owned(), |s| s.region.clone()),
        bucket: store.bucket.clone(),
        access_key_id,
        secret_access_key,
        force_path_style: base.as_ref().is_none_or(|s| s.force_path_style),
        checksums: base.map(|s| s.checksums).unwrap_or_default(),
    })
}

impl StoreConnection {
    /// Checks that the store answers. The message names the kind of failure, never a URL.
    pub async fn ping(&self, store: &Store) -> Result<(), String> {
        match (self, store) {
            (StoreConnection::Postgres(pool), _) => sqlx::query("SELECT 1")
                .execute(pool)
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            (StoreConnection::Mysql(pool), _) => sqlx::query("SELECT 1")
                .execute(pool)
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            (StoreConnection::Redis(handle), _) => {
                let mut connection = handle.connection().await.map_err(|e| e.to_string())?;
                redis::cmd("PING")
                    .query_async::<String>(&mut connection)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
            (StoreConnection::S3(client), Store::S3(s3)) => client
                .head_bucket()
                .bucket(&s3.bucket)
                .send()
                .await
                .map(drop)
                .map_err(|e| aws_sdk_s3::error::DisplayErrorContext(e).to_string()),
            (StoreConnection::S3(_), _) => Err("store kind mismatch".to_owned()),
            (StoreConnection::Http(handle), _) => handle.ping().await,
        }
    }
}

/// One store a worker serves: its data-map entry and its connection.
#[derive(Clone)]
pub struct ServedStore {
    /// The store's name.
    pub name: StoreName,
    /// Its data-map entry.
    pub store: Store,
    /// Its connection.
    pub connection: StoreConnection,
    /// The URL of a SQL or Redis store, for the field's own tools (`pg_dump`, `redis-cli`).
    pub url: Option<SecretString>,
}

/// The URL of a SQL or Redis store from the credentials of `settings` (none for S3).
pub fn store_url(
    name: &StoreName,
    store: &Store,
    settings: &Settings,
) -> Result<Option<SecretString>, StoreError> {
    match store {
        Store::Postgres(SqlStore { url_env, .. })
        | Store::Mysql(SqlStore { url_env, .. })
        | Store::Redis(RedisStore { url_env, .. }) => {
            require(settings, name, url_env, "url_env").map(Some)
        }
        // A processor is no database: nothing to dump or restore from a URL.
        Store::S3(_) | Store::Http(_) => Ok(None),
    }
}

/// The stores a worker serves: those named in `wanted`, or every store of the map when
/// `wanted` is empty. Every problem (unknown name, missing credentials) is reported at once.
pub fn served(
    map: &DataMap,
    wanted: &[String],
    settings: &Settings,
) -> anyhow::Result<Vec<ServedStore>> {
    let mut problems = Vec::new();
    let mut served = Vec::new();
    let names: Vec<StoreName> = if wanted.is_empty() {
        map.stores.keys().cloned().collect()
    } else {
        wanted
            .iter()
            .filter_map(|w| match StoreName::parse(w) {
                Ok(name) if map.stores.contains_key(&name) => Some(name),
                Ok(_) | Err(_) => {
                    problems.push(StoreError::Unknown(w.clone()).to_string());
                    None
                }
            })
            .collect()
    };
    for name in names {
        let Some(store) = map.stores.get(&name) else {
            continue;
        };
        match connect(&name, store, settings)
            .and_then(|connection| Ok((connection, store_url(&name, store, settings)?)))
        {
            Ok((connection, url)) => served.push(ServedStore {
                name,
                store: store.clone(),
                connection,
                url,
            }),
            Err(error) => problems.push(error.to_string()),
        }
    }
    if problems.is_empty() {
        Ok(served)
    } else {
        anyhow::bail!(
            "cannot serve the configured stores:\n  - {}",
            problems.join("\n  - ")
        )
    }
}

/// Readiness checks, one per served store (`store.<name>`).
pub fn readiness(stores: &[ServedStore], mut readiness: Readiness) -> Readiness {
    for served in stores {
        let served = served.clone();
        readiness = readiness.check(format!("store.{}", served.name), move || {
            let served = served.clone();
            async move { served.connection.ping(&served.store).await }
        });
    }
    readiness
}
