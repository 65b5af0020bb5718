//! `pgbus queues`: per installed endpoint, what waits in its queue and delayed tables and
//! how much of it failed.
//!
//! Counts are exact (`count(*)`), so on a queue of millions the command takes a moment;
//! ages are measured by the database clock.

use std::collections::HashMap;

use serde::Serialize;
use tracing::warn;
use transport_pg::EndpointName;
use transport_pg::tokio_postgres::Client;

use crate::error::{Result, db};
use crate::table::Table;
use crate::{Ctx, format, output, sql};

#[derive(Debug, Serialize)]
struct QueueRow {
    endpoint: String,
    /// Whether `bus.<endpoint>_queue` exists; when it does not, the counts are null.
    queue_present: bool,
    delayed_present: bool,
    ready: Option<i64>,
    oldest_age_seconds: Option<f64>,
    delayed: Option<i64>,
    due: Option<i64>,
    next_due_in_seconds: Option<f64>,
    failed: i64,
}

/// `pgbus queues`.
pub async fn list(ctx: &Ctx) -> Result<()> {
    let client = ctx.client().await?;
    let names: Vec<String> = client
        .query(sql::ENDPOINT_NAMES, &[])
        .await
        .map_err(db("list endpoints"))?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let failed: HashMap<String, i64> = client
        .query(sql::FAILED_COUNT_BY_ORIGIN, &[])
        .await
        .map_err(db("count failed messages"))?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();

    let mut queues = Vec::with_capacity(names.len());
    for name in names {
        // The registry is written only by the installer, which validates names; a row
        // added by hand that is not a valid name is skipped rather than quoted blindly.
        let Ok(endpoint) = EndpointName::new(&name) else {
            warn!(endpoint = %name, "skipping a registry row that is not a valid endpoint name");
            continue;
        };
        let mut row = stats(&client, &endpoint).await?;
        row.failed = failed.get(&name).copied().unwrap_or(0);
        queues.push(row);
    }

    if ctx.json {
        return output::json(&queues);
    }
    if queues.is_empty() {
        return output::line("no endpoints installed");
    }
    let mut table = Table::new(&[
        "ENDPOINT", "READY", "OLDEST", "DELAYED", "DUE", "NEXT DUE", "FAILED",
    ])
    .right_align(&[1, 2, 3, 4, 5, 6]);
    let count = |n: Option<i64>| n.map_or_else(|| "missing".to_owned(), |n| n.to_string());
    for q in &queues {
        table.row(vec![
            q.endpoint.clone(),
            count(q.ready),
            format::span_or_dash(q.oldest_age_seconds),
            count(q.delayed),
            count(q.due),
            format::span_or_dash(q.next_due_in_seconds),
            q.failed.to_string(),
        ]);
    }
    output::text(&table.render())
}

async fn stats(client: &Client, endpoint: &EndpointName) -> Result<QueueRow> {
    let tables = endpoint.tables();
    let present = client
        .query_one(
            sql::QUEUE_TABLES_EXIST,
            &[&tables.queue_bare, &tables.delayed_bare],
        )
        .await
        .map_err(db(format!("look up the tables of {endpoint}")))?;
    let mut row = QueueRow {
        endpoint: endpoint.to_string(),
        queue_present: present.get(0),
        delayed_present: present.get(1),
        ready: None,
        oldest_age_seconds: None,
        delayed: None,
        due: None,
        next_due_in_seconds: None,
        failed: 0,
    };

    if row.queue_present {
        let queue = client
            .query_one(&sql::queue_stats(&tables.queue), &[])
            .await
            .map_err(db(format!("count the queue of {endpoint}")))?;
        row.ready = Some(queue.get(0));
        row.oldest_age_seconds = queue.get(1);
    }
    if row.delayed_present {
        let delayed = client
            .query_one(&sql::delayed_stats(&tables.delayed), &[])
            .await
            .map_err(db(format!("count the delayed messages of {endpoint}")))?;
        row.delayed = Some(delayed.get(0));
        row.due = Some(delayed.get(1));
        row.next_due_in_seconds = delayed.get(2);
    }
    Ok(row)
}
