//! `retail verify`: the five invariants of DESIGN.md section 10, checked from the client's
//! own record of every order it placed (`retail.orders`), the endpoints' tables, every
//! queue and delayed table, the error queue and the gateways' ledger.
//!
//! The ledger is the truth about money and parcels: an order counts as charged, refunded
//! or shipped when the ledger holds a succeeded charge, refund or shipment for its order
//! id (a shipment row in `shipping.shipments`, or Sales saying `shipped`, also counts as
//! shipped). With a run id, only that run's orders and the queue and error-queue rows
//! carrying it in [`RUN_ID_HEADER`] count.

use std::fmt;

use tracing::warn;
use transport_pg::tokio_postgres::Client;
use transport_pg::{Database, EndpointName};

use crate::error::{Error, Result};
use crate::{RUN_ID_HEADER, sql};

/// How many failing order ids a line names.
const EXAMPLES: usize = 5;

/// One invariant's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Its number in DESIGN.md section 10.
    pub number: u8,
    /// What it promises, e.g. `no shipment without a charge`.
    pub name: &'static str,
    /// Whether it holds.
    pub ok: bool,
    /// The counts behind the verdict, and a few offending order ids when it fails.
    pub detail: String,
}

/// A row of the error queue: the message is not lost, but an operator must look at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedMessage {
    /// The error queue's own id.
    pub id: i64,
    /// The endpoint whose queue it failed in.
    pub origin_queue: String,
    /// Its message type.
    pub message_type: String,
    /// The failure's kind.
    pub error_kind: String,
    /// The failure's message.
    pub error_message: String,
}

/// Every invariant's result and the error-queue rows in scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The run checked, or `None` for every order in the database.
    pub run_id: Option<String>,
    /// Invariants 1 to 5, in order.
    pub checks: Vec<Check>,
    /// The error queue's rows of the run, each with its reason.
    pub failed_messages: Vec<FailedMessage>,
}

impl Report {
    /// Whether every invariant holds.
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }

    /// The invariants that fail.
    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| !c.ok)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for check in &self.checks {
            let verdict = if check.ok { "ok  " } else { "FAIL" };
            writeln!(
                f,
                "{verdict} {} {}: {}",
                check.number, check.name, check.detail
            )?;
            if check.number == 5 {
                for m in &self.failed_messages {
                    writeln!(
                        f,
                        "       error queue #{} in {}: {} failed: {}: {}",
                        m.id, m.origin_queue, m.message_type, m.error_kind, m.error_message
                    )?;
                }
            }
        }
        let scope = match &self.run_id {
            Some(run) => format!("run {run}"),
            None => "every run".to_owned(),
        };
        if self.ok() {
            write!(f, "all 5 invariants hold for {scope}")
        } else {
            let failed: Vec<String> = self
                .failures()
                .map(|c| format!("{} ({})", c.number, c.name))
                .collect();
            write!(f, "invariants failed for {scope}: {}", failed.join(", "))
        }
    }
}

/// What every table says about one order.
#[derive(Debug, Clone)]
struct OrderFacts {
    order_id: String,
    sales_status: Option<String>,
    has_shipment: bool,
    charges: i64,
    refunds: i64,
    shipments: i64,
}

impl OrderFacts {
    fn charged(&self) -> bool {
        self.charges > 0
    }

    fn refunded(&self) -> bool {
        self.refunds > 0
    }

    fn shipped(&self) -> bool {
        self.shipments > 0 || self.has_shipment || self.status_is("shipped")
    }

    /// Charged and not given back.
    fn keeps_charge(&self) -> bool {
        self.charged() && !self.refunded()
    }

    fn status_is(&self, status: &str) -> bool {
        self.sales_status.as_deref() == Some(status)
    }

    fn terminal(&self) -> bool {
        self.status_is("shipped") || (self.status_is("cancelled") && !self.keeps_charge())
    }

    fn twice(&self) -> bool {
        self.charges > 1 || self.refunds > 1 || self.shipments > 1
    }
}

/// What waits in the queues.
#[derive(Debug, Default)]
struct Waiting {
    queued: i64,
    delayed: i64,
    /// `bus.<table>: rows`, for the tables that are not empty.
    tables: Vec<String>,
}

/// Checks every invariant for run `run_id`, or for every order when `None`.
pub async fn verify(db: &Database, run_id: Option<&str>) -> Result<Report> {
    let client = db.connect("retail verify").await?;
    crate::require_tables(
        &client,
        &[
            "retail.orders",
            "sales.orders",
            "shipping.shipments",
            "gateway.ledger",
            "bus.endpoints",
            "bus.failed_messages",
        ],
    )
    .await?;

    let orders = order_facts(&client, run_id).await?;
    let waiting = waiting(&client, run_id).await?;
    let failed_messages = failed_messages(&client, run_id).await?;
    let checks = vec![
        no_shipment_without_charge(&orders),
        no_charge_kept_without_shipment(&orders),
        every_order_terminal(&orders),
        nothing_twice(&orders),
        no_message_lost(&orders, &waiting, failed_messages.len()),
    ];
    Ok(Report {
        run_id: run_id.map(str::to_owned),
        checks,
        failed_messages,
    })
}

async fn order_facts(client: &Client, run_id: Option<&str>) -> Result<Vec<OrderFacts>> {
    let rows = client
        .query(sql::VERIFY_ORDER_FACTS, &[&run_id])
        .await
        .map_err(Error::db("read the orders' facts"))?;
    Ok(rows
        .iter()
        .map(|row| OrderFacts {
            order_id: row.get(0),
            sales_status: row.get(1),
            has_shipment: row.get(2),
            charges: row.get(3),
            refunds: row.get(4),
            shipments: row.get(5),
        })
        .collect())
}

async fn waiting(client: &Client, run_id: Option<&str>) -> Result<Waiting> {
    let names = client
        .query(sql::ENDPOINTS_LIST, &[])
        .await
        .map_err(Error::db("list bus.endpoints"))?;

    let mut waiting = Waiting::default();
    for row in names {
        let name: String = row.get(0);
        // The name becomes part of the statement, so it passes the transport's own check.
        let endpoint = EndpointName::new(&name)?;
        let tables = endpoint.tables();
        for (quoted, bare, delayed) in [
            (&tables.queue, &tables.queue_bare, false),
            (&tables.delayed, &tables.delayed_bare, true),
        ] {
            let qualified = format!("bus.{bare}");
            let exists: bool = client
                .query_one(sql::TABLE_EXISTS, &[&qualified])
                .await
                .map_err(Error::db("look up queue tables"))?
                .get(0);
            if !exists {
                warn!(endpoint = %endpoint, table = %qualified, "registered endpoint has no table");
                continue;
            }
            let count: i64 = client
                .query_one(&sql::waiting_count(quoted), &[&run_id, &RUN_ID_HEADER])
                .await
                .map_err(Error::db(format!("count rows in {qualified}")))?
                .get(0);
            if count > 0 {
                waiting.tables.push(format!("{qualified}: {count}"));
            }
            if delayed {
                waiting.delayed += count;
            } else {
                waiting.queued += count;
            }
        }
    }
    Ok(waiting)
}

async fn failed_messages(client: &Client, run_id: Option<&str>) -> Result<Vec<FailedMessage>> {
    let rows = client
        .query(sql::FAILED_MESSAGES_OF_RUN, &[&run_id, &RUN_ID_HEADER])
        .await
        .map_err(Error::db("read bus.failed_messages"))?;
    Ok(rows
        .iter()
        .map(|row| FailedMessage {
            id: row.get(0),
            origin_queue: row.get(1),
            message_type: row.get(2),
            error_kind: row.get(3),
            error_message: row.get(4),
        })
        .collect())
}

/// `detail`, followed by up to [`EXAMPLES`] offending order ids when there are any.
fn with_examples<'a>(detail: String, offenders: impl Iterator<Item = &'a OrderFacts>) -> String {
    let ids: Vec<&str> = offenders.map(|o| o.order_id.as_str()).collect();
    if ids.is_empty() {
        return detail;
    }
    let shown = ids[..ids.len().min(EXAMPLES)].join(", ");
    let more = if ids.len() > EXAMPLES { ", ..." } else { "" };
    format!("{detail} (e.g. {shown}{more})")
}

fn check(number: u8, name: &'static str, ok: bool, detail: String) -> Check {
    Check {
        number,
        name,
        ok,
        detail,
    }
}

fn no_shipment_without_charge(orders: &[OrderFacts]) -> Check {
    let shipped = orders.iter().filter(|o| o.shipped()).count();
    let bad = || orders.iter().filter(|o| o.shipped() && !o.keeps_charge());
    let detail = format!(
        "{shipped} shipped, {} without a charge (or with it refunded)",
        bad().count()
    );
    check(
        1,
        "no shipment without a charge",
        bad().next().is_none(),
        with_examples(detail, bad()),
    )
}

fn no_charge_kept_without_shipment(orders: &[OrderFacts]) -> Check {
    let charged = orders.iter().filter(|o| o.charged()).count();
    let refunded = orders.iter().filter(|o| o.refunded()).count();
    let bad = || orders.iter().filter(|o| o.keeps_charge() && !o.shipped());
    let detail = format!(
        "{charged} charged, {refunded} refunded, {} keep the charge without a shipment",
        bad().count()
    );
    check(
        2,
        "no charge kept without a shipment or refund",
        bad().next().is_none(),
        with_examples(detail, bad()),
    )
}

fn every_order_terminal(orders: &[OrderFacts]) -> Check {
    let shipped = orders.iter().filter(|o| o.status_is("shipped")).count();
    let cancelled = orders
        .iter()
        .filter(|o| o.status_is("cancelled") && o.terminal())
        .count();
    let bad = || orders.iter().filter(|o| !o.terminal());
    let detail = format!(
        "{} orders, {shipped} shipped, {cancelled} cancelled, {} open",
        orders.len(),
        bad().count()
    );
    check(
        3,
        "every order reaches a terminal state",
        bad().next().is_none(),
        with_examples(detail, bad()),
    )
}

fn nothing_twice(orders: &[OrderFacts]) -> Check {
    let sum = |f: fn(&OrderFacts) -> i64| orders.iter().map(f).sum::<i64>();
    let bad = || orders.iter().filter(|o| o.twice());
    let detail = format!(
        "{} charges, {} refunds, {} shipments, {} orders with one of them twice",
        sum(|o| o.charges),
        sum(|o| o.refunds),
        sum(|o| o.shipments),
        bad().count()
    );
    check(
        4,
        "no charge, refund or shipment twice for one order",
        bad().next().is_none(),
        with_examples(detail, bad()),
    )
}

fn no_message_lost(orders: &[OrderFacts], waiting: &Waiting, in_error_queue: usize) -> Check {
    let unknown = || orders.iter().filter(|o| o.sales_status.is_none());
    let mut detail = format!(
        "{} waiting in queues, {} in delayed tables, {} orders unknown to Sales, \
         {in_error_queue} in the error queue",
        waiting.queued,
        waiting.delayed,
        unknown().count()
    );
    if !waiting.tables.is_empty() {
        detail.push_str(&format!(" [{}]", waiting.tables.join(", ")));
    }
    let ok = waiting.queued == 0 && waiting.delayed == 0 && unknown().next().is_none();
    check(5, "no message lost", ok, with_examples(detail, unknown()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(id: &str, status: Option<&str>, charges: i64, refunds: i64, ships: i64) -> OrderFacts {
        OrderFacts {
            order_id: id.to_owned(),
            sales_status: status.map(str::to_owned),
            has_shipment: ships > 0,
            charges,
            refunds,
            shipments: ships,
        }
    }

    #[test]
    fn a_consistent_set_passes_every_check() {
        let orders = [
            order("shipped", Some("shipped"), 1, 0, 1),
            order("declined", Some("cancelled"), 0, 0, 0),
            order("refunded", Some("cancelled"), 1, 1, 0),
        ];
        let waiting = Waiting::default();
        assert!(no_shipment_without_charge(&orders).ok);
        assert!(no_charge_kept_without_shipment(&orders).ok);
        assert!(every_order_terminal(&orders).ok);
        assert!(nothing_twice(&orders).ok);
        assert!(no_message_lost(&orders, &waiting, 2).ok);
    }

    #[test]
    fn a_cancelled_order_that_keeps_its_charge_is_not_terminal() {
        let orders = [order("kept", Some("cancelled"), 1, 0, 0)];
        let check = every_order_terminal(&orders);
        assert!(!check.ok);
        assert!(check.detail.contains("e.g. kept"), "{}", check.detail);
    }
}
