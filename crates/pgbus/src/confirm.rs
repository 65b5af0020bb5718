//! Asking before a destructive action (purge, decommission).
//!
//! On a terminal the operator is asked and must answer `y` or `yes`. Without a terminal
//! (a script, a pipe, CI) nobody can answer, so the action is refused unless `--yes` was
//! given: a script must say what it means.

use std::io::{BufRead, IsTerminal, Write};

use crate::error::{CliError, Result};

/// Returns `Ok` when the action may go ahead: `yes` was given, or the operator said so.
/// `what` completes "about to ..." and "refusing to ...", e.g. `purge 12 failed messages`.
pub fn confirm(what: &str, yes: bool) -> Result<()> {
    if yes {
        return Ok(());
    }
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(CliError::NotConfirmed(format!(
            "refusing to {what} without confirmation: standard input is not a terminal; \
             pass --yes to go ahead"
        )));
    }

    let mut stderr = std::io::stderr();
    write!(stderr, "about to {what}; go ahead? [y/N] ").map_err(CliError::Prompt)?;
    stderr.flush().map_err(CliError::Prompt)?;
    let mut answer = String::new();
    stdin
        .lock()
        .read_line(&mut answer)
        .map_err(CliError::Prompt)?;
    match answer.trim().to_ascii_lowercase().as_str() {
        "y" | "yes" => Ok(()),
        _ => Err(CliError::NotConfirmed(format!(
            "not confirmed; did not {what}"
        ))),
    }
}
