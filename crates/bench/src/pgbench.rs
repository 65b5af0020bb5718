//! The ceiling and the peer, run by `pgbench -M prepared -n` with scripts written here.
//!
//! The ceiling script is the transport's own hop, its statement texts taken verbatim from
//! [`QueueStatements`] with only the `$n` placeholders turned into pgbench variables
//! (which `-M prepared` turns back into the same `$n`): BEGIN, the receive of n, one
//! INSERT of the n messages sent on, and COMMIT, as the pump runs a batch whose handler
//! runs no statement of its own (and so takes no savepoint; see the transport's
//! `pipeline` module). Two things pgbench dictates. It cannot keep a result inside a
//! pipeline, and the transport probes from the last seq it received (DESIGN.md section
//! 4), so the receive goes alone, and `\aset` keeps the last row's `seq` as the next
//! probe's start; everything after it goes out as one pipeline. And a script must end
//! outside a transaction, so each script runs [`HOPS_PER_SCRIPT`] hops and pipelines
//! each hop's BEGIN behind the previous COMMIT: 2 + 1/8 round trips per hop, whatever n.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::Command;
use transport_pg::sql::QueueStatements;

use crate::db::Server;
use crate::error::{Error, Result};
use crate::ring::SampleRow;

/// Hops in one run of the ceiling script.
pub const HOPS_PER_SCRIPT: usize = 8;

/// Round trips per hop of the ceiling script.
pub fn ceiling_round_trips() -> f64 {
    (2 * HOPS_PER_SCRIPT + 1) as f64 / HOPS_PER_SCRIPT as f64
}

/// `text` with each `(placeholder, variable)` replaced, checking each placeholder occurs.
fn substitute(text: &str, pairs: &[(&str, &str)]) -> Result<String> {
    let mut out = text.to_owned();
    // Highest-numbered first, so `$1` never eats the front of `$10`.
    for (placeholder, variable) in pairs.iter().rev() {
        if !out.contains(placeholder) {
            return Err(Error::Config(format!(
                "statement has no {placeholder}; the transport's SQL changed: {text}"
            )));
        }
        out = out.replace(placeholder, &format!(":{variable}"));
    }
    Ok(out)
}

/// The ceiling script for the batch size `statements` receive at (the limit is in the
/// receive's text); the sends' arrays are in its variables ([`ceiling_variables`]).
pub fn ceiling_script(statements: &QueueStatements) -> Result<String> {
    let receive = substitute(&statements.receive.sql, &[("$1", "seq")])?;
    let insert = substitute(
        &statements.insert,
        &[("$1", "ids"), ("$2", "hs"), ("$3", "bs")],
    )?;
    let mut script = String::from(
        "-- The transport's hop (receive n, send n, commit) as pgbench runs it; written by\n\
         -- crates/bench from transport_pg::sql::QueueStatements.\n\
         BEGIN;\n",
    );
    for hop in 0..HOPS_PER_SCRIPT {
        script.push_str(&receive);
        script.push_str("\n\\aset\n\\startpipeline\n");
        script.push_str(&insert);
        script.push_str(";\nCOMMIT;\n");
        if hop + 1 < HOPS_PER_SCRIPT {
            script.push_str("BEGIN;\n");
        }
        script.push_str("\\endpipeline\n");
    }
    Ok(script)
}

/// pgmq's hop: pop one and send one in one transaction, in two round trips (as the
/// transport's batch-1 hop), since a consumer needs what it popped before it sends.
pub const PGMQ_SCRIPT: &str = "\
-- pgmq's hop (pop one, send one, commit) in two round trips; written by crates/bench.
\\startpipeline
BEGIN;
SELECT msg_id, read_ct, enqueued_at, last_read_at, vt, message, headers FROM pgmq.pop(:queue);
\\endpipeline
\\startpipeline
SELECT pgmq.send(:queue, :msg::jsonb);
COMMIT;
\\endpipeline
";

/// A pgbench array literal holding `count` copies of `element`, quoted.
fn array_literal(element: &str, count: usize) -> String {
    let escaped = element.replace('\\', "\\\\").replace('"', "\\\"");
    let quoted = format!("\"{escaped}\"");
    format!("{{{}}}", vec![quoted; count].join(","))
}

/// The `-D` variables of the ceiling script: the probe start and the columns of the
/// batch's `batch` sends as the insert's arrays, each a copy of `sample`.
pub fn ceiling_variables(sample: &SampleRow, batch: usize) -> Vec<(String, String)> {
    let hex: String = sample.body.iter().map(|b| format!("{b:02x}")).collect();
    vec![
        ("seq".into(), "0".into()),
        (
            "ids".into(),
            array_literal(&sample.message_id.to_string(), batch),
        ),
        (
            "hs".into(),
            array_literal(&sample.headers.to_string(), batch),
        ),
        ("bs".into(), array_literal(&format!("\\x{hex}"), batch)),
    ]
}

/// One pgbench run.
#[derive(Debug, Clone)]
pub struct PgbenchRun<'a> {
    /// The pgbench executable.
    pub pgbench: &'a Path,
    /// The script file.
    pub script: PathBuf,
    /// The database.
    pub database: &'a str,
    /// Client connections.
    pub clients: usize,
    /// Seconds to run.
    pub seconds: u64,
    /// `-D` variables.
    pub variables: Vec<(String, String)>,
}

/// What pgbench reported.
#[derive(Debug, Clone, Copy)]
pub struct PgbenchResult {
    /// Script runs per second, without the initial connection time.
    pub tps: f64,
    /// Script runs that failed.
    pub failed: u64,
    /// Script runs completed.
    pub processed: u64,
}

/// Runs pgbench against `server` and parses its summary.
pub async fn run(server: &Server, run: &PgbenchRun<'_>) -> Result<PgbenchResult> {
    let mut command = Command::new(run.pgbench);
    command
        .arg("-n")
        .args(["-M", "prepared"])
        .args(["-T", &run.seconds.to_string()])
        .args(["-c", &run.clients.to_string()])
        .args(["-j", &run.clients.min(2).to_string()])
        .arg("-f")
        .arg(&run.script)
        .args(["-h", &server.host])
        .args(["-p", &server.port.to_string()])
        .args(["-U", &server.user]);
    for (name, value) in &run.variables {
        command.arg("-D").arg(format!("{name}={value}"));
    }
    command
        .arg(run.database)
        .env("PGSSLMODE", "disable")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = command.output().await.map_err(|e| Error::Process {
        program: "pgbench".into(),
        reason: format!("cannot start {}: {e}", run.pgbench.display()),
    })?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        return Err(Error::Process {
            program: "pgbench".into(),
            reason: format!("{}: {}", output.status, tail(&format!("{stdout}{stderr}"))),
        });
    }
    parse_summary(&stdout).ok_or_else(|| Error::Process {
        program: "pgbench".into(),
        reason: format!("no tps in its output: {}", tail(&stdout)),
    })
}

/// The last few lines of `text`, for error messages.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(6)..].join(" | ")
}

/// Reads `tps = N (without initial connection time)` and the failed count.
fn parse_summary(stdout: &str) -> Option<PgbenchResult> {
    let mut tps = None;
    let mut failed = 0;
    let mut processed = 0;
    for line in stdout.lines() {
        if let Some(rest) = line.strip_prefix("tps = ") {
            if rest.contains("without initial connection time") {
                tps = rest.split_whitespace().next()?.parse().ok();
            }
        } else if let Some(rest) = line.strip_prefix("number of failed transactions: ") {
            failed = rest.split_whitespace().next()?.parse().unwrap_or(0);
        } else if let Some(rest) = line.strip_prefix("number of transactions actually processed: ")
        {
            processed = rest.split(['/', ' ']).next()?.parse().unwrap_or(0);
        }
    }
    Some(PgbenchResult {
        tps: tps?,
        failed,
        processed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use transport_pg::EndpointName;

    fn statements() -> QueueStatements {
        QueueStatements::new(&EndpointName::new("hop").unwrap().tables(), 10)
    }

    #[test]
    fn ceiling_script_keeps_the_statements_and_only_renames_placeholders() {
        let script = ceiling_script(&statements()).unwrap();
        let receive = statements().receive.sql.replace("$1", ":seq");
        assert!(receive.contains("LIMIT 10"));
        assert!(script.contains(&receive));
        assert_eq!(script.matches("\\aset").count(), HOPS_PER_SCRIPT);
        assert_eq!(script.matches("INSERT INTO").count(), HOPS_PER_SCRIPT);
        assert!(!script.contains("SAVEPOINT"));
        assert_eq!(script.matches("COMMIT;").count(), HOPS_PER_SCRIPT);
        assert_eq!(script.matches("BEGIN;").count(), HOPS_PER_SCRIPT);
        assert!(!script.contains('$'));
    }

    #[test]
    fn array_literals_repeat_and_escape_quotes_and_backslashes() {
        assert_eq!(
            array_literal(r#"{"a": "b\c"}"#, 1),
            r#"{"{\"a\": \"b\\c\"}"}"#
        );
        assert_eq!(array_literal("\\x0102", 2), r#"{"\\x0102","\\x0102"}"#);
    }

    #[test]
    fn summary_is_parsed() {
        let out = "number of transactions actually processed: 27894\n\
                   number of failed transactions: 0 (0.000%)\n\
                   latency average = 1.2 ms\n\
                   initial connection time = 3.1 ms\n\
                   tps = 3486.515096 (without initial connection time)\n";
        let parsed = parse_summary(out).unwrap();
        assert!((parsed.tps - 3486.515096).abs() < 1e-9);
        assert_eq!((parsed.failed, parsed.processed), (0, 27894));
        assert!(parse_summary("nothing").is_none());
    }
}
