//! `pgbus`: the operator's command line. For now it applies the framework's migrations;
//! inspecting endpoints, queues, the error queue and sagas come with later releases.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use transport_pg::{Database, bus_migrations, error_chain, migrate};

/// Operate a PostgreSQL message bus.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// PostgreSQL connection string.
    #[arg(long, env = "DATABASE_URL", global = true)]
    database_url: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply the framework's schema migrations (migrations/bus).
    Migrate,
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
        eprintln!("pgbus: no database given; pass --database-url or set DATABASE_URL");
        return ExitCode::from(2);
    };
    let result = match cli.command {
        Command::Migrate => run_migrate(&url).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("pgbus: {}", error_chain(&error));
            ExitCode::FAILURE
        }
    }
}

async fn run_migrate(url: &str) -> Result<(), transport_pg::Error> {
    let db = Database::from_url(url)?;
    let applied = migrate(&db, &bus_migrations()).await?;
    println!("bus schema up to date ({applied} migrations applied)");
    Ok(())
}
