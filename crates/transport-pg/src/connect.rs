//! Connection settings, the pool, and the dedicated connections made outside it.
//!
//! Every connection starts with a statement timeout and an idle-in-transaction timeout
//! (as startup options, so they hold for every statement on it) and with TCP keepalives;
//! the pool has wait and create timeouts, so an outage surfaces as an error to handle,
//! never as a hang.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;
use tokio_postgres_rustls::MakeRustlsConnect;
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
    tls: MakeRustlsConnect,
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
    /// A PEM file of extra certificate authorities to trust, for servers whose
    /// certificates a private authority signed (most managed services publish one).
    pub ca_file: Option<PathBuf>,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        DatabaseSettings {
            statement_timeout: Duration::from_secs(30),
            idle_in_transaction_timeout: Duration::from_secs(60),
            pool_wait_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            keepalive_idle: Duration::from_secs(30),
            ca_file: None,
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
        let settings = DatabaseSettings::default();
        Ok(Database {
            tls: tls_connector(&config, settings.ca_file.as_deref())?,
            config,
            settings,
        })
    }

    /// Replaces the timeouts and the CA file; fails when the CA file cannot be read.
    pub fn with_settings(mut self, settings: DatabaseSettings) -> Result<Self> {
        self.tls = tls_connector(&self.config, settings.ca_file.as_deref())?;
        self.settings = settings;
        Ok(self)
    }

    /// The TLS mode asked for, for logs.
    pub fn ssl_mode(&self) -> &'static str {
        match self.config.get_ssl_mode() {
            tokio_postgres::config::SslMode::Disable => "disable",
            tokio_postgres::config::SslMode::Require => "require",
            _ => "prefer",
        }
    }

    /// Connections the server allows and how many are in use, for the start-up budget
    /// check: `(max_connections, superuser_reserved_connections, in use)`.
    pub async fn connection_budget(&self) -> Result<(i32, i32, i64)> {
        let client = self.connect("budget check").await?;
        let row = client
            .query_one(
                "SELECT current_setting('max_connections')::integer, \
                        current_setting('superuser_reserved_connections')::integer, \
                        (SELECT count(*) FROM pg_stat_activity \
                         WHERE backend_type = 'client backend')",
                &[],
            )
            .await
            .map_err(Error::db("read the connection budget"))?;
        // This check's own connection is about to close; it does not count.
        Ok((row.get(0), row.get(1), row.get::<_, i64>(2) - 1))
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
            .connect(self.tls.clone())
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
            .connect(self.tls.clone())
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
            self.tls.clone(),
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
            .field("sslmode", &self.ssl_mode())
            .field(
                "target_session_attrs",
                &self.config.get_target_session_attrs(),
            )
            .field("settings", &self.settings)
            .finish()
    }
}

/// The TLS connector every connection uses. Whether TLS is used at all is the connection
/// string's `sslmode`, as libpq reads it: `disable` never; `prefer` (the default) when the
/// server offers it, encrypting without checking the certificate, as libpq's `prefer`
/// does (a stock Debian server offers TLS with a self-signed certificate); `require`
/// always, and here the server's certificate is also verified against the Mozilla roots
/// plus `ca_file`, so `require` means what libpq calls `verify-full`.
fn tls_connector(
    config: &tokio_postgres::Config,
    ca_file: Option<&Path>,
) -> Result<MakeRustlsConnect> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("TLS set-up: {e}")))?;

    let verify = config.get_ssl_mode() == tokio_postgres::config::SslMode::Require;
    let tls = if verify {
        builder
            .with_root_certificates(trusted_roots(ca_file)?)
            .with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(EncryptOnly { provider }))
            .with_no_client_auth()
    };
    Ok(MakeRustlsConnect::new(tls))
}

/// The Mozilla roots, plus every certificate in `ca_file`.
fn trusted_roots(ca_file: Option<&Path>) -> Result<rustls::RootCertStore> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;

    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let Some(path) = ca_file else {
        return Ok(roots);
    };

    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| Error::Config(format!("cannot read CA file {}: {e}", path.display())))?;
    let mut added = 0;
    for cert in certs {
        let cert =
            cert.map_err(|e| Error::Config(format!("bad CA file {}: {e}", path.display())))?;
        roots
            .add(cert)
            .map_err(|e| Error::Config(format!("bad CA in {}: {e}", path.display())))?;
        added += 1;
    }
    if added == 0 {
        return Err(Error::Config(format!(
            "CA file {} holds no certificate",
            path.display()
        )));
    }
    Ok(roots)
}

/// `sslmode=prefer`: encrypt, accept whatever certificate the server shows, but still
/// check that the handshake is signed by it.
#[derive(Debug)]
struct EncryptOnly {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
