//! `pgbus sagas`: saga state in `bus.sagas`, found by type and correlation value (the
//! business id every message of one saga maps to), or listed by type to find stuck ones.
//!
//! Built on persistence-pg's store functions ([`find_saga`], [`list_open_sagas`]); the
//! listing of every state is the one statement of its own, in `sql`.

use std::time::{Duration, SystemTime};

use clap::{Args, Subcommand};
use persistence_pg::{SagaRecord, SagaState, find_saga, list_open_sagas};
use serde::Serialize;
use serde_json::Value;
use tracing::warn;
use transport_pg::EndpointName;
use transport_pg::tokio_postgres::{Client, Row};
use uuid::Uuid;

use crate::error::{CliError, Result, db};
use crate::table::Table;
use crate::{Ctx, format, output, sql};

/// The `pgbus sagas` commands.
#[derive(Debug, Subcommand)]
pub enum SagasCommand {
    /// Show one saga, open or completed: its state, data and pending timeouts.
    Show {
        /// The saga type, as the saga declares it (e.g. shipping.Fulfilment).
        #[arg(value_name = "TYPE", value_parser = parse_saga_type)]
        saga_type: String,

        /// The correlation value, the business id its messages map to (e.g. an order id).
        correlation: String,
    },

    /// List the sagas of a type, oldest first; with --open --older-than, the stuck ones.
    List(ListArgs),
}

/// Arguments of `pgbus sagas list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// The saga type, as the saga declares it (e.g. shipping.Fulfilment).
    #[arg(value_name = "TYPE", value_parser = parse_saga_type)]
    saga_type: String,

    /// Only sagas that have not completed.
    #[arg(long)]
    open: bool,

    /// Only sagas started longer ago than this: 30s, 5m, 2h, 1d, or combined (1h30m).
    #[arg(long, value_name = "DURATION", value_parser = format::parse_duration)]
    older_than: Option<Duration>,

    /// Show at most this many sagas.
    #[arg(long, short = 'n', default_value_t = 100,
          value_parser = clap::value_parser!(i64).range(1..))]
    limit: i64,
}

fn parse_saga_type(name: &str) -> Result<String, String> {
    if message::is_valid_type_name(name) {
        Ok(name.to_owned())
    } else {
        Err(format!(
            "invalid saga type {name:?}: expected <contract>.<Type>, e.g. shipping.Fulfilment"
        ))
    }
}

/// Runs one `pgbus sagas` command.
pub async fn run(ctx: &Ctx, command: SagasCommand) -> Result<()> {
    match command {
        SagasCommand::Show {
            saga_type,
            correlation,
        } => show(ctx, &saga_type, &correlation).await,
        SagasCommand::List(args) => list(ctx, args).await,
    }
}

/// A saga as pgbus prints it.
#[derive(Debug, Serialize)]
struct SagaView {
    id: Uuid,
    saga_type: String,
    correlation: String,
    state: &'static str,
    version: i64,
    started_by: String,
    originator: Option<String>,
    created_at: String,
    age_seconds: f64,
    updated_at: String,
    since_update_seconds: f64,
    completed_at: Option<String>,
    data: Value,
    /// Pending timeouts (`show` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    timeouts: Option<Vec<TimeoutView>>,
}

#[derive(Debug, Serialize)]
struct TimeoutView {
    endpoint: String,
    message_type: Option<String>,
    due_at: String,
    due_in_seconds: f64,
}

impl SagaView {
    fn new(record: SagaRecord, now: SystemTime) -> SagaView {
        let seconds_since = |at: SystemTime| {
            now.duration_since(at)
                .map_or_else(|e| -e.duration().as_secs_f64(), |d| d.as_secs_f64())
        };
        SagaView {
            id: record.id,
            state: record.state.as_str(),
            version: record.version,
            age_seconds: seconds_since(record.created_at),
            since_update_seconds: seconds_since(record.updated_at),
            created_at: format::time(record.created_at),
            updated_at: format::time(record.updated_at),
            completed_at: record.completed_at.map(format::time),
            saga_type: record.saga_type,
            correlation: record.correlation,
            started_by: record.started_by,
            originator: record.originator,
            data: record.data,
            timeouts: None,
        }
    }
}

async fn show(ctx: &Ctx, saga_type: &str, correlation: &str) -> Result<()> {
    let client = ctx.client().await?;
    let record = find_saga(&client, saga_type, correlation)
        .await?
        .ok_or_else(|| {
            CliError::NotFound(format!(
                "no saga {saga_type} with correlation value {correlation:?}, open or \
                 completed (a completed one is purged after its retention period)"
            ))
        })?;
    let mut view = SagaView::new(record, db_now(&client).await?);
    view.timeouts = Some(timeouts(&client, view.id).await?);

    if ctx.json {
        return output::json(&view);
    }
    output::text(&render(&view))
}

async fn list(ctx: &Ctx, args: ListArgs) -> Result<()> {
    let client = ctx.client().await?;
    let older_than = args.older_than.unwrap_or(Duration::ZERO);
    let records = if args.open {
        list_open_sagas(&client, &args.saga_type, older_than, args.limit).await?
    } else {
        let millis = i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX);
        client
            .query(
                sql::SAGA_LIST_ANY_STATE,
                &[&args.saga_type, &millis, &args.limit],
            )
            .await
            .map_err(db(format!("list sagas of type {}", args.saga_type)))?
            .iter()
            .map(record_from_row)
            .collect()
    };
    let now = db_now(&client).await?;
    let sagas: Vec<SagaView> = records.into_iter().map(|r| SagaView::new(r, now)).collect();
    if sagas.len() as i64 == args.limit {
        eprintln!(
            "pgbus: showing the oldest {} sagas; use --limit to see more",
            args.limit
        );
    }

    if ctx.json {
        return output::json(&sagas);
    }
    if sagas.is_empty() {
        let mut text = format!(
            "no {}sagas of type {}",
            if args.open { "open " } else { "" },
            args.saga_type
        );
        if let Some(d) = args.older_than {
            text.push_str(&format!(
                " started more than {} ago",
                format::span(d.as_secs_f64())
            ));
        }
        return output::line(&text);
    }
    let mut table = Table::new(&[
        "CORRELATION",
        "STATE",
        "AGE",
        "LAST STEP",
        "VERSION",
        "STARTED BY",
        "ID",
    ])
    .right_align(&[2, 3, 4]);
    for s in &sagas {
        table.row(vec![
            s.correlation.clone(),
            s.state.to_owned(),
            format::span(s.age_seconds),
            format!("{} ago", format::span(s.since_update_seconds)),
            s.version.to_string(),
            s.started_by.clone(),
            s.id.to_string(),
        ]);
    }
    output::text(&table.render())
}

/// A row of [`sql::SAGA_LIST_ANY_STATE`] as persistence-pg's record.
fn record_from_row(row: &Row) -> SagaRecord {
    let state: String = row.get(3);
    SagaRecord {
        id: row.get(0),
        saga_type: row.get(1),
        correlation: row.get(2),
        state: if state == SagaState::Open.as_str() {
            SagaState::Open
        } else {
            SagaState::Completed
        },
        data: row.get(4),
        version: row.get(5),
        started_by: row.get(6),
        originator: row.get(7),
        created_at: row.get(8),
        updated_at: row.get(9),
        completed_at: row.get(10),
    }
}

async fn db_now(client: &Client) -> Result<SystemTime> {
    Ok(client
        .query_one(sql::NOW, &[])
        .await
        .map_err(db("read the database clock"))?
        .get(0))
}

/// The saga's pending timeouts: its rows in every endpoint's delayed table.
async fn timeouts(client: &Client, saga_id: Uuid) -> Result<Vec<TimeoutView>> {
    let names: Vec<String> = client
        .query(sql::ENDPOINT_NAMES, &[])
        .await
        .map_err(db("list endpoints"))?
        .iter()
        .map(|row| row.get(0))
        .collect();

    let mut timeouts = Vec::new();
    for name in names {
        let Ok(endpoint) = EndpointName::new(&name) else {
            warn!(endpoint = %name, "skipping a registry row that is not a valid endpoint name");
            continue;
        };
        let tables = endpoint.tables();
        let present = client
            .query_one(
                sql::QUEUE_TABLES_EXIST,
                &[&tables.queue_bare, &tables.delayed_bare],
            )
            .await
            .map_err(db(format!("look up the tables of {endpoint}")))?;
        if !present.get::<_, bool>(1) {
            continue;
        }
        let rows = client
            .query(&sql::delayed_for_saga(&tables.delayed), &[&saga_id])
            .await
            .map_err(db(format!("read the timeouts in {}", tables.delayed)))?;
        timeouts.extend(rows.iter().map(|row| TimeoutView {
            endpoint: name.clone(),
            due_at: format::time(row.get::<_, SystemTime>(0)),
            due_in_seconds: row.get(1),
            message_type: row.get(2),
        }));
    }
    Ok(timeouts)
}

fn render(s: &SagaView) -> String {
    let fields = [
        ("saga type", s.saga_type.clone()),
        ("correlation", s.correlation.clone()),
        ("id", s.id.to_string()),
        ("state", s.state.to_owned()),
        ("version", s.version.to_string()),
        ("started by", s.started_by.clone()),
        (
            "originator",
            s.originator.clone().unwrap_or_else(|| "-".into()),
        ),
        (
            "created at",
            format!("{} ({} ago)", s.created_at, format::span(s.age_seconds)),
        ),
        (
            "updated at",
            format!(
                "{} ({} ago)",
                s.updated_at,
                format::span(s.since_update_seconds)
            ),
        ),
        (
            "completed at",
            s.completed_at.clone().unwrap_or_else(|| "-".into()),
        ),
    ];
    let mut out = String::new();
    for (name, value) in fields {
        out.push_str(&format!("{name:<13} {value}\n"));
    }

    match s.timeouts.as_deref() {
        None | Some([]) => out.push_str("timeouts:     none pending\n"),
        Some(timeouts) => {
            out.push_str("timeouts:\n");
            for t in timeouts {
                out.push_str(&format!(
                    "  {} in bus.{}_delayed, due {} ({})\n",
                    t.message_type.as_deref().unwrap_or("?"),
                    t.endpoint,
                    t.due_at,
                    format::due(t.due_in_seconds)
                ));
            }
        }
    }
    out.push_str("data:\n");
    for line in serde_json::to_string_pretty(&s.data)
        .unwrap_or_default()
        .lines()
    {
        out.push_str("  ");
        out.push_str(line);
        out.push('\n');
    }
    out
}
