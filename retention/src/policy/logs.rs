//! Old rows of the stores' log tables, pruned batch by batch.

use chrono::{DateTime, Utc};
use lethe_stores::LogTableRef;

use super::Retention;
use super::plan::LogStore;
use super::report::LogItem;
use crate::catalog;

impl Retention {
    pub(super) async fn logs(&self, now: DateTime<Utc>, dry: bool) -> Vec<LogItem> {
        let batch = self.plan.settings.log_batch_size;
        let mut items = Vec::new();
        for store in &self.plan.logs {
            for table in &store.tables {
                let cutoff = now - chrono::Duration::days(i64::from(table.max_age_days));
                let mut item = LogItem {
                    store: store.store.to_string(),
                    table: table.table.clone(),
                    before: cutoff,
                    rows: 0,
                    batches: 0,
                    oldest_left: None,
                    error: None,
                };
                let pruned = if dry {
                    store
                        .connector
                        .count_log_rows(&table.table, cutoff)
                        .await
                        .map(|rows| item.rows = rows)
                } else {
                    self.prune(store, table, cutoff, batch, &mut item).await
                };
                if let Err(error) = pruned {
                    item.error = Some(error.to_string());
                }
                if item.error.is_none() {
                    match store.connector.oldest_log_row(&table.table).await {
                        // In a dry run the old rows are still there: which row would be the
                        // oldest left is only known once they are gone.
                        Ok(oldest) if !dry || oldest.is_none_or(|t| t >= cutoff) => {
                            item.oldest_left = oldest;
                        }
                        Ok(_) => item.oldest_left = None,
                        Err(error) => item.error = Some(error.to_string()),
                    }
                }
                if !dry && item.rows > 0 {
                    let mut tx = match self.pool.begin().await {
                        Ok(tx) => tx,
                        Err(error) => {
                            item.error = Some(format!("cannot record the deletion: {error}"));
                            items.push(item);
                            continue;
                        }
                    };
                    let recorded = async {
                        catalog::audit(
                            &mut tx,
                            None,
                            None,
                            "retention.log_rows_deleted",
                            serde_json::json!({ "store": item.store, "table": item.table, "rows": item.rows, "before": item.before }),
                            now,
                        )
                        .await?;
                        tx.commit().await
                    }
                    .await;
                    if let Err(error) = recorded {
                        item.error = Some(format!("cannot record the deletion: {error}"));
                    }
                }
                items.push(item);
            }
        }
        items
    }

    /// Deletes a log table's old rows batch by batch, each in a short transaction of its own,
    /// so the table is never locked for long and the application's writes go on in between.
    async fn prune(
        &self,
        store: &LogStore,
        table: &LogTableRef,
        cutoff: DateTime<Utc>,
        batch: u64,
        item: &mut LogItem,
    ) -> Result<(), lethe_common::worker::TaskError> {
        loop {
            let deleted = store
                .connector
                .delete_log_batch(&table.table, cutoff, batch)
                .await?;
            item.batches += 1;
            item.rows += deleted;
            if deleted < batch {
                break;
            }
            tokio::task::yield_now().await;
        }
        if item.rows > 0 {
            tracing::info!(store = %store.store, table = %table.table, rows = item.rows, batches = item.batches, before = %cutoff, "old log rows deleted");
        }
        Ok(())
    }
}
