//! Writing results to standard output: text for people, JSON for scripts.
//!
//! A closed pipe (`pgbus errors list | head`) ends the output quietly instead of
//! panicking, as `println!` would.

use std::io::{ErrorKind, Write};

use serde::Serialize;

use crate::error::{CliError, Result};

/// Writes `text` to stdout as it is.
pub fn text(text: &str) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() != ErrorKind::BrokenPipe => Err(CliError::Output(e)),
        _ => Ok(()),
    }
}

/// Writes `line` and a newline to stdout.
pub fn line(line: &str) -> Result<()> {
    text(&format!("{line}\n"))
}

/// Writes `value` to stdout as indented JSON and a newline.
pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<()> {
    let rendered = serde_json::to_string_pretty(value)
        .map_err(|e| CliError::Output(std::io::Error::other(e)))?;
    line(&rendered)
}
