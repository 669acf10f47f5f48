//! `lethe-exporter`: gathers a subject's data from the stores it serves into one archive.

use std::process::ExitCode;

use clap::Parser;
use lethe_common::cli::{WorkerArgs, report};
use lethe_common::shutdown;

/// Lethe exporter: collects a subject's data from the stores it serves and assembles the
/// fragments into one zip archive.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    args: WorkerArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let code = report(run(Cli::parse().args).await);
    // After the report, so its error line is exported too.
    lethe_common::telemetry::shutdown();
    code
}

async fn run(args: WorkerArgs) -> anyhow::Result<()> {
    let settings = args.config.load()?;
    let shutdown = shutdown::on_signal();
    let app = lethe_exporter::App::build(&settings, args.mode()).await?;
    app.run(shutdown).await
}
