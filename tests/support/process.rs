//! Real processes of the workspace's binaries: start, wait for a log line, signal, kill.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A running binary whose stderr (the log) is collected line by line.
pub struct Process {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    name: String,
    /// The tasks reading stdout and stderr; they end when the streams close.
    readers: Vec<tokio::task::JoinHandle<()>>,
}

impl Process {
    /// Starts workspace binary `name` with `args` and `env`.
    pub fn start(name: &str, args: &[&str], env: &[(&str, &str)]) -> Process {
        let mut command = Command::new(crate::bin(name));
        command
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));

        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr piped");
        let stdout = child.stdout.take().expect("stdout piped");
        let mut readers = Vec::with_capacity(2);
        for stream in [
            Box::new(stderr) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
            Box::new(stdout),
        ] {
            let lines = lines.clone();
            readers.push(tokio::spawn(async move {
                let mut reader = BufReader::new(stream).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    lines.lock().expect("log lock").push(strip_ansi(&line));
                }
            }));
        }
        Process {
            child,
            lines,
            name: name.to_owned(),
            readers,
        }
    }

    /// Waits until a log line contains `needle`; panics with the log after `timeout`.
    pub async fn wait_for_line(&self, needle: &str, timeout: Duration) {
        let found = crate::wait_until(timeout, || async { self.has_line(needle) }).await;
        assert!(
            found,
            "{} did not log {needle:?} within {timeout:?}; log:\n{}",
            self.name,
            self.log()
        );
    }

    /// Whether any log line so far contains `needle`.
    pub fn has_line(&self, needle: &str) -> bool {
        self.lines
            .lock()
            .expect("log lock")
            .iter()
            .any(|l| l.contains(needle))
    }

    /// How many log lines contain `needle`.
    pub fn count_lines(&self, needle: &str) -> usize {
        self.lines
            .lock()
            .expect("log lock")
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        self.lines.lock().expect("log lock").join("\n")
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("process still running")
    }

    /// Sends `signal` (e.g. `"TERM"`, `"KILL"`).
    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits for the process to exit; returns its exit code (None if killed by a signal).
    /// The output it printed before exiting is then in [`log`](Process::log): the reading
    /// of its pipes is waited for too, for up to five seconds (longer only if a child of
    /// the process keeps them open).
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let code = match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => status.expect("wait for child").code(),
            Err(_) => panic!(
                "{} did not exit within {timeout:?}; log:\n{}",
                self.name,
                self.log()
            ),
        };
        self.finish_reading(Duration::from_secs(5)).await;
        code
    }

    /// Waits for the process to exit and for its last output to be read, failing the
    /// test if the output does not end within `timeout`; returns its exit code. For
    /// short-lived commands whose output the test inspects.
    pub async fn wait_output(&mut self, timeout: Duration) -> Option<i32> {
        let code = self.wait_exit(timeout).await;
        if !self.finish_reading(timeout).await {
            panic!(
                "{} exited but its output did not end within {timeout:?}",
                self.name
            );
        }
        code
    }

    /// Waits up to `limit` for the pipe readers to reach the end of their streams;
    /// returns whether they all did. A reader still running is kept for a later call.
    async fn finish_reading(&mut self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while let Some(reader) = self.readers.last_mut() {
            if tokio::time::timeout_at(deadline, reader).await.is_err() {
                return false;
            }
            self.readers.pop();
        }
        true
    }
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
