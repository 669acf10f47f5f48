//! `lethe-eraser`: erases, rectifies and restricts a subject's data in the stores it serves.

use std::process::ExitCode;

use clap::Parser;
use lethe_common::cli::{WorkerArgs, report};
use lethe_common::shutdown;

/// Lethe eraser: carries out erasure, rectification, restriction and objection tasks in the
/// stores it serves.
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
    let app = lethe_eraser::App::build(&settings, args.mode()).await?;
    app.run(shutdown).await
}
