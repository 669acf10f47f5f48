//! The one entry point of every task flow: a [`Connector`] per served store, dispatching to the
//! store kind's implementation, and the types the flows share with their callers.

use std::collections::BTreeMap;
use std::future::Future;

use lethe_common::datamap::{Scope, Store};
use lethe_common::ids::StoreName;
use lethe_common::messages::{Identities, TaskReport};
use lethe_common::privacy::IdentityHasher;
use lethe_common::worker::TaskError;

use crate::connection::{ServedStore, StoreConnection};
use crate::values::with_tenant;
use crate::{http, redis, s3, sql};

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
    scope: Scope,
    inner: Inner,
}

enum Inner {
    Postgres(sql::SqlConnector<sql::postgres::PgBackend>),
    Mysql(sql::SqlConnector<sql::mysql::MySqlBackend>),
    Redis(Box<redis::RedisConnector>),
    S3(Box<s3::S3Connector>),
    Http(Box<http::HttpConnector>),
}

impl Connector {
    /// A connector for `served`; `hasher` keys the `hash` mask.
    pub fn new(served: &ServedStore, hasher: IdentityHasher) -> Result<Self, KindMismatch> {
        let store = served.name.clone();
        let scope = match &served.store {
            Store::Postgres(sql) | Store::Mysql(sql) => sql.scope,
            Store::Redis(spec) => spec.scope,
            Store::S3(spec) => spec.scope,
            Store::Http(spec) => spec.scope,
        };
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
            (Store::Http(spec), StoreConnection::Http(handle)) => Inner::Http(Box::new(
                http::HttpConnector::new(store.clone(), handle.clone(), (**spec).clone()),
            )),
            _ => return Err(KindMismatch(store)),
        };
        Ok(Self {
            store,
            scope,
            inner,
        })
    }

    /// The tenant whose records a task may touch: `None` in a global deployment (every record
    /// of the subject), the task's tenant in a tenant-scoped one, which refuses a task that
    /// names none rather than touch every tenant's records.
    fn tenant<'t>(&self, tenant: Option<&'t str>) -> Result<Option<&'t str>, TaskError> {
        match (self.scope, tenant) {
            (Scope::Global, _) => Ok(None),
            (Scope::Tenant, Some(tenant)) if !tenant.trim().is_empty() => Ok(Some(tenant)),
            (Scope::Tenant, _) => Err(TaskError::Permanent {
                code: "missing_tenant",
                reason: format!(
                    "store `{}`: the deployment is tenant-scoped and the task names no tenant",
                    self.store
                ),
            }),
        }
    }

    /// Whether the deployment confines this store's tasks to their tenant (`scope = "tenant"`).
    pub fn tenant_scoped(&self) -> bool {
        self.scope == Scope::Tenant
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
            Inner::Redis(_) | Inner::S3(_) | Inner::Http(_) => Ok(SchemaCheck::Fits),
        }
    }

    /// Finds the identities the store derives from the given ones (`email -> user_id`),
    /// following its derivations to a fixed point. `derived` holds every value found, `counts`
    /// the rows found per providing collection.
    ///
    /// Every flow takes the task's `tenant`: in a tenant-scoped deployment it touches only that
    /// tenant's records (rows whose tenant column names it, keys and prefixes rendered with it
    /// for `{tenant}`) and fails without one; a global deployment ignores it.
    pub async fn resolve(
        &self,
        identities: &Identities,
        tenant: Option<&str>,
    ) -> Result<TaskReport, TaskError> {
        let tenant = self.tenant(tenant)?;
        match &self.inner {
            Inner::Postgres(c) => c.resolve(identities, tenant).await,
            Inner::Mysql(c) => c.resolve(identities, tenant).await,
            Inner::Redis(_) | Inner::S3(_) | Inner::Http(_) => Ok(TaskReport::default()),
        }
    }

    /// Deletes or masks every record of the subject, then queries the store again. `counts`
    /// holds the rows, keys or objects deleted or masked per collection (zero for retained
    /// collections and for a subject already erased); `remaining` is always `Some(0)`: matches
    /// left after the erasure make the task fail transiently instead.
    ///
    /// A `dry_run` changes nothing and counts what the erasure would change: SQL stores run
    /// the same statements in the task's one transaction and roll it back, Redis and S3
    /// stores count the keys and objects that exist; `remaining` is then `None`.
    pub async fn erase(
        &self,
        identities: &Identities,
        tenant: Option<&str>,
        dry_run: bool,
    ) -> Result<TaskReport, TaskError> {
        let tenant = self.tenant(tenant)?;
        match &self.inner {
            Inner::Postgres(c) => c.erase(identities, tenant, dry_run).await,
            Inner::Mysql(c) => c.erase(identities, tenant, dry_run).await,
            Inner::Redis(c) => c.erase(&with_tenant(identities, tenant), dry_run).await,
            Inner::S3(c) => c.erase(&with_tenant(identities, tenant), dry_run).await,
            Inner::Http(c) => c.erase(&with_tenant(identities, tenant), dry_run).await,
        }
    }

    /// Erases every subject of `subjects` together, as [`Connector::erase`] erases one: in one
    /// transaction of an SQL store (one statement per collection and step for them all), one
    /// pipeline of Redis commands, S3 listings and deletions spread over the batch. The answer
    /// holds one outcome per subject, in order, each what `erase` alone would report (a record
    /// two subjects share is counted for the first). The outer error fails the batch as a
    /// whole, nothing of it done: retry it in smaller batches (one subject's bad value fails
    /// its batch) or, if [`Connector::reachable`] says the store is down, later. Batches are of
    /// real erasures in a global deployment: tenant-scoped and dry-run tasks are carried out
    /// one by one (see the eraser's `batches`).
    pub async fn erase_batch(
        &self,
        subjects: &[&Identities],
    ) -> Result<Vec<Result<TaskReport, TaskError>>, TaskError> {
        match &self.inner {
            Inner::Postgres(c) => c.erase_batch(subjects).await,
            Inner::Mysql(c) => c.erase_batch(subjects).await,
            Inner::Redis(c) => c.erase_batch(subjects).await,
            Inner::S3(c) => c.erase_batch(subjects).await,
            // A processor's API erases one customer at a time anyway.
            Inner::Http(c) => {
                let mut outcomes = Vec::with_capacity(subjects.len());
                for identities in subjects {
                    outcomes.push(c.erase(identities, false).await);
                }
                Ok(outcomes)
            }
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
            // Its failures are per request; a batch of one customer each is split to singles.
            Inner::Http(_) => true,
        }
    }

    /// Sets the rectifiable fields named in `changes` (field name -> new value; `null` clears)
    /// on the subject's rows, in every collection that declares them. Fields this store does not
    /// declare are left to other stores. `counts` holds the rows changed per collection (rows
    /// that already hold the new values are not counted). A `dry_run` rolls the change back.
    pub async fn rectify(
        &self,
        identities: &Identities,
        tenant: Option<&str>,
        changes: &BTreeMap<String, serde_json::Value>,
        dry_run: bool,
    ) -> Result<TaskReport, TaskError> {
        let tenant = self.tenant(tenant)?;
        match &self.inner {
            Inner::Postgres(c) => c.rectify(identities, tenant, changes, dry_run).await,
            Inner::Mysql(c) => c.rectify(identities, tenant, changes, dry_run).await,
            Inner::Http(c) => {
                c.rectify(&with_tenant(identities, tenant), changes, dry_run)
                    .await
            }
            Inner::Redis(_) | Inner::S3(_) => Ok(TaskReport::default()),
        }
    }

    /// Sets (`value = true`) or lifts a restriction or objection on the subject's records.
    /// `counts` holds the records whose flag changed (would change, for a `dry_run`, which
    /// changes nothing).
    pub async fn set_flag(
        &self,
        identities: &Identities,
        tenant: Option<&str>,
        flag: Flag,
        value: bool,
        dry_run: bool,
    ) -> Result<TaskReport, TaskError> {
        let tenant = self.tenant(tenant)?;
        match &self.inner {
            Inner::Postgres(c) => c.set_flag(identities, tenant, flag, value, dry_run).await,
            Inner::Mysql(c) => c.set_flag(identities, tenant, flag, value, dry_run).await,
            Inner::Redis(c) => {
                c.set_flag(&with_tenant(identities, tenant), flag, value, dry_run)
                    .await
            }
            Inner::Http(c) => {
                c.set_flag(&with_tenant(identities, tenant), flag, value, dry_run)
                    .await
            }
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
        tenant: Option<&str>,
        sink: &mut K,
    ) -> Result<TaskReport, TaskError> {
        let tenant = self.tenant(tenant)?;
        match &self.inner {
            Inner::Postgres(c) => c.collect(identities, tenant, sink).await,
            Inner::Mysql(c) => c.collect(identities, tenant, sink).await,
            Inner::Redis(c) => c.collect(&with_tenant(identities, tenant), sink).await,
            Inner::S3(c) => c.collect(&with_tenant(identities, tenant), sink).await,
            Inner::Http(c) => c.collect(&with_tenant(identities, tenant), sink).await,
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
            Inner::Redis(_) | Inner::S3(_) | Inner::Http(_) => Vec::new(),
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
            Inner::Redis(_) | Inner::S3(_) | Inner::Http(_) => Ok(0),
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
            Inner::Redis(_) | Inner::S3(_) | Inner::Http(_) => Ok(0),
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
            Inner::Redis(_) | Inner::S3(_) | Inner::Http(_) => Ok(None),
        }
    }
}
