//! What the exporter does with one task.

use std::collections::BTreeMap;

use lethe_common::ids::StoreName;
use lethe_common::messages::{TaskMessage, TaskReport};
use lethe_common::stores::ServedStore;
use lethe_common::worker::{Handler, TaskError};

/// Collects a subject's data from the stores it serves and assembles archives.
pub struct Exporter {
    stores: BTreeMap<StoreName, ServedStore>,
}

impl Exporter {
    /// An exporter for `stores`.
    pub fn new(stores: Vec<ServedStore>) -> Self {
        Self {
            stores: stores.into_iter().map(|s| (s.name.clone(), s)).collect(),
        }
    }

    fn store(&self, task: &TaskMessage) -> Result<&ServedStore, TaskError> {
        lethe_common::worker::served_store(&self.stores, task, "exporter")
    }
}

impl Handler for Exporter {
    async fn handle(&self, task: TaskMessage) -> Result<TaskReport, TaskError> {
        let _store = self.store(&task)?;
        Err(TaskError::Permanent {
            code: "unsupported_task",
            reason: format!("the exporter does not carry out `{}` tasks", task.task),
        })
    }
}
