//! The ledger, `gateway.ledger`: one row per idempotency key. This module owns its SQL:
//! recording a request when it starts, deciding and settling its outcome, and finding
//! what a crashed process left in flight.
//!
//! Recording is one `INSERT ... ON CONFLICT DO UPDATE` in a transaction of its own, so of
//! two concurrent requests with one key exactly one inserts the row (and goes on to take
//! effect) while the other waits for that commit and then only counts itself. An outcome
//! that needs nothing but the request (a charge that is not slow, a shipment) is written
//! by that same insert, settled from the start: one commit per call, and nothing left in
//! flight if the process dies. Settling later runs in a transaction that holds an
//! advisory lock on the order, so the decisions that read the order's other rows (a
//! refund looks at the charge) see a stable picture.

use serde_json::Value;
use transport_pg::deadpool_postgres::Pool;
use transport_pg::tokio_postgres;

use crate::api::Reply;
use crate::error::{Error, Result};

/// Records a request: inserts its key, in flight or (given $8 to $10) already settled
/// with its outcome, or counts one more request for a key already there. `fresh` is true
/// only for the request that inserted the row. xmax is 0 exactly on a row version this
/// statement inserted; the conflict path updates the row, which sets it.
const LEDGER_RECORD: &str = "\
INSERT INTO gateway.ledger
    (idempotency_key, operation, order_id, amount_cents, currency, card_token, charge_id,
     state, http_status, result, settled_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, coalesce($8, 'in_flight'), $9, $10,
        CASE WHEN $8::text IS NULL THEN NULL ELSE now() END)
ON CONFLICT (idempotency_key) DO UPDATE
SET requests_seen = gateway.ledger.requests_seen + 1,
    last_seen_at = now()
RETURNING xmax = 0 AS fresh,
          operation, order_id, amount_cents, currency, card_token, charge_id,
          state, http_status, result,
          (extract(epoch FROM now() - first_seen_at) * 1000)::bigint AS age_ms";

/// Serializes the settling of one order's operations; the class id is "gwy1" in ASCII.
const LEDGER_LOCK_ORDER: &str = "SELECT pg_advisory_xact_lock(1735883057, hashtext($1))";

/// The order's charges, for a refund to decide on: how many are still in flight, how much
/// succeeded, and the succeeded charge ids.
const LEDGER_CHARGES_OF_ORDER: &str = "\
SELECT count(*) FILTER (WHERE state = 'in_flight'),
       coalesce(sum(amount_cents) FILTER (WHERE state = 'succeeded'), 0)::bigint,
       coalesce(array_agg(result->>'charge_id') FILTER (WHERE state = 'succeeded'), '{}')
FROM gateway.ledger
WHERE order_id = $1 AND operation = 'charge'";

/// How much of the order was already refunded under other keys.
const LEDGER_REFUNDED_OF_ORDER: &str = "\
SELECT coalesce(sum(amount_cents), 0)::bigint
FROM gateway.ledger
WHERE order_id = $1 AND operation = 'refund' AND state = 'succeeded'
  AND idempotency_key <> $2";

/// Settles a key once; a row already settled (by a resumed task of another process) is
/// left alone and read back instead.
const LEDGER_SETTLE: &str = "\
UPDATE gateway.ledger
SET state = $2, http_status = $3, result = $4, settled_at = now()
WHERE idempotency_key = $1 AND state = 'in_flight'";

/// A key's answer once settled.
const LEDGER_GET_ANSWER: &str = "\
SELECT state, http_status, result
FROM gateway.ledger
WHERE idempotency_key = $1";

/// Every key left in flight, oldest first, with its age.
const LEDGER_LIST_IN_FLIGHT: &str = "\
SELECT idempotency_key, operation, order_id, amount_cents, currency, card_token, charge_id,
       (extract(epoch FROM now() - first_seen_at) * 1000)::bigint AS age_ms
FROM gateway.ledger
WHERE state = 'in_flight'
ORDER BY first_seen_at";

/// Which stand-in a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// The payment provider takes money.
    Charge,
    /// The payment provider gives money back.
    Refund,
    /// The courier takes a parcel.
    Shipment,
}

impl Operation {
    /// The name stored in `gateway.ledger.operation`.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Charge => "charge",
            Operation::Refund => "refund",
            Operation::Shipment => "shipment",
        }
    }

    fn parse(name: &str) -> Option<Operation> {
        match name {
            "charge" => Some(Operation::Charge),
            "refund" => Some(Operation::Refund),
            "shipment" => Some(Operation::Shipment),
            _ => None,
        }
    }
}

/// A request as the ledger keeps it; two requests with one key must be equal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// What is asked.
    pub operation: Operation,
    /// The order it is for.
    pub order_id: String,
    /// Charges and refunds.
    pub amount_cents: Option<i64>,
    /// Charges and refunds.
    pub currency: Option<String>,
    /// Charges.
    pub card_token: Option<String>,
    /// Refunds, when the caller names the charge.
    pub charge_id: Option<String>,
}

impl Request {
    /// One line for the 422 answer to a key reused for something else.
    pub fn describe(&self) -> String {
        let mut text = format!("{} for order {}", self.operation.as_str(), self.order_id);
        if let (Some(amount), Some(currency)) = (self.amount_cents, &self.currency) {
            text.push_str(&format!(" of {amount} {currency}"));
        }
        if let Some(token) = &self.card_token {
            text.push_str(&format!(" with card {token}"));
        }
        text
    }
}

/// A key's answer: the HTTP status and the body.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// 200 or 402.
    pub http_status: u16,
    /// The reply every request with this key gets.
    pub reply: Reply,
}

/// The outcome a settled key ends in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Took effect.
    Succeeded,
    /// Definitely refused; took no effect.
    Declined,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::Succeeded => "succeeded",
            State::Declined => "declined",
        }
    }
}

/// What recording a request found.
#[derive(Debug)]
pub enum Recorded {
    /// This request inserted the key: with the outcome it was recorded with, if any, or
    /// else in flight, to be settled.
    Fresh,
    /// The key was there already, for this same request.
    Repeat {
        /// Its answer, or `None` while the first request is in flight.
        answer: Option<Answer>,
        /// How long ago the first request arrived.
        age_ms: i64,
    },
    /// The key was first used for a different request.
    Conflict {
        /// That first request.
        first: Request,
    },
}

/// A key left in flight, to be settled by a resumed task.
#[derive(Debug)]
pub struct InFlight {
    /// The key.
    pub key: String,
    /// Its request.
    pub request: Request,
    /// How long ago it arrived.
    pub age_ms: i64,
}

fn request_from_row(row: &tokio_postgres::Row, first: usize) -> Result<Request> {
    let operation: String = row.get(first);
    Ok(Request {
        operation: Operation::parse(&operation).ok_or_else(|| Error::Corrupt {
            reason: format!("unknown operation {operation:?} in gateway.ledger"),
        })?,
        order_id: row.get(first + 1),
        amount_cents: row.get(first + 2),
        currency: row.get(first + 3),
        card_token: row.get(first + 4),
        charge_id: row.get(first + 5),
    })
}

fn answer_from(
    state: &str,
    http_status: Option<i32>,
    result: Option<Value>,
) -> Result<Option<Answer>> {
    if state == "in_flight" {
        return Ok(None);
    }
    let (Some(status), Some(result)) = (http_status, result) else {
        return Err(Error::Corrupt {
            reason: format!("settled key in state {state} has no answer"),
        });
    };
    let reply = serde_json::from_value(result).map_err(|e| Error::Corrupt {
        reason: format!("stored answer does not decode: {e}"),
    })?;
    Ok(Some(Answer {
        http_status: u16::try_from(status).unwrap_or(500),
        reply,
    }))
}

/// Records `request` under `key` in a transaction of its own (autocommit): in flight, or,
/// given its `outcome`, settled with it.
pub async fn record(
    pool: &Pool,
    key: &str,
    request: &Request,
    outcome: Option<&(State, Answer)>,
) -> Result<Recorded> {
    let client = pool.get().await?;
    let (state, status, result) = match outcome {
        Some((state, answer)) => (
            Some(state.as_str()),
            Some(i32::from(answer.http_status)),
            Some(encode_reply(&answer.reply)?),
        ),
        None => (None, None, None),
    };
    // Prepared once per connection: the ledger runs on every call the endpoints make.
    let record = client
        .prepare_cached(LEDGER_RECORD)
        .await
        .map_err(Error::db("prepare record"))?;
    let row = client
        .query_one(
            &record,
            &[
                &key,
                &request.operation.as_str(),
                &request.order_id,
                &request.amount_cents,
                &request.currency,
                &request.card_token,
                &request.charge_id,
                &state,
                &status,
                &result,
            ],
        )
        .await
        .map_err(Error::db("record request"))?;

    if row.get::<_, bool>("fresh") {
        return Ok(Recorded::Fresh);
    }
    let first = request_from_row(&row, 1)?;
    if first != *request {
        return Ok(Recorded::Conflict { first });
    }
    let answer = answer_from(row.get("state"), row.get("http_status"), row.get("result"))?;
    Ok(Recorded::Repeat {
        answer,
        age_ms: row.get("age_ms"),
    })
}

/// What a refund may do, read under the order's lock.
#[derive(Debug)]
pub struct RefundBasis {
    /// Charges of the order still in flight.
    pub charges_in_flight: i64,
    /// Minor units charged and not yet refunded under other keys.
    pub refundable_cents: i64,
    /// The order's succeeded charge ids.
    pub charge_ids: Vec<String>,
}

/// Settles `key` in one transaction under the order's lock: `decide` reads what it needs
/// through the transaction and returns the outcome, or `None` to try again later (a
/// refund waiting for its charge). Returns the key's answer, which is another's when
/// someone settled it first.
pub async fn settle<F>(
    pool: &Pool,
    key: &str,
    request: &Request,
    decide: F,
) -> Result<Option<Answer>>
where
    F: AsyncFnOnce(&tokio_postgres::Transaction<'_>) -> Result<Option<(State, Answer)>>,
{
    let mut client = pool.get().await?;
    let tx = client
        .transaction()
        .await
        .map_err(Error::db("settle: begin"))?;
    let lock = tx
        .prepare_cached(LEDGER_LOCK_ORDER)
        .await
        .map_err(Error::db("prepare lock order"))?;
    tx.execute(&lock, &[&request.order_id])
        .await
        .map_err(Error::db("settle: lock order"))?;

    let Some((state, answer)) = decide(&tx).await? else {
        return Ok(None);
    };
    let result = encode_reply(&answer.reply)?;
    let settle = tx
        .prepare_cached(LEDGER_SETTLE)
        .await
        .map_err(Error::db("prepare settle"))?;
    let updated = tx
        .execute(
            &settle,
            &[
                &key,
                &state.as_str(),
                &i32::from(answer.http_status),
                &result,
            ],
        )
        .await
        .map_err(Error::db("settle"))?;
    let answer = if updated == 1 {
        Some(answer)
    } else {
        let row = tx
            .query_one(LEDGER_GET_ANSWER, &[&key])
            .await
            .map_err(Error::db("read settled answer"))?;
        answer_from(row.get(0), row.get(1), row.get(2))?
    };
    tx.commit().await.map_err(Error::db("settle: commit"))?;
    Ok(answer)
}

fn encode_reply(reply: &Reply) -> Result<Value> {
    serde_json::to_value(reply).map_err(|e| Error::Corrupt {
        reason: format!("answer does not encode: {e}"),
    })
}

/// What the order's charges allow a refund under `key` to do.
pub async fn refund_basis(
    tx: &tokio_postgres::Transaction<'_>,
    key: &str,
    order_id: &str,
) -> Result<RefundBasis> {
    let charges = tx
        .query_one(LEDGER_CHARGES_OF_ORDER, &[&order_id])
        .await
        .map_err(Error::db("read the order's charges"))?;
    let refunded: i64 = tx
        .query_one(LEDGER_REFUNDED_OF_ORDER, &[&order_id, &key])
        .await
        .map_err(Error::db("read the order's refunds"))?
        .get(0);
    let charged: i64 = charges.get(1);
    Ok(RefundBasis {
        charges_in_flight: charges.get(0),
        refundable_cents: charged - refunded,
        charge_ids: charges
            .get::<_, Vec<Option<String>>>(2)
            .into_iter()
            .flatten()
            .collect(),
    })
}

/// Every key left in flight by a process that stopped before settling it.
pub async fn in_flight(pool: &Pool) -> Result<Vec<InFlight>> {
    let client = pool.get().await?;
    let rows = client
        .query(LEDGER_LIST_IN_FLIGHT, &[])
        .await
        .map_err(Error::db("list keys in flight"))?;
    rows.iter()
        .map(|row| {
            Ok(InFlight {
                key: row.get(0),
                request: request_from_row(row, 1)?,
                age_ms: row.get(7),
            })
        })
        .collect()
}
