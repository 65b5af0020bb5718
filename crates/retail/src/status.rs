//! `retail status ORDER_ID`: where one order is, from Sales's table (the one that answers
//! "where is my order"), with the client's record and Billing's and Shipping's rows.

use std::fmt;

use transport_pg::Database;
use transport_pg::tokio_postgres::Client;

use crate::error::{Error, Result};
use crate::sql;

/// Everything known about one order; each part is `None` where that table has no row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderStatus {
    /// The order asked about.
    pub order_id: String,
    /// The client's record.
    pub client: Option<ClientRecord>,
    /// Sales's status and why it was cancelled, if it was.
    pub sales: Option<SalesRecord>,
    /// Billing's payment state and references.
    pub billing: Option<String>,
    /// The courier's tracking number.
    pub tracking_number: Option<String>,
}

/// The client's row in `retail.orders`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRecord {
    /// The run that placed it.
    pub run_id: String,
    /// normal, declined or slow.
    pub kind: String,
    /// The card token it was placed with.
    pub card_token: String,
    /// Its amount in minor units.
    pub amount_cents: i64,
    /// Its currency.
    pub currency: String,
    /// Whether a second PlaceOrder was sent.
    pub resubmitted: bool,
    /// When it was placed, RFC 3339 in UTC.
    pub placed_at: String,
}

/// Sales's row in `sales.orders`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SalesRecord {
    /// placed, billed, payment_failed, cancelled or shipped.
    pub status: String,
    /// Why it was cancelled.
    pub cancel_reason: Option<String>,
    /// When the status last changed, RFC 3339 in UTC.
    pub updated_at: String,
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "order    {}", self.order_id)?;
        match &self.sales {
            Some(s) => {
                write!(f, "status   {} (since {})", s.status, s.updated_at)?;
                if let Some(reason) = &s.cancel_reason {
                    write!(f, ": {reason}")?;
                }
                writeln!(f)?;
            }
            None => writeln!(f, "status   not known to Sales")?,
        }
        match &self.client {
            Some(c) => writeln!(
                f,
                "client   run {}, {} order, card {}, {}.{:02} {}, placed {}{}",
                c.run_id,
                c.kind,
                c.card_token,
                c.amount_cents / 100,
                c.amount_cents % 100,
                c.currency,
                c.placed_at,
                if c.resubmitted { ", sent twice" } else { "" }
            )?,
            None => writeln!(f, "client   not placed by this client")?,
        }
        writeln!(
            f,
            "billing  {}",
            self.billing.as_deref().unwrap_or("no payment yet")
        )?;
        write!(
            f,
            "shipping {}",
            self.tracking_number
                .as_ref()
                .map_or("not shipped".to_owned(), |t| format!(
                    "shipped, tracking {t}"
                ))
        )
    }
}

/// Looks the order up; [`Error::UnknownOrder`] when neither the client nor Sales has it.
pub async fn status(db: &Database, order_id: &str) -> Result<OrderStatus> {
    let client = db.connect("retail status").await?;
    crate::require_tables(&client, &["retail.orders", "sales.orders"]).await?;

    let status = OrderStatus {
        order_id: order_id.to_owned(),
        client: client_record(&client, order_id).await?,
        sales: sales_record(&client, order_id).await?,
        billing: billing_record(&client, order_id).await?,
        tracking_number: client
            .query_opt(sql::SHIPPING_SHIPMENT_GET, &[&order_id])
            .await
            .map_err(Error::db("read shipping.shipments"))?
            .map(|row| row.get(0)),
    };
    if status.client.is_none() && status.sales.is_none() {
        return Err(Error::UnknownOrder {
            order_id: order_id.to_owned(),
        });
    }
    Ok(status)
}

async fn client_record(client: &Client, order_id: &str) -> Result<Option<ClientRecord>> {
    let row = client
        .query_opt(sql::RETAIL_ORDER_GET, &[&order_id])
        .await
        .map_err(Error::db("read retail.orders"))?;
    Ok(row.map(|row| ClientRecord {
        run_id: row.get(0),
        kind: row.get(1),
        card_token: row.get(2),
        amount_cents: row.get(3),
        currency: row.get(4),
        resubmitted: row.get(5),
        placed_at: row.get(6),
    }))
}

async fn sales_record(client: &Client, order_id: &str) -> Result<Option<SalesRecord>> {
    let row = client
        .query_opt(sql::SALES_ORDER_GET, &[&order_id])
        .await
        .map_err(Error::db("read sales.orders"))?;
    Ok(row.map(|row| SalesRecord {
        status: row.get(0),
        cancel_reason: row.get(1),
        updated_at: row.get(2),
    }))
}

async fn billing_record(client: &Client, order_id: &str) -> Result<Option<String>> {
    let row = client
        .query_opt(sql::BILLING_PAYMENT_GET, &[&order_id])
        .await
        .map_err(Error::db("read billing.payments"))?;
    Ok(row.map(|row| {
        let state: String = row.get(0);
        let charge_id: Option<String> = row.get(1);
        let refund_id: Option<String> = row.get(2);
        let reason: Option<String> = row.get(3);
        let mut text = state;
        for (label, value) in [
            ("charge", charge_id),
            ("refund", refund_id),
            ("reason", reason),
        ] {
            if let Some(value) = value {
                text.push_str(&format!(", {label} {value}"));
            }
        }
        text
    }))
}
