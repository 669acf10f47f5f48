//! `verify`, `restore` and `replay`: reading a backup back, checking it, restoring it into a
//! target with the field's tool, and replaying every erasure recorded after it was taken.
//!
//! A damaged or tampered backup never lands in a target. Into MariaDB, Redis and S3, which are
//! written as the data arrives, a restore reads the object twice: first to check its SHA-256
//! against the manifest, before anything is written, then to decrypt, decompress and restore
//! it, pinned to the same object by its ETag and checked again. A PostgreSQL restore reads it
//! once: `pg_restore --single-transaction` commits only after the whole dump, and the dump's
//! last bytes are released only after the object's SHA-256 matched the manifest (an error
//! reaches `pg_restore` instead of the end, and kills it) and OpenPGP's integrity check passed
//! (the decryptor holds its last plaintext back until then), so a damaged object is rolled back.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use aws_sdk_s3::Client;
use lethe_common::Settings;
use lethe_common::datamap::{DataMap, Store};
use lethe_common::ids::{LEDGER_STORE, StoreName};
use lethe_common::privacy::IdentityHasher;
use lethe_common::s3::{ObjectWriter, WriterOptions};
use lethe_stores::{self as stores, ServedStore, StoreConnection};
use secrecy::SecretString;
use serde::Serialize;
use sqlx::PgPool;
use tokio::io::AsyncWriteExt as _;
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio_util::task::AbortOnDropHandle;
use uuid::Uuid;

use crate::catalog::{self, BackupRow};
use crate::keys::SecretKeys;
use crate::manifest::Manifest;
use crate::pipeline::{self, Chunk, Decryption, is_stage_stopped};
pub use crate::replay::{Plan, ReplayReport, Replayed, Unreplayable};
use crate::settings::BackupTools;
use crate::source::Kind;
use crate::tombstones::Opener;
use crate::tools;
use crate::upload::{self, Downloaded};

/// Objects up to this size are restored in one request; larger ones by multipart upload.
const RESTORE_PART: u64 = 16 << 20;
/// How long a restore waits for its Redis server to load the RDB.
const REDIS_START_TIMEOUT: Duration = Duration::from_secs(300);

/// The ledger and Lethe's bucket: what `list`, `verify`, `restore` and `replay` read. A restore
/// works without the ledger: backups are then found by their manifests in the bucket, and the
/// changes to replay in the tombstones.
pub struct Ledger {
    settings: Settings,
    tools: BackupTools,
    pool: Option<PgPool>,
    s3: Client,
    bucket: String,
    prefix: String,
}

impl Ledger {
    /// Opens (and migrates) the ledger and reaches the bucket.
    pub async fn connect(settings: &Settings) -> anyhow::Result<Self> {
        let pool = lethe_common::ledger::connect_and_migrate(settings.require_ledger()?).await?;
        Self::with_pool(settings, Some(pool))
    }

    /// For a restore or a replay: opens the ledger if it is there, without migrating it (an
    /// empty database may be the ledger's own restore target). A ledger that cannot be reached,
    /// or holds no catalog, counts as gone: the restore then reads the bucket only.
    pub async fn for_restore(settings: &Settings) -> anyhow::Result<Self> {
        let pool = match settings.ledger.as_ref() {
            Some(ledger) => match lethe_common::ledger::connect(ledger).await {
                Ok(pool) => {
                    let catalogued: Result<bool, sqlx::Error> = sqlx::query_scalar(
                        "SELECT to_regclass('backup') IS NOT NULL AND to_regclass('erasure_log') IS NOT NULL",
                    )
                    .fetch_one(&pool)
                    .await;
                    match catalogued {
                        Ok(true) => Some(pool),
                        Ok(false) => {
                            tracing::warn!(
                                "the ledger holds no catalog; reading backups' manifests and tombstones from the bucket"
                            );
                            None
                        }
                        Err(error) => {
                            tracing::warn!(error = %error, "cannot read the ledger; reading backups' manifests and tombstones from the bucket");
                            None
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(error = %format!("{error:#}"), "the ledger cannot be reached; reading backups' manifests and tombstones from the bucket");
                    None
                }
            },
            None => None,
        };
        Self::with_pool(settings, pool)
    }

    fn with_pool(settings: &Settings, pool: Option<PgPool>) -> anyhow::Result<Self> {
        let s3_settings = settings.require_s3()?;
        let backups: crate::settings::BackupsSettings = settings.section()?;
        Ok(Self {
            settings: settings.clone(),
            tools: backups.tools,
            pool,
            s3: lethe_common::s3::client(s3_settings),
            bucket: s3_settings.bucket.clone(),
            prefix: backups.prefix,
        })
    }

    /// The ledger's pool, unless the ledger is gone.
    pub fn pool(&self) -> Option<&PgPool> {
        self.pool.as_ref()
    }

    fn require_pool(&self) -> anyhow::Result<&PgPool> {
        self.pool
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("the ledger cannot be read"))
    }

    fn tools(&self) -> &BackupTools {
        &self.tools
    }
}

/// How the operator decrypts.
#[derive(Debug, Clone)]
pub enum Decrypt {
    /// With the secret keys in a file (`gpg --export-secret-keys`), unlocked with the
    /// passphrase if they are protected.
    SecretKey {
        /// The file.
        path: PathBuf,
        /// The passphrase.
        passphrase: Option<SecretString>,
    },
    /// With the operator's own `gpg` and its agent (smartcards, pinentry).
    Gpg,
}

/// Where a restore or replay goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A PostgreSQL, MariaDB or Redis server whose URL is in this environment variable.
    Env(String),
    /// A directory (Redis: `dump.rdb` is written there).
    Dir(PathBuf),
    /// An S3 bucket, objects under `prefix`.
    Bucket {
        /// The bucket.
        bucket: String,
        /// Prepended to every restored key.
        prefix: String,
    },
}

impl Target {
    /// Parses `env:VAR`, `s3://bucket[/prefix/]` or a directory. A URL itself is refused: it
    /// goes through a variable (the command line is visible to every user of the machine).
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        if let Some(variable) = text.strip_prefix("env:") {
            if variable.is_empty() {
                anyhow::bail!("--target env: names no variable");
            }
            return Ok(Target::Env(variable.to_owned()));
        }
        if let Some(rest) = text.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                anyhow::bail!("--target s3:// names no bucket");
            }
            if !prefix.is_empty() && !prefix.ends_with('/') {
                anyhow::bail!("--target s3://{bucket}/{prefix}: the prefix must end with `/`");
            }
            return Ok(Target::Bucket {
                bucket: bucket.to_owned(),
                prefix: prefix.to_owned(),
            });
        }
        if text.contains("://") {
            anyhow::bail!(
                "--target: give a server's URL through an environment variable, as env:VAR"
            );
        }
        Ok(Target::Dir(PathBuf::from(text)))
    }

    fn describe(&self) -> String {
        match self {
            Target::Env(variable) => format!("env:{variable}"),
            Target::Dir(dir) => dir.display().to_string(),
            Target::Bucket { bucket, prefix } => format!("s3://{bucket}/{prefix}"),
        }
    }

    /// The URL a `env:NAME` target names, from the credentials of `settings` (given in code
    /// or the environment).
    fn url(&self, settings: &Settings) -> anyhow::Result<SecretString> {
        match self {
            Target::Env(variable) => settings
                .credentials
                .get(variable)
                .ok_or_else(|| anyhow::anyhow!("environment variable {variable} is not set")),
            _ => anyhow::bail!("this target has no URL"),
        }
    }
}

/// Where a Redis restore runs its own server on the restored RDB: a directory for its socket.
#[derive(Debug, Clone)]
pub struct RedisScratch {
    /// The socket's directory: the socket is `redis.sock` in it.
    pub dir: PathBuf,
}

/// The credential name under which the scratch Redis server's URL reaches the connector.
const SCRATCH_REDIS: &str = "LETHE_BACKUP_SCRATCH_REDIS_URL";

/// What `verify` found.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// The backup.
    pub backup_id: Uuid,
    /// Its store.
    pub store: String,
    /// Bytes of the object, as the manifest records them.
    pub ciphertext_bytes: u64,
    /// Its SHA-256, as recomputed (equal to the manifest's).
    pub ciphertext_sha256: String,
    /// With a key: bytes of the dump after decryption and decompression (equal to the
    /// manifest's).
    pub plaintext_bytes: Option<u64>,
}

/// What a restore did.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    /// The backup.
    pub backup_id: Uuid,
    /// Its store.
    pub store: String,
    /// The store's kind.
    pub kind: String,
    /// The target, as given (never a URL).
    pub target: String,
    /// Bytes of the dump restored.
    pub plaintext_bytes: u64,
    /// Objects restored (S3).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub objects: Option<u64>,
    /// The changes replayed afterwards; absent with `--no-replay` and for the ledger.
    pub replay: Option<ReplayReport>,
}

/// Lists the catalog, newest first.
pub async fn list(
    ledger: &Ledger,
    store: Option<&str>,
    limit: i64,
) -> anyhow::Result<Vec<BackupRow>> {
    let store = store
        .map(StoreName::parse)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    Ok(catalog::list(ledger.require_pool()?, store.as_ref(), limit).await?)
}

/// Lists the backups whose manifests are in the bucket, newest first, without the ledger.
pub async fn list_bucket(
    settings: &Settings,
    store: Option<&str>,
) -> anyhow::Result<Vec<BackupRow>> {
    let s3_settings = settings.require_s3()?;
    let backups: crate::settings::BackupsSettings = settings.section()?;
    let s3 = lethe_common::s3::client(s3_settings);
    crate::manifests::list(&s3, &s3_settings.bucket, &backups.prefix, store).await
}

/// The catalog row and the manifest of a completed backup, which must agree.
async fn load(ledger: &Ledger, id: Uuid) -> anyhow::Result<(BackupRow, Manifest)> {
    let row = match &ledger.pool {
        Some(pool) => catalog::get(pool, id).await?,
        None => None,
    };
    let Some(row) = row else {
        // The ledger is gone, or older than the backup: its manifest is in the bucket.
        let (key, manifest) =
            crate::manifests::find(&ledger.s3, &ledger.bucket, &ledger.prefix, id)
                .await?
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "there is no backup {id}, neither in the catalog nor in the bucket"
                    )
                })?;
        return Ok((crate::manifests::row_of(&manifest, &key), manifest));
    };
    if row.status != "completed" {
        anyhow::bail!("backup {id} is {}, not completed", row.status);
    }
    let bytes = upload::get_small(&ledger.s3, &ledger.bucket, &row.manifest_key)
        .await
        .with_context(|| format!("while reading the manifest of backup {id}"))?;
    let manifest: Manifest = serde_json::from_slice(&bytes)
        .with_context(|| format!("the manifest of backup {id} is not valid"))?;
    let agrees = manifest.backup_id == row.id
        && manifest.object_key == row.object_key
        && Some(manifest.ciphertext_sha256.as_str()) == row.sha256.as_deref()
        && i64::try_from(manifest.ciphertext_bytes).ok() == row.bytes
        && i64::try_from(manifest.plaintext_bytes).ok() == row.plaintext_bytes
        && manifest.erasure_seq == row.erasure_seq;
    if !agrees {
        anyhow::bail!("the manifest of backup {id} disagrees with its catalog row; refusing it");
    }
    Ok((row, manifest))
}

/// Reads the whole object and checks its size and SHA-256 against the manifest.
async fn check_object(
    ledger: &Ledger,
    row: &BackupRow,
    manifest: &Manifest,
) -> anyhow::Result<Downloaded> {
    let seen = upload::download(&ledger.s3, &ledger.bucket, &row.object_key, None, None).await?;
    same_as_manifest(row, manifest, &seen)?;
    Ok(seen)
}

fn same_as_manifest(row: &BackupRow, manifest: &Manifest, seen: &Downloaded) -> anyhow::Result<()> {
    if seen.bytes != manifest.ciphertext_bytes || seen.sha256 != manifest.ciphertext_sha256 {
        anyhow::bail!(
            "backup {} is damaged: its object has {} bytes with SHA-256 {}, its manifest records \
             {} bytes with SHA-256 {}",
            row.id,
            seen.bytes,
            seen.sha256,
            manifest.ciphertext_bytes,
            manifest.ciphertext_sha256
        );
    }
    Ok(())
}

/// Checks a backup: the object's SHA-256 against its manifest and, given a way to decrypt,
/// that it decrypts and decompresses to the recorded size.
pub async fn verify(
    ledger: &Ledger,
    id: Uuid,
    decrypt: Option<&Decrypt>,
) -> anyhow::Result<VerifyReport> {
    let (row, manifest) = load(ledger, id).await?;
    let seen = check_object(ledger, &row, &manifest).await?;
    let plaintext_bytes = match decrypt {
        None => None,
        Some(decrypt) => {
            let ((), bytes) = decode(ledger, &row, &manifest, Some(&seen), decrypt, |reader| {
                std::io::copy(reader, &mut std::io::sink())?;
                Ok(())
            })
            .await?;
            Some(bytes)
        }
    };
    Ok(VerifyReport {
        backup_id: row.id,
        store: row.store,
        ciphertext_bytes: seen.bytes,
        ciphertext_sha256: seen.sha256,
        plaintext_bytes,
    })
}

/// Reads the object (pinned to the ETag of `checked`, the checking read, if there was one),
/// fails before its end unless its size and SHA-256 are the manifest's, decrypts and
/// decompresses it into `sink` on a blocking thread, and checks the sizes and hash again.
async fn decode<T, F>(
    ledger: &Ledger,
    row: &BackupRow,
    manifest: &Manifest,
    checked: Option<&Downloaded>,
    decrypt: &Decrypt,
    sink: F,
) -> anyhow::Result<(T, u64)>
where
    T: Send + 'static,
    F: FnOnce(&mut dyn Read) -> anyhow::Result<T> + Send + 'static,
{
    let (tx, rx) = pipeline::channel();
    let download = upload::download_expecting(
        &ledger.s3,
        &ledger.bucket,
        &row.object_key,
        checked.and_then(|c| c.etag.as_deref()),
        Some(tx),
        Some((
            manifest.ciphertext_bytes,
            manifest.ciphertext_sha256.as_str(),
        )),
    );
    let (downloaded, gpg, decoded) = match decrypt {
        Decrypt::SecretKey { path, passphrase } => {
            let keys = {
                use secrecy::ExposeSecret as _;
                SecretKeys::load(path, passphrase.as_ref().map(|p| p.expose_secret()))?
            };
            let decoder = AbortOnDropHandle::new(pipeline::spawn_decoder(
                rx,
                Decryption::Keys(Box::new(keys)),
                sink,
            ));
            let (downloaded, decoded) = tokio::join!(download, decoder);
            (downloaded, Ok(()), decoded)
        }
        Decrypt::Gpg => {
            let (plain_tx, plain_rx) = pipeline::channel();
            let gpg = run_gpg(&ledger.tools().gpg, rx, plain_tx);
            let decoder =
                AbortOnDropHandle::new(pipeline::spawn_decoder(plain_rx, Decryption::Done, sink));
            tokio::join!(download, gpg, decoder)
        }
    };
    let decoded = decoded.map_err(anyhow::Error::new).and_then(|r| r);
    let errors = [
        downloaded.as_ref().err(),
        gpg.as_ref().err(),
        decoded.as_ref().err(),
    ];
    if let Some(error) = errors
        .iter()
        .flatten()
        .find(|e| !is_stage_stopped(e))
        .or(errors.iter().flatten().next())
    {
        anyhow::bail!("cannot read backup {}: {error:#}", row.id);
    }
    let (Ok(downloaded), Ok((value, bytes))) = (downloaded, decoded) else {
        anyhow::bail!("cannot read backup {}", row.id);
    };
    same_as_manifest(row, manifest, &downloaded)?;
    if bytes != manifest.plaintext_bytes {
        anyhow::bail!(
            "backup {} decompresses to {bytes} bytes, its manifest records {}",
            row.id,
            manifest.plaintext_bytes
        );
    }
    Ok((value, bytes))
}

/// Decrypts with the operator's `gpg` (and its agent): ciphertext from `input` to its standard
/// input, its standard output to `output`.
async fn run_gpg(
    program: &Path,
    mut input: mpsc::Receiver<Chunk>,
    output: mpsc::Sender<Chunk>,
) -> anyhow::Result<()> {
    let mut child = Command::new(program)
        .args(["--batch", "--quiet", "--no-tty", "--decrypt"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", program.display()))?;
    let stderr = tools::stderr_tail(&mut child);
    let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        anyhow::bail!("gpg has no standard input or output");
    };
    let feed = async move {
        while let Some(chunk) = input.recv().await {
            let chunk = chunk.map_err(|e| anyhow::anyhow!("{e}"))?;
            stdin.write_all(&chunk).await?;
        }
        stdin.shutdown().await?;
        Ok::<_, anyhow::Error>(())
    };
    let read = tools::forward(stdout, &output);
    let (fed, read) = tokio::join!(feed, read);
    let status = child.wait().await?;
    let tail = stderr.await.unwrap_or_default();
    if !status.success() {
        let error = anyhow::anyhow!("gpg --decrypt failed ({status}): {tail}");
        let _ = output
            .send(Err(std::io::Error::other(error.to_string())))
            .await;
        return Err(error);
    }
    fed?;
    read?;
    Ok(())
}

/// The data-map entry of `store` pointed at `target`, connected.
fn target_store(
    settings: &Settings,
    map: &DataMap,
    store: &StoreName,
    target: &Target,
) -> anyhow::Result<ServedStore> {
    let entry = map
        .stores
        .get(store)
        .ok_or_else(|| anyhow::anyhow!("store `{store}` is not in the data map"))?;
    let pointed = match (entry, target) {
        (Store::Postgres(sql), Target::Env(variable)) => {
            let mut sql = sql.clone();
            sql.url_env = variable.clone();
            Store::Postgres(sql)
        }
        (Store::Mysql(sql), Target::Env(variable)) => {
            let mut sql = sql.clone();
            sql.url_env = variable.clone();
            Store::Mysql(sql)
        }
        (Store::Redis(redis), Target::Env(variable)) => {
            let mut redis = redis.clone();
            redis.url_env = variable.clone();
            Store::Redis(redis)
        }
        (Store::S3(s3), Target::Bucket { bucket, prefix }) => {
            let mut s3 = s3.clone();
            s3.bucket = bucket.clone();
            s3.prefixes = s3.prefixes.iter().map(|p| format!("{prefix}{p}")).collect();
            Store::S3(s3)
        }
        (entry, _) => {
            let kind = Kind::of(entry)?;
            anyhow::bail!(
                "a {} store is restored into {}",
                kind.as_str(),
                match kind {
                    Kind::Postgres | Kind::Mysql =>
                        "a database whose URL is in a variable: --target env:VAR",
                    Kind::Redis =>
                        "a directory (restore) or a server whose URL is in a variable (replay): --target env:VAR",
                    Kind::S3 => "a bucket: --target s3://bucket[/prefix/]",
                }
            )
        }
    };
    let connection = stores::connect(store, &pointed, settings)?;
    let url = stores::store_url(store, &pointed, settings)?;
    Ok(ServedStore {
        name: store.clone(),
        store: pointed,
        connection,
        url,
    })
}

fn load_map(settings: &Settings) -> anyhow::Result<DataMap> {
    Ok(DataMap::load(&settings.data_map_path()?)?)
}

fn hasher(settings: &Settings) -> anyhow::Result<IdentityHasher> {
    Ok(IdentityHasher::new(
        settings.require_privacy()?.hash_key.clone(),
    ))
}

/// What a restore of `row` replays: the ledger's erasure records after it, and (given the
/// operator's key) the tombstones since it.
async fn replay_plan(
    ledger: &Ledger,
    row: &BackupRow,
    decrypt: Option<&Decrypt>,
) -> anyhow::Result<Plan> {
    let mut opener = decrypt
        .map(|d| Opener::new(d, ledger.tools().gpg.clone()))
        .transpose()?;
    Plan::read(
        row,
        ledger.pool.as_ref(),
        &ledger.s3,
        &ledger.bucket,
        opener.as_mut(),
    )
    .await
}

/// Replays against `target` (restored by other means) every change completed after backup
/// `id` was taken: the ledger's erasure records, and with the operator's key the tombstones.
pub async fn replay(
    ledger: &Ledger,
    id: Uuid,
    target: &Target,
    decrypt: Option<&Decrypt>,
) -> anyhow::Result<ReplayReport> {
    // Only the backup's position and start are needed: its object is not read.
    let catalogued = match &ledger.pool {
        Some(pool) => catalog::get(pool, id).await?,
        None => None,
    };
    let row = match catalogued {
        Some(row) => row,
        None => load(ledger, id).await?.0,
    };
    let store = StoreName::parse(&row.store).map_err(anyhow::Error::msg)?;
    let map = load_map(&ledger.settings)?;
    let served = target_store(&ledger.settings, &map, &store, target)?;
    let plan = replay_plan(ledger, &row, decrypt).await?;
    plan.apply(&served, hasher(&ledger.settings)?).await
}

/// Restores backup `id` into `target` with the field's tool, then (with `replay`) replays
/// every erasure recorded after the backup was taken.
pub async fn restore(
    ledger: &Ledger,
    id: Uuid,
    decrypt: &Decrypt,
    target: &Target,
    replay: bool,
    scratch: Option<&RedisScratch>,
) -> anyhow::Result<RestoreReport> {
    let (row, manifest) = load(ledger, id).await?;
    let map = load_map(&ledger.settings)?;
    // The ledger's own backup is restored like a PostgreSQL store's, and nothing is replayed
    // into it.
    let is_ledger = row.store == LEDGER_STORE;
    let (store, kind) = if is_ledger {
        (StoreName::ledger(), Kind::Postgres)
    } else {
        let store = StoreName::parse(&row.store).map_err(anyhow::Error::msg)?;
        let entry = map.stores.get(&store).ok_or_else(|| {
            anyhow::anyhow!("store `{store}` of backup {id} is not in the data map")
        })?;
        (store, Kind::of(entry)?)
    };
    // Read (and decrypt) what will be replayed before anything is restored: a tombstone that
    // cannot be read stops the restore before it writes.
    let plan = if replay && !is_ledger {
        Some(replay_plan(ledger, &row, Some(decrypt)).await?)
    } else {
        None
    };
    if kind.as_str() != manifest.kind {
        anyhow::bail!(
            "backup {id} is of a {} store but the data map describes `{store}` as {}",
            manifest.kind,
            kind.as_str()
        );
    }
    // A PostgreSQL restore runs in one transaction that pg_restore commits only after reading
    // the whole dump, and the dump's last bytes reach it only once the object's SHA-256 matched
    // the manifest and the OpenPGP integrity check passed: a damaged object rolls it back, so it
    // needs no checking pass of its own (a failure is diagnosed afterwards). Every other target
    // is written as the data arrives, so its object is checked in full before anything is.
    let transactional = matches!((kind, target), (Kind::Postgres, Target::Env(_)));
    let checked = if transactional {
        None
    } else {
        Some(
            check_object(ledger, &row, &manifest)
                .await
                .with_context(|| format!("refusing to restore backup {id}"))?,
        )
    };
    let tools = ledger.tools().clone();
    let clock = Instant::now();
    let mut objects = None;
    let served = match (kind, target) {
        (Kind::Postgres, Target::Env(_)) => {
            let mut command =
                tools::postgres(&target.url(&ledger.settings)?)?.command(&tools.pg_restore);
            command.args([
                "--exit-on-error",
                "--single-transaction",
                "--no-owner",
                "--no-privileges",
                "--no-password",
            ]);
            let restored = restore_through(
                ledger,
                &row,
                &manifest,
                None,
                decrypt,
                "pg_restore",
                command,
            )
            .await;
            if let Err(error) = restored {
                // Rolled back; say whether the object itself is damaged.
                if let Err(damaged) = check_object(ledger, &row, &manifest).await {
                    return Err(damaged.context(format!("refusing to restore backup {id}")));
                }
                return Err(error);
            }
            if is_ledger {
                None
            } else {
                Some(target_store(&ledger.settings, &map, &store, target)?)
            }
        }
        (Kind::Mysql, Target::Env(_)) => {
            let (invocation, database) = tools::mysql(&target.url(&ledger.settings)?)?;
            let mut command = invocation.command(&tools.mariadb);
            command.arg("--binary-mode").arg(database);
            restore_through(
                ledger,
                &row,
                &manifest,
                checked.as_ref(),
                decrypt,
                "mariadb",
                command,
            )
            .await?;
            Some(target_store(&ledger.settings, &map, &store, target)?)
        }
        (Kind::Redis, Target::Dir(dir)) => {
            let file = dir.join("dump.rdb");
            if file.exists() {
                anyhow::bail!(
                    "{} exists already; restore into an empty directory",
                    file.display()
                );
            }
            let path = file.clone();
            decode(
                ledger,
                &row,
                &manifest,
                checked.as_ref(),
                decrypt,
                move |reader| {
                    let mut out = std::fs::File::create_new(&path)
                        .with_context(|| format!("cannot create {}", path.display()))?;
                    std::io::copy(reader, &mut out)?;
                    out.sync_all()?;
                    Ok(())
                },
            )
            .await?;
            None
        }
        (Kind::S3, Target::Bucket { .. }) => {
            let served = target_store(&ledger.settings, &map, &store, target)?;
            let (StoreConnection::S3(client), Store::S3(spec)) =
                (&served.connection, &served.store)
            else {
                anyhow::bail!("store `{store}` is not an S3 store");
            };
            lethe_common::s3::ensure_bucket(client, &spec.bucket).await?;
            let prefix = match target {
                Target::Bucket { prefix, .. } => prefix.clone(),
                _ => String::new(),
            };
            let (count, _) = decode(
                ledger,
                &row,
                &manifest,
                checked.as_ref(),
                decrypt,
                untar_into(client.clone(), spec.bucket.clone(), prefix),
            )
            .await?;
            objects = Some(count);
            Some(served)
        }
        (kind, _) => anyhow::bail!(
            "a {} backup is restored into {}",
            kind.as_str(),
            match kind {
                Kind::Postgres | Kind::Mysql =>
                    "a database whose URL is in a variable: --target env:VAR",
                Kind::Redis => "a directory: --target DIR (dump.rdb lands there)",
                Kind::S3 => "a bucket: --target s3://bucket[/prefix/]",
            }
        ),
    };
    tracing::info!(
        store = %store,
        backup.id = %id,
        plaintext_bytes = manifest.plaintext_bytes,
        duration_ms = u64::try_from(clock.elapsed().as_millis()).unwrap_or(u64::MAX),
        "backup restored"
    );
    let report = if let Some(plan) = &plan {
        if let Some(served) = served {
            Some(plan.apply(&served, hasher(&ledger.settings)?).await?)
        } else if let Target::Dir(dir) = target {
            let scratch = scratch.ok_or_else(|| {
                anyhow::anyhow!(
                    "a Redis restore with replay needs a scratch directory for its server"
                )
            })?;
            Some(
                replay_redis(
                    ledger,
                    plan,
                    &map,
                    &store,
                    dir,
                    scratch,
                    &tools.redis_server,
                )
                .await?,
            )
        } else {
            None
        }
    } else {
        None
    };
    Ok(RestoreReport {
        backup_id: id,
        store: row.store.clone(),
        kind: kind.as_str().into(),
        target: target.describe(),
        plaintext_bytes: manifest.plaintext_bytes,
        objects,
        replay: report,
    })
}

/// Restores through a tool reading the dump on its standard input.
async fn restore_through(
    ledger: &Ledger,
    row: &BackupRow,
    manifest: &Manifest,
    checked: Option<&Downloaded>,
    decrypt: &Decrypt,
    name: &str,
    command: Command,
) -> anyhow::Result<()> {
    let (tx, rx) = pipeline::channel();
    let decoded = decode(ledger, row, manifest, checked, decrypt, move |reader| {
        pipeline::pump(reader, tx)
    });
    let restored = tools::run_sink(name, command, rx);
    let (decoded, restored) = tokio::join!(decoded, restored);
    match (decoded, restored) {
        (Ok(_), Ok(())) => Ok(()),
        (Err(error), _) => Err(error),
        (Ok(_), Err(error)) => Err(error),
    }
}

/// A sink that writes every regular file of a tar stream as an object of `bucket` (named by
/// `prefix` + its path); returns how many.
fn untar_into(
    client: Client,
    bucket: String,
    prefix: String,
) -> impl FnOnce(&mut dyn Read) -> anyhow::Result<u64> + Send + 'static {
    let runtime = tokio::runtime::Handle::current();
    move |reader| {
        let mut archive = tar::Archive::new(reader);
        let mut count = 0u64;
        for entry in archive.entries()? {
            let mut entry = entry?;
            if entry.header().entry_type() != tar::EntryType::Regular {
                continue;
            }
            // Object keys name subjects: errors never quote them.
            let key = String::from_utf8(entry.path_bytes().into_owned())
                .map_err(|_| anyhow::anyhow!("an entry's name is not UTF-8"))?;
            let key = format!("{prefix}{key}");
            let size = entry.size();
            if size <= RESTORE_PART {
                let mut body = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
                entry.read_to_end(&mut body)?;
                runtime
                    .block_on(upload::put(&client, &bucket, &key, body.into()))
                    .map_err(|_| anyhow::anyhow!("cannot write an object to bucket {bucket}"))?;
            } else {
                let mut writer = ObjectWriter::new(
                    client.clone(),
                    &bucket,
                    &key,
                    WriterOptions {
                        part_size: RESTORE_PART as usize,
                        ..WriterOptions::DEFAULT
                    },
                );
                let mut buffer = vec![0u8; 1 << 20];
                let copied: anyhow::Result<()> = loop {
                    match entry.read(&mut buffer) {
                        Ok(0) => break Ok(()),
                        Ok(n) => {
                            if let Err(error) = runtime.block_on(writer.write(&buffer[..n])) {
                                break Err(error.into());
                            }
                        }
                        Err(error) => break Err(error.into()),
                    }
                };
                match copied {
                    Ok(()) => {
                        runtime.block_on(writer.finish()).map_err(|_| {
                            anyhow::anyhow!("cannot write an object to bucket {bucket}")
                        })?;
                    }
                    Err(error) => {
                        runtime.block_on(writer.abort());
                        return Err(error);
                    }
                }
            }
            count += 1;
        }
        Ok(count)
    }
}

/// Starts `redis-server` on the restored RDB (on a Unix socket only), replays the changes
/// against it, saves the result back to `dir/dump.rdb` and stops it.
async fn replay_redis(
    ledger: &Ledger,
    plan: &Plan,
    map: &DataMap,
    store: &StoreName,
    dir: &Path,
    scratch: &RedisScratch,
    program: &Path,
) -> anyhow::Result<ReplayReport> {
    let socket = scratch.dir.join("redis.sock");
    let dir = std::fs::canonicalize(dir)?;
    let mut child = Command::new(program)
        .arg("--port")
        .arg("0")
        .arg("--unixsocket")
        .arg(&socket)
        .arg("--unixsocketperm")
        .arg("700")
        .arg("--dir")
        .arg(&dir)
        .args([
            "--dbfilename",
            "dump.rdb",
            "--appendonly",
            "no",
            "--save",
            "",
            "--daemonize",
            "no",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", program.display()))?;
    let output = tools::stderr_tail(&mut child);
    // Its log goes to standard output; keep the pipe drained.
    if let Some(mut stdout) = child.stdout.take() {
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut stdout, &mut tokio::io::sink()).await;
        });
    }
    let client = redis::Client::open(format!("unix://{}", socket.display()))?;
    let mut connection = None;
    let deadline = Instant::now() + REDIS_START_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            anyhow::bail!(
                "redis-server stopped ({status}) on the restored RDB: {}",
                output.await.unwrap_or_default()
            );
        }
        if let Ok(mut c) = client
            .get_multiplexed_async_connection_with_config(&scratch_connection_config())
            .await
        {
            // PING answers LOADING until the RDB is loaded.
            if redis::cmd("PING")
                .query_async::<String>(&mut c)
                .await
                .is_ok()
            {
                connection = Some(c);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut connection = connection
        .ok_or_else(|| anyhow::anyhow!("redis-server did not load the restored RDB in time"))?;
    // The scratch server's socket is handed to the connector directly, not through the
    // environment.
    let settings = ledger.settings.clone().with_credential(
        SCRATCH_REDIS,
        SecretString::from(format!("unix://{}", socket.display())),
    );
    let served = target_store(
        &settings,
        map,
        store,
        &Target::Env(SCRATCH_REDIS.to_owned()),
    )?;
    let report = plan.apply(&served, hasher(&ledger.settings)?).await;
    let saved = redis::cmd("SAVE")
        .query_async::<String>(&mut connection)
        .await;
    let _ = redis::cmd("SHUTDOWN")
        .arg("NOSAVE")
        .query_async::<()>(&mut connection)
        .await;
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    if status.is_err() {
        child.start_kill().ok();
    }
    let report = report?;
    saved.map_err(|e| anyhow::anyhow!("redis-server could not save the replayed RDB: {e}"))?;
    Ok(report)
}

/// The scratch server's connection: `SAVE` writes the whole replayed dataset to disk, which on a
/// busy disk takes far longer than the client's default response timeout.
fn scratch_connection_config() -> redis::AsyncConnectionConfig {
    redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(600)))
}
