//! Connection settings, the pool, and the dedicated connections made outside it.
//!
//! Every connection starts with a statement timeout and an idle-in-transaction timeout
//! (as startup options, so they hold for every statement on it) and with TCP keepalives;
//! the pool has wait and create timeouts, so an outage surfaces as an error to handle,
//! never as a hang.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, NoTls};
use tracing::debug;

use crate::error::{Error, Result};

/// Where the database is and how long to wait for it.
///
/// Built from a libpq-style URL or key/value string; see the README for the `sslmode`
/// and `target_session_attrs` values honoured.
#[derive(Clone)]
pub struct Database {
    config: tokio_postgres::Config,
    settings: DatabaseSettings,
}

/// Timeouts applied to every connection and to the pool. The defaults suit an endpoint
/// whose handlers make external calls of at most a few seconds.
#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    /// Longest any one statement may run (`statement_timeout`). Default 30 s.
    pub statement_timeout: Duration,
    /// Longest a transaction may sit idle (`idle_in_transaction_session_timeout`); must be
    /// longer than the longest external call a handler makes. Default 60 s.
    pub idle_in_transaction_timeout: Duration,
    /// Longest to wait for a free pooled connection. Default 10 s.
    pub pool_wait_timeout: Duration,
    /// Longest to wait for a new connection to be made. Default 10 s.
    pub connect_timeout: Duration,
    /// Idle time before TCP keepalive probes start. Default 30 s.
    pub keepalive_idle: Duration,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        DatabaseSettings {
            statement_timeout: Duration::from_secs(30),
            idle_in_transaction_timeout: Duration::from_secs(60),
            pool_wait_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            keepalive_idle: Duration::from_secs(30),
        }
    }
}

impl Database {
    /// Parses a connection string (`postgres://user@host:port/db?...` or
    /// `host=... dbname=...`).
    pub fn from_url(url: &str) -> Result<Self> {
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| Error::Config(format!("bad database URL: {e}")))?;
        Ok(Database {
            config,
            settings: DatabaseSettings::default(),
        })
    }

    /// Replaces the timeouts.
    pub fn with_settings(mut self, settings: DatabaseSettings) -> Self {
        self.settings = settings;
        self
    }

    /// The timeouts in force.
    pub fn settings(&self) -> &DatabaseSettings {
        &self.settings
    }

    /// The database name, for logs.
    pub fn dbname(&self) -> &str {
        self.config.get_dbname().unwrap_or("")
    }

    /// The driver configuration with our timeouts, keepalives and application name.
    fn effective_config(&self, application_name: &str) -> tokio_postgres::Config {
        let mut config = self.config.clone();
        let s = &self.settings;

        let ours = format!(
            "-c statement_timeout={} -c idle_in_transaction_session_timeout={}",
            s.statement_timeout.as_millis(),
            s.idle_in_transaction_timeout.as_millis()
        );
        let options = match config.get_options() {
            Some(theirs) if !theirs.is_empty() => format!("{ours} {theirs}"),
            _ => ours,
        };
        config.options(&options);

        if config.get_application_name().is_none() {
            config.application_name(application_name);
        }
        config.connect_timeout(s.connect_timeout);
        config.keepalives(true);
        config.keepalives_idle(s.keepalive_idle);
        config
    }

    /// Opens one connection outside the pool, for work that must not share one (the
    /// migration lock, the listener), and spawns its IO task.
    pub async fn connect(&self, purpose: &'static str) -> Result<tokio_postgres::Client> {
        let config = self.effective_config(&format!("pgbus {purpose}"));
        let (client, connection) = config
            .connect(NoTls)
            .await
            .map_err(|source| Error::Connect { purpose, source })?;

        tokio::spawn(async move {
            if let Err(error) = connection.await {
                debug!(purpose, %error, "dedicated connection closed");
            }
        });
        Ok(client)
    }

    /// Opens a dedicated connection whose notifications arrive on the returned channel;
    /// the channel closes when the connection is lost.
    pub async fn connect_with_stream(
        &self,
        purpose: &'static str,
    ) -> Result<(
        tokio_postgres::Client,
        mpsc::UnboundedReceiver<tokio_postgres::Notification>,
    )> {
        let config = self.effective_config(&format!("pgbus {purpose}"));
        let (client, mut connection) = config
            .connect(NoTls)
            .await
            .map_err(|source| Error::Connect { purpose, source })?;

        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(|cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                match message {
                    Ok(AsyncMessage::Notification(n)) => {
                        if tx.send(n).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(error) => {
                        debug!(purpose, %error, "dedicated connection closed");
                        return;
                    }
                }
            }
        });
        Ok((client, rx))
    }

    /// Builds a pool of at most `size` connections named `application_name`.
    pub fn pool(&self, application_name: &str, size: usize) -> Result<Pool> {
        let manager = Manager::from_config(
            self.effective_config(application_name),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );

        // Both timeouts need a runtime to take effect; without one deadpool ignores them
        // and a dead server makes `get` wait forever.
        Pool::builder(manager)
            .max_size(size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(self.settings.pool_wait_timeout))
            .create_timeout(Some(self.settings.connect_timeout))
            .recycle_timeout(Some(self.settings.connect_timeout))
            .build()
            .map_err(|e| Error::Config(format!("cannot build the connection pool: {e}")))
    }
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The password never appears in logs.
        f.debug_struct("Database")
            .field("hosts", &self.config.get_hosts())
            .field("ports", &self.config.get_ports())
            .field("dbname", &self.config.get_dbname())
            .field("user", &self.config.get_user())
            .field("settings", &self.settings)
            .finish()
    }
}
