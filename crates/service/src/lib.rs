//! The conventions every binary follows: the database flags (each also an environment
//! variable), the log flags, and the logging set-up.
//!
//! It owns no behaviour of the bus; it only turns flags into a [`transport_pg::Database`]
//! and a tracing subscriber, so that every binary reads its configuration the same way.

pub mod endpoint;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use transport_pg::{Database, DatabaseSettings};

/// Where the database is and how long to wait for it.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL connection string (URL or key=value). `sslmode` (disable, prefer,
    /// require) and `target_session_attrs=read-write` are honoured.
    // hide_env_values: --help must not print a password taken from the environment.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,

    /// Longest any one statement may run, in milliseconds.
    #[arg(long, env = "PGBUS_STATEMENT_TIMEOUT_MS", default_value_t = 30_000)]
    pub statement_timeout_ms: u64,

    /// Longest a transaction may sit idle, in milliseconds; keep it above the longest
    /// external call a handler makes.
    #[arg(
        long,
        env = "PGBUS_IDLE_IN_TRANSACTION_TIMEOUT_MS",
        default_value_t = 60_000
    )]
    pub idle_in_transaction_timeout_ms: u64,

    /// Longest to wait for a free pooled connection, in milliseconds.
    #[arg(long, env = "PGBUS_POOL_WAIT_TIMEOUT_MS", default_value_t = 10_000)]
    pub pool_wait_timeout_ms: u64,

    /// Longest to wait for a new connection, in milliseconds.
    #[arg(long, env = "PGBUS_CONNECT_TIMEOUT_MS", default_value_t = 10_000)]
    pub connect_timeout_ms: u64,

    /// A PEM file of certificate authorities to trust besides the public ones.
    #[arg(long, env = "PGBUS_CA_FILE")]
    pub ca_file: Option<PathBuf>,
}

impl DatabaseArgs {
    /// The database these flags describe.
    pub fn database(&self) -> Result<Database, transport_pg::Error> {
        let settings = DatabaseSettings {
            statement_timeout: Duration::from_millis(self.statement_timeout_ms),
            idle_in_transaction_timeout: Duration::from_millis(self.idle_in_transaction_timeout_ms),
            pool_wait_timeout: Duration::from_millis(self.pool_wait_timeout_ms),
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            ca_file: self.ca_file.clone(),
            ..DatabaseSettings::default()
        };
        Database::from_url(&self.database_url)?.with_settings(settings)
    }
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One readable line per event.
    Human,
    /// One JSON object per event, for log collectors.
    Json,
}

/// The log flags.
#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
}

/// Sets up logging to stderr; `RUST_LOG` overrides `default_filter` (e.g. `info`).
pub fn init_logging(format: LogFormat, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| default_filter.into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
