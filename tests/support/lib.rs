//! Fixtures for the end-to-end tests: a database per test, binaries to start, waiting.
//!
//! `scripts/test.sh` starts (or points at) a server, builds a migrated template database
//! once, and exports `PGBUS_TEST_ADMIN_URL` and `PGBUS_TEST_TEMPLATE`. Each test then gets
//! its own database cloned from the template. Run outside that script, the fixtures fall
//! back to `DATABASE_URL` and build the template themselves if it is missing.

pub mod cluster;
pub mod process;

use std::future::Future;
use std::time::{Duration, Instant};

use transport_pg::Database;
use transport_pg::tokio_postgres::{self, Client, NoTls};
use uuid::Uuid;

/// The template every test database is cloned from.
const DEFAULT_TEMPLATE: &str = "pgbus_template";

/// A database of one test's own.
pub struct TestDb {
    /// Its name, `pgbus_t_<hex>`.
    pub name: String,
    /// A connection string for it.
    pub url: String,
}

fn admin_url() -> String {
    std::env::var("PGBUS_TEST_ADMIN_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .unwrap_or_else(|_| {
            panic!(
                "no test database server: run scripts/test.sh, or set DATABASE_URL to a \
                 server where this user may CREATE DATABASE"
            )
        })
}

fn template() -> String {
    std::env::var("PGBUS_TEST_TEMPLATE").unwrap_or_else(|_| DEFAULT_TEMPLATE.to_owned())
}

/// `url` with its database name replaced by `dbname`.
pub fn url_for(url: &str, dbname: &str) -> String {
    let config: tokio_postgres::Config = url.parse().expect("admin URL parses");
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "127.0.0.1".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("postgres");
    let mut s = format!("host={host} port={port} user={user} dbname={dbname}");
    if let Some(password) = config.get_password() {
        s.push_str(&format!(
            " password='{}'",
            String::from_utf8_lossy(password)
        ));
    }
    s
}

/// Connects with a plain client, driving its connection on a task.
pub async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the test server: {e:?}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

impl TestDb {
    /// A fresh database cloned from the migrated template.
    pub async fn new() -> TestDb {
        let admin = connect(&admin_url()).await;
        ensure_template(&admin).await;
        let name = format!("pgbus_t_{}", Uuid::new_v4().simple());

        // CREATE DATABASE ... TEMPLATE fails while anyone is connected to the template,
        // which can briefly include a concurrent clone; try again then.
        let sql = format!("CREATE DATABASE {name} TEMPLATE {}", template());
        let mut attempt = 0;
        loop {
            match admin.batch_execute(&sql).await {
                Ok(()) => break,
                Err(e) if attempt < 50 => {
                    attempt += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("cannot create test database: {e:?}"),
            }
        }
        TestDb {
            url: url_for(&admin_url(), &name),
            name,
        }
    }

    /// A fresh database with nothing in it, not even the bus schema.
    pub async fn empty() -> TestDb {
        let admin = connect(&admin_url()).await;
        let name = format!("pgbus_t_{}", Uuid::new_v4().simple());
        admin
            .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE template0"))
            .await
            .expect("create empty database");
        TestDb {
            url: url_for(&admin_url(), &name),
            name,
        }
    }

    /// The transport's view of it.
    pub fn database(&self) -> Database {
        Database::from_url(&self.url).expect("test URL parses")
    }

    /// A plain client on it.
    pub async fn client(&self) -> Client {
        connect(&self.url).await
    }

    /// Runs a query returning one bigint.
    pub async fn count(&self, sql: &str) -> i64 {
        self.client()
            .await
            .query_one(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
            .get(0)
    }
}

/// Builds the template when the test script did not (a plain `cargo test`).
async fn ensure_template(admin: &Client) {
    let template = template();
    let exists = admin
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)",
            &[&template],
        )
        .await
        .expect("query pg_database")
        .get::<_, bool>(0);
    if exists {
        return;
    }

    // Serialize test processes that all find it missing.
    admin
        .execute("SELECT pg_advisory_lock(7305011)", &[])
        .await
        .expect("template lock");
    let exists: bool = admin
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)",
            &[&template],
        )
        .await
        .expect("query pg_database")
        .get(0);
    if !exists {
        let building = format!("{template}_building");
        // Two calls: a multi-statement string runs as one transaction block, which
        // CREATE and DROP DATABASE refuse.
        for sql in [
            format!("DROP DATABASE IF EXISTS {building}"),
            format!("CREATE DATABASE {building}"),
        ] {
            admin.batch_execute(&sql).await.expect("create template");
        }
        let db = Database::from_url(&url_for(&admin_url(), &building)).expect("url");
        transport_pg::migrate(&db, &transport_pg::bus_migrations())
            .await
            .expect("migrate template");
        // Give the migration connection a moment to go away before renaming.
        tokio::time::sleep(Duration::from_millis(200)).await;
        admin
            .batch_execute(&format!("ALTER DATABASE {building} RENAME TO {template}"))
            .await
            .expect("rename template");
    }
    admin
        .execute("SELECT pg_advisory_unlock(7305011)", &[])
        .await
        .expect("template unlock");
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes; returns whether it
/// held.
pub async fn wait_until<F, Fut>(timeout: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Serializes timing-sensitive tests under `cargo test`, where they share one process;
/// nextest runs them in its `timing` group instead.
pub static TIMING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The directory holding the workspace's built binaries (`target/debug`).
pub fn bin_dir() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/debug/deps/suite-<hash> -> target/debug
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binary lives in target/<profile>/deps");
    dir.to_path_buf()
}

/// The path of workspace binary `name`, failing with a clear message when not built.
pub fn bin(name: &str) -> std::path::PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "binary {} is not built; run scripts/test.sh, or `cargo build --workspace --bins` first",
        path.display()
    );
    path
}
