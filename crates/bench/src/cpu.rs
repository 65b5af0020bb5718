//! CPU time spent by the client and by the server in one run, from `/proc`, to tell how
//! much of a message's cost each side carries on the two shared cores.
//!
//! The client is this process (the transport's endpoint runs in it) or pgbench (a child,
//! whose time the kernel adds to ours once it is waited for). The server is the
//! postmaster with the backends it has reaped: connections close at the end of every
//! run, so their time is counted once they exit; processes that outlive runs (the WAL
//! writer, the checkpointer) are not, and neither is other work on the machine.

use std::time::Duration;

use transport_pg::tokio_postgres::Client;

/// Clock ticks per second in `/proc/<pid>/stat` (USER_HZ, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// How long to let the postmaster reap the backends of a run that just ended.
pub const REAP_PAUSE: Duration = Duration::from_millis(150);

/// CPU seconds at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// This process's own user and system time.
    pub own: f64,
    /// Its waited-for children's (pgbench's).
    pub children: f64,
    /// The postmaster's, its reaped backends' included.
    pub server: f64,
}

/// The fields after the command name of `/proc/<pid>/stat`, from the state on.
fn stat_fields(pid: &str) -> Option<Vec<u64>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    // The state is a letter; count it as 0 so the indexes stay the kernel's minus three.
    Some(
        rest.split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect(),
    )
}

/// (own, children) CPU seconds of process `pid`, and its parent's pid.
fn times(pid: &str) -> Option<(f64, f64, u64)> {
    let f = stat_fields(pid)?;
    // Fields 4 (ppid), 14 to 17 (utime, stime, cutime, cstime), counted from 1.
    let at = |field: usize| f.get(field - 3).copied();
    let own = (at(14)? + at(15)?) as f64 / TICKS_PER_SECOND;
    let children = (at(16)? + at(17)?) as f64 / TICKS_PER_SECOND;
    Some((own, children, at(4)?))
}

/// Finds the postmaster's pid: the parent of the backend serving `client`.
pub async fn postmaster_pid(client: &Client) -> Option<u64> {
    let row = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .ok()?;
    let backend: i32 = row.get(0);
    times(&backend.to_string()).map(|(_, _, parent)| parent)
}

/// The CPU times now; the server's only when `postmaster` is known.
pub fn sample(postmaster: Option<u64>) -> Sample {
    let (own, children, _) = times("self").unwrap_or_default();
    let server = postmaster
        .and_then(|pid| times(&pid.to_string()))
        .map(|(own, children, _)| own + children)
        .unwrap_or(0.0);
    Sample {
        own,
        children,
        server,
    }
}

/// Microseconds per message of `seconds` of CPU over `messages`.
pub fn per_message_us(seconds: f64, messages: f64) -> Option<f64> {
    (messages > 0.0 && seconds >= 0.0).then(|| seconds * 1e6 / messages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_times_and_a_parent() {
        let (own, children, parent) = times("self").unwrap();
        assert!(own >= 0.0 && children >= 0.0 && parent > 0);
    }

    #[test]
    fn per_message_needs_messages() {
        assert_eq!(per_message_us(0.5, 1000.0), Some(500.0));
        assert_eq!(per_message_us(0.5, 0.0), None);
    }
}
