//! `retail place`: places a run of orders, each recorded in `retail.orders` in the same
//! transaction as its PlaceOrder send, so the client's record and the message commit or
//! vanish together.
//!
//! The mix is exact, not sampled: `round(count * share)` orders of each kind, in a random
//! order. Resubmitted orders get a second PlaceOrder (same order id, a new message) in a
//! later transaction, as a client retrying after a lost answer would.

use std::fmt;

use messages::{PlaceOrder, card};
use rand::seq::SliceRandom;
use tracing::{debug, info};
use transport_pg::{Database, Sender};

use crate::error::{Error, Result};
use crate::{CLIENT_NAME, RUN_ID_HEADER, SALES_ENDPOINT, sql};

/// What the client means an order to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderKind {
    /// Approved at once; ships.
    Normal,
    /// Declined by the provider; cancelled.
    Declined,
    /// Approved after the provider's settle time; ships unless the payment times out first.
    Slow,
}

impl OrderKind {
    /// The name stored in `retail.orders.kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            OrderKind::Normal => "normal",
            OrderKind::Declined => "declined",
            OrderKind::Slow => "slow",
        }
    }

    /// The card token that makes the provider do what this kind means.
    pub fn card_token(self) -> &'static str {
        match self {
            OrderKind::Normal => card::APPROVE,
            OrderKind::Declined => card::DECLINE,
            OrderKind::Slow => card::SLOW,
        }
    }
}

/// What to place.
#[derive(Debug, Clone)]
pub struct PlaceOptions {
    /// How many orders.
    pub count: usize,
    /// The run id; see [`valid_run_id`].
    pub run_id: String,
    /// Share of declined orders, 0 to 1.
    pub declined_share: f64,
    /// Share of slow orders, 0 to 1; with the declined share at most 1.
    pub slow_share: f64,
    /// Share of orders sent a second time, 0 to 1.
    pub resubmit_share: f64,
    /// ISO 4217 code for every order.
    pub currency: String,
}

/// What was placed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlaceReport {
    /// The run id the orders carry.
    pub run_id: String,
    /// Orders of each kind.
    pub normal: usize,
    /// Declined orders.
    pub declined: usize,
    /// Slow orders.
    pub slow: usize,
    /// Orders sent twice.
    pub resubmitted: usize,
}

impl fmt::Display for PlaceReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "placed {} orders in run {} ({} normal, {} declined, {} slow), {} resubmitted",
            self.normal + self.declined + self.slow,
            self.run_id,
            self.normal,
            self.declined,
            self.slow,
            self.resubmitted
        )
    }
}

/// A fresh run id, `run-` and 12 hex digits.
pub fn new_run_id() -> String {
    let hex = uuid::Uuid::new_v4().simple().to_string();
    format!("run-{}", &hex[..12])
}

/// Whether `run_id` can be a run id: 1 to 64 ASCII letters, digits, `-` or `_`. It goes
/// into order ids and a header, so it is kept plain.
pub fn valid_run_id(run_id: &str) -> bool {
    (1..=64).contains(&run_id.len())
        && run_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// The order id of the `index`th order of a run.
pub fn order_id(run_id: &str, index: usize) -> String {
    format!("{run_id}-{index:06}")
}

fn check(options: &PlaceOptions) -> Result<()> {
    if !valid_run_id(&options.run_id) {
        return Err(Error::InvalidArgument(format!(
            "run id {:?} must be 1 to 64 ASCII letters, digits, '-' or '_'",
            options.run_id
        )));
    }
    let shares = [
        ("--declined-share", options.declined_share),
        ("--slow-share", options.slow_share),
        ("--resubmit-share", options.resubmit_share),
    ];
    for (flag, share) in shares {
        if !(0.0..=1.0).contains(&share) {
            return Err(Error::InvalidArgument(format!(
                "{flag} {share} is outside 0 to 1"
            )));
        }
    }
    if options.declined_share + options.slow_share > 1.0 + f64::EPSILON {
        return Err(Error::InvalidArgument(format!(
            "--declined-share {} and --slow-share {} add up to more than 1",
            options.declined_share, options.slow_share
        )));
    }
    Ok(())
}

/// `count` kinds in the requested shares, shuffled.
fn mix(options: &PlaceOptions) -> Vec<OrderKind> {
    let share_of = |share: f64| ((options.count as f64) * share).round() as usize;
    let declined = share_of(options.declined_share).min(options.count);
    let slow = share_of(options.slow_share).min(options.count - declined);

    let mut kinds = Vec::with_capacity(options.count);
    kinds.extend(std::iter::repeat_n(OrderKind::Declined, declined));
    kinds.extend(std::iter::repeat_n(OrderKind::Slow, slow));
    kinds.resize(options.count, OrderKind::Normal);
    kinds.shuffle(&mut rand::rng());
    kinds
}

/// Places the orders; see the module docs.
pub async fn place(db: &Database, options: &PlaceOptions) -> Result<PlaceReport> {
    check(options)?;
    let sender = Sender::builder(db, CLIENT_NAME)
        .route::<PlaceOrder>(SALES_ENDPOINT)?
        .header(RUN_ID_HEADER, &options.run_id)
        .pool_size(1)
        .build()?;
    let mut client = sender.pool().get().await?;

    let mut report = PlaceReport {
        run_id: options.run_id.clone(),
        ..PlaceReport::default()
    };
    let mut orders = Vec::with_capacity(options.count);
    for (index, kind) in mix(options).into_iter().enumerate() {
        let order = PlaceOrder {
            order_id: order_id(&options.run_id, index + 1),
            customer_id: format!("customer-{}", index % 97 + 1),
            amount_cents: 500 + rand::random_range(0..50_000),
            currency: options.currency.clone(),
            card_token: kind.card_token().to_owned(),
        };

        let tx = client
            .transaction()
            .await
            .map_err(Error::db("place: begin"))?;
        tx.execute(
            sql::RETAIL_ORDER_INSERT,
            &[
                &order.order_id,
                &options.run_id,
                &kind.as_str(),
                &order.customer_id,
                &order.amount_cents,
                &order.currency,
                &order.card_token,
            ],
        )
        .await
        .map_err(Error::db(format!("record order {}", order.order_id)))?;
        let mut outbox = sender.outbox();
        outbox.send(&order)?;
        outbox.write(&tx).await?;
        tx.commit()
            .await
            .map_err(Error::db(format!("commit order {}", order.order_id)))?;
        outbox.committed();
        debug!(order_id = %order.order_id, kind = kind.as_str(), "placed order");

        match kind {
            OrderKind::Normal => report.normal += 1,
            OrderKind::Declined => report.declined += 1,
            OrderKind::Slow => report.slow += 1,
        }
        orders.push(order);
    }

    let resubmits = ((options.count as f64) * options.resubmit_share).round() as usize;
    orders.shuffle(&mut rand::rng());
    for order in orders.iter().take(resubmits) {
        let tx = client
            .transaction()
            .await
            .map_err(Error::db("resubmit: begin"))?;
        tx.execute(sql::RETAIL_ORDER_MARK_RESUBMITTED, &[&order.order_id])
            .await
            .map_err(Error::db(format!(
                "mark order {} resubmitted",
                order.order_id
            )))?;
        let mut outbox = sender.outbox();
        outbox.send(order)?;
        outbox.write(&tx).await?;
        tx.commit()
            .await
            .map_err(Error::db(format!("commit resubmit of {}", order.order_id)))?;
        outbox.committed();
        report.resubmitted += 1;
    }

    // The client exits next; without this the last orders would wait for Sales's poll.
    // The flush takes a connection of its own from the one-connection pool, so give this
    // one back first.
    drop(client);
    sender.flush_wakeups().await?;
    info!(
        run_id = %report.run_id,
        normal = report.normal,
        declined = report.declined,
        slow = report.slow,
        resubmitted = report.resubmitted,
        "placed orders"
    );
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(count: usize, declined: f64, slow: f64) -> PlaceOptions {
        PlaceOptions {
            count,
            run_id: "r".to_owned(),
            declined_share: declined,
            slow_share: slow,
            resubmit_share: 0.0,
            currency: "EUR".to_owned(),
        }
    }

    #[test]
    fn the_mix_has_exact_shares() {
        let kinds = mix(&options(20, 0.2, 0.1));
        let count = |k| kinds.iter().filter(|&&x| x == k).count();
        assert_eq!(kinds.len(), 20);
        assert_eq!(count(OrderKind::Declined), 4);
        assert_eq!(count(OrderKind::Slow), 2);
        assert_eq!(count(OrderKind::Normal), 14);
    }

    #[test]
    fn bad_shares_and_run_ids_are_refused() {
        assert!(check(&options(1, 1.5, 0.0)).is_err());
        assert!(check(&options(1, 0.6, 0.6)).is_err());
        assert!(check(&options(1, 0.5, 0.5)).is_ok());
        let mut bad_run = options(1, 0.0, 0.0);
        bad_run.run_id = "a b".to_owned();
        assert!(check(&bad_run).is_err());
    }
}
