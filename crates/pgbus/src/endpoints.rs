//! `pgbus endpoints`, `pgbus unsubscribe` and `pgbus decommission`: the endpoint registry
//! (`bus.endpoints`) and the subscriptions (`bus.subscriptions`).
//!
//! An endpoint subscribes at start-up to every event type it handles, so `unsubscribe`
//! lasts until the endpoint next starts with a handler for that type.

use std::time::SystemTime;

use clap::Args;
use serde::Serialize;
use tracing::info;
use transport_pg::{EndpointName, SUBSCRIPTION_CACHE_TTL};

use crate::error::{CliError, Result, db};
use crate::table::Table;
use crate::{Ctx, confirm, format, output, parse_endpoint, sql};

/// Arguments of `pgbus unsubscribe`.
#[derive(Debug, Args)]
pub struct UnsubscribeArgs {
    /// The endpoint whose subscriptions to remove.
    #[arg(value_parser = parse_endpoint)]
    endpoint: EndpointName,

    /// Only the subscription to this event type (`<contract>.<Type>`); every one when
    /// left out.
    #[arg(long = "type", value_name = "TYPE", value_parser = parse_type_name)]
    message_type: Option<String>,
}

/// Arguments of `pgbus decommission`.
#[derive(Debug, Args)]
pub struct DecommissionArgs {
    /// The endpoint to remove. Stop its processes first.
    #[arg(value_parser = parse_endpoint)]
    endpoint: EndpointName,

    /// Go ahead without asking; needed when standard input is not a terminal.
    #[arg(long, short = 'y')]
    yes: bool,
}

fn parse_type_name(name: &str) -> Result<String, String> {
    if message::is_valid_type_name(name) {
        Ok(name.to_owned())
    } else {
        Err(format!(
            "invalid message type name {name:?}: expected <contract>.<Type>"
        ))
    }
}

#[derive(Debug, Serialize)]
struct EndpointRow {
    name: String,
    installer_version: i32,
    installed_at: String,
    updated_at: String,
    tables_present: bool,
    subscriptions: Vec<String>,
}

/// `pgbus endpoints`.
pub async fn list(ctx: &Ctx) -> Result<()> {
    let client = ctx.client().await?;
    let rows = client
        .query(sql::ENDPOINT_LIST, &[])
        .await
        .map_err(db("list endpoints"))?;
    let endpoints: Vec<EndpointRow> = rows
        .iter()
        .map(|row| EndpointRow {
            name: row.get(0),
            installer_version: row.get(1),
            installed_at: format::time(row.get::<_, SystemTime>(2)),
            updated_at: format::time(row.get::<_, SystemTime>(3)),
            tables_present: row.get(4),
            subscriptions: row.get(5),
        })
        .collect();

    if ctx.json {
        return output::json(&endpoints);
    }
    if endpoints.is_empty() {
        return output::line("no endpoints installed");
    }
    let mut table = Table::new(&[
        "ENDPOINT",
        "INSTALLER",
        "INSTALLED",
        "TABLES",
        "SUBSCRIBES TO",
    ])
    .right_align(&[1]);
    for e in &endpoints {
        let subscriptions = if e.subscriptions.is_empty() {
            "-".to_owned()
        } else {
            e.subscriptions.join(", ")
        };
        table.row(vec![
            e.name.clone(),
            format!("v{}", e.installer_version),
            e.installed_at.clone(),
            if e.tables_present { "ok" } else { "missing" }.to_owned(),
            subscriptions,
        ]);
    }
    output::text(&table.render())
}

/// `pgbus unsubscribe`.
pub async fn unsubscribe(ctx: &Ctx, args: UnsubscribeArgs) -> Result<()> {
    let client = ctx.client().await?;
    crate::require_endpoint(&client, &args.endpoint).await?;
    let endpoint = &args.endpoint;
    let removed =
        transport_pg::unsubscribe(&client, endpoint, args.message_type.as_deref()).await?;

    if removed == 0 {
        return Err(CliError::NotFound(match &args.message_type {
            Some(t) => format!("endpoint {endpoint} has no subscription to {t}"),
            None => format!("endpoint {endpoint} has no subscriptions"),
        }));
    }
    info!(endpoint = %endpoint, message_type = ?args.message_type, removed, "unsubscribed");
    if ctx.json {
        return output::json(&serde_json::json!({
            "endpoint": endpoint.as_str(),
            "message_type": args.message_type,
            "removed": removed,
        }));
    }
    output::line(&format!(
        "removed {removed} subscription{} of {endpoint}; publishers stop sending it copies \
         within {}s (it subscribes again when it starts with a handler for the type)",
        if removed == 1 { "" } else { "s" },
        SUBSCRIPTION_CACHE_TTL.as_secs_f64()
    ))
}

/// `pgbus decommission`.
pub async fn decommission(ctx: &Ctx, args: DecommissionArgs) -> Result<()> {
    let client = ctx.client().await?;
    let endpoint = &args.endpoint;
    let tables = endpoint.tables();
    let present = client
        .query_one(
            sql::QUEUE_TABLES_EXIST,
            &[&tables.queue_bare, &tables.delayed_bare],
        )
        .await
        .map_err(db("look up the endpoint's tables"))?;
    let (queue_present, delayed_present): (bool, bool) = (present.get(0), present.get(1));
    let registered = crate::is_registered(&client, endpoint).await?;
    if !registered && !queue_present && !delayed_present {
        return Err(CliError::NotFound(format!(
            "endpoint {endpoint} is not installed (see `pgbus endpoints`)"
        )));
    }

    let waiting = count_rows(&client, queue_present.then_some(&tables.queue)).await?
        + count_rows(&client, delayed_present.then_some(&tables.delayed)).await?;
    confirm::confirm(
        &format!(
            "decommission endpoint {endpoint}, dropping its tables and the {waiting} \
             message(s) waiting in them"
        ),
        args.yes,
    )?;
    transport_pg::decommission(&client, endpoint).await?;

    if ctx.json {
        return output::json(&serde_json::json!({
            "endpoint": endpoint.as_str(),
            "dropped_messages": waiting,
        }));
    }
    output::line(&format!(
        "decommissioned {endpoint}: registration, subscriptions and tables removed \
         ({waiting} waiting message(s) dropped); its failed messages stay in the error queue"
    ))
}

async fn count_rows(
    client: &transport_pg::tokio_postgres::Client,
    table: Option<&String>,
) -> Result<i64> {
    let Some(table) = table else { return Ok(0) };
    Ok(client
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .map_err(db(format!("count the rows of {table}")))?
        .get(0))
}
