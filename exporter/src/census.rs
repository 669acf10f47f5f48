//! Answers the breach register's census requests (`<prefix>.census.<store>`, core NATS
//! request/reply) for the stores this exporter serves: how many distinct subjects the store
//! holds per tenant. The api holds no store credentials, so the count is made here, next to
//! the store, and only counts leave it.

use anyhow::Context as _;
use futures::StreamExt as _;
use lethe_common::nats::Names;
use lethe_stores::ServedStore;
use lethe_stores::census;
use tokio::task::JoinSet;

/// The running responders; they stop when this is dropped (with the daemon).
pub struct CensusResponder {
    tasks: JoinSet<()>,
}

impl Drop for CensusResponder {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

/// Subscribes to the census subject of every served store (in the store's queue group, so
/// one of several exporters of a store answers) and answers until dropped. Returns once the
/// server has the subscriptions, so a request made after start-up is answered.
pub async fn start(
    client: async_nats::Client,
    names: &Names,
    served: &[ServedStore],
) -> anyhow::Result<CensusResponder> {
    let mut tasks = JoinSet::new();
    for store in served {
        let mut requests = client
            .queue_subscribe(
                names.census_subject(&store.name),
                names.census_queue(&store.name),
            )
            .await
            .with_context(|| format!("cannot subscribe to the census of store `{}`", store.name))?;
        let client = client.clone();
        let store = store.clone();
        tasks.spawn(async move {
            while let Some(request) = requests.next().await {
                let Some(reply_to) = request.reply else {
                    continue;
                };
                let reply = census::count(&store).await;
                tracing::info!(
                    store = %store.name,
                    counted = reply.counted,
                    tenants = reply.tenants.len(),
                    "answered a census request"
                );
                match serde_json::to_vec(&reply) {
                    Ok(body) => {
                        if let Err(error) = client.publish(reply_to, body.into()).await {
                            tracing::warn!(store = %store.name, error = %error, "cannot answer a census request");
                        }
                    }
                    Err(error) => {
                        tracing::warn!(store = %store.name, error = %error, "cannot encode a census reply");
                    }
                }
            }
        });
    }
    client
        .flush()
        .await
        .context("cannot confirm the census subscriptions with the NATS server")?;
    Ok(CensusResponder { tasks })
}
