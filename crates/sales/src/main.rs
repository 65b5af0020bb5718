//! `sales`: runs one instance of the Sales endpoint until SIGINT or SIGTERM.

use std::process::ExitCode;

use clap::Parser;
use service::endpoint::{self, EndpointArgs};
use service::{DatabaseArgs, LogArgs};
use tracing::{Instrument, info_span};
use transport_pg::{EndpointBuilder, Shutdown};

/// The Sales endpoint: takes PlaceOrder (stores the order, publishes OrderPlaced) and
/// CancelOrder (cancels it, notifies the customer, publishes OrderCancelled), and keeps
/// each order's status in sales.orders from the events that move it on.
///
/// At start-up it applies migrations/bus and migrations/retail, installs bus.sales_queue,
/// subscribes to the events it handles and logs "endpoint ready". Any number of instances
/// may run against one database. Every flag is also an environment variable: the ones
/// shown, and SALES_<FLAG> for the others (SALES_BATCH_SIZE, ...).
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Args {
    #[command(flatten)]
    database: DatabaseArgs,

    #[command(flatten)]
    log: LogArgs,

    #[command(flatten)]
    endpoint: EndpointArgs,
}

fn main() -> ExitCode {
    // Sales makes no external calls, so batches cost nothing but a longer transaction.
    let args: Args = endpoint::parse("sales", "SALES", &[("batch_size", "10")]);
    service::init_logging(args.log.log_format, "info");
    let span = info_span!("sales", instance = %args.endpoint.instance());
    let threads = args.endpoint.threads;
    endpoint::run("sales", threads, run(args).instrument(span))
}

async fn run(args: Args) -> Result<Shutdown, Box<dyn std::error::Error>> {
    let instance = args.endpoint.instance();
    let db = args.endpoint.database(&args.database, sales::ENDPOINT)?;
    transport_pg::migrate(&db, &retail::migrations()).await?;

    let builder = EndpointBuilder::new(sales::ENDPOINT, db)
        .concurrency(usize::from(args.endpoint.concurrency))
        .batch_size(usize::from(args.endpoint.batch_size))
        .retry_policy(args.endpoint.retry_policy());
    let endpoint = sales::install(builder, &instance).start().await?;
    Ok(endpoint.run_until_signal(args.endpoint.grace()).await?)
}
