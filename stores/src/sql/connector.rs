//! The SQL connector: one transaction per task, the plan checked against the live schema on
//! first use, each task's flow run inside, errors classified into retries and failures.

use std::collections::BTreeMap;
use std::sync::Arc;

use lethe_common::datamap::{Collection, Matching};
use lethe_common::ids::StoreName;
use lethe_common::messages::{Identities, TaskReport};
use lethe_common::privacy::IdentityHasher;
use lethe_common::worker::TaskError;
use tokio::sync::OnceCell;

use super::flows::collect::{CollectFailure, collect_in};
use super::flows::erase::erase_in;
use super::flows::flags::flag_in;
use super::flows::rectify::rectify_in;
use super::flows::resolve::expand;
use super::flows::verify::verify_in;
use super::plan::{Plan, build_plan};
use super::schema::{TableName, split_table};
use super::session::{Backend, During, Failure, Fault, Session};
use crate::connector::{CollectSink, Flag, SchemaCheck};
use crate::values::{MAX_VALUES, erased, too_many};

/// A PostgreSQL or MariaDB store.
pub(crate) struct SqlConnector<B> {
    pub(super) store: StoreName,
    pub(super) backend: B,
    pub(super) collections: Vec<Collection>,
    matching: Matching,
    pub(super) hasher: IdentityHasher,
    plan: OnceCell<Arc<Plan>>,
}

impl<B: Backend> SqlConnector<B> {
    pub(crate) fn new(
        store: StoreName,
        backend: B,
        collections: Vec<Collection>,
        matching: Matching,
        hasher: IdentityHasher,
    ) -> Self {
        Self {
            store,
            backend,
            collections,
            matching,
            hasher,
            plan: OnceCell::new(),
        }
    }

    pub(super) fn task_error(&self, failure: Failure) -> TaskError {
        let place = match &failure.collection {
            Some(collection) => format!("store `{}`, collection `{collection}`", self.store),
            None => format!("store `{}`", self.store),
        };
        match B::fault(&failure.error) {
            Fault::Transient(detail) => TaskError::Transient(
                anyhow::anyhow!("{detail}").context(format!("{place}: {} failed", failure.action)),
            ),
            Fault::Permanent { code, detail } => TaskError::Permanent {
                code,
                reason: format!("{place}: {} failed: {detail}", failure.action),
            },
        }
    }

    async fn load_plan(&self) -> Result<Result<Plan, Vec<String>>, TaskError> {
        let tables: Vec<TableName> = self
            .collections
            .iter()
            .map(|c| split_table(&c.table))
            .collect();
        let live = self
            .backend
            .load_schema(&tables)
            .await
            .during("reading the live schema", None)
            .map_err(|f| self.task_error(f))?;
        Ok(build_plan(
            B::Session::DIALECT,
            &self.store,
            &self.collections,
            &self.matching,
            &live,
        ))
    }

    pub(crate) async fn check_schema(&self) -> Result<SchemaCheck, TaskError> {
        match self.load_plan().await? {
            Ok(plan) => {
                // A concurrent first task may have set it meanwhile: the same plan either way.
                let _ = self.plan.set(Arc::new(plan));
                Ok(SchemaCheck::Fits)
            }
            Err(problems) => Ok(SchemaCheck::Problems(problems)),
        }
    }

    /// The plan, checking the live schema on first use.
    pub(super) async fn plan(&self) -> Result<Arc<Plan>, TaskError> {
        self.plan
            .get_or_try_init(|| async {
                match self.load_plan().await? {
                    Ok(plan) => Ok(Arc::new(plan)),
                    Err(problems) => Err(TaskError::Permanent {
                        code: "datamap_mismatch",
                        reason: format!(
                            "store `{}`: the data map does not fit the live schema: {}",
                            self.store,
                            problems.join("; ")
                        ),
                    }),
                }
            })
            .await
            .cloned()
    }

    pub(super) async fn begin(&self) -> Result<B::Session, TaskError> {
        self.backend
            .begin()
            .await
            .during("opening a transaction", None)
            .map_err(|f| self.task_error(f))
    }

    pub(crate) async fn resolve(
        &self,
        identities: &Identities,
        tenant: Option<&str>,
    ) -> Result<TaskReport, TaskError> {
        self.check_size(identities)?;
        let plan = self.plan().await?;
        let mut session = self.begin().await?;
        let expanded = expand(&mut session, &plan, identities, tenant)
            .await
            .map_err(|f| self.task_error(f))?;
        session
            .commit()
            .await
            .during("ending the transaction", None)
            .map_err(|f| self.task_error(f))?;
        Ok(TaskReport {
            counts: expanded.counts,
            derived: expanded.derived,
            ..TaskReport::default()
        })
    }

    /// Ends a task's transaction: commits it, or rolls it back for a dry run (whose counts
    /// are then what the task would have changed).
    async fn end(
        &self,
        session: B::Session,
        dry_run: bool,
        action: &'static str,
    ) -> Result<(), TaskError> {
        if dry_run {
            session
                .rollback()
                .await
                .during("rolling the dry run back", None)
        } else {
            session.commit().await.during(action, None)
        }
        .map_err(|f| self.task_error(f))
    }

    pub(crate) async fn erase(
        &self,
        identities: &Identities,
        tenant: Option<&str>,
        dry_run: bool,
    ) -> Result<TaskReport, TaskError> {
        self.check_size(identities)?;
        let plan = self.plan().await?;
        let mut session = self.begin().await?;
        let (identities, counts) = erase_in(&mut session, &plan, identities, tenant, &self.hasher)
            .await
            .map_err(|f| self.task_error(f))?;
        self.end(session, dry_run, "committing the erasure").await?;
        if dry_run {
            // Nothing changed: there is nothing to verify.
            return Ok(TaskReport {
                counts,
                ..TaskReport::default()
            });
        }

        // Queried again after the commit, in a transaction of its own.
        let mut session = self.begin().await?;
        let remaining = verify_in(&mut session, &plan, &identities, tenant)
            .await
            .map_err(|f| self.task_error(f))?;
        session
            .commit()
            .await
            .during("ending the verification", None)
            .map_err(|f| self.task_error(f))?;
        erased(&self.store, counts, &remaining)
    }

    pub(crate) async fn rectify(
        &self,
        identities: &Identities,
        tenant: Option<&str>,
        changes: &BTreeMap<String, serde_json::Value>,
        dry_run: bool,
    ) -> Result<TaskReport, TaskError> {
        self.check_size(identities)?;
        let plan = self.plan().await?;
        let mut session = self.begin().await?;
        let counts = rectify_in(&mut session, &plan, identities, tenant, changes)
            .await
            .map_err(|f| self.task_error(f))?;
        self.end(session, dry_run, "committing the rectification")
            .await?;
        Ok(TaskReport {
            counts,
            ..TaskReport::default()
        })
    }

    pub(crate) async fn set_flag(
        &self,
        identities: &Identities,
        tenant: Option<&str>,
        flag: Flag,
        value: bool,
        dry_run: bool,
    ) -> Result<TaskReport, TaskError> {
        self.check_size(identities)?;
        let plan = self.plan().await?;
        let mut session = self.begin().await?;
        let counts = flag_in(&mut session, &plan, identities, tenant, flag, value)
            .await
            .map_err(|f| self.task_error(f))?;
        self.end(session, dry_run, "committing the flag change")
            .await?;
        Ok(TaskReport {
            counts,
            ..TaskReport::default()
        })
    }

    /// Streams the subject's rows of every collection into `sink`, in one read-only
    /// transaction, after following the store's own derivations.
    pub(crate) async fn collect<K: CollectSink>(
        &self,
        identities: &Identities,
        tenant: Option<&str>,
        sink: &mut K,
    ) -> Result<TaskReport, TaskError> {
        self.check_size(identities)?;
        let plan = self.plan().await?;
        let mut session = self
            .backend
            .begin_read()
            .await
            .during("opening a transaction", None)
            .map_err(|f| self.task_error(f))?;
        let counts = collect_in(&mut session, &plan, identities, tenant, sink)
            .await
            .map_err(|failure| match failure {
                CollectFailure::Store(f) => self.task_error(f),
                CollectFailure::Sink(error) => error,
                CollectFailure::NotOneLine(collection) => TaskError::Permanent {
                    code: "store_error",
                    reason: format!(
                        "store `{}`, collection `{collection}`: the database returned a row that is not one line of JSON",
                        self.store
                    ),
                },
            })?;
        session
            .commit()
            .await
            .during("ending the transaction", None)
            .map_err(|f| self.task_error(f))?;
        Ok(TaskReport {
            counts,
            ..TaskReport::default()
        })
    }

    /// Checks the number of values a task names, before any statement is built.
    pub(super) fn check_size(&self, identities: &Identities) -> Result<(), TaskError> {
        let values: usize = identities.values().map(Vec::len).sum();
        if values > MAX_VALUES {
            return Err(too_many(&self.store, "identity values"));
        }
        Ok(())
    }
}

// Log tables: retention deletes their old rows in short batches.
