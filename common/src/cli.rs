//! What every daemon's `main` shares: the `--config` argument and an error report that prints
//! one clear message (with its causes) instead of a panic or a backtrace.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::config::{CONFIG_ENV, Settings};

/// The configuration argument every binary accepts.
#[derive(Debug, Clone, Args)]
pub struct ConfigArg {
    /// Configuration file (TOML). Keys can be overridden with LETHE__SECTION__KEY variables.
    #[arg(long = "config", env = CONFIG_ENV, default_value = "config/lethe.toml")]
    pub path: PathBuf,
}

impl ConfigArg {
    /// Loads the settings and starts logging as they say.
    pub fn load(&self) -> anyhow::Result<Settings> {
        let settings = Settings::load(&self.path)?;
        crate::telemetry::init(&settings.telemetry);
        Ok(settings)
    }
}

/// The arguments every worker daemon takes.
#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    /// The configuration.
    #[command(flatten)]
    pub config: ConfigArg,
    /// Handle what is queued, then exit (instead of running until SIGTERM).
    #[arg(long)]
    pub until_idle: bool,
}

impl WorkerArgs {
    /// How the worker loops run.
    pub fn mode(&self) -> crate::worker::RunMode {
        if self.until_idle {
            crate::worker::RunMode::UntilIdle
        } else {
            crate::worker::RunMode::UntilShutdown
        }
    }
}

/// Runs `main`'s body and turns an error into one line on standard error (`error: what: why`)
/// and exit status 1.
pub fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = %format!("{error:#}"), "exiting");
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
