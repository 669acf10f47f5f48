//! `lethe-backup`: encrypted backups of every store to S3, and their verification and restore.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use lethe_backup::{Backups, Decrypt, Ledger, Outcome, RedisScratch, Target};
use lethe_common::Settings;
use lethe_common::cli::{WorkerArgs, report};
use lethe_common::shutdown;
use secrecy::SecretString;
use uuid::Uuid;

/// The credential name under which a target URL given on the command line reaches the store
/// connector (`--target env:NAME` reads the variable `NAME` instead).
const TARGET_URL: &str = "LETHE_BACKUP_TARGET_URL";

/// Lethe backup: encrypted backups of every store to S3. Without a command, runs the daemon
/// (schedule and `<prefix>.backup.run[.<store>]` commands).
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    args: WorkerArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Back up now (every store, or one) and exit; one JSON line per store on standard output.
    Run {
        /// Only this store.
        #[arg(long)]
        store: Option<String>,
    },
    /// List the backup catalog, newest first.
    List {
        /// Only this store (`ledger`: the ledger's own backups).
        #[arg(long)]
        store: Option<String>,
        /// Read the backups' manifests in the bucket instead of the ledger's catalog (when the
        /// ledger is lost, to find its own backup).
        #[arg(long)]
        from_bucket: bool,
        /// At most this many backups.
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Check a backup's object against its manifest (size and SHA-256) and, given a key, that
    /// it decrypts and decompresses to the recorded size.
    Verify {
        /// The backup's id (see `list`).
        #[arg(long)]
        backup: Uuid,
        #[command(flatten)]
        key: KeyArgs,
    },
    /// Restore a backup into a target with the field's tool, then replay every change completed
    /// after the backup was taken (the ledger's erasure records and the tombstones), so no
    /// erased subject comes back and no correction is undone. Works without the ledger: the
    /// backup is then found by its manifest and the changes in the tombstones. The ledger's own
    /// backup (store `ledger`) is restored into an empty database, with nothing replayed.
    Restore {
        /// The backup's id (see `list`).
        #[arg(long)]
        backup: Uuid,
        #[command(flatten)]
        key: KeyArgs,
        /// PostgreSQL or MariaDB: the URL of an empty database (better: `env:VAR`, the variable
        /// holding it); Redis: a directory, where `dump.rdb` lands; S3: `s3://bucket[/prefix/]`.
        #[arg(long)]
        target: String,
        /// Restore only; do not replay the erasures (the restored data then holds subjects
        /// erased since the backup: replay them with `replay` before using it).
        #[arg(long)]
        no_replay: bool,
    },
    /// Replay, against a target restored by other means, every change completed after a
    /// backup was taken: the ledger's erasure records and, given the operator's key, the
    /// tombstones.
    Replay {
        /// The backup's id.
        #[arg(long)]
        backup: Uuid,
        #[command(flatten)]
        key: KeyArgs,
        /// The restored server's URL (better: `env:VAR`), or `s3://bucket[/prefix/]`.
        #[arg(long)]
        target: String,
    },
}

/// How the operator decrypts.
#[derive(Debug, Clone, Args)]
struct KeyArgs {
    /// The operator's secret key (`gpg --export-secret-keys --armor KEY > ops.key`).
    #[arg(long, value_name = "FILE", conflicts_with = "gpg")]
    secret_key: Option<PathBuf>,
    /// A file holding the secret key's passphrase, if it has one.
    #[arg(long, value_name = "FILE", requires = "secret_key")]
    passphrase_file: Option<PathBuf>,
    /// Decrypt with the operator's `gpg` and its agent (smartcards, pinentry).
    #[arg(long)]
    gpg: bool,
}

impl KeyArgs {
    fn decrypt(&self) -> anyhow::Result<Option<Decrypt>> {
        if self.gpg {
            return Ok(Some(Decrypt::Gpg));
        }
        let Some(path) = &self.secret_key else {
            return Ok(None);
        };
        let passphrase = match &self.passphrase_file {
            Some(file) => Some(SecretString::from(
                std::fs::read_to_string(file)
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?
                    .trim_end_matches(['\n', '\r'])
                    .to_owned(),
            )),
            None => None,
        };
        Ok(Some(Decrypt::SecretKey {
            path: path.clone(),
            passphrase,
        }))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return report(Err(error.into())),
    };
    let code = report(runtime.block_on(run(cli)));
    // After the report, so its error line is exported too.
    lethe_common::telemetry::shutdown();
    code
}

/// A restore or replay target: a URL given on the command line is handed to the connector as
/// a credential of its own and the target names it; anything else is parsed as it stands.
fn parse_target(text: &str, settings: Settings) -> anyhow::Result<(Target, Settings)> {
    if text.contains("://") && !text.starts_with("s3://") {
        return Ok((
            Target::Env(TARGET_URL.to_owned()),
            settings.with_credential(TARGET_URL, SecretString::from(text.to_owned())),
        ));
    }
    Ok((Target::parse(text)?, settings))
}

/// A short, private directory for the socket of the Redis server a Redis restore starts,
/// removed on exit (a Unix socket path must stay under about 100 bytes).
fn scratch_dir() -> anyhow::Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix("lethe-restore-")
        .tempdir_in("/tmp")
        .map_err(|e| anyhow::anyhow!("cannot create a scratch directory: {e}"))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = cli.args.config.load()?;
    match cli.command {
        None => {
            let shutdown = shutdown::on_signal();
            let app = lethe_backup::App::build(&settings, cli.args.mode()).await?;
            app.run(shutdown).await
        }
        Some(Command::Run { store }) => {
            let backups = Backups::connect(&settings).await?;
            let stores: Vec<_> = match &store {
                Some(name) => vec![
                    backups
                        .store(name)
                        .ok_or_else(|| {
                            anyhow::anyhow!("store `{name}` is not backed up by this configuration")
                        })?
                        .clone(),
                ],
                None => backups.stores().cloned().collect(),
            };
            let cancel = shutdown::on_signal();
            let mut failed = 0;
            for store in stores {
                match backups.backup(&store, &cancel).await {
                    Ok(Outcome::Completed(summary)) => {
                        println!("{}", serde_json::to_string(&summary)?)
                    }
                    Ok(Outcome::Busy | Outcome::Satisfied) => println!(
                        "{}",
                        serde_json::json!({ "store": store.as_str(), "outcome": "busy", "detail": "another process is backing this store up" })
                    ),
                    Err(error) => {
                        failed += 1;
                        eprintln!("error: {error:#}");
                    }
                }
            }
            if failed > 0 {
                anyhow::bail!("{failed} backup(s) failed");
            }
            Ok(())
        }
        Some(Command::List {
            store,
            limit,
            from_bucket,
        }) => {
            let rows = if from_bucket {
                let mut rows =
                    lethe_backup::restore::list_bucket(&settings, store.as_deref()).await?;
                rows.truncate(usize::try_from(limit).unwrap_or(0));
                rows
            } else {
                let ledger = Ledger::connect(&settings).await?;
                lethe_backup::restore::list(&ledger, store.as_deref(), limit).await?
            };
            println!(
                "{:<36}  {:<12}  {:<9}  {:<20}  {:>14}  {:<20}",
                "id", "store", "status", "started_at", "bytes", "expires_at"
            );
            for row in rows {
                println!(
                    "{:<36}  {:<12}  {:<9}  {:<20}  {:>14}  {:<20}",
                    row.id,
                    row.store,
                    row.status,
                    row.started_at.format("%Y-%m-%dT%H:%M:%SZ"),
                    row.bytes
                        .map(|b| b.to_string())
                        .unwrap_or_else(|| "-".into()),
                    row.expires_at.format("%Y-%m-%dT%H:%M:%SZ"),
                );
            }
            Ok(())
        }
        Some(Command::Verify { backup, key }) => {
            let ledger = Ledger::connect(&settings).await?;
            let decrypt = key.decrypt()?;
            let verified = lethe_backup::restore::verify(&ledger, backup, decrypt.as_ref()).await?;
            println!("{}", serde_json::to_string(&verified)?);
            Ok(())
        }
        Some(Command::Restore {
            backup,
            key,
            target,
            no_replay,
        }) => {
            let decrypt = key.decrypt()?.ok_or_else(|| {
                anyhow::anyhow!("restore needs the operator's key: --secret-key FILE or --gpg")
            })?;
            let (target, settings) = parse_target(&target, settings)?;
            let scratch_dir = scratch_dir()?;
            let scratch = RedisScratch {
                dir: scratch_dir.path().to_path_buf(),
            };
            let ledger = Ledger::for_restore(&settings).await?;
            let restored = lethe_backup::restore::restore(
                &ledger,
                backup,
                &decrypt,
                &target,
                !no_replay,
                Some(&scratch),
            )
            .await?;
            println!("{}", serde_json::to_string_pretty(&restored)?);
            let unreplayable = restored.replay.as_ref().map_or(0, |r| r.unreplayable.len());
            if unreplayable > 0 {
                anyhow::bail!(
                    "{unreplayable} erasure(s) recorded after backup {backup} could not be replayed \
                     (their identities were minimised and no tombstone holds them): the restored \
                     data may still hold those subjects; do not put it in service"
                );
            }
            Ok(())
        }
        Some(Command::Replay {
            backup,
            key,
            target,
        }) => {
            let decrypt = key.decrypt()?;
            let (target, settings) = parse_target(&target, settings)?;
            let ledger = Ledger::for_restore(&settings).await?;
            let replayed =
                lethe_backup::restore::replay(&ledger, backup, &target, decrypt.as_ref()).await?;
            println!("{}", serde_json::to_string_pretty(&replayed)?);
            if !replayed.unreplayable.is_empty() {
                anyhow::bail!(
                    "{} erasure(s) could not be replayed (their identities were minimised)",
                    replayed.unreplayable.len()
                );
            }
            Ok(())
        }
    }
}
