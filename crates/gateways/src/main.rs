//! `gateways`: serves the payment-provider and courier stand-ins until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use gateways::server::{App, Config};
use gateways::{Error, Result};
use tracing::{info, warn};
use transport_pg::{Database, error_chain, wait_for_signal};

/// HTTP stand-ins for the payment provider (POST /v1/charges, POST /v1/refunds) and the
/// courier (POST /v1/shipments), with their idempotency ledger in gateway.ledger.
///
/// Every POST needs an Idempotency-Key header. Card tokens decide charges: tok_ok approves,
/// tok_decline declines (402), tok_slow approves after --settle-ms; a repeat of a key in
/// flight gets 409 pending. GET /health answers 200 while the database is reachable.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Args {
    /// PostgreSQL connection string; migrations/retail is applied at start-up.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,

    /// Address to serve on; port 0 picks a free port, and the ready line shows it.
    #[arg(long, env = "GATEWAYS_LISTEN", default_value = "127.0.0.1:7480")]
    listen: SocketAddr,

    /// Milliseconds a slow (tok_slow) charge takes to settle. Rule: keep it shorter than
    /// Billing's whole retry window (every attempt's HTTP timeout plus the back-off between
    /// attempts), or a slow charge can exhaust Billing's retries and end in the error
    /// queue while the money is taken.
    #[arg(long, env = "GATEWAYS_SETTLE_MS", default_value_t = 3000)]
    settle_ms: u64,

    /// Milliseconds added before every POST is handled.
    #[arg(long, env = "GATEWAYS_LATENCY_MS", default_value_t = 0)]
    latency_ms: u64,

    /// Share of POSTs answered 503 before they take effect, 0.0 to 1.0.
    #[arg(long, env = "GATEWAYS_FAIL_RATE", default_value_t = 0.0, value_parser = share)]
    fail_rate: f64,

    /// Database connections for the ledger.
    #[arg(long, env = "GATEWAYS_POOL_SIZE", default_value_t = 8,
        value_parser = clap::value_parser!(u16).range(1..))]
    pool_size: u16,
}

fn share(text: &str) -> std::result::Result<f64, String> {
    let value: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!("{value} is outside 0.0 to 1.0"))
    }
}

// One thread: a call costs one ledger statement and a little JSON, and on one thread the
// request and its connection's task do not wake each other across threads.
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();

    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("gateways: {}", error_chain(&error));
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<()> {
    let db = Database::from_url(&args.database_url)?;
    transport_pg::migrate(&db, &retail::migrations()).await?;
    let pool = db.pool("gateways", usize::from(args.pool_size))?;

    let config = Config {
        settle: Duration::from_millis(args.settle_ms),
        latency: Duration::from_millis(args.latency_ms),
        fail_rate: args.fail_rate,
    };
    let app = App::new(pool, config.clone());
    let resumed = app.resume_in_flight().await?;

    if !args.listen.ip().is_loopback() {
        warn!(addr = %args.listen, "serving on a non-loopback address; these are stand-ins");
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| Error::Bind {
            addr: args.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(Error::Serve)?;
    info!(
        addr = %addr,
        settle_ms = args.settle_ms,
        latency_ms = args.latency_ms,
        fail_rate = args.fail_rate,
        resumed,
        "gateways ready"
    );

    // A failed signal handler would leave no way to stop but SIGKILL; say so and stop.
    let shutdown = async {
        if let Err(e) = wait_for_signal().await {
            warn!(error = %error_chain(&e), "cannot wait for signals; stopping");
        }
    };
    axum::serve(listener, app.router())
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(Error::Serve)?;

    // Settle tasks outlive their requests; give them the settle time to finish. What is
    // still in flight after that is resumed at the next start.
    let grace = config.settle + Duration::from_secs(2);
    if app.drain(grace).await {
        info!("stopped cleanly");
    } else {
        warn!(
            grace_ms = grace.as_millis() as u64,
            "stopped with keys in flight; they resume at the next start"
        );
    }
    Ok(())
}
