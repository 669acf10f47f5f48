//! Erase tasks in batches: the tasks the worker loop took together (same kind, store and
//! parameters: `TaskBatchKey`) are erased in one go by the store's connector (one transaction
//! of an SQL store, one Redis pipeline, S3 calls spread over the batch), each task's outcome
//! exactly what it alone would report. A batch that fails as a whole is tried again in halves,
//! down to single tasks, so a task that cannot succeed fails alone and its neighbours
//! complete; a batch that failed because its store is down is left to be retried whole.

use lethe_common::messages::{Identities, TaskMessage, TaskReport};
use lethe_common::worker::{Handler, TaskError};
use lethe_stores::Connector;

use crate::Eraser;

impl Eraser {
    /// Erases `tasks` (all erase tasks of one store) together; one outcome per task, in order.
    pub(crate) async fn erase_together(
        &self,
        tasks: &[TaskMessage],
    ) -> Vec<Result<TaskReport, TaskError>> {
        let connector = match tasks.first().map(|task| self.connector(task)) {
            Some(Ok(connector)) => connector,
            // No store to batch for: each task answers for itself.
            _ => {
                let mut outcomes = Vec::with_capacity(tasks.len());
                for task in tasks {
                    outcomes.push(self.handle(task.clone()).await);
                }
                return outcomes;
            }
        };
        let mut outcomes: Vec<Option<Result<TaskReport, TaskError>>> =
            tasks.iter().map(|_| None).collect();
        let mut checked = Vec::with_capacity(tasks.len());
        for (index, task) in tasks.iter().enumerate() {
            match self.check_identities(&task.identities) {
                Ok(()) => checked.push(index),
                Err(error) => outcomes[index] = Some(Err(error)),
            }
        }
        let mut parts = vec![checked];
        while let Some(part) = parts.pop() {
            match part.as_slice() {
                [] => {}
                [index] => {
                    let task = &tasks[*index];
                    outcomes[*index] = Some(
                        connector
                            .erase(&task.identities, task.tenant.as_deref(), task.dry_run())
                            .await,
                    );
                }
                _ => {
                    self.erase_part(connector, tasks, part, &mut parts, &mut outcomes)
                        .await
                }
            }
        }
        tasks
            .iter()
            .zip(outcomes)
            .map(|(task, outcome)| {
                let outcome = outcome.unwrap_or_else(|| {
                    Err(TaskError::Transient(anyhow::anyhow!(
                        "the batch left the task unanswered; it will run again"
                    )))
                });
                self.note(connector, task, &outcome);
                outcome
            })
            .collect()
    }

    /// Erases the tasks at `part` together; on a failure of the whole, queues its halves on
    /// `parts`, or, when the store is down, answers every task of it with the failure.
    async fn erase_part(
        &self,
        connector: &Connector,
        tasks: &[TaskMessage],
        part: Vec<usize>,
        parts: &mut Vec<Vec<usize>>,
        outcomes: &mut [Option<Result<TaskReport, TaskError>>],
    ) {
        let subjects: Vec<&Identities> = part.iter().map(|&i| &tasks[i].identities).collect();
        let error = match connector.erase_batch(&subjects).await {
            Ok(answers) if answers.len() == part.len() => {
                for (index, answer) in part.into_iter().zip(answers) {
                    outcomes[index] = Some(answer);
                }
                return;
            }
            Ok(answers) => TaskError::Transient(anyhow::anyhow!(
                "store `{}`: the batch answered {} of {} tasks",
                connector.store(),
                answers.len(),
                part.len()
            )),
            Err(error) => error,
        };
        if let TaskError::Transient(cause) = &error
            && !connector.reachable().await
        {
            // Every task of the batch would fail alone too: they wait for the store, each
            // with the batch's reason (which, like every task error, holds no identifier).
            let reason = format!("{cause:#}");
            for index in part {
                outcomes[index] = Some(Err(TaskError::Transient(anyhow::anyhow!("{reason}"))));
            }
            return;
        }
        tracing::warn!(
            store = %connector.store(),
            batch.size = part.len(),
            error = %error,
            "a batch of erasures failed; trying its halves"
        );
        let (first, second) = part.split_at(part.len() / 2);
        // Popped last first: the first half runs first.
        parts.push(second.to_vec());
        parts.push(first.to_vec());
    }
}
