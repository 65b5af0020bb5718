//! `pgbus errors`: the error queue, `bus.failed_messages`. List (one row per message or
//! per cause), show one message in full, retry (back to the origin queue with its
//! counters reset) and purge.
//!
//! Retries go through [`transport_pg::retry_failed`]: each batch is one transaction that
//! deletes the rows from the error queue and inserts them into their origin queues, so a
//! message is never in both places or in neither, and SKIP LOCKED lets two retries run
//! at once without moving a message twice. Purges delete in batches the same way.

mod list;
mod retry;

use clap::{ArgGroup, Args, Subcommand};
use transport_pg::EndpointName;
use transport_pg::tokio_postgres::Client;
use transport_pg::tokio_postgres::types::ToSql;

use crate::error::{CliError, Result, db};
use crate::{Ctx, parse_endpoint, sql};

/// How many messages one retry or purge transaction moves by default.
const DEFAULT_BATCH: i64 = 500;

/// The `pgbus errors` commands.
#[derive(Debug, Subcommand)]
pub enum ErrorsCommand {
    /// List failed messages, oldest first; with --group, one row per cause.
    List(ListArgs),

    /// Show one failed message: every column, its headers and its decoded body.
    Show {
        /// The error-queue id (the ID column of `pgbus errors list`).
        #[arg(value_parser = clap::value_parser!(i64).range(1..))]
        id: i64,
    },

    /// Move failed messages back to their origin queues, their retry counters reset.
    ///
    /// Each batch is one transaction: a message is never in both places or in neither,
    /// and two retries running at once never move a message twice. A message whose
    /// origin endpoint is no longer installed stays in the error queue (exit 1).
    Retry(RetryArgs),

    /// Delete failed messages for good. Asks first unless --yes is given; without a
    /// terminal, --yes is required.
    Purge(PurgeArgs),
}

/// Arguments of `pgbus errors list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only messages that failed in this endpoint's queue.
    #[arg(long, value_name = "QUEUE", value_parser = parse_endpoint)]
    queue: Option<EndpointName>,

    /// One row per cause (fingerprint): how many, which queues, a sample message (the
    /// latest), its type, error kind and message.
    #[arg(long)]
    group: bool,

    /// Show at most this many rows (messages, or groups with --group).
    #[arg(long, short = 'n', default_value_t = 100,
          value_parser = clap::value_parser!(i64).range(1..))]
    limit: i64,
}

/// Which failed messages `retry` and `purge` take: ids, a fingerprint, or all.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("selection").required(true).args(["ids", "group", "all"])))]
pub struct Selector {
    /// Error-queue ids (the ID column of `pgbus errors list`).
    #[arg(value_name = "ID", value_parser = clap::value_parser!(i64).range(1..))]
    ids: Vec<i64>,

    /// Every message whose failure has this fingerprint (the FINGERPRINT column of
    /// `pgbus errors list --group`).
    #[arg(long, value_name = "FINGERPRINT")]
    group: Option<String>,

    /// Every failed message; with --queue, every one from that queue.
    #[arg(long)]
    all: bool,

    /// With --all: only messages that failed in this endpoint's queue.
    #[arg(long, value_name = "QUEUE", requires = "all", value_parser = parse_endpoint)]
    queue: Option<EndpointName>,
}

/// Arguments of `pgbus errors retry`.
#[derive(Debug, Args)]
pub struct RetryArgs {
    #[command(flatten)]
    selector: Selector,

    /// Messages moved per transaction.
    #[arg(long, default_value_t = DEFAULT_BATCH,
          value_parser = clap::value_parser!(i64).range(1..=10_000))]
    batch_size: i64,
}

/// Arguments of `pgbus errors purge`.
#[derive(Debug, Args)]
pub struct PurgeArgs {
    #[command(flatten)]
    selector: Selector,

    /// Messages deleted per transaction.
    #[arg(long, default_value_t = DEFAULT_BATCH,
          value_parser = clap::value_parser!(i64).range(1..=10_000))]
    batch_size: i64,

    /// Delete without asking; required when standard input is not a terminal.
    #[arg(long, short = 'y')]
    yes: bool,
}

/// Runs one `pgbus errors` command.
pub async fn run(ctx: &Ctx, command: ErrorsCommand) -> Result<()> {
    match command {
        ErrorsCommand::List(args) if args.group => list::list_groups(ctx, args).await,
        ErrorsCommand::List(args) => list::list(ctx, args).await,
        ErrorsCommand::Show { id } => list::show(ctx, id).await,
        ErrorsCommand::Retry(args) => retry::retry(ctx, args).await,
        ErrorsCommand::Purge(args) => retry::purge(ctx, args).await,
    }
}

/// The selection in a form the statements take.
#[derive(Debug, Clone)]
enum Selection {
    Ids(Vec<i64>),
    Fingerprint(String),
    Queue(Option<EndpointName>),
}

impl Selection {
    fn from_args(selector: Selector) -> Selection {
        match (selector.ids, selector.group) {
            (_, Some(fingerprint)) => Selection::Fingerprint(fingerprint),
            (ids, None) if !ids.is_empty() => Selection::Ids(ids),
            _ => Selection::Queue(selector.queue),
        }
    }

    /// The SQL condition on `bus.failed_messages` and its one parameter, `$1`.
    fn condition(&self) -> (&'static str, Box<dyn ToSql + Sync + Send>) {
        match self {
            Selection::Ids(ids) => ("id = ANY($1::bigint[])", Box::new(ids.clone())),
            Selection::Fingerprint(f) => ("fingerprint = $1", Box::new(f.clone())),
            Selection::Queue(queue) => (
                "($1::text IS NULL OR origin_queue = $1)",
                Box::new(queue.as_ref().map(|q| q.as_str().to_owned())),
            ),
        }
    }

    fn describe(&self) -> String {
        match self {
            Selection::Ids(ids) => format!("id {}", list_ids(ids)),
            Selection::Fingerprint(f) => format!("fingerprint {f}"),
            Selection::Queue(Some(q)) => format!("all from queue {q}"),
            Selection::Queue(None) => "all, from every queue".to_owned(),
        }
    }
}

/// Fails with [`CliError::NotFound`] when `queue` is neither an installed endpoint nor
/// the origin of any failed message (one that was decommissioned may still have some).
async fn require_known_queue(client: &Client, queue: Option<&EndpointName>) -> Result<()> {
    let Some(queue) = queue else { return Ok(()) };
    if crate::is_registered(client, queue).await? {
        return Ok(());
    }
    let has_failed: bool = client
        .query_one(sql::FAILED_ORIGIN_EXISTS, &[&queue.as_str()])
        .await
        .map_err(db(format!("look up failed messages of {queue}")))?
        .get(0);
    if has_failed {
        Ok(())
    } else {
        Err(CliError::NotFound(format!(
            "unknown queue {queue}: no endpoint of that name is installed and no failed \
             message came from it (see `pgbus endpoints`)"
        )))
    }
}

/// Tells the operator on stderr how many there are when a listing stopped at its limit.
async fn note_total(client: &Client, shown: usize, selection: &Selection) -> Result<()> {
    let (condition, param) = selection.condition();
    let total: i64 = client
        .query_one(&sql::failed_count(condition), &[param.as_ref()])
        .await
        .map_err(db("count failed messages"))?
        .get(0);
    if total as usize > shown {
        eprintln!("pgbus: showing {shown} of {total} failed messages; use --limit to see more");
    }
    Ok(())
}

fn no_failed(queue: Option<&EndpointName>) -> String {
    match queue {
        Some(queue) => format!("no failed messages from queue {queue}"),
        None => "no failed messages".to_owned(),
    }
}

fn list_ids(ids: &[i64]) -> String {
    ids.iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}
