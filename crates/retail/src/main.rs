//! `retail`: the client of the reference system. Places orders, reports where one is, and
//! checks the system's invariants; see `retail --help`.

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use retail::place::{self, PlaceOptions};
use transport_pg::{Database, error_chain};

/// The retail client: places orders, shows an order's state, verifies the invariants.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// PostgreSQL connection string.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    database_url: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply migrations/bus and migrations/retail.
    Migrate,

    /// Place a run of orders (PlaceOrder to the sales endpoint); prints the run id.
    Place(PlaceArgs),

    /// Show where one order is. Exits 1 when neither the client nor Sales knows it.
    Status {
        /// The order id, as printed by `place` (`<run id>-<number>`).
        order_id: String,
    },

    /// Check the five invariants; one line each, exit 1 when any fails.
    ///
    /// 1 no shipment without a charge; 2 no charge kept without a shipment or refund;
    /// 3 every order reaches a terminal state; 4 no charge, refund or shipment twice for
    /// one order; 5 no message lost (none of the run waits in a queue or delayed table,
    /// every order is known to Sales; error-queue rows are listed with their reasons).
    Verify {
        /// Check only this run's orders and messages; without it, every order counts.
        #[arg(long, env = "RETAIL_RUN")]
        run: Option<String>,
    },
}

#[derive(Debug, Args)]
struct PlaceArgs {
    /// How many orders to place.
    #[arg(long, env = "RETAIL_COUNT", default_value_t = 100)]
    count: usize,

    /// The run id to tag the orders and messages with; a fresh one by default.
    #[arg(long, env = "RETAIL_RUN")]
    run: Option<String>,

    /// Share of orders paid with a declining card (0 to 1).
    #[arg(long, env = "RETAIL_DECLINED_SHARE", default_value_t = 0.1)]
    declined_share: f64,

    /// Share of orders paid with a slow card (0 to 1), settled after the provider's
    /// settle time.
    #[arg(long, env = "RETAIL_SLOW_SHARE", default_value_t = 0.1)]
    slow_share: f64,

    /// Share of orders sent a second time with the same order id (0 to 1).
    #[arg(long, env = "RETAIL_RESUBMIT_SHARE", default_value_t = 0.0)]
    resubmit_share: f64,

    /// Currency of every order (ISO 4217).
    #[arg(long, env = "RETAIL_CURRENCY", default_value = "EUR")]
    currency: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();

    let cli = Cli::parse();
    let Some(url) = cli.database_url else {
        eprintln!("retail: no database given; pass --database-url or set DATABASE_URL");
        return ExitCode::from(2);
    };
    match run(&url, cli.command).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("retail: {}", error_chain(&error));
            ExitCode::FAILURE
        }
    }
}

async fn run(url: &str, command: Command) -> Result<ExitCode, retail::Error> {
    let db = Database::from_url(url)?;
    match command {
        Command::Migrate => {
            let (bus, retail) = retail::migrate_all(&db).await?;
            println!("schemas up to date ({bus} bus and {retail} retail migrations applied)");
            Ok(ExitCode::SUCCESS)
        }
        Command::Place(args) => {
            let options = PlaceOptions {
                count: args.count,
                run_id: args.run.unwrap_or_else(place::new_run_id),
                declined_share: args.declined_share,
                slow_share: args.slow_share,
                resubmit_share: args.resubmit_share,
                currency: args.currency,
            };
            let report = place::place(&db, &options).await?;
            eprintln!("retail: {report}");
            println!("{}", report.run_id);
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { order_id } => {
            let status = retail::status::status(&db, &order_id).await?;
            println!("{status}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify { run } => {
            let report = retail::verify::verify(&db, run.as_deref()).await?;
            println!("{report}");
            Ok(if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
