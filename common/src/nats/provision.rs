//! Idempotent provisioning of streams and durable consumers: running it again with the same
//! settings changes nothing; with changed settings it updates what the server allows updating.

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::stream::{self, DiscardPolicy, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, consumer};

use super::names::{Durable, Names};
use crate::config::NatsSettings;

/// A stream or consumer that could not be provisioned.
#[derive(Debug, thiserror::Error)]
#[error("cannot provision {what} on NATS: {source}")]
pub struct ProvisionError {
    what: String,
    source: async_nats::Error,
}

fn provision_error(what: impl Into<String>) -> impl FnOnce(async_nats::Error) -> ProvisionError {
    let what = what.into();
    move |source| ProvisionError { what, source }
}

/// The streams of DESIGN §4 under `names`, as `settings` shapes them.
pub fn stream_configs(names: &Names, settings: &NatsSettings) -> Vec<stream::Config> {
    let base = stream::Config {
        storage: StorageType::File,
        num_replicas: settings.replicas,
        duplicate_window: settings.duplicate_window,
        ..Default::default()
    };
    vec![
        stream::Config {
            name: names.tasks_stream(),
            description: Some("Lethe tasks for the workers (carry identifiers)".into()),
            subjects: names.task_subjects(),
            retention: RetentionPolicy::WorkQueue,
            max_age: settings.task_max_age,
            ..base.clone()
        },
        stream::Config {
            name: names.results_stream(),
            description: Some("Lethe task results for the coordinator".into()),
            subjects: vec![names.results_wildcard()],
            retention: RetentionPolicy::WorkQueue,
            max_age: settings.task_max_age,
            ..base.clone()
        },
        stream::Config {
            name: names.events_stream(),
            description: Some("Lethe status events (ids and counts only)".into()),
            subjects: vec![names.events_wildcard()],
            retention: RetentionPolicy::Limits,
            discard: DiscardPolicy::Old,
            max_age: settings.event_max_age,
            ..base.clone()
        },
        stream::Config {
            name: names.dead_stream(),
            description: Some("Lethe messages that no worker could decode or route".into()),
            subjects: vec![names.dead_wildcard()],
            retention: RetentionPolicy::Limits,
            discard: DiscardPolicy::Old,
            max_age: settings.task_max_age,
            ..base
        },
    ]
}

/// Creates Lethe's streams, or updates them to the configured shape. Every daemon calls it at
/// start-up, so none depends on another having started first.
pub async fn provision_streams(
    jetstream: &jetstream::Context,
    names: &Names,
    settings: &NatsSettings,
) -> Result<(), ProvisionError> {
    for config in stream_configs(names, settings) {
        let name = config.name.clone();
        jetstream
            .create_or_update_stream(config)
            .await
            .map_err(|e| provision_error(format!("stream {name}"))(e.into()))?;
    }
    Ok(())
}

/// How a durable consumer delivers.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    /// Which durable.
    pub durable: Durable,
}

impl ConsumerSpec {
    /// The pull-consumer configuration of `durable`.
    pub fn config(&self, names: &Names, settings: &NatsSettings) -> pull::Config {
        pull::Config {
            durable_name: Some(names.durable_name(&self.durable)),
            description: Some(format!(
                "Lethe {}",
                names.durable_name(&self.durable).replace('-', " ")
            )),
            filter_subjects: names.durable_subjects(&self.durable),
            ack_policy: AckPolicy::Explicit,
            deliver_policy: DeliverPolicy::All,
            ack_wait: settings.ack_wait,
            max_deliver: settings.max_deliver,
            max_ack_pending: settings.max_ack_pending,
            ..Default::default()
        }
    }
}

/// Creates the durable consumer `spec`, or updates it to the configured shape, and returns it.
/// Several processes may call this at once: each ends up bound to the same durable.
pub async fn provision_consumer(
    jetstream: &jetstream::Context,
    names: &Names,
    settings: &NatsSettings,
    spec: &ConsumerSpec,
) -> Result<consumer::PullConsumer, ProvisionError> {
    let stream_name = names.durable_stream(&spec.durable);
    let config = spec.config(names, settings);
    let what = format!(
        "consumer {} on stream {stream_name}",
        names.durable_name(&spec.durable)
    );
    let stream = jetstream
        .get_stream(&stream_name)
        .await
        .map_err(|e| provision_error(what.clone())(e.into()))?;
    match stream.update_consumer(config.clone()).await {
        Ok(consumer) => Ok(consumer),
        Err(_) => stream
            .create_consumer(config)
            .await
            .map_err(|e| provision_error(what)(e.into())),
    }
}

/// Deletes Lethe's streams under `names` (and with them every consumer and message). For
/// tearing down a deployment or a test's namespace; streams that do not exist are skipped.
pub async fn deprovision(
    jetstream: &jetstream::Context,
    names: &Names,
) -> Result<(), ProvisionError> {
    for stream in [
        names.tasks_stream(),
        names.results_stream(),
        names.events_stream(),
        names.dead_stream(),
    ] {
        match jetstream.delete_stream(&stream).await {
            Ok(_) => {}
            Err(error)
                if matches!(
                    error.kind(),
                    async_nats::jetstream::context::DeleteStreamErrorKind::JetStream(e)
                        if e.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND
                ) => {}
            Err(error) => return Err(provision_error(format!("stream {stream}"))(error.into())),
        }
    }
    Ok(())
}
