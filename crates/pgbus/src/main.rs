//! `pgbus`: the operator's command line for the PostgreSQL bus. It applies the bus
//! migrations, lists endpoints and queues, inspects, retries and purges the error queue,
//! peeks at waiting messages and shows saga state; see `pgbus --help`.
//!
//! Each command group has a module of its own; `table` and `output` print the results,
//! as aligned tables for people or, with `--json`, as JSON for scripts.

mod body;
mod confirm;
mod ctx;
mod endpoints;
mod error;
mod errors;
mod format;
mod output;
mod peek;
mod queues;
mod sagas;
mod sql;
mod table;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use service::{DatabaseArgs, LogArgs};
use transport_pg::{bus_migrations, error_chain, migrate};

pub(crate) use crate::ctx::{Ctx, is_registered, parse_endpoint, require_endpoint};
use crate::error::{EXIT_USAGE, Result};

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  runtime error: the database could not be reached, a statement failed, a retry could
     not be delivered
  2  usage error: an unknown flag, a bad value (endpoint name, duration, id), a missing
     database URL
  3  not found: the endpoint, queue, error-queue id, fingerprint or saga does not exist
  4  not confirmed: a purge or decommission was declined, or asked for without a terminal
     and without --yes";

/// The exit codes in brief, under every command's help.
const EXIT_CODES_SHORT: &str = "\
Exit codes: 0 success, 1 runtime error, 2 usage error, 3 not found, 4 not confirmed \
(see `pgbus --help`)";

/// Operate a PostgreSQL message bus: endpoints, queues, the error queue and sagas.
///
/// Every command takes the connection flags (or DATABASE_URL) and --json, before or
/// after the command name. Tables are for people; use --json in scripts.
#[derive(Debug, Parser)]
#[command(version, about, after_long_help = EXIT_CODES, after_help = EXIT_CODES)]
struct Cli {
    #[command(flatten)]
    database: DatabaseArgs,

    #[command(flatten)]
    log: LogArgs,

    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply the framework's schema migrations (migrations/bus).
    Migrate,

    /// List the installed endpoints, their installer version and their subscriptions.
    Endpoints,

    /// Remove an endpoint's subscriptions, so publishers stop sending it copies.
    Unsubscribe(endpoints::UnsubscribeArgs),

    /// Remove an endpoint for good: its registration, subscriptions and tables.
    Decommission(endpoints::DecommissionArgs),

    /// Per endpoint: messages ready, delayed and due, the oldest's age, failed ones.
    Queues,

    /// The error queue: list, show, retry and purge failed messages.
    #[command(subcommand)]
    Errors(errors::ErrorsCommand),

    /// Show the oldest waiting messages of a queue, decoded, without taking them.
    Peek(peek::PeekArgs),

    /// Saga state: one saga by its correlation value, or the sagas of a type.
    #[command(subcommand)]
    Sagas(sagas::SagasCommand),
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = match parse() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    service::init_logging(cli.log.log_format, "warn");

    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("pgbus: {}", error_chain(&error));
            if let Some(hint) = error.hint() {
                eprintln!("pgbus: hint: {hint}");
            }
            ExitCode::from(error.exit_code())
        }
    }
}

/// Parses the command line. The connection and output flags are made global, so that
/// they work after the command name too; clap refuses required global flags, so the
/// database URL is checked here instead.
fn parse() -> Result<Cli, ExitCode> {
    let command = Cli::command().mut_args(|arg| match arg.get_id().as_str() {
        "help" | "version" => arg,
        "json" | "log_format" => arg.global(true).help_heading("Output"),
        // The URL may carry a password: never print it in the help.
        "database_url" => arg
            .global(true)
            .required(false)
            .hide_env_values(true)
            .help_heading("Connection"),
        _ => arg
            .global(true)
            .hide_short_help(true)
            .help_heading("Connection"),
    });
    let mut matches = with_exit_codes(command).get_matches();
    let url = matches.get_one::<String>("database_url");
    if url.is_none_or(|url| url.trim().is_empty()) {
        eprintln!("pgbus: no database given; pass --database-url or set DATABASE_URL");
        return Err(ExitCode::from(EXIT_USAGE));
    }
    Cli::from_arg_matches_mut(&mut matches).map_err(|e| {
        let _ = e.print();
        ExitCode::from(EXIT_USAGE)
    })
}

/// Adds the short exit-code note to every command below the top, recursively.
fn with_exit_codes(mut command: clap::Command) -> clap::Command {
    let names: Vec<String> = command
        .get_subcommands()
        .map(|sub| sub.get_name().to_owned())
        .filter(|name| name != "help")
        .collect();
    for name in names {
        command = command.mut_subcommand(name, |sub| {
            with_exit_codes(sub.after_help(EXIT_CODES_SHORT))
        });
    }
    command
}

async fn run(cli: Cli) -> Result<()> {
    let ctx = Ctx::new(cli.database.database()?, cli.json);
    match cli.command {
        Command::Migrate => run_migrate(&ctx).await,
        Command::Endpoints => endpoints::list(&ctx).await,
        Command::Unsubscribe(args) => endpoints::unsubscribe(&ctx, args).await,
        Command::Decommission(args) => endpoints::decommission(&ctx, args).await,
        Command::Queues => queues::list(&ctx).await,
        Command::Errors(command) => errors::run(&ctx, command).await,
        Command::Peek(args) => peek::run(&ctx, args).await,
        Command::Sagas(command) => sagas::run(&ctx, command).await,
    }
}

async fn run_migrate(ctx: &Ctx) -> Result<()> {
    let applied = migrate(ctx.database(), &bus_migrations()).await?;
    if ctx.json {
        output::json(&serde_json::json!({ "applied": applied }))
    } else {
        output::line(&format!(
            "bus schema up to date ({applied} migrations applied)"
        ))
    }
}
