//! `errors retry` and `errors purge`: taking messages out of the error queue, back to
//! their origin queues or for good, a batch per transaction.

use std::collections::BTreeMap;

use serde::Serialize;
use tracing::info;
use transport_pg::{EndpointName, FailedSelection, RetryReport, error_chain, retry_failed};

use super::{PurgeArgs, RetryArgs, Selection, list_ids, plural, require_known_queue};
use crate::error::{CliError, Result, db};
use crate::{Ctx, confirm, output, sql};

/// How many ids a human-readable report spells out.
const IDS_SHOWN: usize = 20;

/// What a retry or purge did, as printed (and as `--json` shows it).
#[derive(Debug, Default, Serialize)]
struct MoveReport {
    /// How many messages the command moved or deleted.
    count: usize,
    /// Per origin queue, how many.
    by_queue: BTreeMap<String, usize>,
    /// The error-queue ids taken, in order.
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

/// `pgbus errors retry`.
pub(super) async fn retry(ctx: &Ctx, args: RetryArgs) -> Result<()> {
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

/// `pgbus errors purge`: counts first, so the confirmation can say how many.
pub(super) async fn purge(ctx: &Ctx, args: PurgeArgs) -> Result<()> {
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
