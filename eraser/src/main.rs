//! `lethe-eraser`: erases, rectifies and restricts a subject's data in the stores it serves.

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
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Coverage { carried }) => coverage(&cli.args, &carried),
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

async fn run(args: WorkerArgs) -> anyhow::Result<()> {
    let settings = args.config.load()?;
    let shutdown = shutdown::on_signal();
    let app = lethe_eraser::App::build(&settings, args.mode()).await?;
    app.run(shutdown).await
}
