//! ShipOrder: book the courier once and publish OrderShipped.
//!
//! Only the fulfilment saga sends ShipOrder, and only for an order that is placed, billed
//! and not cancelled. The booking is made with the idempotency key `shipment-<order id>`
//! while the receive transaction is open, and recorded in `shipping.shipments` in that
//! transaction with the OrderShipped it publishes; a crash before the commit is retried
//! with the same key and gets the same booking. A ShipOrder for an order already in
//! `shipping.shipments` (a duplicate) changes nothing: its OrderShipped went out with the
//! row.

use std::sync::Arc;

use gateways::api::{self, ShipmentRequest};
use gateways::client::{GatewayClient, Outcome};
use messages::{OrderShipped, ShipOrder};
use tracing::debug;
use transport_pg::{Context, Handler, HandlerError};

use crate::error::{Error, Result};
use crate::sql;

/// The ShipOrder handler.
#[derive(Clone)]
pub struct Courier {
    /// This process's instance name, on the handler's log lines.
    pub(crate) instance: Arc<str>,
    /// The courier.
    pub(crate) gateway: GatewayClient,
}

impl Handler<ShipOrder> for Courier {
    async fn handle(&self, ship: ShipOrder, ctx: &mut Context<'_>) -> Result<(), HandlerError> {
        self.ship(ship, ctx)
            .await
            .map_err(Error::into_handler_error)
    }

    fn lock_key(&self, ship: &ShipOrder) -> Option<String> {
        Some(ship.order_id.clone())
    }
}

impl Courier {
    async fn ship(&self, ship: ShipOrder, ctx: &mut Context<'_>) -> Result<()> {
        let id = ship.order_id.as_str();
        let booked = ctx
            .tx()
            .query_opt(sql::SHIPMENT_GET, &[&id])
            .await
            .map_err(Error::db("read the shipment", id))?;
        if booked.is_some() {
            debug!(instance = %self.instance, order_id = id,
                "order already shipped; nothing to do");
            return Ok(());
        }

        let key = api::shipment_key(id);
        let request = ShipmentRequest {
            order_id: ship.order_id.clone(),
            customer_id: ship.customer_id.clone(),
        };
        debug!(instance = %self.instance, order_id = id, key = %key,
            attempt = ctx.failed_attempts() + 1, "booking the courier");
        let outcome = self
            .gateway
            .book_shipment(&key, &request)
            .await
            .map_err(|source| Error::NoAnswer {
                order_id: id.to_owned(),
                source,
            })?;
        let tracking_number = match outcome {
            Outcome::Succeeded(reply) => reply.tracking_number.ok_or_else(|| Error::BadReply {
                order_id: id.to_owned(),
            })?,
            Outcome::Pending(_) => {
                return Err(Error::Pending {
                    order_id: id.to_owned(),
                });
            }
            Outcome::Declined(reply) => return Err(refused(id, 402, reply.reason)),
            Outcome::Rejected { status, reply } => return Err(refused(id, status, reply.reason)),
        };

        let inserted = ctx
            .tx()
            .execute(sql::SHIPMENT_INSERT, &[&id, &key, &tracking_number])
            .await
            .map_err(Error::db("record the shipment", id))?;
        if inserted == 0 {
            debug!(instance = %self.instance, order_id = id,
                "a concurrent ShipOrder recorded the shipment first; nothing to publish");
            return Ok(());
        }
        ctx.publish(&OrderShipped {
            order_id: ship.order_id.clone(),
            tracking_number: tracking_number.clone(),
        })
        .map_err(|source| Error::Publish {
            order_id: id.to_owned(),
            source,
        })?;
        debug!(instance = %self.instance, order_id = id, tracking_number = %tracking_number,
            "shipped");
        Ok(())
    }
}

fn refused(order_id: &str, status: u16, reason: Option<String>) -> Error {
    Error::Refused {
        order_id: order_id.to_owned(),
        status,
        reason: reason.unwrap_or_default(),
    }
}
