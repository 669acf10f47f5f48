#![doc = include_str!("../README.md")]

pub mod api;
pub mod backup_support;
pub mod browser;
mod cluster;
pub mod digest;
pub mod e2e;
pub mod eraser_support;
pub mod exporter_support;
mod namespace;
mod nats;
pub mod otlp;
pub mod process;
pub mod processor;
pub mod proxy;
mod services;

use anyhow::{Context as _, Result, bail};
use lethe_sample::{ConnectOptions, SampleStores};

pub use cluster::NatsCluster;
pub use namespace::Namespace;
pub use nats::{NatsServer, nats_server_bin};
pub use services::{Services, with_database};

/// The sample data map, `config/datamap.toml`, as shipped.
pub const SAMPLE_DATAMAP: &str = include_str!("../../config/datamap.toml");

/// Creates the sample application's stores in `ns` (once; later calls return the same):
/// PostgreSQL database `<ns>_accounts`, MariaDB database `<ns>_chat`, Redis prefix `<ns>:`
/// and bucket `<ns>-files` (no object prefix). The URLs are what the daemons under test get
/// as `ACCOUNTS_DATABASE_URL`, `CHAT_DATABASE_URL` and `SESSIONS_REDIS_URL`.
pub async fn sample_options(ns: &Namespace) -> Result<ConnectOptions> {
    Ok(ConnectOptions {
        accounts_url: ns.pg_database("accounts").await?,
        chat_url: ns.mysql_database("chat").await?,
        sessions_url: ns.services().redis_url.clone(),
        redis_prefix: ns.redis_prefix(),
        s3: ns.services().s3.clone(),
        files_bucket: ns.bucket("files").await?,
        files_prefix: String::new(),
    })
}

/// Creates the sample stores in `ns` (see [`sample_options`]) and connects to them. Seed them
/// with [`lethe_sample::seed`].
pub async fn sample_stores(ns: &Namespace) -> Result<SampleStores> {
    let options = sample_options(ns).await?;
    SampleStores::connect(&options)
        .await
        .context("while connecting to the namespace's sample stores")
}

/// The sample data map pointed at the stores of `options`: the sessions store's `key_prefix`
/// becomes the Redis prefix, the files store's `bucket` the bucket, and its `prefixes` get the
/// object prefix. The processors (stores of kind `http`) are left out: a test that runs the
/// sample processor adds its store back ([`processor::Processor::join`]). Everything else (the
/// `url_env` names, collections, strategies) is as shipped.
pub fn sample_datamap(options: &ConnectOptions) -> Result<String> {
    let mut map: toml::Table = toml::from_str(SAMPLE_DATAMAP).context("config/datamap.toml")?;
    let Some(stores) = map.get_mut("stores").and_then(|s| s.as_table_mut()) else {
        bail!("config/datamap.toml has no [stores]");
    };
    stores.retain(|_, store| store.get("kind").and_then(|k| k.as_str()) != Some("http"));
    let Some(sessions) = stores.get_mut("sessions").and_then(|s| s.as_table_mut()) else {
        bail!("config/datamap.toml has no [stores.sessions]");
    };
    sessions.insert(
        "key_prefix".into(),
        toml::Value::String(options.redis_prefix.clone()),
    );
    let Some(files) = stores.get_mut("files").and_then(|s| s.as_table_mut()) else {
        bail!("config/datamap.toml has no [stores.files]");
    };
    files.insert(
        "bucket".into(),
        toml::Value::String(options.files_bucket.clone()),
    );
    if let Some(prefixes) = files.get_mut("prefixes").and_then(|p| p.as_array_mut()) {
        for p in prefixes.iter_mut() {
            if let Some(s) = p.as_str() {
                *p = toml::Value::String(format!("{}{s}", options.files_prefix));
            }
        }
    }
    toml::to_string(&map).context("while writing the data map")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    /// Compiles only if the harness's futures can run on spawned tasks.
    #[allow(dead_code)]
    async fn harness_futures_are_send(ns: Namespace, stores: SampleStores) {
        assert_send(&Namespace::create(ns.services()));
        assert_send(&ns.pg_database("a"));
        assert_send(&ns.mysql_database("a"));
        assert_send(&ns.bucket("a"));
        assert_send(&sample_stores(&ns));
        assert_send(&digest::sample_digest(&stores));
        assert_send(&NatsServer::start());
        assert_send(&ns.cleanup());
    }
}
