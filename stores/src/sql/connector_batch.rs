//! A batch of erasures in one transaction of the store (see `flows::erase_batch`), and the
//! probe that tells a store that is down from a batch that failed on one of its subjects.

use lethe_common::messages::{Identities, TaskReport};
use lethe_common::worker::TaskError;

use super::SqlConnector;
use super::flows::erase_batch::erase_batch_in;
use super::session::{Backend, During};
use crate::values::{MAX_VALUES, erased, too_many};

impl<B: Backend> SqlConnector<B> {
    /// Erases every subject of `subjects` in one transaction and queries them again inside
    /// it, before the commit. The outer error fails the whole batch (nothing was committed);
    /// an inner one is that subject's alone (its records are still there after the commit,
    /// or it names too many values), as the single task would report it.
    pub(crate) async fn erase_batch(
        &self,
        subjects: &[&Identities],
    ) -> Result<Vec<Result<TaskReport, TaskError>>, TaskError> {
        let mut sized = Vec::with_capacity(subjects.len());
        let mut outcomes: Vec<Option<Result<TaskReport, TaskError>>> =
            Vec::with_capacity(subjects.len());
        for identities in subjects {
            match self.check_size(identities) {
                Ok(()) => {
                    sized.push(*identities);
                    outcomes.push(None);
                }
                Err(error) => outcomes.push(Some(Err(error))),
            }
        }
        let values: usize = sized
            .iter()
            .map(|i| i.values().map(Vec::len).sum::<usize>())
            .sum();
        if values > MAX_VALUES {
            // Smaller batches will do (the caller splits a failed batch).
            return Err(too_many(&self.store, "identity values in one batch"));
        }
        let plan = self.plan().await?;
        let mut done = if sized.is_empty() {
            Vec::new()
        } else {
            let mut session = self.begin().await?;
            let batch = erase_batch_in(&mut session, &plan, &sized, &self.hasher)
                .await
                .map_err(|f| self.task_error(f))?;
            super::session::Session::commit(session)
                .await
                .during("committing the erasure", None)
                .map_err(|f| self.task_error(f))?;
            batch
        }
        .into_iter();
        Ok(outcomes
            .into_iter()
            .map(|outcome| match outcome {
                Some(outcome) => outcome,
                None => match done.next() {
                    Some(subject) => erased(&self.store, subject.counts, &subject.remaining),
                    None => Err(TaskError::Transient(anyhow::anyhow!(
                        "store `{}`: the batch reported fewer subjects than it was given",
                        self.store
                    ))),
                },
            })
            .collect())
    }

    /// Whether a transaction can be opened now (it is rolled back at once).
    pub(crate) async fn reachable(&self) -> bool {
        self.backend.begin().await.is_ok()
    }
}
