//! One isolated namespace per test: its own databases, Redis key prefix, NATS prefix and
//! buckets, all named after a short random name, and all removed afterwards.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use sqlx::{Connection as _, MySqlConnection, PgConnection};

use crate::services::Services;

type Hook = Box<dyn FnOnce(Services) -> Pin<Box<dyn Future<Output = Result<()>> + Send>> + Send>;

/// How long a cleanup left to `Drop` (after a panic) may take before the test goes on.
const DROP_CLEANUP_TIMEOUT: Duration = Duration::from_secs(60);

/// A test's private corner of the shared services.
///
/// Everything it creates is named after [`Namespace::name`] (`t` and ten hex digits), so tests
/// run in parallel without seeing each other. Call [`Namespace::cleanup`] at the end of the
/// test; if the test panics first, `Drop` cleans up as well as it can. Set `LETHE_TEST_KEEP=1`
/// to keep everything for inspection (the name is printed on stderr).
pub struct Namespace {
    inner: Arc<Inner>,
    done: bool,
    drop_timeout: Duration,
}

struct Inner {
    name: String,
    services: Services,
    resources: Mutex<Resources>,
}

#[derive(Default)]
struct Resources {
    pg_databases: Vec<String>,
    mysql_databases: Vec<String>,
    buckets: Vec<String>,
    redis_prefix_used: bool,
    hooks: Vec<Hook>,
}

impl Namespace {
    /// A new namespace with a fresh random name. Nothing is created until asked for.
    pub async fn create(services: &Services) -> Result<Self> {
        let name = format!("t{:010x}", rand::random::<u64>() & 0xff_ffff_ffff);
        Ok(Self {
            inner: Arc::new(Inner {
                name,
                services: services.clone(),
                resources: Mutex::default(),
            }),
            done: false,
            drop_timeout: DROP_CLEANUP_TIMEOUT,
        })
    }

    /// How long a cleanup left to `Drop` may take (one minute unless set): a benchmark's
    /// namespace of a few hundred thousand objects needs longer to empty its bucket.
    pub fn with_drop_timeout(mut self, limit: Duration) -> Self {
        self.drop_timeout = limit;
        self
    }

    /// The namespace's name: `t` and ten lowercase hex digits.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The services the namespace lives in.
    pub fn services(&self) -> &Services {
        &self.inner.services
    }

    fn resources(&self) -> std::sync::MutexGuard<'_, Resources> {
        self.inner
            .resources
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Creates the PostgreSQL database `<ns>_<suffix>` (once; later calls return the same)
    /// and returns its URL. `suffix`: lowercase letters, digits, underscores.
    pub async fn pg_database(&self, suffix: &str) -> Result<String> {
        let db = self.db_name(suffix)?;
        let url = self.services().pg_database_url(&db);
        {
            let mut r = self.resources();
            if r.pg_databases.contains(&db) {
                return Ok(url);
            }
            // Registered before creation, so a half-done creation is dropped too.
            r.pg_databases.push(db.clone());
        }
        let mut admin = PgConnection::connect(&self.services().pg_url)
            .await
            .context("while connecting to PostgreSQL")?;
        // The name is validated above (lowercase, digits, underscores): safe as an identifier.
        sqlx::query(&format!("CREATE DATABASE \"{db}\""))
            .persistent(false)
            .execute(&mut admin)
            .await
            .with_context(|| format!("while creating PostgreSQL database {db}"))?;
        admin.close().await.ok();
        Ok(url)
    }

    /// Creates the MariaDB database `<ns>_<suffix>` (once) and returns its URL.
    pub async fn mysql_database(&self, suffix: &str) -> Result<String> {
        let db = self.db_name(suffix)?;
        let url = self.services().mysql_database_url(&db);
        {
            let mut r = self.resources();
            if r.mysql_databases.contains(&db) {
                return Ok(url);
            }
            r.mysql_databases.push(db.clone());
        }
        let mut admin = MySqlConnection::connect(&self.services().mysql_url)
            .await
            .context("while connecting to MariaDB")?;
        sqlx::query(&format!(
            "CREATE DATABASE `{db}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
        ))
        .persistent(false)
        .execute(&mut admin)
        .await
        .with_context(|| format!("while creating MariaDB database {db}"))?;
        admin.close().await.ok();
        Ok(url)
    }

    /// The Redis key prefix of the namespace, `<ns>:`. Keys under it are deleted at cleanup.
    pub fn redis_prefix(&self) -> String {
        self.resources().redis_prefix_used = true;
        format!("{}:", self.name())
    }

    /// The NATS name prefix of the namespace (a valid lowercase subject token): give it to
    /// the daemons' `nats.prefix` so their subjects, streams and durables are private.
    pub fn nats_prefix(&self) -> String {
        self.name().to_string()
    }

    /// What the names of the namespace's JetStream streams start with (the prefix in upper
    /// case). The harness does not talk to NATS: register their deletion with
    /// [`Namespace::on_cleanup`].
    pub fn nats_stream_prefix(&self) -> String {
        self.name().to_uppercase()
    }

    /// Creates the S3 bucket `<ns>-<suffix>` (once) and returns its name. `suffix`: lowercase
    /// letters, digits, hyphens.
    pub async fn bucket(&self, suffix: &str) -> Result<String> {
        if suffix.is_empty()
            || !suffix
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            || suffix.ends_with('-')
            || self.name().len() + 1 + suffix.len() > 63
        {
            bail!("bucket suffix {suffix:?}: use lowercase letters, digits and inner hyphens");
        }
        let bucket = format!("{}-{suffix}", self.name());
        {
            let mut r = self.resources();
            if r.buckets.contains(&bucket) {
                return Ok(bucket);
            }
            r.buckets.push(bucket.clone());
        }
        lethe_sample::ensure_bucket(&self.services().s3_client(), &bucket)
            .await
            .with_context(|| format!("while creating bucket {bucket}"))?;
        Ok(bucket)
    }

    /// Runs `hook` at cleanup, before the databases, keys and buckets go (hooks run last
    /// registered first). A hook gets the services and must open its own connections: after
    /// a panic it runs on another thread and runtime than the test.
    pub fn on_cleanup<F, Fut>(&self, hook: F)
    where
        F: FnOnce(Services) -> Fut + Send + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        self.resources()
            .hooks
            .push(Box::new(move |services| Box::pin(hook(services))));
    }

    /// Removes everything the namespace created: runs the hooks, drops the databases (closing
    /// their connections), deletes the Redis keys under the prefix, empties and deletes the
    /// buckets. Tries every step and reports the first failure.
    pub async fn cleanup(mut self) -> Result<()> {
        self.done = true;
        if keep() {
            eprintln!("LETHE_TEST_KEEP: keeping namespace {}", self.name());
            return Ok(());
        }
        let resources = std::mem::take(&mut *self.resources());
        cleanup(&self.inner.name, &self.inner.services, resources).await
    }

    fn db_name(&self, suffix: &str) -> Result<String> {
        if suffix.is_empty()
            || !suffix
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            || self.name().len() + 1 + suffix.len() > 63
        {
            bail!("database suffix {suffix:?}: use lowercase letters, digits and underscores");
        }
        Ok(format!("{}_{suffix}", self.name()))
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if keep() {
            eprintln!("LETHE_TEST_KEEP: keeping namespace {}", self.name());
            return;
        }
        let resources = std::mem::take(&mut *self.resources());
        let name = self.inner.name.clone();
        let services = self.inner.services.clone();
        // The test's runtime may be the one being dropped or blocked in this very call, so the
        // cleanup gets a thread and a runtime of its own; the test waits for it (bounded), or
        // its process could exit first.
        let (tx, rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name(format!("cleanup-{name}"))
            .spawn(move || {
                let result = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(anyhow::Error::from)
                    .and_then(|rt| rt.block_on(cleanup(&name, &services, resources)));
                let _ = tx.send(result);
            });
        if spawned.is_err() {
            eprintln!(
                "namespace {}: could not start the cleanup thread",
                self.name()
            );
            return;
        }
        match rx.recv_timeout(self.drop_timeout) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("namespace {}: cleanup failed: {e:#}", self.name()),
            Err(_) => eprintln!("namespace {}: cleanup timed out", self.name()),
        }
    }
}

fn keep() -> bool {
    std::env::var("LETHE_TEST_KEEP").is_ok_and(|v| !v.is_empty() && v != "0")
}

async fn cleanup(name: &str, services: &Services, mut resources: Resources) -> Result<()> {
    let mut first_error: Option<anyhow::Error> = None;
    let mut note = |result: Result<()>| {
        if let Err(e) = result {
            eprintln!("namespace {name}: {e:#}");
            first_error.get_or_insert(e);
        }
    };
    while let Some(hook) = resources.hooks.pop() {
        note(hook(services.clone()).await);
    }
    if !resources.pg_databases.is_empty() {
        note(drop_pg_databases(services, &resources.pg_databases).await);
    }
    if !resources.mysql_databases.is_empty() {
        note(drop_mysql_databases(services, &resources.mysql_databases).await);
    }
    if resources.redis_prefix_used {
        note(delete_redis_keys(services, &format!("{name}:")).await);
    }
    for bucket in &resources.buckets {
        note(delete_bucket(services, bucket).await);
    }
    match first_error {
        None => Ok(()),
        Some(e) => Err(e.context(format!("while cleaning up namespace {name}"))),
    }
}

async fn drop_pg_databases(services: &Services, databases: &[String]) -> Result<()> {
    let mut admin = PgConnection::connect(&services.pg_url)
        .await
        .context("while connecting to PostgreSQL")?;
    for db in databases {
        // FORCE closes the test's and the daemons' open connections first.
        sqlx::query(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
            .persistent(false)
            .execute(&mut admin)
            .await
            .with_context(|| format!("while dropping PostgreSQL database {db}"))?;
    }
    admin.close().await.ok();
    Ok(())
}

async fn drop_mysql_databases(services: &Services, databases: &[String]) -> Result<()> {
    let mut admin = MySqlConnection::connect(&services.mysql_url)
        .await
        .context("while connecting to MariaDB")?;
    for db in databases {
        // MariaDB has no DROP ... FORCE: end the database's sessions first, so that an open
        // transaction left by a failed test cannot make DROP wait on its metadata lock.
        let sessions: Vec<i64> = sqlx::query_scalar(
            "SELECT CAST(id AS SIGNED) FROM information_schema.processlist \
             WHERE db = ? AND id <> CONNECTION_ID()",
        )
        .bind(db)
        .fetch_all(&mut admin)
        .await
        .context("while listing MariaDB sessions")?;
        for id in sessions {
            // The session may have ended meanwhile.
            let _ = sqlx::query(&format!("KILL {id}"))
                .persistent(false)
                .execute(&mut admin)
                .await;
        }
        sqlx::query(&format!("DROP DATABASE IF EXISTS `{db}`"))
            .persistent(false)
            .execute(&mut admin)
            .await
            .with_context(|| format!("while dropping MariaDB database {db}"))?;
    }
    admin.close().await.ok();
    Ok(())
}

async fn delete_redis_keys(services: &Services, prefix: &str) -> Result<()> {
    let mut conn = services.redis().await?;
    let pattern = format!("{}*", lethe_sample::escape_glob(prefix));
    lethe_sample::unlink_matching(&mut conn, &pattern).await?;
    Ok(())
}

async fn delete_bucket(services: &Services, bucket: &str) -> Result<()> {
    let client = services.s3_client();
    if let Err(e) = client.head_bucket().bucket(bucket).send().await
        && e.as_service_error().is_some_and(|s| s.is_not_found())
    {
        return Ok(());
    }
    lethe_sample::delete_prefix(&client, bucket, "").await?;
    client
        .delete_bucket()
        .bucket(bucket)
        .send()
        .await
        .with_context(|| format!("while deleting bucket {bucket}"))?;
    Ok(())
}
