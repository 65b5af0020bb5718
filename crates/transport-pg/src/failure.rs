//! What a failed handling attempt carries, and the fingerprint that groups failures.
//!
//! A [`HandlerError`] is built from any error with `?`, keeping the error's type (and
//! variant, for enums), its message and its source chain; a panic becomes one too, with
//! its location. The fingerprint hashes what identifies a cause and leaves out what
//! varies between occurrences (ids, numbers), so that failures of one cause group.

use std::fmt;

/// A handler's failure. Convert any error into it with `?`, or build one with
/// [`HandlerError::msg`]. Mark it [`permanent`](HandlerError::permanent) when trying
/// again can never succeed, so the message skips its retries.
#[derive(Debug, Clone)]
pub struct HandlerError {
    kind: String,
    message: String,
    sources: Vec<String>,
    location: Option<String>,
    permanent: bool,
}

impl HandlerError {
    /// A failure with a message of its own and kind `message`.
    pub fn msg(message: impl fmt::Display) -> Self {
        HandlerError {
            kind: "message".to_owned(),
            message: message.to_string(),
            sources: Vec::new(),
            location: None,
            permanent: false,
        }
    }

    /// A failure with an explicit kind, for errors the caller classifies itself.
    pub fn with_kind(kind: impl Into<String>, message: impl fmt::Display) -> Self {
        HandlerError {
            kind: kind.into(),
            ..HandlerError::msg(message)
        }
    }

    /// Marks the failure as one that no retry can fix.
    pub fn permanent(mut self) -> Self {
        self.permanent = true;
        self
    }

    /// Whether retries are skipped.
    pub fn is_permanent(&self) -> bool {
        self.permanent
    }

    /// The error's type and variant, e.g. `billing::Error::Declined`, or `panic`.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The error's own message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The causes below the error, outermost first.
    pub fn sources(&self) -> &[String] {
        &self.sources
    }

    /// Where a panic happened, `file:line:column`.
    pub fn location(&self) -> Option<&str> {
        self.location.as_deref()
    }

    pub(crate) fn from_panic(
        payload: &(dyn std::any::Any + Send),
        location: Option<String>,
    ) -> Self {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic with a non-string payload".to_owned());
        HandlerError {
            kind: "panic".to_owned(),
            message,
            sources: Vec::new(),
            location,
            permanent: false,
        }
    }

    /// The message and its causes, one a line, as stored in the error queue.
    pub fn source_chain(&self) -> String {
        self.sources.join("\n")
    }

    /// A stable hash of what identifies this cause for messages of `message_type`.
    pub fn fingerprint(&self, message_type: &str) -> String {
        fingerprint(
            message_type,
            &self.kind,
            &self.message,
            self.location.as_deref(),
        )
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        for source in &self.sources {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl<E> From<E> for HandlerError
where
    E: std::error::Error + Send + Sync + 'static,
{
    fn from(error: E) -> Self {
        let mut sources = Vec::new();
        let mut next = error.source();
        while let Some(source) = next {
            sources.push(source.to_string());
            next = source.source();
        }
        HandlerError {
            kind: kind_of(&error),
            message: error.to_string(),
            sources,
            location: None,
            permanent: false,
        }
    }
}

/// The type name, with the enum variant when the `Debug` output starts with one.
fn kind_of<E: fmt::Debug>(error: &E) -> String {
    let type_name = std::any::type_name::<E>();
    let debug = format!("{error:?}");
    let head: String = debug
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    let last_segment = type_name.rsplit("::").next().unwrap_or(type_name);

    // A struct's Debug starts with its own name; an enum's with the variant's.
    if head.is_empty() || head == last_segment {
        type_name.to_owned()
    } else {
        format!("{type_name}::{head}")
    }
}

/// Hashes the message type, the error kind, the message with every run of digits and
/// every hex id replaced by `#`, and the panic location (FNV-1a, 64 bits, hex).
pub fn fingerprint(
    message_type: &str,
    kind: &str,
    message: &str,
    location: Option<&str>,
) -> String {
    let normalized = normalize(message);
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in [message_type, kind, &normalized, location.unwrap_or("")] {
        for byte in part.bytes().chain(std::iter::once(0xff)) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{hash:016x}")
}

/// Replaces what varies between occurrences of one cause: numbers, uuids and other
/// hex-looking tokens of eight or more characters.
pub fn normalize(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for token in split_keep(message) {
        let is_hexish = token.len() >= 8
            && token.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
            && token.chars().any(|c| c.is_ascii_digit());
        if is_hexish {
            out.push('#');
            continue;
        }
        let mut in_digits = false;
        for c in token.chars() {
            if c.is_ascii_digit() {
                if !in_digits {
                    out.push('#');
                }
                in_digits = true;
            } else {
                out.push(c);
                in_digits = false;
            }
        }
    }
    out
}

/// Splits into alternating runs of word characters (letters, digits, `-`) and the rest.
fn split_keep(s: &str) -> Vec<&str> {
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '-';
    let mut parts = Vec::new();
    let mut start = 0;
    let mut current: Option<bool> = None;
    for (i, c) in s.char_indices() {
        let word = is_word(c);
        if current.is_some_and(|w| w != word) {
            parts.push(&s[start..i]);
            start = i;
        }
        current = Some(word);
    }
    if start < s.len() {
        parts.push(&s[start..]);
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum ProviderError {
        #[error("provider declined order {0}")]
        Declined(String),
        #[error("provider timed out")]
        Timeout,
    }

    #[test]
    fn kind_names_the_enum_variant() {
        let e = HandlerError::from(ProviderError::Declined("o-1".into()));
        assert!(
            e.kind().ends_with("ProviderError::Declined"),
            "{}",
            e.kind()
        );
        let e = HandlerError::from(ProviderError::Timeout);
        assert!(e.kind().ends_with("ProviderError::Timeout"), "{}", e.kind());
    }

    #[test]
    fn ids_and_numbers_do_not_split_a_cause() {
        let a = fingerprint(
            "t.A",
            "k",
            "order 7f3c9a1e-0000-4000-8000-000000000001 took 12 ms",
            None,
        );
        let b = fingerprint(
            "t.A",
            "k",
            "order 1b2c3d4e-1111-4111-8111-111111111111 took 900 ms",
            None,
        );
        assert_eq!(a, b);
        let c = fingerprint("t.A", "k", "order 7 was declined", None);
        assert_ne!(a, c);
        assert_ne!(a, fingerprint("t.B", "k", "order 1 took 1 ms", None));
    }

    #[test]
    fn normalize_keeps_words() {
        assert_eq!(normalize("row 42 of table t1"), "row # of table t#");
        assert_eq!(normalize("id deadbeef12 gone"), "id # gone");
    }
}
