//! Every statement Shipping's courier handler runs, named table first, verb second. All
//! run inside the receive transaction; every value is a bind parameter. The saga's own
//! statements belong to persistence-pg.

/// The order's booking, if the courier already took it.
pub const SHIPMENT_GET: &str = "\
SELECT tracking_number
FROM shipping.shipments
WHERE order_id = $1";

/// Records the courier's booking. Of two handlers that booked one order at once (a
/// duplicate ShipOrder on another worker), the second inserts nothing and publishes
/// nothing.
pub const SHIPMENT_INSERT: &str = "\
INSERT INTO shipping.shipments (order_id, shipment_key, tracking_number)
VALUES ($1, $2, $3)
ON CONFLICT DO NOTHING";
