//! The example endpoint's message and handler, shared by its binary and the tests.
//!
//! A [`Work`] message tells the handler how to behave (sleep, fail a number of times,
//! panic, abort the process, forward itself), and the handler records every successful
//! handling in `example.handled`, a table with no unique index, so that tests can count
//! exactly how many times each message took effect.

use message::{Message, MessageKind};
use serde::{Deserialize, Serialize};
use transport_pg::{Context, Handler, HandlerError};

/// A unit of work for the example endpoint.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Work {
    /// A label recorded with the handling, for tests to find their rows.
    pub key: String,
    /// Milliseconds to sleep inside the transaction before recording.
    #[serde(default)]
    pub sleep_ms: u64,
    /// Fail while the message has failed fewer than this many times.
    #[serde(default)]
    pub fail_times: u32,
    /// Panic instead of handling.
    #[serde(default)]
    pub panic: bool,
    /// Abort the whole process, as an out-of-memory kill or a segfault would.
    #[serde(default)]
    pub abort: bool,
    /// After recording, send the same work (without this field) to that endpoint.
    #[serde(default)]
    pub forward_to: Option<String>,
}

impl Message for Work {
    const NAME: &'static str = "example.Work";
    const KIND: MessageKind = MessageKind::Command;
}

/// The business table, created at start-up.
pub const SCHEMA_SQL: &str = "\
CREATE SCHEMA IF NOT EXISTS example;
CREATE TABLE IF NOT EXISTS example.handled (
    message_id uuid        NOT NULL,
    key        text        NOT NULL,
    endpoint   text        NOT NULL,
    pid        integer     NOT NULL,
    attempt    integer     NOT NULL,
    handled_at timestamptz NOT NULL DEFAULT clock_timestamp()
);";

/// Handles [`Work`] as its fields say.
pub struct WorkHandler {
    /// The endpoint's name, recorded with each handling.
    pub endpoint: String,
}

impl Handler<Work> for WorkHandler {
    async fn handle(&self, work: Work, ctx: &mut Context<'_>) -> Result<(), HandlerError> {
        if work.abort {
            std::process::abort();
        }
        if work.sleep_ms > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(work.sleep_ms)).await;
        }
        if work.panic {
            panic!("work {} asked to panic", work.key);
        }
        let attempt = ctx.failed_attempts();
        if attempt < work.fail_times {
            return Err(HandlerError::msg(format!(
                "work {} fails on purpose (attempt {})",
                work.key,
                attempt + 1
            )));
        }

        ctx.tx()
            .execute(
                "INSERT INTO example.handled (message_id, key, endpoint, pid, attempt) \
                 VALUES ($1, $2, $3, $4, $5)",
                &[
                    &ctx.message_id(),
                    &work.key,
                    &self.endpoint,
                    &(std::process::id() as i32),
                    &(attempt as i32),
                ],
            )
            .await?;

        if let Some(destination) = &work.forward_to {
            let next = Work {
                forward_to: None,
                ..work.clone()
            };
            ctx.send_to(destination, &next)?;
        }
        Ok(())
    }
}
