//! `billing`: runs one instance of the Billing endpoint until SIGINT or SIGTERM.

use std::process::ExitCode;

use clap::Parser;
use gateways::client::GatewayClient;
use service::endpoint::{self, EndpointArgs, GatewayArgs};
use service::{DatabaseArgs, LogArgs};
use tracing::{Instrument, info, info_span};
use transport_pg::{EndpointBuilder, Shutdown};

/// The Billing endpoint: charges each placed order through the payment provider (the
/// order id is the idempotency key) and publishes OrderBilled or PaymentFailed; refunds
/// a charge on RefundPayment and publishes PaymentRefunded.
///
/// A pending charge or a timeout is retried by the retry policy, so keep its window
/// (the delayed retries' back-off) longer than the provider's settle time. At start-up
/// it applies migrations/bus and migrations/retail, installs bus.billing_queue,
/// subscribes to OrderPlaced and logs "endpoint ready". Any number of instances may run
/// against one database. Every flag is also an environment variable: the ones shown, and
/// BILLING_<FLAG> for the others (BILLING_GATEWAY_URL, BILLING_HTTP_TIMEOUT_MS, ...).
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
}

fn main() -> ExitCode {
    let args: Args = endpoint::parse("billing", "BILLING", &[]);
    service::init_logging(args.log.log_format, "info");
    let span = info_span!("billing", instance = %args.endpoint.instance());
    let threads = args.endpoint.threads;
    endpoint::run("billing", threads, run(args).instrument(span))
}

async fn run(args: Args) -> Result<Shutdown, Box<dyn std::error::Error>> {
    let instance = args.endpoint.instance();
    let db = args.endpoint.database(&args.database, billing::ENDPOINT)?;
    transport_pg::migrate(&db, &retail::migrations()).await?;

    let gateway = GatewayClient::new(&args.gateway.gateway_url, args.gateway.http_timeout());
    info!(gateway_url = %args.gateway.gateway_url,
        http_timeout_ms = args.gateway.http_timeout_ms, "payment provider");
    let builder = EndpointBuilder::new(billing::ENDPOINT, db)
        .concurrency(usize::from(args.endpoint.concurrency))
        .batch_size(usize::from(args.endpoint.batch_size))
        .retry_policy(args.endpoint.retry_policy());
    let endpoint = billing::install(builder, &instance, gateway)
        .start()
        .await?;
    Ok(endpoint.run_until_signal(args.endpoint.grace()).await?)
}
