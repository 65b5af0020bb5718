//! `pgbus peek`: the oldest waiting messages of one queue (or its delayed table), with
//! their headers and decoded bodies.
//!
//! A plain SELECT: it takes no row locks and removes nothing, so a running endpoint goes
//! on receiving while an operator looks.

use std::time::SystemTime;

use clap::Args;
use serde::Serialize;
use serde_json::Value;
use transport_pg::EndpointName;
use uuid::Uuid;

use crate::body::BodyView;
use crate::error::{CliError, Result, db};
use crate::{Ctx, format, output, parse_endpoint, sql};

/// The most `--limit` accepts; a look, not an export.
const MAX_LIMIT: i64 = 1_000;

/// Arguments of `pgbus peek`.
#[derive(Debug, Args)]
pub struct PeekArgs {
    /// The endpoint whose queue to look at (`sales` for bus.sales_queue).
    #[arg(value_name = "QUEUE", value_parser = parse_endpoint)]
    endpoint: EndpointName,

    /// How many messages to show, oldest first (1 to 1000).
    #[arg(long, short = 'n', default_value_t = 10,
          value_parser = clap::value_parser!(i64).range(1..=MAX_LIMIT))]
    limit: i64,

    /// Look at the delayed table instead, the messages due first.
    #[arg(long)]
    delayed: bool,
}

#[derive(Debug, Serialize)]
struct Peeked {
    seq: i64,
    message_id: Uuid,
    message_type: Option<String>,
    enqueued_at: String,
    age_seconds: Option<f64>,
    /// Claims raised by an endpoint's careful mode (queue only).
    #[serde(skip_serializing_if = "Option::is_none")]
    claims: Option<i32>,
    /// When it is due (delayed table only).
    #[serde(skip_serializing_if = "Option::is_none")]
    due_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    due_in_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    saga_id: Option<Uuid>,
    headers: Value,
    body: BodyView,
}

/// `pgbus peek`.
pub async fn run(ctx: &Ctx, args: PeekArgs) -> Result<()> {
    let client = ctx.client().await?;
    let endpoint = &args.endpoint;
    let tables = endpoint.tables();
    let present = client
        .query_one(
            sql::QUEUE_TABLES_EXIST,
            &[&tables.queue_bare, &tables.delayed_bare],
        )
        .await
        .map_err(db(format!("look up the tables of {endpoint}")))?;
    let (table, bare) = if args.delayed {
        (&tables.delayed, &tables.delayed_bare)
    } else {
        (&tables.queue, &tables.queue_bare)
    };
    if !present.get::<_, bool>(if args.delayed { 1 } else { 0 }) {
        return Err(CliError::NotFound(not_found(endpoint, bare)));
    }

    let statement = if args.delayed {
        sql::delayed_peek(table)
    } else {
        sql::queue_peek(table)
    };
    let rows = client
        .query(&statement, &[&args.limit])
        .await
        .map_err(db(format!("read {table}")))?;
    let messages: Vec<Peeked> = rows
        .iter()
        .map(|row| {
            let headers: Value = row.get(2);
            let body: Vec<u8> = row.get(3);
            let header = |name: &str| headers.get(name).and_then(Value::as_str);
            let mut peeked = Peeked {
                seq: row.get(0),
                message_id: row.get(1),
                message_type: header("message_type").map(str::to_owned),
                enqueued_at: format::time(row.get::<_, SystemTime>(4)),
                age_seconds: row.get(5),
                claims: None,
                due_at: None,
                due_in_seconds: None,
                saga_id: None,
                body: BodyView::decode(header("content_type"), &body),
                headers: headers.clone(),
            };
            if args.delayed {
                peeked.due_at = Some(format::time(row.get::<_, SystemTime>(6)));
                peeked.due_in_seconds = row.get(7);
                peeked.saga_id = row.get(8);
            } else {
                peeked.claims = Some(row.get(6));
            }
            peeked
        })
        .collect();

    if ctx.json {
        return output::json(&messages);
    }
    if messages.is_empty() {
        return output::line(&format!("no messages waiting in bus.{bare}"));
    }
    let mut out = String::new();
    for m in &messages {
        out.push_str(&render(m));
    }
    output::text(&out)
}

fn not_found(endpoint: &EndpointName, bare: &str) -> String {
    let mut text = format!("no queue for endpoint {endpoint}: bus.{bare} does not exist");
    if let Some(stem) = endpoint
        .as_str()
        .strip_suffix("_queue")
        .or_else(|| endpoint.as_str().strip_suffix("_delayed"))
    {
        text.push_str(&format!(
            " (name the endpoint, not its table: `pgbus peek {stem}`)"
        ));
    }
    text
}

fn render(m: &Peeked) -> String {
    let mut out = format!(
        "seq {}  message {}  {}\n",
        m.seq,
        m.message_id,
        m.message_type
            .as_deref()
            .unwrap_or("(no message_type header)")
    );
    out.push_str(&format!(
        "  enqueued {} ({} ago)",
        m.enqueued_at,
        format::span_or_dash(m.age_seconds)
    ));
    if let Some(claims) = m.claims {
        out.push_str(&format!(", claims {claims}"));
    }
    if let Some(due_at) = &m.due_at {
        let due = m.due_in_seconds.map_or_else(|| "-".to_owned(), format::due);
        out.push_str(&format!(", due {due_at} ({due})"));
    }
    if let Some(saga_id) = m.saga_id {
        out.push_str(&format!(", saga {saga_id}"));
    }
    out.push('\n');
    out.push_str("  headers:\n");
    for line in serde_json::to_string_pretty(&m.headers)
        .unwrap_or_default()
        .lines()
    {
        out.push_str("    ");
        out.push_str(line);
        out.push('\n');
    }
    out.push_str("  ");
    out.push_str(&m.body.render("    "));
    out.push('\n');
    out
}
