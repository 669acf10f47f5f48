//! `lethe-bench`: Lethe's benchmark harness. Each benchmark starts the real daemons (release
//! binaries beside this one) as processes in a throwaway namespace on the local services,
//! drives them as a client would, and prints a table. Latencies are taken from the ledger's own
//! timestamps (`received_at` -> `completed_at`), so measuring adds no load.
//!
//! Run from the repository with `scripts/bench <benchmark>` (it starts the services, installs
//! the AWS command line the backup benchmark compares against, builds the release binaries and
//! runs this one), e.g. `scripts/bench intake`.

mod backup;
mod console;
mod cpu;
mod deployment;
mod erasure;
mod export;
mod intake;
mod report;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Lethe's benchmark harness: each benchmark runs the real daemons against the local services
/// (start them with `scripts/stack services`) and prints a table.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// Intake: POST /v1/requests throughput and latency percentiles (no workers running).
    Intake {
        /// Requests to send (after a warm-up of 500).
        #[arg(long, default_value_t = 20_000)]
        requests: u64,
        /// Requests in flight at once.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
    },
    /// Erasure: subjects erased per second across the four sample stores (a burst), and latency
    /// from POST to completed at an offered rate.
    Erasure(erasure::Run),
    /// Export: one subject with at least `--size-mib` of data (rows plus attachments) exported
    /// into one zip; wall time, throughput, the exporter's peak RSS.
    Export {
        /// Size of the subject's attachments, MiB (its rows add a few KiB).
        #[arg(long, default_value_t = 1100)]
        size_mib: u64,
    },
    /// Backup: a PostgreSQL database of `--size-mib` of text backed up by `lethe-backup` and by
    /// the conventional and hand-tuned shell pipelines (pg_dump, zstd, gpg, aws s3 cp) on the
    /// same data and S3; then both restores.
    Backup {
        /// Size of the generated table data, MiB.
        #[arg(long, default_value_t = 1024)]
        size_mib: u64,
    },
    /// Console: each console page's load time on a deployment seeded with a month of requests.
    Console {
        /// Requests seeded.
        #[arg(long, default_value_t = 10_000)]
        requests: u64,
        /// Loads of each page.
        #[arg(long, default_value_t = 50)]
        loads: u64,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let mut bench = Box::pin(run(cli));
    let signal = tokio::select! {
        outcome = &mut bench => return lethe_common::cli::report(outcome),
        signal = interrupted() => signal,
    };
    eprintln!(
        "{signal}: stopping the daemons and removing the namespaces (a second signal exits at once)"
    );
    tokio::spawn(async {
        interrupted().await;
        std::process::exit(130);
    });
    // Dropping the benchmark kills the daemons it started (`DaemonProcess`'s `Drop`) and
    // removes its namespaces: databases, streams, keys and buckets (`Namespace`'s `Drop`).
    drop(bench);
    std::process::ExitCode::from(130)
}

/// Resolves on SIGINT (Ctrl-C), SIGTERM (e.g. from `timeout`) or SIGHUP, naming it; never
/// when the handlers cannot be installed.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        eprintln!("cannot install signal handlers: an interrupted benchmark leaves its namespace");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
        _ = hup.recv() => "SIGHUP",
    }
}

async fn run(cli: Cli) -> Result<()> {
    println!("{}", machine());
    match cli.bench {
        Bench::Intake {
            requests,
            concurrency,
        } => intake::run(requests, concurrency).await,
        Bench::Erasure(run) => erasure::run(run).await,
        Bench::Export { size_mib } => export::run(size_mib).await,
        Bench::Backup { size_mib } => backup::run(size_mib).await,
        Bench::Console { requests, loads } => console::run(requests, loads).await,
    }
}

/// One line describing the machine, for the README's tables.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or_else(String::new, |kib| format!(", {} GiB", kib / 1024 / 1024));
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("machine: {cores} cores ({cpu}){memory}")
}
