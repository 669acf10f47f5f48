//! `lethe-seed`: fills the four sample stores with the deterministic sample data.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use lethe_sample::{
    ConnectOptions, Progress, S3Options, SampleStores, SeedOptions, count_in_stores,
    default_anchor, seed_with_progress,
};

/// Seeds the sample SaaS stores (accounts, chat, sessions, files) with deterministic data:
/// the same subjects and seed always give byte-identical stores.
#[derive(Parser, Debug)]
#[command(name = "lethe-seed", version)]
struct Cli {
    /// Number of subjects to write (subjects 1..=N).
    #[arg(long, default_value_t = 1_000)]
    subjects: u64,

    /// Seed of the generator.
    #[arg(long, default_value_t = 1, global = true)]
    seed: u64,

    /// Delete the sample data the stores already hold instead of refusing to seed.
    #[arg(long)]
    reset: bool,

    /// Every timestamp lies within about three years before this instant: RFC 3339, or
    /// "now" (which makes the data depend on the time of the run).
    #[arg(long, default_value = "2025-01-01T00:00:00Z", value_parser = parse_anchor)]
    anchor: DateTime<Utc>,

    /// Give every attachment exactly this many bytes (for benchmarks).
    #[arg(long)]
    attachment_bytes: Option<u64>,

    /// S3 uploads in flight at once.
    #[arg(long, default_value_t = 32)]
    s3_concurrency: usize,

    #[command(flatten)]
    connect: Connect,

    /// Lethe configuration file: accepted so scripts can pass it uniformly, not read.
    #[arg(long, env = "LETHE_CONFIG", global = true)]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Args, Debug)]
struct Connect {
    /// PostgreSQL URL of the accounts store.
    #[arg(long, global = true, env = "ACCOUNTS_DATABASE_URL")]
    accounts_url: Option<String>,

    /// MariaDB URL of the chat store.
    #[arg(long, global = true, env = "CHAT_DATABASE_URL")]
    chat_url: Option<String>,

    /// Redis URL of the sessions store.
    #[arg(long, global = true, env = "SESSIONS_REDIS_URL")]
    sessions_url: Option<String>,

    /// Prefix of every sample Redis key.
    #[arg(
        long,
        global = true,
        env = "LETHE_SAMPLE_REDIS_PREFIX",
        default_value = ""
    )]
    redis_prefix: String,

    /// S3 endpoint of the files store.
    #[arg(
        long,
        global = true,
        env = "LETHE__S3__ENDPOINT",
        default_value = "http://127.0.0.1:9000"
    )]
    s3_endpoint: String,

    /// S3 access key id.
    #[arg(
        long,
        global = true,
        env = "LETHE__S3__ACCESS_KEY_ID",
        default_value = "lethe"
    )]
    s3_access_key: String,

    /// S3 secret access key.
    #[arg(
        long,
        global = true,
        env = "LETHE__S3__SECRET_ACCESS_KEY",
        default_value = "lethe-local-secret",
        hide_default_value = true,
        hide_env_values = true
    )]
    s3_secret_key: String,

    /// S3 region.
    #[arg(long, global = true, default_value = "us-east-1")]
    s3_region: String,

    /// Bucket of the files store (created if missing).
    #[arg(long, global = true, default_value = "lethe-files")]
    files_bucket: String,

    /// Prefix of every sample object key.
    #[arg(long, global = true, default_value = "")]
    files_prefix: String,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print one subject's identities as a JSON line, without touching any store.
    Subject {
        /// The subject's index (1-based).
        #[arg(long)]
        index: u64,
    },
    /// Print what the stores hold, per store and collection.
    Count,
}

fn parse_anchor(s: &str) -> Result<DateTime<Utc>, String> {
    if s == "now" {
        return Ok(Utc::now());
    }
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("expected RFC 3339 or \"now\": {e}"))
}

impl Connect {
    fn options(&self) -> Result<ConnectOptions> {
        let need = |v: &Option<String>, flag: &str, env: &str| match v {
            Some(v) if !v.is_empty() => Ok(v.clone()),
            _ => bail!("missing --{flag} (or {env})"),
        };
        Ok(ConnectOptions {
            accounts_url: need(&self.accounts_url, "accounts-url", "ACCOUNTS_DATABASE_URL")?,
            chat_url: need(&self.chat_url, "chat-url", "CHAT_DATABASE_URL")?,
            sessions_url: need(&self.sessions_url, "sessions-url", "SESSIONS_REDIS_URL")?,
            redis_prefix: self.redis_prefix.clone(),
            s3: S3Options {
                endpoint: self.s3_endpoint.clone(),
                access_key_id: self.s3_access_key.clone(),
                secret_access_key: self.s3_secret_key.clone(),
                region: self.s3_region.clone(),
            },
            files_bucket: self.files_bucket.clone(),
            files_prefix: self.files_prefix.clone(),
        })
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The whole cause chain on one line; never a backtrace dump for an operator error.
            eprintln!("lethe-seed: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Some(Command::Subject { index }) => {
            if index == 0 || index > lethe_sample::MAX_SUBJECTS {
                bail!(
                    "--index must be between 1 and {}",
                    lethe_sample::MAX_SUBJECTS
                );
            }
            let identities = lethe_sample::Generator::new(cli.seed).identities(index);
            println!("{}", identities.to_json());
            Ok(())
        }
        Some(Command::Count) => {
            let stores = SampleStores::connect(&cli.connect.options()?).await?;
            let counts = count_in_stores(&stores).await?;
            println!("{counts}");
            Ok(())
        }
        None => {
            let stores = SampleStores::connect(&cli.connect.options()?)
                .await
                .context("while connecting to the sample stores")?;
            let options = SeedOptions {
                subjects: cli.subjects,
                seed: cli.seed,
                reset: cli.reset,
                anchor: cli.anchor,
                attachment_bytes: cli.attachment_bytes,
                s3_concurrency: cli.s3_concurrency,
            };
            if options.anchor != default_anchor() {
                eprintln!("lethe-seed: anchor {}", options.anchor.to_rfc3339());
            }
            run_seed(&stores, &options).await
        }
    }
}

async fn run_seed(stores: &SampleStores, options: &SeedOptions) -> Result<()> {
    let progress = Progress::default();
    let total = options.subjects;
    let report = {
        let seeding = seed_with_progress(stores, options, &progress);
        tokio::pin!(seeding);
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        tick.tick().await;
        loop {
            tokio::select! {
                report = &mut seeding => break report,
                _ = tick.tick() => {
                    // Counts only: never a value that could identify a subject.
                    let line = progress
                        .snapshot()
                        .iter()
                        .map(|(store, done)| format!("{store} {done}/{total}"))
                        .collect::<Vec<_>>()
                        .join("  ");
                    eprintln!("lethe-seed: {line}");
                }
            }
        }
    }
    .context("while seeding")?;

    eprintln!(
        "lethe-seed: {} subjects, seed {}, {:.1} s ({})",
        report.subjects,
        report.seed,
        report.elapsed.as_secs_f64(),
        report
            .store_elapsed
            .iter()
            .map(|(store, t)| format!("{store} {:.1} s", t.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", report.counts)?;
    Ok(())
}
