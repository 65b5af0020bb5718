//! An order's status as Sales keeps it in `sales.orders.status`, and the one rule for
//! changing it: forward only, never out of a terminal status.
//!
//! Events reach Sales in any order (an OrderShipped can overtake the OrderBilled that
//! caused it), so every handler asks [`OrderStatus::can_become`] instead of setting the
//! status it was told.

use std::fmt;

/// Where an order is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderStatus {
    /// Stored; nothing known about the payment yet.
    Placed,
    /// Billing charged it.
    Billed,
    /// Billing's charge was declined; a cancellation follows.
    PaymentFailed,
    /// Cancelled (terminal).
    Cancelled,
    /// The courier took it (terminal).
    Shipped,
}

impl OrderStatus {
    /// Every status.
    pub const ALL: [OrderStatus; 5] = [
        OrderStatus::Placed,
        OrderStatus::Billed,
        OrderStatus::PaymentFailed,
        OrderStatus::Cancelled,
        OrderStatus::Shipped,
    ];

    /// The name stored in `sales.orders.status`.
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Placed => "placed",
            OrderStatus::Billed => "billed",
            OrderStatus::PaymentFailed => "payment_failed",
            OrderStatus::Cancelled => "cancelled",
            OrderStatus::Shipped => "shipped",
        }
    }

    /// The status stored as `name`, if this release knows it.
    pub fn parse(name: &str) -> Option<OrderStatus> {
        Some(match name {
            "placed" => OrderStatus::Placed,
            "billed" => OrderStatus::Billed,
            "payment_failed" => OrderStatus::PaymentFailed,
            "cancelled" => OrderStatus::Cancelled,
            "shipped" => OrderStatus::Shipped,
            _ => return None,
        })
    }

    /// Whether nothing moves the order on any more.
    pub fn is_terminal(self) -> bool {
        matches!(self, OrderStatus::Cancelled | OrderStatus::Shipped)
    }

    /// Whether an order in this status may move to `next`. Only forward: a placed order
    /// may become anything else; a billed one shipped or cancelled (its payment came too
    /// late and is refunded); one whose payment failed only cancelled; a terminal one
    /// nothing.
    pub fn can_become(self, next: OrderStatus) -> bool {
        use OrderStatus::*;
        matches!(
            (self, next),
            (Placed, Billed | PaymentFailed | Cancelled | Shipped)
                | (Billed, Cancelled | Shipped)
                | (PaymentFailed, Cancelled)
        )
    }

    /// The names of the statuses that may move to `next`, for an update that checks the
    /// rule in the statement itself.
    pub fn names_that_can_become(next: OrderStatus) -> Vec<&'static str> {
        OrderStatus::ALL
            .into_iter()
            .filter(|from| from.can_become(next))
            .map(OrderStatus::as_str)
            .collect()
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::OrderStatus::*;
    use super::*;

    const ALL: [OrderStatus; 5] = OrderStatus::ALL;

    #[test]
    fn names_round_trip() {
        for status in ALL {
            assert_eq!(OrderStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(OrderStatus::parse("lost"), None);
    }

    #[test]
    fn a_terminal_status_never_moves() {
        for from in [Cancelled, Shipped] {
            assert!(from.is_terminal());
            for to in ALL {
                assert!(!from.can_become(to), "{from} -> {to}");
            }
        }
    }

    #[test]
    fn late_events_do_not_move_an_order_backwards() {
        // OrderShipped overtook OrderBilled.
        assert!(Placed.can_become(Shipped));
        assert!(!Shipped.can_become(Billed));
        // The payment timed out and the charge landed afterwards.
        assert!(Billed.can_become(Cancelled));
        assert!(!Cancelled.can_become(Billed));
        // Nothing ships an order whose payment failed, and nothing stays on a status.
        assert!(!PaymentFailed.can_become(Shipped));
        assert!(!PaymentFailed.can_become(Billed));
        for status in ALL {
            assert!(!status.can_become(status));
        }
    }

    #[test]
    fn the_names_that_can_become_a_status_follow_the_rule() {
        assert_eq!(
            OrderStatus::names_that_can_become(Shipped),
            ["placed", "billed"]
        );
        assert_eq!(OrderStatus::names_that_can_become(Billed), ["placed"]);
        assert_eq!(
            OrderStatus::names_that_can_become(Cancelled),
            ["placed", "billed", "payment_failed"]
        );
        assert!(OrderStatus::names_that_can_become(Placed).is_empty());
    }
}
