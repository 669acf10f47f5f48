//! `lethe-eraser`: erases, rectifies and restricts a subject's data in the stores it serves.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lethe_common::cli::{WorkerArgs, report};
use lethe_common::shutdown;

/// Lethe eraser: carries out erasure, rectification, restriction and objection tasks in the
/// stores it serves.
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
    /// Print, per identity, which collections, keys and prefixes it reaches directly or
    /// through the identity closure, and every one a request may miss (exit status 1 then).
    Coverage {
        /// Identities requests carry, comma-separated (default: those no collection derives).
        #[arg(long, value_delimiter = ',')]
        carried: Vec<String>,
    },
    /// Draft a data map from live stores, or check one against them.
    Datamap {
        #[command(subcommand)]
        command: Datamap,
    },
}

#[derive(Debug, Subcommand)]
enum Datamap {
    /// Read the live schemas of the stores named (tables, columns, types, foreign keys,
    /// indexes; Redis keys by sampling SCAN; S3 keys by sampling listings), classify what holds
    /// personal data and write a commented data-map draft. Sampled values never leave the
    /// process: the draft and the summary hold names and counts only.
    Suggest {
        /// A store: NAME=URL (postgres://, mysql://, redis://, s3://bucket/prefix/) or
        /// NAME=env:VARIABLE (the URL in that variable, which the draft names as `url_env`).
        /// S3 stores use the configuration's [s3] endpoint and credentials.
        #[arg(long = "store", required = true)]
        stores: Vec<lethe_eraser::datamap::StoreArg>,
        /// A Redis store's key prefix, NAME=PREFIX (keys are sampled under it and the draft's
        /// templates are written without it, as `key_prefix`).
        #[arg(long = "key-prefix", value_parser = pair)]
        key_prefixes: Vec<(String, String)>,
        /// Write the draft to this file (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Check the configured data map against the live stores (as the eraser does at
    /// start-up) and print its coverage: per identity what it reaches and through which hops,
    /// personal data no collection covers, unmapped tables with foreign keys into mapped ones.
    /// Exit status 1 when it finds a problem.
    Check,
}

fn pair(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .ok_or_else(|| "write NAME=VALUE".to_owned())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Coverage { carried }) => coverage(&cli.args, &carried),
        Some(Command::Datamap { command }) => datamap(&cli.args, command).await,
        None => {
            let code = report(run(cli.args).await);
            // After the report, so its error line is exported too.
            lethe_common::telemetry::shutdown();
            code
        }
    }
}

fn coverage(args: &WorkerArgs, carried: &[String]) -> ExitCode {
    let report = args
        .config
        .load()
        .and_then(|settings| lethe_eraser::coverage_report(&settings, carried));
    match report {
        Ok(coverage) => {
            print!("{coverage}");
            if coverage.findings.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn datamap(args: &WorkerArgs, command: Datamap) -> ExitCode {
    let settings = match args.config.load() {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("error: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    match command {
        Datamap::Suggest {
            stores,
            key_prefixes,
            out,
        } => {
            let drafted = async {
                let read =
                    lethe_eraser::datamap::discover(&stores, &key_prefixes, &settings).await?;
                let suggestion = lethe_eraser::datamap::suggest(&read)?;
                match &out {
                    Some(path) => std::fs::write(path, &suggestion.toml)?,
                    None => print!("{}", suggestion.toml),
                }
                anyhow::Ok(suggestion.summary)
            };
            match drafted.await {
                Ok(summary) => {
                    eprint!("{summary}");
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("error: {error:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Datamap::Check => match lethe_eraser::datamap::check(&settings).await {
            Ok(report) => {
                print!("{}", report.text);
                if report.problems.is_empty() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(error) => {
                eprintln!("error: {error:#}");
                ExitCode::FAILURE
            }
        },
    }
}

async fn run(args: WorkerArgs) -> anyhow::Result<()> {
    let settings = args.config.load()?;
    let shutdown = shutdown::on_signal();
    let app = lethe_eraser::App::build(&settings, args.mode()).await?;
    app.run(shutdown).await
}
