//! `bench`: measures the transport against the same SQL run by pgbench (the ceiling) and
//! against pgmq, on the throwaway cluster that `scripts/bench.sh` starts, and prints one
//! table (the same as JSON in a file).
//!
//! Every figure comes from this one run, and every throughput is shown as a ratio to a
//! baseline measured in the same run, interleaved with it, because absolute rates on a
//! shared two-core machine drift from minute to minute.

mod cpu;
mod db;
mod error;
mod flow;
mod memory;
mod pgbench;
mod pgmq;
mod plan;
mod process;
mod report;
mod ring;
mod setup;
mod soak;
mod statements;
mod stats;
mod targets;
mod transport;
mod wakeups;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

use crate::error::Error;

/// Measures the transport against pgbench's ceiling and pgmq; run it through
/// scripts/bench.sh, which starts the cluster and fetches pgmq.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Args {
    /// The cluster's host; only loopback addresses are accepted.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,

    /// The cluster's port.
    #[arg(long)]
    pub port: u16,

    /// The cluster's superuser.
    #[arg(long, default_value = "postgres")]
    pub user: String,

    /// The pgbench executable.
    #[arg(long)]
    pub pgbench: PathBuf,

    /// pgmq's install script (pgmq.sql from the pgmq crate); without it pgmq is skipped.
    #[arg(long)]
    pub pgmq_sql: Option<PathBuf>,

    /// Where the script came from, for the report.
    #[arg(long)]
    pub pgmq_source: Option<String>,

    /// Why there is no pgmq script, for the report.
    #[arg(long)]
    pub pgmq_skip_reason: Option<String>,

    /// Where the release binaries are (example-endpoint, and the order flow's).
    #[arg(long, default_value = "target/release")]
    pub bin_dir: PathBuf,

    /// Where to write the pgbench scripts and the child processes' logs.
    #[arg(long, default_value = "target/bench/work")]
    pub work_dir: PathBuf,

    /// Where to write the JSON report.
    #[arg(long, default_value = "target/bench/bench.json")]
    pub json: PathBuf,

    /// Fewer seconds per run and fewer sends, to finish in under two minutes.
    #[arg(long)]
    pub quick: bool,

    /// Add the soak: a million messages through one endpoint, and at least two windows.
    #[arg(long)]
    pub soak: bool,

    /// Measuring seconds per run (default 5, quick 1).
    #[arg(long)]
    pub seconds: Option<u64>,

    /// Repetitions of each cell, interleaved with its ceiling.
    #[arg(long, default_value_t = 3)]
    pub reps: usize,

    /// Client counts (pgbench clients, transport workers).
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    pub clients: Vec<usize>,

    /// Batch sizes (messages per transaction, 1 to 50).
    #[arg(long, value_delimiter = ',', default_value = "1,10,50")]
    pub batches: Vec<usize>,

    /// Messages in each ring.
    #[arg(long, default_value_t = 20_000)]
    pub ring: usize,

    /// Timed sends of the wake-up latency series (default 1000, quick 300).
    #[arg(long)]
    pub latency_sends: Option<usize>,

    /// Pause after each timed send, milliseconds.
    #[arg(long, default_value_t = 10)]
    pub latency_pause_ms: u64,

    /// Messages the memory measurement sends (default 20000, quick 5000).
    #[arg(long)]
    pub rss_messages: Option<usize>,

    /// Orders in the order flow's backlog (default 2000, quick 400).
    #[arg(long)]
    pub flow_orders: Option<usize>,

    /// Messages per transaction for all three of the order flow's endpoints, 1 to 50;
    /// without it each runs at its own default (Sales 10; Billing and Shipping 1, which
    /// DESIGN.md keeps for endpoints that call a provider).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=50))]
    pub flow_batch: Option<u16>,

    /// Messages the soak runs round its ring.
    #[arg(long, default_value_t = 1_000_000)]
    pub soak_messages: u64,

    /// The soak's batch size.
    #[arg(long, default_value_t = 1)]
    pub soak_batch: usize,

    /// The soak's workers.
    #[arg(long, default_value_t = 16)]
    pub soak_workers: usize,

    /// Seconds in each of the two windows the soak compares, its first and its last; the
    /// soak runs for at least two of them, however soon its messages are done.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=1800))]
    pub soak_window: u64,
}

// One thread: the endpoint under test, its connections and the bench's own bookkeeping
// share it, as a small service would, and the server keeps the machine's other core. With
// tokio's default of a thread per core the tasks hop between threads at every answer, and
// the wake-ups cost the endpoint about a fifth more CPU per message at batch 10.
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    service::init_logging(service::LogFormat::Human, "warn");

    // On SIGINT or SIGTERM the run is dropped, and with it every child process (each is
    // killed on drop): the endpoints would otherwise outlive the bench, ride out the
    // lost database as they are built to, and join the next run's order flow.
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(error) => {
            eprintln!("bench: cannot install the SIGTERM handler: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = tokio::select! {
        outcome = plan::run(args) => outcome,
        _ = tokio::signal::ctrl_c() => return stopped("SIGINT", 130),
        _ = term.recv() => return stopped("SIGTERM", 143),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bench: {}", chain(&error));
            ExitCode::FAILURE
        }
    }
}

/// Says that a signal stopped the run; `code` is the shell's for that signal.
fn stopped(signal: &str, code: u8) -> ExitCode {
    eprintln!("bench: stopped by {signal}; its child processes killed");
    ExitCode::from(code)
}

/// The error and its sources, joined.
pub(crate) fn chain(error: &Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
