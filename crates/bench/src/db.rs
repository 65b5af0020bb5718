//! The throwaway server the bench runs on: connection strings, its databases, and the
//! few maintenance statements run between measurements.
//!
//! The bench only ever talks to a server on the loopback interface: [`Server::new`]
//! refuses any other host, so a mistyped flag cannot point the load at a real machine.

use std::net::IpAddr;

use transport_pg::Database;
use transport_pg::tokio_postgres::Client;

use crate::error::{Error, Result};

/// Where the throwaway cluster listens.
#[derive(Debug, Clone)]
pub struct Server {
    /// A loopback address or `localhost`.
    pub host: String,
    /// The TCP port.
    pub port: u16,
    /// The superuser the script started the cluster with.
    pub user: String,
}

impl Server {
    /// A server on `host`, which must be a loopback address or `localhost`.
    pub fn new(host: &str, port: u16, user: &str) -> Result<Server> {
        let loopback = host == "localhost"
            || host
                .parse::<IpAddr>()
                .map(|ip| ip.is_loopback())
                .unwrap_or(false);
        if !loopback {
            return Err(Error::Config(format!(
                "host {host:?} is not a loopback address; the bench only loads local servers"
            )));
        }
        if !is_identifier(user) {
            return Err(Error::Config(format!(
                "user {user:?} is not a plain identifier"
            )));
        }
        Ok(Server {
            host: host.to_owned(),
            port,
            user: user.to_owned(),
        })
    }

    /// The URL of database `db`.
    pub fn url(&self, db: &str) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!(
            "postgres://{}@{host}:{}/{db}?sslmode=disable",
            self.user, self.port
        )
    }

    /// The transport's handle on database `db`.
    pub fn database(&self, db: &str) -> Result<Database> {
        Database::from_url(&self.url(db)).map_err(Error::transport(format!("open {db}")))
    }

    /// One plain connection to `db`.
    pub async fn connect(&self, db: &str) -> Result<Client> {
        self.database(db)?
            .connect("bench")
            .await
            .map_err(Error::transport(format!("connect to {db}")))
    }

    /// Drops `db` if it exists and creates it empty.
    pub async fn recreate_database(&self, db: &str) -> Result<()> {
        let admin = self.connect("postgres").await?;
        let quoted = quote_ident(db)?;
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {quoted} WITH (FORCE)"))
            .await
            .map_err(Error::db(format!("drop database {db}")))?;
        admin
            .batch_execute(&format!("CREATE DATABASE {quoted}"))
            .await
            .map_err(Error::db(format!("create database {db}")))?;
        Ok(())
    }
}

/// Whether `name` is a lower-case identifier that needs no quoting.
fn is_identifier(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// `name` quoted as an SQL identifier, after checking it is a plain lower-case one.
pub fn quote_ident(name: &str) -> Result<String> {
    if !is_identifier(name) {
        return Err(Error::Config(format!("{name:?} is not a plain identifier")));
    }
    Ok(format!("\"{name}\""))
}

/// Vacuums `table` (already quoted), so that each measurement starts from a queue
/// without the dead rows the previous one left.
pub async fn vacuum(client: &Client, table: &str) -> Result<()> {
    client
        .batch_execute(&format!("VACUUM {table}"))
        .await
        .map_err(Error::db(format!("vacuum {table}")))
}

/// Runs a checkpoint, so that none starts inside the section that follows.
pub async fn checkpoint(client: &Client) -> Result<()> {
    client
        .batch_execute("CHECKPOINT")
        .await
        .map_err(Error::db("checkpoint"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_hosts_are_accepted() {
        for host in ["127.0.0.1", "127.1.2.3", "::1", "localhost"] {
            assert!(Server::new(host, 5432, "postgres").is_ok(), "{host}");
        }
        for host in ["10.0.0.1", "192.168.1.1", "8.8.8.8", "db.example.com", ""] {
            assert!(Server::new(host, 5432, "postgres").is_err(), "{host}");
        }
    }

    #[test]
    fn identifiers_are_checked_before_quoting() {
        assert_eq!(quote_ident("bench_hop").unwrap(), "\"bench_hop\"");
        for bad in ["Bench", "a-b", "a\"b", "1a", ""] {
            assert!(quote_ident(bad).is_err(), "{bad}");
        }
    }
}
