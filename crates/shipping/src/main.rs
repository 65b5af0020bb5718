//! `shipping`: runs one instance of the Shipping endpoint until SIGINT or SIGTERM.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use gateways::client::GatewayClient;
use service::endpoint::{self, EndpointArgs, GatewayArgs};
use service::{DatabaseArgs, LogArgs};
use tracing::{Instrument, info, info_span};
use transport_pg::{EndpointBuilder, Shutdown};

/// The Shipping endpoint: runs the fulfilment saga (ship an order once it is placed and
/// billed; cancel it when unpaid at the payment timeout or declined; refund a charge that
/// lands after the cancellation) and books the courier on ShipOrder.
///
/// At start-up it applies migrations/bus and migrations/retail, installs
/// bus.shipping_queue, subscribes to the events it handles and logs "endpoint ready".
/// Any number of instances may run against one database. Every flag is also an
/// environment variable: the ones shown, and SHIPPING_<FLAG> for the others
/// (SHIPPING_PAYMENT_TIMEOUT_MS, SHIPPING_GATEWAY_URL, ...).
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Args {
    #[command(flatten)]
    database: DatabaseArgs,

    #[command(flatten)]
    log: LogArgs,

    #[command(flatten)]
    endpoint: EndpointArgs,

    #[command(flatten)]
    gateway: GatewayArgs,

    /// Milliseconds after an order's saga starts at which it is cancelled if no payment
    /// outcome has arrived; a charge that lands later is refunded.
    #[arg(long, default_value_t = 60_000,
        value_parser = clap::value_parser!(u64).range(1..))]
    payment_timeout_ms: u64,
}

fn main() -> ExitCode {
    let args: Args = endpoint::parse("shipping", "SHIPPING", &[]);
    service::init_logging(args.log.log_format, "info");
    let span = info_span!("shipping", instance = %args.endpoint.instance());
    let threads = args.endpoint.threads;
    endpoint::run("shipping", threads, run(args).instrument(span))
}

async fn run(args: Args) -> Result<Shutdown, Box<dyn std::error::Error>> {
    let instance = args.endpoint.instance();
    let db = args.endpoint.database(&args.database, shipping::ENDPOINT)?;
    transport_pg::migrate(&db, &retail::migrations()).await?;

    let gateway = GatewayClient::new(&args.gateway.gateway_url, args.gateway.http_timeout());
    info!(gateway_url = %args.gateway.gateway_url,
        http_timeout_ms = args.gateway.http_timeout_ms,
        payment_timeout_ms = args.payment_timeout_ms, "courier and saga");
    let builder = EndpointBuilder::new(shipping::ENDPOINT, db)
        .concurrency(usize::from(args.endpoint.concurrency))
        .batch_size(usize::from(args.endpoint.batch_size))
        .retry_policy(args.endpoint.retry_policy());
    let payment_timeout = Duration::from_millis(args.payment_timeout_ms);
    let endpoint = shipping::install(builder, &instance, gateway, payment_timeout)
        .start()
        .await?;
    Ok(endpoint.run_until_signal(args.endpoint.grace()).await?)
}
