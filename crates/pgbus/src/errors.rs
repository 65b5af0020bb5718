//! `pgbus errors`: the error queue, `bus.failed_messages`. List (one row per message or
//! per cause), show one message in full, retry (back to the origin queue with its
//! counters reset) and purge.
//!
//! Retries go through [`transport_pg::retry_failed`]: each batch is one transaction that
//! deletes the rows from the error queue and inserts them into their origin queues, so a
//! message is never in both places or in neither, and SKIP LOCKED lets two retries run
//! at once without moving a message twice. Purges delete in batches the same way.

use std::collections::BTreeMap;
use std::time::SystemTime;

use clap::{ArgGroup, Args, Subcommand};
use serde::Serialize;
use serde_json::Value;
use tracing::info;
use transport_pg::tokio_postgres::Client;
use transport_pg::tokio_postgres::types::ToSql;
use transport_pg::{EndpointName, FailedSelection, RetryReport, error_chain, retry_failed};
use uuid::Uuid;

use crate::body::BodyView;
use crate::error::{CliError, Result, db};
use crate::table::Table;
use crate::{Ctx, confirm, format, output, parse_endpoint, sql};

/// How many messages one retry or purge transaction moves by default.
const DEFAULT_BATCH: i64 = 500;
/// How many ids a human-readable retry or purge report spells out.
const IDS_SHOWN: usize = 20;

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
        ErrorsCommand::List(args) if args.group => list_groups(ctx, args).await,
        ErrorsCommand::List(args) => list(ctx, args).await,
        ErrorsCommand::Show { id } => show(ctx, id).await,
        ErrorsCommand::Retry(args) => retry(ctx, args).await,
        ErrorsCommand::Purge(args) => purge(ctx, args).await,
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

#[derive(Debug, Serialize)]
struct FailedRow {
    id: i64,
    message_id: Uuid,
    origin_queue: String,
    message_type: Option<String>,
    error_kind: String,
    error_message: String,
    fingerprint: String,
    failed_attempts: i32,
    delayed_retries: i32,
    failed_at: String,
    age_seconds: Option<f64>,
}

async fn list(ctx: &Ctx, args: ListArgs) -> Result<()> {
    let client = ctx.client().await?;
    require_known_queue(&client, args.queue.as_ref()).await?;
    let queue = args.queue.as_ref().map(EndpointName::as_str);
    let rows = client
        .query(sql::FAILED_LIST, &[&queue, &args.limit])
        .await
        .map_err(db("list failed messages"))?;
    let failed: Vec<FailedRow> = rows
        .iter()
        .map(|row| FailedRow {
            id: row.get(0),
            origin_queue: row.get(1),
            message_type: row.get(2),
            error_kind: row.get(3),
            error_message: row.get(4),
            fingerprint: row.get(5),
            failed_attempts: row.get(6),
            delayed_retries: row.get(7),
            failed_at: format::time(row.get::<_, SystemTime>(8)),
            age_seconds: row.get(9),
            message_id: row.get(10),
        })
        .collect();
    if failed.len() as i64 == args.limit {
        note_total(&client, failed.len(), &Selection::Queue(args.queue.clone())).await?;
    }

    if ctx.json {
        return output::json(&failed);
    }
    if failed.is_empty() {
        return output::line(&no_failed(args.queue.as_ref()));
    }
    let mut table = Table::new(&[
        "ID",
        "QUEUE",
        "TYPE",
        "FAILED",
        "ATTEMPTS",
        "KIND",
        "FINGERPRINT",
        "MESSAGE",
    ])
    .right_align(&[0, 3, 4]);
    for f in &failed {
        table.row(vec![
            f.id.to_string(),
            f.origin_queue.clone(),
            f.message_type.clone().unwrap_or_else(|| "-".to_owned()),
            format!("{} ago", format::span_or_dash(f.age_seconds)),
            f.failed_attempts.to_string(),
            format::short_kind(&f.error_kind),
            f.fingerprint.clone(),
            format::truncate(&f.error_message, 60),
        ]);
    }
    output::text(&table.render())
}

#[derive(Debug, Serialize)]
struct GroupRow {
    fingerprint: String,
    count: i64,
    queues: Vec<String>,
    sample_id: i64,
    message_type: Option<String>,
    error_kind: String,
    error_message: String,
    first_failed_at: String,
    last_failed_at: String,
    last_age_seconds: Option<f64>,
}

async fn list_groups(ctx: &Ctx, args: ListArgs) -> Result<()> {
    let client = ctx.client().await?;
    require_known_queue(&client, args.queue.as_ref()).await?;
    let queue = args.queue.as_ref().map(EndpointName::as_str);
    let rows = client
        .query(sql::FAILED_GROUP, &[&queue, &args.limit])
        .await
        .map_err(db("group failed messages"))?;
    let groups: Vec<GroupRow> = rows
        .iter()
        .map(|row| GroupRow {
            fingerprint: row.get(0),
            count: row.get(1),
            sample_id: row.get(2),
            queues: row.get(3),
            message_type: row.get(4),
            error_kind: row.get(5),
            error_message: row.get(6),
            first_failed_at: format::time(row.get::<_, SystemTime>(7)),
            last_failed_at: format::time(row.get::<_, SystemTime>(8)),
            last_age_seconds: row.get(9),
        })
        .collect();
    if groups.len() as i64 == args.limit {
        eprintln!(
            "pgbus: showing the {} largest groups; use --limit to see more",
            args.limit
        );
    }

    if ctx.json {
        return output::json(&groups);
    }
    if groups.is_empty() {
        return output::line(&no_failed(args.queue.as_ref()));
    }
    let mut table = Table::new(&[
        "FINGERPRINT",
        "COUNT",
        "QUEUES",
        "TYPE",
        "KIND",
        "LAST FAILED",
        "SAMPLE",
        "MESSAGE",
    ])
    .right_align(&[1, 5, 6]);
    for g in &groups {
        table.row(vec![
            g.fingerprint.clone(),
            g.count.to_string(),
            g.queues.join(","),
            g.message_type.clone().unwrap_or_else(|| "-".to_owned()),
            format::short_kind(&g.error_kind),
            format!("{} ago", format::span_or_dash(g.last_age_seconds)),
            g.sample_id.to_string(),
            format::truncate(&g.error_message, 60),
        ]);
    }
    output::text(&table.render())
}

#[derive(Debug, Serialize)]
struct FailedMessage {
    id: i64,
    message_id: Uuid,
    origin_queue: String,
    message_type: Option<String>,
    enqueued_at: Option<String>,
    failed_at: String,
    error_kind: String,
    error_message: String,
    error_source: String,
    fingerprint: String,
    failed_attempts: i32,
    delayed_retries: i32,
    headers: Value,
    body: BodyView,
}

async fn show(ctx: &Ctx, id: i64) -> Result<()> {
    let client = ctx.client().await?;
    let row = client
        .query_opt(sql::FAILED_GET, &[&id])
        .await
        .map_err(db(format!("read failed message {id}")))?
        .ok_or_else(|| {
            CliError::NotFound(format!(
                "no failed message with id {id} (see `pgbus errors list`)"
            ))
        })?;
    let headers: Value = row.get(4);
    let body: Vec<u8> = row.get(5);
    let content_type = headers.get("content_type").and_then(Value::as_str);
    let message = FailedMessage {
        id: row.get(0),
        message_id: row.get(1),
        origin_queue: row.get(2),
        message_type: row.get(3),
        body: BodyView::decode(content_type, &body),
        enqueued_at: row.get::<_, Option<SystemTime>>(6).map(format::time),
        failed_at: format::time(row.get::<_, SystemTime>(7)),
        error_kind: row.get(8),
        error_message: row.get(9),
        error_source: row.get(10),
        fingerprint: row.get(11),
        failed_attempts: row.get(12),
        delayed_retries: row.get(13),
        headers,
    };

    if ctx.json {
        return output::json(&message);
    }
    output::text(&render_message(&message))
}

fn render_message(m: &FailedMessage) -> String {
    let fields = [
        ("id", m.id.to_string()),
        ("message id", m.message_id.to_string()),
        ("origin queue", m.origin_queue.clone()),
        (
            "message type",
            m.message_type.clone().unwrap_or_else(|| "-".into()),
        ),
        (
            "enqueued at",
            m.enqueued_at.clone().unwrap_or_else(|| "-".into()),
        ),
        ("failed at", m.failed_at.clone()),
        ("error kind", m.error_kind.clone()),
        ("error message", m.error_message.clone()),
        ("fingerprint", m.fingerprint.clone()),
        ("failed attempts", m.failed_attempts.to_string()),
        ("delayed retries", m.delayed_retries.to_string()),
    ];
    let mut out = String::new();
    for (name, value) in fields {
        out.push_str(&format!("{name:<16} {value}\n"));
    }
    let mut block = |title: &str, text: &str| {
        out.push_str(title);
        out.push('\n');
        for line in text.lines() {
            out.push_str("  ");
            out.push_str(line);
            out.push('\n');
        }
    };
    if !m.error_source.is_empty() {
        block("error source:", &m.error_source);
    }
    block(
        "headers:",
        &serde_json::to_string_pretty(&m.headers).unwrap_or_default(),
    );
    out.push_str(&m.body.render("  "));
    out
}

#[derive(Debug, Default, Serialize)]
struct MoveReport {
    /// How many messages the command moved or deleted.
    count: usize,
    /// Per origin queue, how many.
    by_queue: BTreeMap<String, usize>,
    ids: Vec<i64>,
    /// Ids asked for that were not in the error queue.
    missing: Vec<i64>,
    /// Origin queues whose messages could not be retried, with the reason.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    failed_queues: BTreeMap<String, String>,
}

impl MoveReport {
    fn add(&mut self, report: RetryReport) {
        for (id, queue) in report.moved {
            self.count += 1;
            *self.by_queue.entry(queue).or_default() += 1;
            self.ids.push(id);
        }
        self.missing.extend(report.missing);
    }
}

async fn retry(ctx: &Ctx, args: RetryArgs) -> Result<()> {
    let mut client = ctx.client().await?;
    let selection = Selection::from_args(args.selector);
    let batch = args.batch_size;
    let mut report = MoveReport::default();

    match &selection {
        Selection::Ids(ids) => {
            // retry_failed takes one batch of ids per call.
            for chunk in ids.chunks(batch as usize) {
                let chunk = FailedSelection::Ids(chunk.to_vec());
                report.add(retry_failed(&mut client, &chunk, batch).await?);
            }
        }
        Selection::Fingerprint(f) => {
            let group = FailedSelection::Fingerprint(f.clone());
            report.add(retry_failed(&mut client, &group, batch).await?);
        }
        Selection::Queue(queue) => {
            require_known_queue(&client, queue.as_ref()).await?;
            // Queue by queue, so an origin that is no longer installed holds back only
            // its own messages.
            let queue = queue.as_ref().map(EndpointName::as_str);
            let origins: Vec<String> = client
                .query(sql::FAILED_ORIGINS, &[&queue])
                .await
                .map_err(db("list the origin queues of failed messages"))?
                .iter()
                .map(|row| row.get(0))
                .collect();
            for origin in origins {
                let all = FailedSelection::All {
                    queue: Some(origin.clone()),
                };
                match retry_failed(&mut client, &all, batch).await {
                    Ok(moved) => report.add(moved),
                    Err(error) if !error.is_connection_problem() => {
                        report.failed_queues.insert(origin, error_chain(&error));
                    }
                    Err(error) => return Err(error.into()),
                }
            }
        }
    }

    report.ids.sort_unstable();
    info!(moved = report.count, selection = %selection.describe(), "retried");
    let outcome = finish(&selection, &report);
    print_report(ctx, &report, "retried", "back to", outcome.is_ok())?;
    outcome
}

async fn purge(ctx: &Ctx, args: PurgeArgs) -> Result<()> {
    let client = ctx.client().await?;
    let selection = Selection::from_args(args.selector);
    if let Selection::Queue(queue) = &selection {
        require_known_queue(&client, queue.as_ref()).await?;
    }

    let (condition, param) = selection.condition();
    let matching: i64 = client
        .query_one(&sql::failed_count(condition), &[param.as_ref()])
        .await
        .map_err(db("count the failed messages to purge"))?
        .get(0);
    if matching == 0 {
        let report = MoveReport {
            missing: match &selection {
                Selection::Ids(ids) => ids.clone(),
                _ => Vec::new(),
            },
            ..MoveReport::default()
        };
        let outcome = finish(&selection, &report);
        print_report(ctx, &report, "purged", "from", outcome.is_ok())?;
        return outcome;
    }
    confirm::confirm(
        &format!(
            "purge {matching} failed message{} ({}) for good",
            plural(matching as usize),
            selection.describe()
        ),
        args.yes,
    )?;

    let statement = sql::failed_purge(condition);
    let mut report = MoveReport::default();
    loop {
        let rows = client
            .query(&statement, &[param.as_ref(), &args.batch_size])
            .await
            .map_err(db("purge failed messages"))?;
        if rows.is_empty() {
            break;
        }
        for row in &rows {
            report.ids.push(row.get(0));
            *report.by_queue.entry(row.get(1)).or_default() += 1;
        }
    }
    report.ids.sort_unstable();
    report.count = report.ids.len();
    if let Selection::Ids(ids) = &selection {
        report.missing = ids
            .iter()
            .filter(|id| report.ids.binary_search(id).is_err())
            .copied()
            .collect();
    }
    info!(purged = report.count, selection = %selection.describe(), "purged failed messages");
    let outcome = finish(&selection, &report);
    print_report(ctx, &report, "purged", "from", outcome.is_ok())?;
    outcome
}

/// Prints what a retry or purge did; in text, a line saying nothing was done is left
/// out when an error will say why.
fn print_report(
    ctx: &Ctx,
    report: &MoveReport,
    verb: &str,
    preposition: &str,
    ok: bool,
) -> Result<()> {
    if ctx.json {
        return output::json(report);
    }
    if report.count == 0 && !ok {
        return Ok(());
    }
    let mut text = format!(
        "{verb} {} failed message{}",
        report.count,
        plural(report.count)
    );
    if !report.by_queue.is_empty() {
        let queues: Vec<String> = report
            .by_queue
            .iter()
            .map(|(queue, n)| format!("{n} {preposition} {queue}"))
            .collect();
        text.push_str(&format!(": {}", queues.join(", ")));
    }
    if !report.ids.is_empty() && report.ids.len() <= IDS_SHOWN {
        text.push_str(&format!(" (id {})", list_ids(&report.ids)));
    }
    output::line(&text)
}

/// The exit status after a retry or purge: not found when ids were missing or a group
/// had no messages, a runtime failure when some origin queue could not take its own back.
fn finish(selection: &Selection, report: &MoveReport) -> Result<()> {
    if !report.failed_queues.is_empty() {
        let reasons: Vec<String> = report
            .failed_queues
            .iter()
            .map(|(queue, reason)| format!("{queue}: {reason}"))
            .collect();
        return Err(CliError::Incomplete(format!(
            "the failed messages of {} queue{} stay in the error queue: {}",
            reasons.len(),
            plural(reasons.len()),
            reasons.join("; ")
        )));
    }
    if !report.missing.is_empty() {
        return Err(CliError::NotFound(format!(
            "no failed message{} with id {} (see `pgbus errors list`)",
            plural(report.missing.len()),
            list_ids(&report.missing)
        )));
    }
    if let Selection::Fingerprint(f) = selection {
        if report.count == 0 {
            return Err(CliError::NotFound(format!(
                "no failed messages with fingerprint {f} (see `pgbus errors list --group`)"
            )));
        }
    }
    Ok(())
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
