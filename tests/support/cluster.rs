//! A private PostgreSQL cluster of one test's own, for tests that restart the server.
//!
//! Never the shared server other tests use. It needs the server binaries
//! (`PGBUS_TEST_PG_BINDIR`, set by scripts/test.sh, or found under /usr/lib/postgresql),
//! and runs as the `postgres` OS user when the tests run as root, because initdb refuses
//! to run as root.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A running private cluster; stopped and removed on drop.
pub struct PrivateCluster {
    bindir: PathBuf,
    dir: PathBuf,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

fn find_bindir() -> PathBuf {
    let from_env = std::env::var("PGBUS_TEST_PG_BINDIR")
        .ok()
        .filter(|d| !d.is_empty());
    let mut candidates: Vec<PathBuf> = from_env.into_iter().map(PathBuf::from).collect();
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<PathBuf> = entries.flatten().map(|e| e.path().join("bin")).collect();
        versions.sort();
        candidates.extend(versions.into_iter().rev());
    }
    candidates
        .into_iter()
        .find(|d| d.join("initdb").exists() && d.join("pg_ctl").exists())
        .unwrap_or_else(|| {
            panic!(
                "this test needs the PostgreSQL server binaries (initdb, pg_ctl): install the \
                 postgresql package or set PGBUS_TEST_PG_BINDIR"
            )
        })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Runs `program args` as the postgres user when we are root, else as ourselves.
fn run_as_owner(program: &Path, args: &[&str]) -> std::process::Output {
    let mut command = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    command
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()))
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

impl PrivateCluster {
    /// Creates and starts a cluster in a fresh temporary directory.
    pub fn start() -> PrivateCluster {
        let bindir = find_bindir();
        let dir = std::env::temp_dir().join(format!("pgbus-private-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("create cluster dir");
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .expect("chown");
            assert!(status.success(), "chown of {} failed", dir.display());
        }
        let data = dir.join("data");
        let data_arg = data.to_string_lossy().into_owned();
        let out = run_as_owner(
            &bindir.join("initdb"),
            &[
                "-D",
                &data_arg,
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ],
        );
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );

        let cluster = PrivateCluster {
            bindir,
            dir,
            port: free_port(),
        };
        cluster.pg_ctl(&["start", "-w", "-t", "60"]);
        cluster
    }

    fn pg_ctl(&self, action: &[&str]) {
        let data = self.dir.join("data").to_string_lossy().into_owned();
        let log = self.dir.join("server.log").to_string_lossy().into_owned();
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -c unix_socket_directories={} \
             -c max_connections=100 -c fsync=off",
            self.port,
            self.dir.display()
        );
        let mut args = vec![
            "-D",
            data.as_str(),
            "-l",
            log.as_str(),
            "-o",
            options.as_str(),
        ];
        args.extend_from_slice(action);
        let out = run_as_owner(&self.bindir.join("pg_ctl"), &args);
        assert!(
            out.status.success(),
            "pg_ctl {action:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A connection string for database `dbname`.
    pub fn url(&self, dbname: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={dbname}",
            self.port
        )
    }

    /// Crashes and restarts the server (`pg_ctl restart -m immediate`).
    pub fn restart_immediate(&self) {
        self.pg_ctl(&["restart", "-m", "immediate", "-w", "-t", "60"]);
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let data = self.dir.join("data").to_string_lossy().into_owned();
        let _ = run_as_owner(
            &self.bindir.join("pg_ctl"),
            &["-D", &data, "stop", "-m", "immediate"],
        );
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
