//! A readable view of a message body for `errors show` and `peek`.
//!
//! MessagePack (the default content type) is decoded into JSON, JSON is shown as it is,
//! and anything else, or a body that does not decode as its content type says, as hex,
//! with the reason.

use serde::Serialize;
use serde_json::Value;
use transport_pg::{CONTENT_TYPE_JSON, CONTENT_TYPE_MSGPACK};

/// How the body was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Decoded from MessagePack into JSON.
    Msgpack,
    /// Parsed as JSON.
    Json,
    /// Shown as hex.
    Hex,
}

/// A body decoded for display.
#[derive(Debug, Clone, Serialize)]
pub struct BodyView {
    /// The content type the headers name, or the default when they name none.
    pub content_type: String,
    /// The body's size in bytes.
    pub size: usize,
    /// How it was read.
    pub format: Format,
    /// The decoded value; for [`Format::Hex`], a string of hex digits.
    pub value: Value,
    /// Why the body could not be read as its content type says, when it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl BodyView {
    /// Decodes `body` by `content_type` (MessagePack when `None`).
    pub fn decode(content_type: Option<&str>, body: &[u8]) -> BodyView {
        let content_type = content_type.unwrap_or(CONTENT_TYPE_MSGPACK).to_owned();
        let decoded = match content_type.as_str() {
            CONTENT_TYPE_MSGPACK => rmp_serde::from_slice::<Value>(body)
                .map(|v| (Format::Msgpack, v))
                .map_err(|e| format!("does not decode as MessagePack: {e}")),
            CONTENT_TYPE_JSON => serde_json::from_slice::<Value>(body)
                .map(|v| (Format::Json, v))
                .map_err(|e| format!("does not parse as JSON: {e}")),
            other => Err(format!(
                "content type {other:?} is not one pgbus can decode"
            )),
        };

        let (format, value, error) = match decoded {
            Ok((format, value)) => (format, value, None),
            Err(reason) => (Format::Hex, Value::String(hex(body)), Some(reason)),
        };
        BodyView {
            content_type,
            size: body.len(),
            format,
            value,
            error,
        }
    }

    /// The view as indented text for people: a heading line, then the value.
    pub fn render(&self, indent: &str) -> String {
        let mut out = format!(
            "body: {} bytes, {}, shown as {}",
            self.size,
            self.content_type,
            match self.format {
                Format::Msgpack => "JSON (decoded from MessagePack)",
                Format::Json => "JSON",
                Format::Hex => "hex",
            }
        );
        if let Some(error) = &self.error {
            out.push_str(&format!(" ({error})"));
        }
        out.push('\n');

        let text = match (&self.format, &self.value) {
            (Format::Hex, Value::String(digits)) => hex_lines(digits),
            (_, value) => serde_json::to_string_pretty(value).unwrap_or_default(),
        };
        for line in text.lines() {
            out.push_str(indent);
            out.push_str(line);
            out.push('\n');
        }
        out
    }
}

/// The bytes as lower-case hex digits.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hex digits in lines of 32 bytes, the bytes of a line separated by spaces.
fn hex_lines(digits: &str) -> String {
    let pairs: Vec<&str> = (0..digits.len() / 2)
        .map(|i| &digits[2 * i..2 * i + 2])
        .collect();
    pairs
        .chunks(32)
        .map(|line| line.join(" "))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{BodyView, Format};

    #[test]
    fn msgpack_is_shown_as_json() {
        let body = rmp_serde::to_vec_named(&json!({"text": "hi", "n": 3})).unwrap();
        let view = BodyView::decode(None, &body);
        assert_eq!(view.format, Format::Msgpack);
        assert_eq!(view.value, json!({"text": "hi", "n": 3}));
        assert!(view.error.is_none());
    }

    #[test]
    fn json_is_shown_as_it_is() {
        let view = BodyView::decode(Some("application/json"), br#"{"key": "by-hand"}"#);
        assert_eq!(view.format, Format::Json);
        assert_eq!(view.value, json!({"key": "by-hand"}));
    }

    #[test]
    fn anything_else_is_hex_with_the_reason() {
        let view = BodyView::decode(Some("application/json"), b"\x01not json");
        assert_eq!(view.format, Format::Hex);
        assert_eq!(view.value, json!("016e6f74206a736f6e"));
        assert!(view.error.unwrap().contains("JSON"));

        let view = BodyView::decode(Some("text/plain"), b"ab");
        assert_eq!(view.format, Format::Hex);
        assert!(view.render("  ").contains("  61 62"));
    }
}
