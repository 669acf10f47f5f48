//! `lethe-backup`: encrypted backups of every store to S3.

use std::process::ExitCode;

use clap::Parser;
use lethe_common::cli::{WorkerArgs, report};
use lethe_common::shutdown;

/// Lethe backup: encrypted backups of every store to S3.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    args: WorkerArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    report(run(Cli::parse().args).await)
}

async fn run(args: WorkerArgs) -> anyhow::Result<()> {
    let settings = args.config.load()?;
    let shutdown = shutdown::on_signal();
    let app = lethe_backup::App::build(&settings, args.mode()).await?;
    app.run(shutdown).await
}
