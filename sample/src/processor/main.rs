//! `lethe-sample-processor`: a small payment processor for the sample stack, shaped like
//! Stripe's customers API, with its own store (a JSON file) seeded with the sample subjects as
//! customers and their invoices as charges. Lethe reaches it as the data map's fifth store
//! (`payments`, kind `http`). Test hooks under `/admin/` make it answer 429, 500 or 400 for
//! the next calls.

mod faults;
mod routes;
mod store;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, Result};
use clap::Parser;

/// A Stripe-shaped payment processor for Lethe's sample stack.
#[derive(Parser, Debug)]
#[command(name = "lethe-sample-processor", version)]
struct Cli {
    /// Address to listen on.
    #[arg(long, env = "LETHE_PROCESSOR_LISTEN", default_value = "127.0.0.1:8090")]
    listen: String,

    /// The processor's store: a JSON file, seeded when it does not exist.
    #[arg(long, env = "LETHE_PROCESSOR_DATA")]
    data: PathBuf,

    /// Sample subjects made customers when the store is seeded.
    #[arg(long, env = "LETHE_PROCESSOR_SUBJECTS", default_value_t = 1_000)]
    subjects: u64,

    /// Seed of the sample data.
    #[arg(long, env = "LETHE_PROCESSOR_SEED", default_value_t = 1)]
    seed: u64,

    /// The secret key callers must present as a bearer token (none: every caller is let in).
    #[arg(long, env = "LETHE_PROCESSOR_API_KEY", hide_env_values = true)]
    api_key: Option<String>,

    /// Lethe configuration file: accepted so scripts and tests start it like a daemon, not read.
    #[arg(long, env = "LETHE_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lethe-sample-processor: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    let store = store::Store::open(&cli.data, cli.subjects, cli.seed)?;
    eprintln!(
        "lethe-sample-processor: {} customers, {} charges",
        store.data.customers.len(),
        store.data.charges.len()
    );
    let app = Arc::new(routes::App {
        store: Mutex::new(store),
        stats: Mutex::new(faults::Stats::default()),
        api_key: cli.api_key.filter(|k| !k.is_empty()),
    });
    let listener = tokio::net::TcpListener::bind(&cli.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cli.listen))?;
    eprintln!(
        "lethe-sample-processor: listening on {}",
        listener.local_addr()?
    );
    let shutdown = lethe_common::shutdown::on_signal();
    axum::serve(listener, routes::router(app))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .context("while serving")?;
    eprintln!("lethe-sample-processor: stopped");
    Ok(())
}
