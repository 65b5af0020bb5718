//! Billing's record of one order's money, a row of `billing.payments`, read into a type
//! that says which columns each state has.

use transport_pg::Tx;
use transport_pg::tokio_postgres::Row;

use crate::error::{Error, Result};
use crate::sql;

/// What Billing knows about an order's money.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payment {
    /// Charged and kept.
    Charged(Charge),
    /// The card was declined.
    Declined {
        /// The provider's reason.
        reason: String,
    },
    /// Charged, then refunded.
    Refunded {
        /// The charge that was refunded.
        charge: Charge,
        /// The provider's id for the refund.
        refund_id: String,
        /// How much was given back.
        refunded_cents: i64,
    },
}

/// A successful charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    /// The provider's id for it.
    pub charge_id: String,
    /// Minor units charged.
    pub amount_cents: i64,
    /// ISO 4217 code.
    pub currency: String,
}

impl Payment {
    /// The order's payment, if Billing has one; `lock` holds its row until commit.
    pub async fn load(tx: &Tx<'_>, order_id: &str, lock: bool) -> Result<Option<Payment>> {
        let statement = if lock {
            sql::PAYMENT_LOCK
        } else {
            sql::PAYMENT_GET
        };
        let row = tx
            .query_opt(statement, &[&order_id])
            .await
            .map_err(Error::db("read the payment", order_id))?;
        row.map(|row| Payment::from_row(order_id, &row)).transpose()
    }

    fn from_row(order_id: &str, row: &Row) -> Result<Payment> {
        let state: String = row.get(0);
        let charge_id: Option<String> = row.get(1);
        let corrupt = |reason: &str| Error::Corrupt {
            order_id: order_id.to_owned(),
            reason: format!("state {state:?} {reason}"),
        };
        let charge = || -> Result<Charge> {
            Ok(Charge {
                charge_id: charge_id
                    .clone()
                    .ok_or_else(|| corrupt("without a charge id"))?,
                amount_cents: row.get(2),
                currency: row.get(3),
            })
        };
        match state.as_str() {
            "charged" => Ok(Payment::Charged(charge()?)),
            "declined" => Ok(Payment::Declined {
                reason: row
                    .get::<_, Option<String>>(4)
                    .unwrap_or_else(|| "declined".to_owned()),
            }),
            "refunded" => Ok(Payment::Refunded {
                charge: charge()?,
                refund_id: row
                    .get::<_, Option<String>>(5)
                    .ok_or_else(|| corrupt("without a refund id"))?,
                refunded_cents: row.get::<_, Option<i64>>(6).unwrap_or(0),
            }),
            _ => Err(corrupt("is not one this release knows")),
        }
    }

    /// The state's name in `billing.payments.state`, for logs.
    pub fn state(&self) -> &'static str {
        match self {
            Payment::Charged(_) => "charged",
            Payment::Declined { .. } => "declined",
            Payment::Refunded { .. } => "refunded",
        }
    }
}
