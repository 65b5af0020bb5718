//! `example-endpoint`: runs the example endpoint until SIGINT or SIGTERM.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use example_endpoint::{SCHEMA_SQL, Work, WorkHandler};
use service::{DatabaseArgs, LogArgs};
use transport_pg::{Database, EndpointBuilder, RetryPolicy, Shutdown, error_chain};

/// An endpoint that records the work it is given in example.handled.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    database: DatabaseArgs,

    #[command(flatten)]
    log: LogArgs,

    /// Endpoint name (its queue is bus.<name>_queue).
    #[arg(long, env = "EXAMPLE_NAME", default_value = "example")]
    name: String,

    /// Worker tasks.
    #[arg(long, env = "EXAMPLE_CONCURRENCY", default_value_t = 4)]
    concurrency: usize,

    /// Messages per transaction (1 to 50).
    #[arg(long, env = "EXAMPLE_BATCH_SIZE", default_value_t = 1)]
    batch_size: usize,

    /// Immediate retries of a failing message.
    #[arg(long, env = "EXAMPLE_IMMEDIATE_RETRIES", default_value_t = 3)]
    immediate_retries: u32,

    /// Delayed retries after the immediate ones, before the error queue.
    #[arg(long, env = "EXAMPLE_DELAYED_RETRIES", default_value_t = 3)]
    delayed_retries: u32,

    /// Milliseconds before the first delayed retry; later ones grow by the factor.
    #[arg(long, env = "EXAMPLE_RETRY_DELAY_MS", default_value_t = 10_000)]
    retry_delay_ms: u64,

    /// Growth of the delay from one delayed retry to the next (at least 1).
    #[arg(long, env = "EXAMPLE_RETRY_BACKOFF", default_value_t = 3.0)]
    retry_backoff: f64,

    /// Milliseconds in-flight handlers get to finish after SIGTERM.
    #[arg(long, env = "EXAMPLE_GRACE_MS", default_value_t = 10_000)]
    grace_ms: u64,

    /// Poll only; do not LISTEN for wake-ups.
    #[arg(long, env = "EXAMPLE_NO_WAKEUPS")]
    no_wakeups: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    service::init_logging(args.log.log_format, "info");
    match run(args).await {
        Ok(Shutdown::Clean) => ExitCode::SUCCESS,
        Ok(Shutdown::TimedOut) => ExitCode::from(3),
        Err(error) => {
            eprintln!("example-endpoint: {}", error_chain(&*error));
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<Shutdown, Box<dyn std::error::Error>> {
    let db = args.database.database()?;
    create_business_tables(&db).await?;

    let endpoint = EndpointBuilder::new(&args.name, db)
        .handler::<Work, _>(WorkHandler {
            endpoint: args.name.clone(),
        })
        .concurrency(args.concurrency)
        .batch_size(args.batch_size)
        .retry_policy(RetryPolicy {
            immediate: args.immediate_retries,
            delayed: args.delayed_retries,
            first_delay: Duration::from_millis(args.retry_delay_ms),
            backoff_factor: args.retry_backoff,
            ..RetryPolicy::default()
        })
        .wakeups(!args.no_wakeups)
        .start()
        .await?;
    Ok(endpoint
        .run_until_signal(Duration::from_millis(args.grace_ms))
        .await?)
}

/// Creates example.handled; the advisory lock keeps instances starting together from
/// racing on CREATE ... IF NOT EXISTS, which is not safe under concurrency.
async fn create_business_tables(db: &Database) -> Result<(), transport_pg::Error> {
    let mut client = db.connect("example schema").await?;
    let tx = client
        .transaction()
        .await
        .map_err(|source| db_error("begin", source))?;
    tx.batch_execute("SELECT pg_advisory_xact_lock(7305010)")
        .await
        .map_err(|source| db_error("lock", source))?;
    tx.batch_execute(SCHEMA_SQL)
        .await
        .map_err(|source| db_error("create example.handled", source))?;
    tx.commit()
        .await
        .map_err(|source| db_error("commit", source))
}

fn db_error(op: &str, source: transport_pg::tokio_postgres::Error) -> transport_pg::Error {
    transport_pg::Error::Database {
        op: op.to_owned(),
        source,
    }
}
