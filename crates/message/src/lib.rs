//! The contract between a message type and the bus.
//!
//! A message is a plain serde type with a stable name of the form `<contract>.<Type>`
//! (for example `retail.OrderPlaced`) and a kind: a command, which has one owner that
//! handles it, or an event, which is published to every subscriber. The name keys
//! routing, subscriptions and the error queue, so it must not change when the Rust type
//! is renamed or moved.
//!
//! This crate knows nothing about PostgreSQL or any transport, so a contract crate can
//! depend on it alone.
//!
//! ```
//! use message::{Message, MessageKind};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct OrderPlaced {
//!     order_id: String,
//! }
//!
//! impl Message for OrderPlaced {
//!     const NAME: &'static str = "retail.OrderPlaced";
//!     const KIND: MessageKind = MessageKind::Event;
//! }
//!
//! assert!(message::is_valid_type_name(OrderPlaced::NAME));
//! ```

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Whether a message asks one endpoint to do something or tells everyone it happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageKind {
    /// Sent to the one endpoint that owns it, found through the sender's routing table.
    Command,
    /// Published to every endpoint that subscribes to its type.
    Event,
}

impl MessageKind {
    /// The lower-case name used in logs and headers.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Command => "command",
            MessageKind::Event => "event",
        }
    }
}

/// A type that can travel on the bus.
///
/// Decoding tolerates fields it does not know, so a field added later must be an
/// `Option` or carry `#[serde(default)]` for older messages to keep decoding; never put
/// `deny_unknown_fields` on a message.
pub trait Message: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The stable name, `<contract>.<Type>`; see [`is_valid_type_name`].
    const NAME: &'static str;

    /// Command or event.
    const KIND: MessageKind;
}

/// Whether `name` has the `<contract>.<Type>` shape: two or more dot-separated parts, each
/// starting with an ASCII letter and made of ASCII letters, digits and `_`, at most 200
/// bytes in all.
pub fn is_valid_type_name(name: &str) -> bool {
    let mut parts = 0;
    for part in name.split('.') {
        let mut chars = part.chars();
        let starts_with_letter = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
        if !starts_with_letter || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return false;
        }
        parts += 1;
    }
    parts >= 2 && name.len() <= 200
}

#[cfg(test)]
mod tests {
    use super::is_valid_type_name;

    #[test]
    fn type_names_need_a_contract_and_a_type() {
        assert!(is_valid_type_name("retail.OrderPlaced"));
        assert!(is_valid_type_name("a.b.C_1"));
        assert!(!is_valid_type_name("OrderPlaced"));
        assert!(!is_valid_type_name("retail."));
        assert!(!is_valid_type_name(".OrderPlaced"));
        assert!(!is_valid_type_name("retail.Order Placed"));
        assert!(!is_valid_type_name("retail.1Order"));
        assert!(!is_valid_type_name(&format!("retail.{}", "x".repeat(200))));
    }
}
