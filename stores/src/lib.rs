//! Store connectors: what resolve, erase, rectify, restrict, object and collect tasks do in one
//! store, set-based over every identity value of the task (DESIGN §2, §3, §6).
//!
//! One [`Connector`] per served store, built from its data-map entry and its (lazy)
//! connection:
//!
//! - **SQL** (PostgreSQL, MariaDB/MySQL): one transaction per task. Erasure masks the rows of
//!   masked collections first, then deletes in foreign-key order (children first, from the live
//!   schema), each step one statement over all the subject's values
//!   (`DELETE ... WHERE col = ANY($1)` / `IN (?, ...)`), values always bound, identifiers from
//!   the data map quoted. Before any change, the store's own derivations are followed
//!   (`users.email -> users.id`), so a task that names the subject by email only still finds
//!   the rows other collections of the same store hold under the user id.
//! - **Redis**: the data map's key templates rendered for every combination of the task's
//!   values; erasure `UNLINK`s them in one atomic pipeline (no `SCAN`).
//! - **S3**: every object under the rendered prefixes, deleted 1,000 per request.
//! - **HTTP** (processors): the data map's requests, per record the lookup finds; the lookup
//!   made again after an erasure.
//!
//! A collect task finds the subject's records exactly as an erasure would (the same
//! derivations, the same `WHERE`, the same key and prefix renderings) and streams them into a
//! [`CollectSink`]: SQL rows one by one as JSON objects built by the database (a cursor, never a
//! whole table in memory), Redis keys as one JSON record each, S3 objects as references for the
//! sink to copy.
//!
//! After an erasure every store is queried again; a task whose store still holds matches is a
//! [`TaskError::Transient`] failure (retried), never a report of success: `remaining` of a done
//! erasure is always zero.
//!
//! Nothing here writes an identifier to a log line or an error message: errors name the store,
//! the collection and what was being done, and carry SQLSTATEs or S3 error codes rather than the
//! servers' own messages (which can quote values).
//!
//! | module | job |
//! | --- | --- |
//! | `connection` | connections to the data map's stores, from credentials in the environment or given in code |
//! | `connector` | [`Connector`]: every task flow of one store, dispatched to its kind |
//! | `sql/` | PostgreSQL and MariaDB: statements, live schema and plan, sessions, one module per flow |
//! | `redis` | Redis: key templates, `UNLINK` pipelines, flag keys, collect |
//! | `s3` | S3: prefixes, batch deletes, collect by reference |
//! | `http/` | processors' HTTP APIs: client (credentials, pacing, `Retry-After`), request templates, lookups, flows |
//! | `census` | the breach register's per-tenant subject counts |
//! | `discovery` | live catalogs, Redis keys and S3 listings, sampled, for `datamap suggest` and `datamap check` |
//! | `values` | a task's identity values: usable values, template renderings, bounds |

pub mod census;
pub mod connection;
mod connector;
pub mod discovery;
mod http;
mod redis;
mod s3;
mod sql;
mod values;

pub use connection::{RedisHandle, ServedStore, StoreConnection, StoreError};
pub use connection::{connect, readiness, served, store_url};
pub use connector::{
    CollectSink, Connector, Flag, KindMismatch, LogTableRef, SchemaCheck, SourceObject,
};
pub use http::HttpHandle;
