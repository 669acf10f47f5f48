//! PostgreSQL and MariaDB stores. One folder, one job a module:
//!
//! | module | job |
//! | --- | --- |
//! | `dialect` | quoting and the expressions that differ between the two databases |
//! | `statement` | the statement builder (bound values, numbered placeholders) and value shapes |
//! | `schema` | the live schema as the catalogs describe it |
//! | `plan` | the data map checked against the live schema: names, types, deletion order |
//! | `queries` | the statement of every step of every flow |
//! | `batch_queries` | the statements of a batch of subjects, each row tagged with its subject |
//! | `session` | what a backend provides: transactions, statements, catalogs, error classes |
//! | `flows/` | resolve, erase, verify, collect, rectify, flags: which statements, in what order |
//! | `connector` | one transaction per task around a flow; errors to retries or failures |
//! | `connector_batch` | one transaction per batch of erasures |
//! | `logs` | retention's batched deletion of old log rows |
//! | `postgres`, `mysql` | the two backends |

mod batch_queries;
mod connector;
mod connector_batch;
mod dialect;
mod flows;
mod logs;
pub(crate) mod mysql;
mod plan;
pub(crate) mod postgres;
mod queries;
mod schema;
mod session;
mod statement;

#[cfg(test)]
mod tests;

pub(crate) use connector::SqlConnector;
pub(crate) use dialect::Dialect;
pub(crate) use session::{Fault, describe_non_database};
