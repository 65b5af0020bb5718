//! [`Executor`]: anything that can run a statement inside the caller's open transaction.
//!
//! The transport writes sends through it, so the same code serves a handler's receive
//! transaction, a deadpool transaction and a plain tokio-postgres one. Pooled clients
//! prepare each statement once per connection; plain ones prepare it per call.

use std::future::Future;

use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, Statement};

/// Prepares and runs statements with bind parameters.
pub trait Executor: Sync {
    /// Prepares `sql`, from a per-connection statement cache where there is one.
    fn prepare_statement(
        &self,
        sql: &str,
    ) -> impl Future<Output = Result<Statement, tokio_postgres::Error>> + Send;

    /// Runs a prepared statement, returning the rows affected. The request is sent when
    /// the future is first polled, so several of these polled together are pipelined.
    fn execute_statement(
        &self,
        statement: &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<u64, tokio_postgres::Error>> + Send;

    /// Runs a prepared query, returning its rows.
    fn query_statement(
        &self,
        statement: &Statement,
        params: &[&(dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<Vec<Row>, tokio_postgres::Error>> + Send;

    /// Prepares (or finds) `sql` and runs it.
    fn execute_cached(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<u64, tokio_postgres::Error>> + Send {
        async move {
            let statement = self.prepare_statement(sql).await?;
            self.execute_statement(&statement, params).await
        }
    }
}

macro_rules! cached_executor {
    ($ty:ty) => {
        impl Executor for $ty {
            async fn prepare_statement(
                &self,
                sql: &str,
            ) -> Result<Statement, tokio_postgres::Error> {
                self.prepare_cached(sql).await
            }

            fn execute_statement(
                &self,
                statement: &Statement,
                params: &[&(dyn ToSql + Sync)],
            ) -> impl Future<Output = Result<u64, tokio_postgres::Error>> + Send {
                self.execute(statement, params)
            }

            fn query_statement(
                &self,
                statement: &Statement,
                params: &[&(dyn ToSql + Sync)],
            ) -> impl Future<Output = Result<Vec<Row>, tokio_postgres::Error>> + Send {
                self.query(statement, params)
            }
        }
    };
}

macro_rules! plain_executor {
    ($ty:ty) => {
        impl Executor for $ty {
            async fn prepare_statement(
                &self,
                sql: &str,
            ) -> Result<Statement, tokio_postgres::Error> {
                self.prepare(sql).await
            }

            fn execute_statement(
                &self,
                statement: &Statement,
                params: &[&(dyn ToSql + Sync)],
            ) -> impl Future<Output = Result<u64, tokio_postgres::Error>> + Send {
                self.execute(statement, params)
            }

            fn query_statement(
                &self,
                statement: &Statement,
                params: &[&(dyn ToSql + Sync)],
            ) -> impl Future<Output = Result<Vec<Row>, tokio_postgres::Error>> + Send {
                self.query(statement, params)
            }
        }
    };
}

cached_executor!(deadpool_postgres::Client);
cached_executor!(deadpool_postgres::Transaction<'_>);
plain_executor!(tokio_postgres::Client);
plain_executor!(tokio_postgres::Transaction<'_>);
