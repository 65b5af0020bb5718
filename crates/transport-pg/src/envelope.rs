//! The envelope: header names, the header map and the body codecs.
//!
//! A queue row carries its headers as a jsonb object of strings, so an operator can query
//! them with SQL, and its body as bytes: MessagePack with field names by default, or JSON
//! when the `content_type` header says `application/json` (handy for rows written by
//! hand). The only header a row must have is `message_type`.

use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{BufMut, BytesMut};
use message::Message;
use postgres_types::{FromSql, IsNull, ToSql, Type, to_sql_checked};
use serde_json::Value;

use crate::error::{Error, Result};

/// The header names, fixed once so that tests, tools and operators agree.
pub mod header {
    /// The message's id, also in the row's `message_id` column.
    pub const MESSAGE_ID: &str = "message_id";
    /// `<contract>.<Type>`; the one header a row must carry.
    pub const MESSAGE_TYPE: &str = "message_type";
    /// `send`, `publish`, `reply` or `timeout`.
    pub const INTENT: &str = "intent";
    /// `application/msgpack` (the default) or `application/json`.
    pub const CONTENT_TYPE: &str = "content_type";
    /// Shared by every message caused, directly or not, by the first one.
    pub const CONVERSATION_ID: &str = "conversation_id";
    /// The id of the message whose handler sent this one.
    pub const RELATED_TO: &str = "related_to";
    /// A business correlation value chosen by the sender.
    pub const CORRELATION_ID: &str = "correlation_id";
    /// The endpoint that replies go to.
    pub const REPLY_TO: &str = "reply_to";
    /// The endpoint (or standalone sender) that sent the message.
    pub const SENDING_ENDPOINT: &str = "sending_endpoint";
    /// The host name of the sending process.
    pub const SENDING_HOST: &str = "sending_host";
    /// When it was sent, RFC 3339 in UTC, by the sender's clock.
    pub const TIME_SENT: &str = "time_sent";
    /// The saga a reply or timeout belongs to.
    pub const SAGA_ID: &str = "saga_id";
    /// That saga's type.
    pub const SAGA_TYPE: &str = "saga_type";
    /// How many times handling this message has failed so far.
    pub const FAILED_ATTEMPTS: &str = "failed_attempts";
    /// How many delayed retries it has had so far.
    pub const DELAYED_RETRIES: &str = "delayed_retries";
    /// W3C trace context, carried through untouched.
    pub const TRACEPARENT: &str = "traceparent";
    /// W3C trace state, carried through untouched.
    pub const TRACESTATE: &str = "tracestate";
    /// On failure: the error's kind (its type or variant).
    pub const ERROR_KIND: &str = "error_kind";
    /// On failure: the error's message.
    pub const ERROR_MESSAGE: &str = "error_message";
    /// On failure: the error's source chain, one cause a line.
    pub const ERROR_SOURCE: &str = "error_source";
    /// On failure: the queue the message failed in.
    pub const FAILED_QUEUE: &str = "failed_queue";
    /// On failure: when, RFC 3339 in UTC.
    pub const FAILED_AT: &str = "failed_at";
    /// Headers whose names start with this are copied onto every message a handler sends,
    /// so a value such as a test run's id follows the whole flow.
    pub const BAGGAGE_PREFIX: &str = "baggage.";

    /// The headers describing a failure, removed again when a message is retried.
    pub const FAILURE_HEADERS: [&str; 5] = [
        ERROR_KIND,
        ERROR_MESSAGE,
        ERROR_SOURCE,
        FAILED_QUEUE,
        FAILED_AT,
    ];
}

/// MessagePack with field names, the default body encoding.
pub const CONTENT_TYPE_MSGPACK: &str = "application/msgpack";
/// JSON, accepted on receive for rows written by hand.
pub const CONTENT_TYPE_JSON: &str = "application/json";

/// A header name or value: borrowed when it is one of the transport's own fixed strings
/// (every header name above, the content types, the intents), owned otherwise. Every
/// message carries about ten headers and most of their names and several of their values
/// are these, so reading and building an envelope allocates for the rest only.
type Text = Cow<'static, str>;

/// The fixed string equal to `s`, if there is one: every header name above, the content
/// types, the intents, and the counters' first values.
fn fixed(s: &str) -> Option<&'static str> {
    Some(match s {
        header::MESSAGE_ID => header::MESSAGE_ID,
        header::MESSAGE_TYPE => header::MESSAGE_TYPE,
        header::INTENT => header::INTENT,
        header::CONTENT_TYPE => header::CONTENT_TYPE,
        header::CONVERSATION_ID => header::CONVERSATION_ID,
        header::RELATED_TO => header::RELATED_TO,
        header::CORRELATION_ID => header::CORRELATION_ID,
        header::REPLY_TO => header::REPLY_TO,
        header::SENDING_ENDPOINT => header::SENDING_ENDPOINT,
        header::SENDING_HOST => header::SENDING_HOST,
        header::TIME_SENT => header::TIME_SENT,
        header::SAGA_ID => header::SAGA_ID,
        header::SAGA_TYPE => header::SAGA_TYPE,
        header::FAILED_ATTEMPTS => header::FAILED_ATTEMPTS,
        header::DELAYED_RETRIES => header::DELAYED_RETRIES,
        header::TRACEPARENT => header::TRACEPARENT,
        header::TRACESTATE => header::TRACESTATE,
        header::ERROR_KIND => header::ERROR_KIND,
        header::ERROR_MESSAGE => header::ERROR_MESSAGE,
        header::ERROR_SOURCE => header::ERROR_SOURCE,
        header::FAILED_QUEUE => header::FAILED_QUEUE,
        header::FAILED_AT => header::FAILED_AT,
        CONTENT_TYPE_MSGPACK => CONTENT_TYPE_MSGPACK,
        CONTENT_TYPE_JSON => CONTENT_TYPE_JSON,
        "send" => "send",
        "publish" => "publish",
        "reply" => "reply",
        "timeout" => "timeout",
        "0" => "0",
        "1" => "1",
        _ => return None,
    })
}

/// `s` as a [`Text`]: the fixed string it equals, else an owned one (a `String` the
/// caller already has is moved, not copied), with NUL characters (which jsonb cannot
/// store) replaced by U+FFFD so that an error text carrying one cannot make a message
/// unmovable.
fn text<S: AsRef<str> + Into<String>>(s: S) -> Text {
    let borrowed = s.as_ref();
    if let Some(fixed) = fixed(borrowed) {
        Cow::Borrowed(fixed)
    } else if borrowed.contains('\0') {
        Cow::Owned(borrowed.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Owned(s.into())
    }
}

/// A message's headers: string names to string values.
///
/// Kept as a vector sorted by name rather than a tree: a message has a dozen headers or
/// so, and a binary search over one allocation beats a tree's nodes at that size.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(Text, Text)>);

impl Headers {
    /// An empty map.
    pub fn new() -> Self {
        Headers::default()
    }

    /// The value of `name`, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        let at = self.position(name).ok()?;
        Some(self.0[at].1.as_ref())
    }

    /// Where `name` is, or where it would go.
    fn position(&self, name: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.as_ref().cmp(name))
    }

    /// Replaces `name`'s value, or inserts it in name order.
    fn set(&mut self, name: Text, value: Text) {
        match self.position(&name) {
            Ok(at) => self.0[at].1 = value,
            Err(at) => self.0.insert(at, (name, value)),
        }
    }

    /// Sets `name` to `value`, replacing NUL characters (which jsonb cannot store) with
    /// U+FFFD so that an error text carrying one cannot make a message unmovable.
    pub fn insert(
        &mut self,
        name: impl AsRef<str> + Into<String>,
        value: impl AsRef<str> + Into<String>,
    ) {
        self.set(text(name), text(value));
    }

    /// Sets `name` to a value that lives as long as the program (a message type's name),
    /// without copying it unless it holds a NUL.
    pub(crate) fn insert_static(&mut self, name: &'static str, value: &'static str) {
        let value = if value.contains('\0') {
            text(value)
        } else {
            Cow::Borrowed(value)
        };
        self.set(text(name), value);
    }

    /// Removes `name`, returning its value.
    pub fn remove(&mut self, name: &str) -> Option<String> {
        let at = self.position(name).ok()?;
        Some(self.0.remove(at).1.into_owned())
    }

    /// Every header in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_ref(), v.as_ref()))
    }

    /// A counter header read as a number; absent or unreadable counts as zero.
    pub fn counter(&self, name: &str) -> u32 {
        self.get(name)
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// The map as a jsonb-ready JSON object.
    pub fn to_json(&self) -> Value {
        Value::Object(
            self.iter()
                .map(|(k, v)| (k.to_owned(), Value::String(v.to_owned())))
                .collect(),
        )
    }

    /// Reads the map from a queue row's jsonb. Numbers and booleans are taken as their
    /// text (an operator writing `"failed_attempts": 1` by hand means no harm) and nulls
    /// are dropped; anything else is refused with a reason.
    pub fn from_json(value: &Value) -> Result<Headers, String> {
        let Value::Object(map) = value else {
            return Err(format!(
                "headers are a JSON {}, not an object",
                json_kind(value)
            ));
        };

        let mut headers = Headers::new();
        for (name, value) in map {
            match value {
                Value::String(s) => headers.insert(name.as_str(), s.as_str()),
                Value::Number(n) => headers.insert(name.as_str(), n.to_string()),
                Value::Bool(b) => headers.insert(name.as_str(), b.to_string()),
                Value::Null => {}
                other => {
                    return Err(format!(
                        "header {name:?} is a JSON {}, not a string",
                        json_kind(other)
                    ));
                }
            }
        }
        Ok(headers)
    }

    /// Reads headers from the text of a JSON object. The common case, every value a
    /// string, is read straight into the map; anything else goes through
    /// [`from_json`](Headers::from_json), which accepts numbers and booleans, skips nulls
    /// and says what is wrong with the rest.
    pub fn from_json_text(text: &str) -> Result<Headers, String> {
        if let Ok(StringsOnly(headers)) = serde_json::from_str::<StringsOnly>(text) {
            return Ok(headers);
        }
        let value: Value =
            serde_json::from_str(text).map_err(|e| format!("headers are not JSON: {e}"))?;
        Headers::from_json(&value)
    }
}

/// Headers read from a JSON object whose every value is a string; any other value fails
/// the read, and [`Headers::from_json_text`] falls back to the general path.
struct StringsOnly(Headers);

/// One string of a headers object, read as a [`Text`].
struct TextSeed;

impl<'de> serde::de::DeserializeSeed<'de> for TextSeed {
    type Value = Text;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Text, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl serde::de::Visitor<'_> for TextSeed {
    type Value = Text;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Text, E> {
        Ok(text(s))
    }

    fn visit_string<E: serde::de::Error>(self, s: String) -> Result<Text, E> {
        Ok(text(s))
    }
}

impl<'de> serde::Deserialize<'de> for StringsOnly {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MapVisitor;

        impl<'de> serde::de::Visitor<'de> for MapVisitor {
            type Value = StringsOnly;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of strings")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<StringsOnly, A::Error> {
                let mut headers = Vec::with_capacity(map.size_hint().unwrap_or(16));
                while let Some(name) = map.next_key_seed(TextSeed)? {
                    let value = map.next_value_seed(TextSeed)?;
                    headers.push((name, value));
                }
                // jsonb gives its keys shortest first; a name given twice (JSON text
                // written by hand) keeps its last value, as a JSON reader would.
                headers.reverse();
                headers.sort_by(|a, b| a.0.cmp(&b.0));
                headers.dedup_by(|later, kept| later.0 == kept.0);
                Ok(StringsOnly(Headers(headers)))
            }
        }

        deserializer.deserialize_map(MapVisitor)
    }
}

/// A JSON object of strings, in name order.
impl serde::Serialize for Headers {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

/// Written as a jsonb (or json) object straight from the map, without building a
/// [`Value`] first: the send path writes one per message.
impl ToSql for Headers {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        if *ty == Type::JSONB {
            // The jsonb binary format: a version byte, then the JSON text.
            out.put_u8(1);
        }
        serde_json::to_writer(out.writer(), self)?;
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB || *ty == Type::JSON
    }

    to_sql_checked!();
}

/// The text of a jsonb (or json) column, unparsed: the receive reads headers this way
/// and parses them once, into [`Headers`].
#[derive(Debug, Clone)]
pub struct JsonText(pub String);

impl<'a> FromSql<'a> for JsonText {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> Result<JsonText, Box<dyn std::error::Error + Sync + Send>> {
        let text = if *ty == Type::JSONB {
            match raw.split_first() {
                Some((1, rest)) => rest,
                _ => return Err("unsupported jsonb format version".into()),
            }
        } else {
            raw
        };
        Ok(JsonText(std::str::from_utf8(text)?.to_owned()))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB || *ty == Type::JSON
    }
}

impl JsonText {
    /// The text as a JSON value, or as a JSON string if it is somehow not JSON.
    pub fn to_value(&self) -> Value {
        serde_json::from_str(&self.0).unwrap_or_else(|_| Value::String(self.0.clone()))
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Encodes a message body as MessagePack with field names, refusing one over `limit`.
pub fn encode_body<M: Message>(message: &M, limit: usize) -> Result<Vec<u8>> {
    let body = rmp_serde::to_vec_named(message).map_err(|source| Error::Encode {
        message_type: M::NAME.to_owned(),
        source,
    })?;
    if body.len() > limit {
        return Err(Error::MessageTooLarge {
            message_type: M::NAME.to_owned(),
            size: body.len(),
            limit,
        });
    }
    Ok(body)
}

/// Decodes a body by its content type; the error text is the reason an operator sees.
pub fn decode_body<M: Message>(content_type: Option<&str>, body: &[u8]) -> Result<M, String> {
    match content_type.unwrap_or(CONTENT_TYPE_MSGPACK) {
        CONTENT_TYPE_MSGPACK => rmp_serde::from_slice(body)
            .map_err(|e| format!("body does not decode as MessagePack {}: {e}", M::NAME)),
        CONTENT_TYPE_JSON => serde_json::from_slice(body)
            .map_err(|e| format!("body does not decode as JSON {}: {e}", M::NAME)),
        other => Err(format!("unsupported content type {other:?}")),
    }
}

/// `time` as RFC 3339 in UTC with millisecond precision, e.g. `2026-12-03T12:00:00.123Z`.
pub fn format_rfc3339(time: SystemTime) -> String {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since_epoch.as_secs() as i64;
    let (days, secs_of_day) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (
        secs_of_day / 3600,
        secs_of_day % 3600 / 60,
        secs_of_day % 60,
    );
    let millis = since_epoch.subsec_millis();
    if !(0..=9999).contains(&year) {
        return format!(
            "{year}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{millis:03}Z"
        );
    }
    let year = year as u32;

    // Written digit by digit: every message sent carries one, and the formatting
    // machinery of `format!` was a few per cent of a busy endpoint's CPU.
    let mut out = String::with_capacity(24);
    push_digits(&mut out, year, 4);
    out.push('-');
    push_digits(&mut out, month, 2);
    out.push('-');
    push_digits(&mut out, day, 2);
    out.push('T');
    push_digits(&mut out, hour as u32, 2);
    out.push(':');
    push_digits(&mut out, minute as u32, 2);
    out.push(':');
    push_digits(&mut out, second as u32, 2);
    out.push('.');
    push_digits(&mut out, millis, 3);
    out.push('Z');
    out
}

/// Appends the last `width` decimal digits of `value`, zero-padded.
fn push_digits(out: &mut String, value: u32, width: u32) {
    for place in (0..width).rev() {
        let digit = value / 10u32.pow(place) % 10;
        out.push(char::from(b'0' + digit as u8));
    }
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    #[test]
    fn nul_is_replaced_not_kept() {
        let mut headers = Headers::new();
        headers.insert("error_message", "bad\0byte");
        assert_eq!(headers.get("error_message"), Some("bad\u{FFFD}byte"));
        headers.insert_static("message_type", "a.\0B");
        assert_eq!(headers.get("message_type"), Some("a.\u{FFFD}B"));
    }

    #[test]
    fn fixed_names_and_values_are_borrowed_and_the_rest_owned() {
        let text = r#"{"message_id": "m-1", "intent": "send", "baggage.run": "r\u0000"}"#;
        let headers = Headers::from_json_text(text).unwrap();
        let entry = |name: &str| {
            let (name, value) = headers.0.iter().find(|(k, _)| k == name).unwrap();
            (name, value)
        };

        let (name, value) = entry("intent");
        assert!(matches!(
            (name, value),
            (Cow::Borrowed(_), Cow::Borrowed(_))
        ));
        let (name, value) = entry("message_id");
        assert!(matches!((name, value), (Cow::Borrowed(_), Cow::Owned(_))));
        let (name, value) = entry("baggage.run");
        assert!(matches!((name, value), (Cow::Owned(_), Cow::Owned(_))));
        assert_eq!(
            value, "r\u{FFFD}",
            "a NUL read from JSON text is replaced too"
        );

        let mut built = Headers::new();
        built.insert(String::from("intent"), "reply");
        assert!(matches!(
            built.0.first(),
            Some((Cow::Borrowed(_), Cow::Borrowed(_)))
        ));
    }

    #[test]
    fn headers_are_read_from_json_text_whatever_their_scalars() {
        let all_strings = Headers::from_json_text(r#"{"a": "1", "b": "x"}"#).unwrap();
        assert_eq!(
            (all_strings.get("a"), all_strings.get("b")),
            (Some("1"), Some("x"))
        );

        let mixed = Headers::from_json_text(r#"{"a": 1, "b": true, "c": null}"#).unwrap();
        assert_eq!((mixed.get("a"), mixed.get("b")), (Some("1"), Some("true")));
        assert_eq!(mixed.get("c"), None);

        let nested = Headers::from_json_text(r#"{"a": {"b": 1}}"#).unwrap_err();
        assert!(nested.contains("not a string"), "{nested}");
        let list = Headers::from_json_text("[1, 2]").unwrap_err();
        assert!(list.contains("not an object"), "{list}");
        let twice = Headers::from_json_text(r#"{"b": "1", "a": "x", "b": "2"}"#).unwrap();
        let names: Vec<_> = twice.iter().collect();
        assert_eq!(
            names,
            [("a", "x"), ("b", "2")],
            "sorted, and the last value kept"
        );

        let broken = Headers::from_json_text("{").unwrap_err();
        assert!(broken.contains("not JSON"), "{broken}");
    }

    #[test]
    fn headers_are_written_as_jsonb_with_its_version_byte() {
        let mut headers = Headers::new();
        headers.insert("message_type", "a.B");
        let mut out = BytesMut::new();
        headers.to_sql(&Type::JSONB, &mut out).unwrap();
        assert_eq!(&out[..], b"\x01{\"message_type\":\"a.B\"}");
        let text = JsonText::from_sql(&Type::JSONB, &out).unwrap();
        assert_eq!(Headers::from_json_text(&text.0).unwrap(), headers);
        assert!(JsonText::from_sql(&Type::JSONB, b"\x02{}").is_err());
    }

    #[test]
    fn headers_must_be_an_object_of_scalars() {
        assert!(Headers::from_json(&serde_json::json!([1, 2])).is_err());
        assert!(Headers::from_json(&serde_json::json!({"a": {"b": 1}})).is_err());
        let headers = Headers::from_json(&serde_json::json!({"a": 1, "b": "x", "c": null}));
        let headers = headers.unwrap();
        assert_eq!(headers.get("a"), Some("1"));
        assert_eq!(headers.get("c"), None);
    }

    #[test]
    fn formats_utc_timestamps() {
        let t = UNIX_EPOCH + Duration::from_millis(1_796_300_000_123);
        assert_eq!(format_rfc3339(t), "2026-12-03T12:13:20.123Z");
        assert_eq!(format_rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = UNIX_EPOCH + Duration::from_millis(951_825_599_999);
        assert_eq!(format_rfc3339(leap), "2000-02-29T11:59:59.999Z");
        let last = UNIX_EPOCH + Duration::from_millis(253_402_300_799_999);
        assert_eq!(format_rfc3339(last), "9999-12-31T23:59:59.999Z");
        let far = UNIX_EPOCH + Duration::from_secs(253_402_300_800);
        assert_eq!(format_rfc3339(far), "10000-01-01T00:00:00.000Z");
        let before = UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!(format_rfc3339(before), "1970-01-01T00:00:00.000Z");
    }
}
