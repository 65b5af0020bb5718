//! `errors list` (by message or by cause) and `errors show`.

use std::time::SystemTime;

use serde::Serialize;
use serde_json::Value;
use transport_pg::EndpointName;
use uuid::Uuid;

use super::{ListArgs, Selection, no_failed, note_total, require_known_queue};
use crate::body::BodyView;
use crate::error::{CliError, Result, db};
use crate::table::Table;
use crate::{Ctx, format, output, sql};

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

/// `pgbus errors list`.
pub(super) async fn list(ctx: &Ctx, args: ListArgs) -> Result<()> {
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

/// `pgbus errors list --group`.
pub(super) async fn list_groups(ctx: &Ctx, args: ListArgs) -> Result<()> {
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

/// `pgbus errors show`.
pub(super) async fn show(ctx: &Ctx, id: i64) -> Result<()> {
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
