//! The one entry point of every task flow: a [`Connector`] per served store, dispatching to the
//! store kind's implementation, and the types the flows share with their callers.

use std::collections::BTreeMap;
use std::future::Future;

use lethe_common::datamap::Store;
use lethe_common::ids::StoreName;
use lethe_common::messages::{Identities, TaskReport};
use lethe_common::privacy::IdentityHasher;
use lethe_common::worker::TaskError;

use crate::connection::{ServedStore, StoreConnection};
use crate::{redis, s3, sql};

/// Which processing flag a restriction-family task sets or lifts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flag {
    /// Restriction of processing (Art. 18): the data map's `restrict`.
    Restrict,
    /// Objection to processing (Art. 21): the data map's `object`.
    Object,
}

impl Flag {
    /// `restrict` or `object`, as in the data map.
    pub fn as_str(self) -> &'static str {
        match self {
            Flag::Restrict => "restrict",
            Flag::Object => "object",
        }
    }
}

/// What the live schema check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaCheck {
    /// The data map fits the store (or the store kind has no schema to check).
    Fits,
    /// Every mismatch, each naming the data-map place and the table or column.
    Problems(Vec<String>),
}

/// A store whose data-map entry and connection do not go together (a bug in the caller).
#[derive(Debug, thiserror::Error)]
#[error("store `{0}`: its connection is not of the kind its data-map entry names")]
pub struct KindMismatch(pub StoreName);

/// Where a collect task puts what it finds: per collection a stream of JSON records, and the
/// objects of object stores. Implementations write to the export staging area.
pub trait CollectSink: Send {
    /// Starts collection `name` (the data map's table, key template or prefix template).
    fn begin(&mut self, name: &str) -> impl Future<Output = Result<(), TaskError>> + Send;
    /// One record of the current collection: the JSON text of one object (no line break).
    fn record(&mut self, json: &[u8]) -> impl Future<Output = Result<(), TaskError>> + Send;
    /// Ends the current collection.
    fn end(&mut self) -> impl Future<Output = Result<(), TaskError>> + Send;
    /// One object of the current collection of an object store, to copy.
    fn object(
        &mut self,
        object: SourceObject<'_>,
    ) -> impl Future<Output = Result<(), TaskError>> + Send;
}

/// An object of an S3 store that belongs to the subject.
#[derive(Debug, Clone, Copy)]
pub struct SourceObject<'a> {
    /// The store's client (its own endpoint and credentials).
    pub client: &'a aws_sdk_s3::Client,
    /// The store's bucket.
    pub bucket: &'a str,
    /// The object's key.
    pub key: &'a str,
    /// Its size in bytes.
    pub size: u64,
    /// Its ETag.
    pub e_tag: Option<&'a str>,
    /// The store uses Lethe's own S3 endpoint and credentials, so a copy can be made inside
    /// the S3 service (`CopyObject`) instead of through this process.
    pub shares_lethe_credentials: bool,
}

/// Carries out tasks in one store.
pub struct Connector {
    store: StoreName,
    inner: Inner,
}

enum Inner {
    Postgres(sql::SqlConnector<sql::postgres::PgBackend>),
    Mysql(sql::SqlConnector<sql::mysql::MySqlBackend>),
    Redis(Box<redis::RedisConnector>),
    S3(Box<s3::S3Connector>),
}

impl Connector {
    /// A connector for `served`; `hasher` keys the `hash` mask.
    pub fn new(served: &ServedStore, hasher: IdentityHasher) -> Result<Self, KindMismatch> {
        let store = served.name.clone();
        let inner = match (&served.store, &served.connection) {
            (Store::Postgres(sql), StoreConnection::Postgres(pool)) => {
                Inner::Postgres(sql::SqlConnector::new(
                    store.clone(),
                    sql::postgres::PgBackend::new(pool.clone()),
                    sql.collections.clone(),
                    sql.matching.clone(),
                    hasher,
                ))
            }
            (Store::Mysql(sql), StoreConnection::Mysql(pool)) => {
                Inner::Mysql(sql::SqlConnector::new(
                    store.clone(),
                    sql::mysql::MySqlBackend::new(pool.clone()),
                    sql.collections.clone(),
                    sql.matching.clone(),
                    hasher,
                ))
            }
            (Store::Redis(spec), StoreConnection::Redis(handle)) => Inner::Redis(Box::new(
                redis::RedisConnector::new(store.clone(), handle.clone(), spec.clone()),
            )),
            (Store::S3(spec), StoreConnection::S3(client)) => Inner::S3(Box::new(
                s3::S3Connector::new(store.clone(), client.clone(), spec.clone()),
            )),
            _ => return Err(KindMismatch(store)),
        };
        Ok(Self { store, inner })
    }

    /// The store's name.
    pub fn store(&self) -> &StoreName {
        &self.store
    }

    /// Checks the data map against the live schema (SQL stores: tables and columns exist, key
    /// and mask columns have fitting types) and remembers what it learnt (column types, the
    /// foreign-key order of deletions). Key-value and object stores always fit. An unreachable
    /// store is a [`TaskError::Transient`] error; the check is then made on the first task.
    pub async fn check_schema(&self) -> Result<SchemaCheck, TaskError> {
        match &self.inner {
            Inner::Postgres(c) => c.check_schema().await,
            Inner::Mysql(c) => c.check_schema().await,
            Inner::Redis(_) | Inner::S3(_) => Ok(SchemaCheck::Fits),
        }
    }

    /// Finds the identities the store derives from the given ones (`email -> user_id`),
    /// following its derivations to a fixed point. `derived` holds every value found, `counts`
    /// the rows found per providing collection.
    pub async fn resolve(&self, identities: &Identities) -> Result<TaskReport, TaskError> {
        match &self.inner {
            Inner::Postgres(c) => c.resolve(identities).await,
            Inner::Mysql(c) => c.resolve(identities).await,
            Inner::Redis(_) | Inner::S3(_) => Ok(TaskReport::default()),
        }
    }

    /// Deletes or masks every record of the subject, then queries the store again. `counts`
    /// holds the rows, keys or objects deleted or masked per collection (zero for retained
    /// collections and for a subject already erased); `remaining` is always `Some(0)`: matches
    /// left after the erasure make the task fail transiently instead.
    pub async fn erase(&self, identities: &Identities) -> Result<TaskReport, TaskError> {
        match &self.inner {
            Inner::Postgres(c) => c.erase(identities).await,
            Inner::Mysql(c) => c.erase(identities).await,
            Inner::Redis(c) => c.erase(identities).await,
            Inner::S3(c) => c.erase(identities).await,
        }
    }

    /// Erases every subject of `subjects` together, as [`Connector::erase`] erases one: in one
    /// transaction of an SQL store (one statement per collection and step for them all), one
    /// pipeline of Redis commands, S3 listings and deletions spread over the batch. The answer
    /// holds one outcome per subject, in order, each what `erase` alone would report (a record
    /// two subjects share is counted for the first). The outer error fails the batch as a
    /// whole, nothing of it done: retry it in smaller batches (one subject's bad value fails
    /// its batch) or, if [`Connector::reachable`] says the store is down, later.
    pub async fn erase_batch(
        &self,
        subjects: &[&Identities],
    ) -> Result<Vec<Result<TaskReport, TaskError>>, TaskError> {
        match &self.inner {
            Inner::Postgres(c) => c.erase_batch(subjects).await,
            Inner::Mysql(c) => c.erase_batch(subjects).await,
            Inner::Redis(c) => c.erase_batch(subjects).await,
            Inner::S3(c) => c.erase_batch(subjects).await,
        }
    }

    /// Whether the store answers now: tells a store that is down from a batch that failed on
    /// one of its subjects.
    pub async fn reachable(&self) -> bool {
        match &self.inner {
            Inner::Postgres(c) => c.reachable().await,
            Inner::Mysql(c) => c.reachable().await,
            Inner::Redis(c) => c.reachable().await,
            Inner::S3(c) => c.reachable().await,
        }
    }

    /// Sets the rectifiable fields named in `changes` (field name -> new value; `null` clears)
    /// on the subject's rows, in every collection that declares them. Fields this store does not
    /// declare are left to other stores. `counts` holds the rows changed per collection (rows
    /// that already hold the new values are not counted).
    pub async fn rectify(
        &self,
        identities: &Identities,
        changes: &BTreeMap<String, serde_json::Value>,
    ) -> Result<TaskReport, TaskError> {
        match &self.inner {
            Inner::Postgres(c) => c.rectify(identities, changes).await,
            Inner::Mysql(c) => c.rectify(identities, changes).await,
            Inner::Redis(_) | Inner::S3(_) => Ok(TaskReport::default()),
        }
    }

    /// Sets (`value = true`) or lifts a restriction or objection on the subject's records.
    /// `counts` holds the records whose flag changed.
    pub async fn set_flag(
        &self,
        identities: &Identities,
        flag: Flag,
        value: bool,
    ) -> Result<TaskReport, TaskError> {
        match &self.inner {
            Inner::Postgres(c) => c.set_flag(identities, flag, value).await,
            Inner::Mysql(c) => c.set_flag(identities, flag, value).await,
            Inner::Redis(c) => c.set_flag(identities, flag, value).await,
            Inner::S3(_) => Ok(TaskReport::default()),
        }
    }
}

impl Connector {
    /// Streams every record of the subject into `sink`, collection by collection in data-map
    /// order (retained and masked collections included), after following the store's own
    /// derivations as an erasure does. `counts` holds the records (rows, keys, objects) per
    /// collection.
    pub async fn collect<K: CollectSink>(
        &self,
        identities: &Identities,
        sink: &mut K,
    ) -> Result<TaskReport, TaskError> {
        match &self.inner {
            Inner::Postgres(c) => c.collect(identities, sink).await,
            Inner::Mysql(c) => c.collect(identities, sink).await,
            Inner::Redis(c) => c.collect(identities, sink).await,
            Inner::S3(c) => c.collect(identities, sink).await,
        }
    }
}

/// A log table of a store, as the data map marks it (`log = { timestamp, max_age_days }`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogTableRef {
    /// The table, as the data map names it.
    pub table: String,
    /// The column holding each row's time.
    pub timestamp: String,
    /// Rows older than this many days are deleted by retention.
    pub max_age_days: u32,
}

impl Connector {
    /// The log tables of this store (SQL stores only; none elsewhere).
    pub fn log_tables(&self) -> Vec<LogTableRef> {
        let tables = match &self.inner {
            Inner::Postgres(c) => c.log_tables(),
            Inner::Mysql(c) => c.log_tables(),
            Inner::Redis(_) | Inner::S3(_) => Vec::new(),
        };
        tables
            .into_iter()
            .map(|(table, log)| LogTableRef {
                table,
                timestamp: log.timestamp,
                max_age_days: log.max_age_days,
            })
            .collect()
    }

    /// Deletes at most `batch` rows of log table `table` whose time is before `before`, in one
    /// short transaction of its own (rows the application holds locked are skipped on
    /// PostgreSQL); returns how many. Call it until it returns less than `batch`.
    pub async fn delete_log_batch(
        &self,
        table: &str,
        before: chrono::DateTime<chrono::Utc>,
        batch: u64,
    ) -> Result<u64, TaskError> {
        match &self.inner {
            Inner::Postgres(c) => c.delete_log_batch(table, before, batch).await,
            Inner::Mysql(c) => c.delete_log_batch(table, before, batch).await,
            Inner::Redis(_) | Inner::S3(_) => Ok(0),
        }
    }

    /// Counts the rows of log table `table` whose time is before `before`.
    pub async fn count_log_rows(
        &self,
        table: &str,
        before: chrono::DateTime<chrono::Utc>,
    ) -> Result<u64, TaskError> {
        match &self.inner {
            Inner::Postgres(c) => c.count_log_rows(table, before).await,
            Inner::Mysql(c) => c.count_log_rows(table, before).await,
            Inner::Redis(_) | Inner::S3(_) => Ok(0),
        }
    }

    /// The time of the oldest row of log table `table` (to the second), if it has rows.
    pub async fn oldest_log_row(
        &self,
        table: &str,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, TaskError> {
        match &self.inner {
            Inner::Postgres(c) => c.oldest_log_row(table).await,
            Inner::Mysql(c) => c.oldest_log_row(table).await,
            Inner::Redis(_) | Inner::S3(_) => Ok(None),
        }
    }
}
