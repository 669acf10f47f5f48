//! `lethe-retention`: enforces every retention period.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lethe_common::cli::{WorkerArgs, report};
use lethe_common::shutdown;
use lethe_retention::{Mode, Outcome, Retention};

/// Lethe retention: enforces every retention period. Without a command, runs the daemon (its
/// schedule and `<prefix>.retention.run` commands).
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
    /// Apply every retention policy once and exit; the report (JSON) on standard output.
    Run {
        /// List exactly what would be deleted and delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let code = report(run(Cli::parse()).await);
    // After the report, so its error line is exported too.
    lethe_common::telemetry::shutdown();
    code
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = cli.args.config.load()?;
    match cli.command {
        None => {
            let shutdown = shutdown::on_signal();
            let app = lethe_retention::App::build(&settings, cli.args.mode()).await?;
            app.run(shutdown).await
        }
        Some(Command::Run { dry_run }) => {
            let retention = Retention::connect(&settings).await?;
            let mode = if dry_run { Mode::DryRun } else { Mode::Delete };
            match retention.run(chrono::Utc::now(), mode).await? {
                Outcome::Completed(report) => {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                    if report.errors() > 0 {
                        anyhow::bail!(
                            "{} item(s) could not be handled (see `errors` in the report); the next run tries again",
                            report.errors()
                        );
                    }
                    Ok(())
                }
                Outcome::Busy => {
                    println!(
                        "{}",
                        serde_json::json!({ "outcome": "busy", "detail": "another process is running retention" })
                    );
                    Ok(())
                }
            }
        }
    }
}
