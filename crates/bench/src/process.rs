//! Child processes the bench starts (endpoint binaries, the gateways), their memory
//! figures from `/proc`, and stopping them with SIGTERM.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::error::{Error, Result};

/// A started binary whose stderr goes to a log file.
pub struct Running {
    /// The program's name, for messages.
    pub name: String,
    /// The child.
    pub child: Child,
    /// Where its stderr goes.
    pub log: PathBuf,
}

/// Starts `program` with `args` and extra environment, its stdout and stderr appended to
/// `log`.
pub fn start(program: &Path, args: &[String], env: &[(&str, &str)], log: &Path) -> Result<Running> {
    let file = std::fs::File::create(log).map_err(Error::io("create", log))?;
    let out = file.try_clone().map_err(Error::io("open", log))?;
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(file)
        .kill_on_drop(true);
    for (name, value) in env {
        command.env(name, value);
    }
    let child = command.spawn().map_err(|e| Error::Process {
        program: program.display().to_string(),
        reason: format!("cannot start: {e}"),
    })?;
    Ok(Running {
        name: program
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        child,
        log: log.to_owned(),
    })
}

impl Running {
    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Fails with the log's tail if the process has already exited.
    pub fn check_alive(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(Error::Process {
                program: self.name.clone(),
                reason: format!(
                    "exited early ({status}); log {}: {}",
                    self.log.display(),
                    log_tail(&self.log)
                ),
            }),
            Err(e) => Err(Error::Process {
                program: self.name.clone(),
                reason: format!("cannot check on it: {e}"),
            }),
        }
    }

    /// Sends SIGTERM, waits up to `grace`, then kills it.
    pub async fn stop(mut self, grace: Duration) -> Result<()> {
        if let Some(pid) = self.child.id() {
            // The standard library sends only SIGKILL; `kill` sends the polite signal.
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(_) => Ok(()),
            Err(_) => {
                let _ = self.child.kill().await;
                Err(Error::Timeout(format!(
                    "{} did not stop within {} s of SIGTERM",
                    self.name,
                    grace.as_secs()
                )))
            }
        }
    }
}

/// The last lines of a log file.
pub fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

/// Peak and current resident set size of `pid`, in kB (`VmHWM`, `VmRSS`).
pub fn memory_kb(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status.lines().find_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse::<u64>().ok()
        })
    };
    Some((field("VmHWM")?, field("VmRSS")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process_memory() {
        let (peak, now) = memory_kb(std::process::id()).unwrap();
        assert!(peak >= now && now > 0);
    }
}
