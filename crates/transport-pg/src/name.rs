//! Endpoint names and the quoted table names derived from them.
//!
//! An endpoint name becomes part of SQL identifiers, so it is checked before any SQL is
//! built: lower-case ASCII letters, digits and `_`, starting with a letter, at most 40
//! bytes, so that `<name>_delayed` and the index names derived from it stay inside
//! PostgreSQL's 63-byte limit instead of being silently truncated.

use std::fmt;

use crate::error::{Error, Result};

/// The longest endpoint name accepted.
pub const MAX_ENDPOINT_NAME_LEN: usize = 40;

/// A validated endpoint name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointName(String);

impl EndpointName {
    /// Checks `name` and wraps it; see the module docs for the rules.
    pub fn new(name: &str) -> Result<Self> {
        let refuse = |reason| {
            Err(Error::InvalidEndpointName {
                name: name.to_owned(),
                reason,
            })
        };

        if name.is_empty() {
            return refuse("it is empty");
        }
        if name.len() > MAX_ENDPOINT_NAME_LEN {
            return refuse("it is longer than 40 bytes");
        }
        if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
            return refuse("it must start with a lower-case letter");
        }
        if !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return refuse("only lower-case letters, digits and '_' are allowed");
        }
        Ok(EndpointName(name.to_owned()))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The endpoint's queue and delayed tables, quoted and schema-qualified.
    pub fn tables(&self) -> QueueTables {
        QueueTables {
            queue: format!("bus.\"{}_queue\"", self.0),
            delayed: format!("bus.\"{}_delayed\"", self.0),
            queue_bare: format!("{}_queue", self.0),
            delayed_bare: format!("{}_delayed", self.0),
        }
    }
}

impl fmt::Display for EndpointName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for EndpointName {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        EndpointName::new(s)
    }
}

/// The SQL names of one endpoint's tables. `queue` and `delayed` are ready to splice
/// into a statement (schema-qualified and quoted); the `_bare` forms are the plain
/// relation names, for catalog look-ups as bind parameters.
#[derive(Debug, Clone)]
pub struct QueueTables {
    /// `bus."<name>_queue"`.
    pub queue: String,
    /// `bus."<name>_delayed"`.
    pub delayed: String,
    /// `<name>_queue`.
    pub queue_bare: String,
    /// `<name>_delayed`.
    pub delayed_bare: String,
}

#[cfg(test)]
mod tests {
    use super::EndpointName;

    #[test]
    fn accepts_lower_case_identifiers() {
        for good in ["sales", "billing_2", "a", &"x".repeat(40)] {
            assert!(EndpointName::new(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn refuses_anything_that_would_need_quoting_or_truncation() {
        let long = "x".repeat(41);
        let bad = [
            "", "Sales", "1sales", "_sales", "sa-les", "sa les", "sales;", "sälès", &long, "a\"b",
            "bus.x",
        ];
        for name in bad {
            assert!(EndpointName::new(name).is_err(), "{name:?} was accepted");
        }
    }

    #[test]
    fn tables_are_quoted_and_qualified() {
        let tables = EndpointName::new("sales").unwrap().tables();
        assert_eq!(tables.queue, "bus.\"sales_queue\"");
        assert_eq!(tables.delayed, "bus.\"sales_delayed\"");
    }
}
