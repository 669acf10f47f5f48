//! What the eraser does with one task.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use lethe_common::datamap::DataMap;
use lethe_common::ids::StoreName;
use lethe_common::messages::{Identities, TaskKind, TaskMessage, TaskReport};
use lethe_common::privacy::IdentityHasher;
use lethe_common::worker::{Handler, TaskError};
use lethe_stores::ServedStore;
use lethe_stores::{Connector, Flag};

/// Carries out resolve, erase, rectify, restriction and objection tasks in the stores it
/// serves.
pub struct Eraser {
    stores: BTreeMap<StoreName, Connector>,
    map: Arc<DataMap>,
    hasher: IdentityHasher,
    handled: AtomicU64,
}

impl Eraser {
    /// An eraser for `stores`, described by `map`; `hasher` keys the `hash` mask and the tags
    /// that stand for subjects in log lines.
    pub fn new(
        stores: Vec<ServedStore>,
        map: Arc<DataMap>,
        hasher: IdentityHasher,
    ) -> anyhow::Result<Self> {
        let stores = stores
            .iter()
            .map(|served| Connector::new(served, hasher.clone()).map(|c| (served.name.clone(), c)))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            stores,
            map,
            hasher,
            handled: AtomicU64::new(0),
        })
    }

    /// The connectors, by store.
    pub fn connectors(&self) -> impl Iterator<Item = &Connector> {
        self.stores.values()
    }

    /// How many tasks this eraser finished (done or failed for good) since it started.
    pub fn tasks_handled(&self) -> u64 {
        self.handled.load(Ordering::Relaxed)
    }

    pub(crate) fn connector(&self, task: &TaskMessage) -> Result<&Connector, TaskError> {
        lethe_common::worker::served_store(&self.stores, task, "eraser")
    }

    /// Refuses a task without identities or with identity names the data map does not declare
    /// (a name is echoed only when it looks like one, never a value put in its place).
    pub(crate) fn check_identities(&self, identities: &Identities) -> Result<(), TaskError> {
        if identities.values().all(Vec::is_empty) {
            return Err(TaskError::Permanent {
                code: "no_identities",
                reason: "the task names no identity of the subject".to_owned(),
            });
        }
        let unknown: Vec<&str> = identities
            .keys()
            .map(String::as_str)
            .filter(|name| !self.map.identities.iter().any(|i| i == name))
            .collect();
        if !unknown.is_empty() {
            return Err(TaskError::Permanent {
                code: "unknown_identity",
                reason: format!(
                    "the task names identities the data map does not declare: {}",
                    printable_names(&unknown)
                ),
            });
        }
        Ok(())
    }

    /// The `changes` of a rectification task: `{"changes": {"<field>": <new value>}}`, every
    /// field rectifiable somewhere in the data map.
    fn changes(
        &self,
        params: &serde_json::Value,
    ) -> Result<BTreeMap<String, serde_json::Value>, TaskError> {
        let Some(changes) = params.get("changes").and_then(|c| c.as_object()) else {
            return Err(TaskError::Permanent {
                code: "bad_params",
                reason: "a rectification needs params {\"changes\": {\"<field>\": <new value>}}"
                    .to_owned(),
            });
        };
        let known = self.map.rectifiable_fields();
        let unknown: Vec<&str> = changes
            .keys()
            .map(String::as_str)
            .filter(|field| !known.contains(field))
            .collect();
        if !unknown.is_empty() {
            return Err(TaskError::Permanent {
                code: "unknown_field",
                reason: format!(
                    "no collection of the data map declares these rectifiable fields: {}",
                    printable_names(&unknown)
                ),
            });
        }
        if let Some((field, _)) = changes
            .iter()
            .find(|(_, value)| value.is_object() || value.is_array())
        {
            return Err(TaskError::Permanent {
                code: "bad_params",
                reason: format!(
                    "the new value of `{field}` must be a string, number, boolean or null"
                ),
            });
        }
        Ok(changes
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    /// A short keyed tag of the subject, to correlate log lines without naming it.
    fn subject_tag(&self, identities: &Identities) -> String {
        let canonical: Vec<String> = identities
            .iter()
            .map(|(name, values)| format!("{name}={}", values.join(",")))
            .collect();
        self.hasher.log_tag("subject", &canonical.join(";"))
    }
}

/// Names that look like identifiers, and a count of the others.
fn printable_names(names: &[&str]) -> String {
    let plain = |n: &&str| {
        !n.is_empty()
            && n.len() <= 64
            && n.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    };
    let mut shown: Vec<String> = names
        .iter()
        .filter(|n| plain(n))
        .map(|n| format!("`{n}`"))
        .collect();
    let hidden = names.iter().filter(|n| !plain(n)).count();
    if hidden > 0 {
        shown.push(format!("{hidden} name(s) that are not identifiers"));
    }
    shown.join(", ")
}

impl Eraser {
    async fn carry_out(
        &self,
        connector: &Connector,
        task: &TaskMessage,
    ) -> Result<TaskReport, TaskError> {
        let identities = &task.identities;
        if matches!(task.task, TaskKind::Collect | TaskKind::Assemble) {
            return Err(TaskError::Permanent {
                code: "unsupported_task",
                reason: format!("the eraser does not carry out `{}` tasks", task.task),
            });
        }
        self.check_identities(identities)?;
        let tenant = task.tenant.as_deref();
        let dry_run = task.dry_run();
        let flag = |flag, value| connector.set_flag(identities, tenant, flag, value, dry_run);
        match task.task {
            TaskKind::Resolve => connector.resolve(identities, tenant).await,
            TaskKind::Erase => connector.erase(identities, tenant, dry_run).await,
            TaskKind::Rectify => {
                let changes = self.changes(&task.params)?;
                connector
                    .rectify(identities, tenant, &changes, dry_run)
                    .await
            }
            TaskKind::Restrict => flag(Flag::Restrict, true).await,
            TaskKind::LiftRestriction => flag(Flag::Restrict, false).await,
            TaskKind::Object => flag(Flag::Object, true).await,
            TaskKind::LiftObjection => flag(Flag::Object, false).await,
            TaskKind::Collect | TaskKind::Assemble => Ok(TaskReport::default()),
        }
    }
}

impl Eraser {
    /// Counts a task that ended (done or failed for good) and logs what a done one did.
    pub(crate) fn note(
        &self,
        connector: &Connector,
        task: &TaskMessage,
        outcome: &Result<TaskReport, TaskError>,
    ) {
        if !matches!(outcome, Err(TaskError::Transient(_))) {
            self.handled.fetch_add(1, Ordering::Relaxed);
        }
        if let Ok(report) = outcome {
            let derived: usize = report.derived.values().map(Vec::len).sum();
            tracing::info!(
                request.id = %task.request_id,
                store = %connector.store(),
                subject.tag = %self.subject_tag(&task.identities),
                records = report.counts.values().sum::<u64>(),
                counts = ?report.counts,
                remaining = report.remaining,
                derived,
                dry_run = task.dry_run(),
                "task carried out"
            );
        }
    }
}

impl Handler for Eraser {
    async fn handle(&self, task: TaskMessage) -> Result<TaskReport, TaskError> {
        let connector = self.connector(&task)?;
        let outcome = self.carry_out(connector, &task).await;
        self.note(connector, &task, &outcome);
        outcome
    }

    const BATCHES: bool = true;

    /// Erasures are carried out in batches (see `batch`); every other kind one at a time.
    /// Real erasures in a store of a global deployment. A tenant-scoped store's tasks are not
    /// batched yet (the batch statements carry no tenant condition), nor dry runs (they roll
    /// back, so there is no commit to share).
    fn batches(&self, task: &TaskMessage) -> bool {
        task.task == TaskKind::Erase
            && !task.dry_run()
            && self.connector(task).is_ok_and(|c| !c.tenant_scoped())
    }

    async fn handle_batch(&self, tasks: &[TaskMessage]) -> Vec<Result<TaskReport, TaskError>> {
        self.erase_together(tasks).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_names_are_echoed() {
        assert_eq!(
            printable_names(&["first_name", "a@example.com"]),
            "`first_name`, 1 name(s) that are not identifiers"
        );
    }
}
