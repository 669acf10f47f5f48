//! What the exporter does with one task.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use aws_sdk_s3::Client;
use lethe_common::datamap::{DataMap, Store};
use lethe_common::ids::StoreName;
use lethe_common::messages::{Identities, TaskKind, TaskMessage, TaskReport};
use lethe_common::privacy::IdentityHasher;
use lethe_common::worker::{Handler, TaskError};
use lethe_stores::Connector;
use lethe_stores::ServedStore;

use crate::assemble::Assembler;
use crate::collect::StagingSink;

/// Collects a subject's data from the stores it serves into the staging area of Lethe's
/// bucket, and assembles the fragments of every store into one archive.
pub struct Exporter {
    stores: BTreeMap<StoreName, Served>,
    map: Arc<DataMap>,
    client: Client,
    bucket: String,
    hasher: IdentityHasher,
    handled: AtomicU64,
}

struct Served {
    connector: Connector,
    kind: &'static str,
}

fn kind_of(store: &Store) -> &'static str {
    match store {
        Store::Postgres(_) => "postgres",
        Store::Mysql(_) => "mysql",
        Store::Redis(_) => "redis",
        Store::S3(_) => "s3",
        Store::Http(_) => "http",
    }
}

impl Exporter {
    /// An exporter for `stores`, described by `map`, staging into and assembling in `bucket`
    /// through `client`. `hasher` keys the tags that stand for subjects in log lines.
    pub fn new(
        stores: Vec<ServedStore>,
        map: Arc<DataMap>,
        client: Client,
        bucket: &str,
        hasher: IdentityHasher,
    ) -> anyhow::Result<Self> {
        let stores = stores
            .iter()
            .map(|served| {
                Connector::new(served, hasher.clone()).map(|connector| {
                    (
                        served.name.clone(),
                        Served {
                            connector,
                            kind: kind_of(&served.store),
                        },
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            stores,
            map,
            client,
            bucket: bucket.to_owned(),
            hasher,
            handled: AtomicU64::new(0),
        })
    }

    /// How many tasks this exporter finished (done or failed for good) since it started.
    pub fn tasks_handled(&self) -> u64 {
        self.handled.load(Ordering::Relaxed)
    }

    /// A short keyed tag of the subject, to correlate log lines without naming it.
    fn subject_tag(&self, identities: &Identities) -> String {
        let canonical: Vec<String> = identities
            .iter()
            .map(|(name, values)| format!("{name}={}", values.join(",")))
            .collect();
        self.hasher.log_tag("subject", &canonical.join(";"))
    }

    async fn collect(&self, task: &TaskMessage) -> Result<TaskReport, TaskError> {
        let served = lethe_common::worker::served_store(&self.stores, task, "exporter")?;
        if task.identities.values().all(Vec::is_empty) {
            return Err(TaskError::Permanent {
                code: "no_identities",
                reason: "the task names no identity of the subject".to_owned(),
            });
        }
        let unknown = task
            .identities
            .keys()
            .filter(|name| !self.map.identities.contains(name))
            .count();
        if unknown > 0 {
            return Err(TaskError::Permanent {
                code: "unknown_identity",
                reason: format!(
                    "the task names {unknown} identity name(s) the data map does not declare"
                ),
            });
        }
        let store = served.connector.store().clone();
        let mut sink = StagingSink::new(
            self.client.clone(),
            &self.bucket,
            task.request_id,
            store.clone(),
            served.kind,
        );
        let mut report = match served
            .connector
            .collect(&task.identities, task.tenant.as_deref(), &mut sink)
            .await
        {
            Ok(report) => report,
            Err(error) => {
                sink.abandon().await;
                return Err(error);
            }
        };
        let staged = sink.finish().await?;
        report.bytes = Some(staged.bytes);
        report.counts.insert("bytes".to_owned(), staged.bytes);
        metrics::counter!("lethe_export_bytes_total", "stage" => "collect", "store" => store.to_string())
            .increment(staged.bytes);
        tracing::info!(
            store = %store,
            subject.tag = %self.subject_tag(&task.identities),
            records = staged.fragment.collections.iter().map(|c| c.records).sum::<u64>(),
            files = staged.fragment.files.len(),
            bytes = staged.bytes,
            "collected"
        );
        Ok(report)
    }

    async fn assemble(&self, task: &TaskMessage) -> Result<TaskReport, TaskError> {
        let assembler = Assembler {
            client: &self.client,
            bucket: &self.bucket,
            map: &self.map,
        };
        let report = assembler.run(task.request_id).await?;
        let bytes = report.bytes.unwrap_or(0);
        metrics::counter!("lethe_export_bytes_total", "stage" => "archive", "store" => "all")
            .increment(bytes);
        tracing::info!(bytes, "archive assembled");
        Ok(report)
    }
}

impl Handler for Exporter {
    async fn handle(&self, task: TaskMessage) -> Result<TaskReport, TaskError> {
        let outcome = match task.task {
            TaskKind::Collect => self.collect(&task).await,
            TaskKind::Assemble => self.assemble(&task).await,
            other => Err(TaskError::Permanent {
                code: "unsupported_task",
                reason: format!("the exporter does not carry out `{other}` tasks"),
            }),
        };
        if !matches!(outcome, Err(TaskError::Transient(_))) {
            self.handled.fetch_add(1, Ordering::Relaxed);
        }
        outcome
    }
}
