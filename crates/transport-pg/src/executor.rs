//! [`Executor`]: anything that can run a statement inside the caller's open transaction.
//!
//! The transport writes sends through it, so the same code serves a handler's receive
//! transaction, a deadpool transaction and a plain tokio-postgres one. Pooled clients
//! prepare each statement once per connection; plain ones prepare it per call.

use std::future::Future;

use tokio_postgres::types::ToSql;

/// Runs one statement with bind parameters, returning the rows affected.
pub trait Executor: Sync {
    /// Executes `sql`, from a per-connection statement cache where there is one.
    fn execute_cached(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<u64, tokio_postgres::Error>> + Send;
}

impl Executor for deadpool_postgres::Client {
    async fn execute_cached(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, tokio_postgres::Error> {
        let statement = self.prepare_cached(sql).await?;
        self.execute(&statement, params).await
    }
}

impl Executor for deadpool_postgres::Transaction<'_> {
    async fn execute_cached(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, tokio_postgres::Error> {
        let statement = self.prepare_cached(sql).await?;
        self.execute(&statement, params).await
    }
}

impl Executor for tokio_postgres::Client {
    async fn execute_cached(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, tokio_postgres::Error> {
        self.execute(sql, params).await
    }
}

impl Executor for tokio_postgres::Transaction<'_> {
    async fn execute_cached(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, tokio_postgres::Error> {
        self.execute(sql, params).await
    }
}
