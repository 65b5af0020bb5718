//! Message types and handlers the transport tests share.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use message::{Message, MessageKind};
use serde::{Deserialize, Serialize};
use tests::TestDb;
use transport_pg::{Context, Database, Endpoint, EndpointBuilder, Handler, HandlerError, Sender};

/// A command the test handlers receive.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Note {
    pub text: String,
    /// What the handler should do with it.
    #[serde(default)]
    pub mode: Mode,
}

impl Message for Note {
    const NAME: &'static str = "test.Note";
    const KIND: MessageKind = MessageKind::Command;
}

/// How [`Recorder`] treats a [`Note`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    /// Record it.
    #[default]
    Record,
    /// Record it, send a copy to `sink`, then fail on the first attempt only.
    FailFirst,
    /// Record it, send to `sink`, then panic on the first attempt only.
    PanicFirst,
    /// Record it, then run bad SQL, ignore the error and return Ok.
    SwallowError,
    /// Record it, then send to an endpoint that does not exist.
    SendToGhost,
    /// Fail every time.
    AlwaysFail,
    /// Record it, then fail on the first two attempts.
    FailTwice,
    /// Fail permanently with "order <text> was declined".
    Decline,
}

/// The business table of the test handlers: no unique index, so duplicates would show.
pub const RECORDS_SQL: &str = "\
CREATE TABLE IF NOT EXISTS public.records (
    message_id      uuid    NOT NULL,
    text            text    NOT NULL,
    failed_attempts integer NOT NULL,
    headers         jsonb   NOT NULL,
    txid            bigint  NOT NULL DEFAULT txid_current()
)";

/// Records each note in `public.records`, then does what its mode says.
pub struct Recorder {
    pub calls: Arc<AtomicU32>,
}

impl Handler<Note> for Recorder {
    async fn handle(&self, note: Note, ctx: &mut Context<'_>) -> Result<(), HandlerError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let headers = serde_json::to_value(
            ctx.headers()
                .iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect::<std::collections::BTreeMap<_, _>>(),
        )
        .expect("headers to json");
        let attempts = ctx.failed_attempts() as i32;
        ctx.tx()
            .execute(
                "INSERT INTO public.records (message_id, text, failed_attempts, headers) \
                 VALUES ($1, $2, $3, $4)",
                &[&ctx.message_id(), &note.text, &attempts, &headers],
            )
            .await?;

        let first = ctx.failed_attempts() == 0;
        match note.mode {
            Mode::Record => {}
            Mode::FailFirst => {
                ctx.send_to("sink", &note)?;
                if first {
                    return Err(HandlerError::msg("failing the first attempt on purpose"));
                }
            }
            Mode::PanicFirst => {
                ctx.send_to("sink", &note)?;
                if first {
                    panic!("panicking on the first attempt on purpose");
                }
            }
            Mode::SwallowError => {
                let _ignored = ctx.tx().execute("SELECT * FROM no_such_table", &[]).await;
            }
            Mode::SendToGhost => {
                ctx.send_to("ghost", &note)?;
            }
            Mode::AlwaysFail => return Err(HandlerError::msg("always failing")),
            Mode::FailTwice => {
                if ctx.failed_attempts() < 2 {
                    return Err(HandlerError::msg("failing the first two attempts"));
                }
            }
            Mode::Decline => {
                return Err(HandlerError::msg(format!(
                    "order {} was declined",
                    note.text
                )));
            }
        }
        Ok(())
    }
}

/// Creates `public.records` in `db`.
pub async fn create_records(db: &TestDb) {
    db.client()
        .await
        .batch_execute(RECORDS_SQL)
        .await
        .expect("create records table");
}

/// Starts endpoint `name` with a [`Recorder`]; `configure` adjusts the builder.
pub async fn start_recorder(
    db: &Database,
    name: &str,
    calls: Arc<AtomicU32>,
    configure: impl FnOnce(EndpointBuilder) -> EndpointBuilder,
) -> Endpoint {
    let builder = EndpointBuilder::new(name, db.clone())
        .handler::<Note, _>(Recorder { calls })
        .idle_poll_max(Duration::from_millis(200));
    configure(builder).start().await.expect("endpoint starts")
}

/// Installs endpoint `name` with no handlers and no workers running for long: it is
/// started and shut down at once, leaving its tables behind.
pub async fn install_only(db: &Database, name: &str) {
    let endpoint = EndpointBuilder::new(name, db.clone())
        .start()
        .await
        .expect("install endpoint");
    endpoint.shutdown(Duration::from_secs(5)).await;
}

/// A sender routing [`Note`] to `to`.
pub fn sender(db: &Database, to: &str) -> Sender {
    Sender::builder(db, "test-client")
        .route::<Note>(to)
        .expect("route")
        .build()
        .expect("sender")
}

/// A command whose handler locks the row of `key` in `public.locks` and holds it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Lock {
    pub key: String,
    pub hold_ms: u64,
}

impl Message for Lock {
    const NAME: &'static str = "test.Lock";
    const KIND: MessageKind = MessageKind::Command;
}

/// The rows [`Locker`] locks, and its log of handlings.
pub const LOCKS_SQL: &str = "\
CREATE TABLE IF NOT EXISTS public.locks (key text PRIMARY KEY, n integer NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS public.lock_log (key text NOT NULL, failed_attempts integer NOT NULL);
INSERT INTO public.locks (key) VALUES ('a'), ('b'), ('warm') ON CONFLICT DO NOTHING;";

/// Locks `key`'s row, holds it, and declares the key so batches are ordered by it.
pub struct Locker;

impl Handler<Lock> for Locker {
    async fn handle(&self, lock: Lock, ctx: &mut Context<'_>) -> Result<(), HandlerError> {
        ctx.tx()
            .execute(
                "UPDATE public.locks SET n = n + 1 WHERE key = $1",
                &[&lock.key],
            )
            .await?;
        tokio::time::sleep(Duration::from_millis(lock.hold_ms)).await;
        ctx.tx()
            .execute(
                "INSERT INTO public.lock_log (key, failed_attempts) VALUES ($1, $2)",
                &[&lock.key, &(ctx.failed_attempts() as i32)],
            )
            .await?;
        Ok(())
    }

    fn lock_key(&self, lock: &Lock) -> Option<String> {
        Some(lock.key.clone())
    }
}

/// A command whose handler reports the instant it started.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Ping {
    pub n: u32,
}

impl Message for Ping {
    const NAME: &'static str = "test.Ping";
    const KIND: MessageKind = MessageKind::Command;
}

/// Sends `(n, the instant the handler started)` on its channel.
pub struct Pinger {
    pub started: tokio::sync::mpsc::UnboundedSender<(u32, std::time::Instant)>,
}

impl Handler<Ping> for Pinger {
    async fn handle(&self, ping: Ping, _ctx: &mut Context<'_>) -> Result<(), HandlerError> {
        let _ = self.started.send((ping.n, std::time::Instant::now()));
        Ok(())
    }
}

/// Sends `count` plain notes numbered from 0 through `sender`, `per_tx` to a transaction.
pub async fn send_numbered_notes(sender: &Sender, count: usize, per_tx: usize) {
    assert_eq!(
        count % per_tx,
        0,
        "{count} notes do not fill transactions of {per_tx}"
    );
    let mut client = sender.pool().get().await.unwrap();
    for chunk in 0..count / per_tx {
        let tx = client.transaction().await.unwrap();
        let mut outbox = sender.outbox();
        for i in 0..per_tx {
            let text = format!("{}", chunk * per_tx + i);
            outbox
                .send(&Note {
                    text,
                    ..Note::default()
                })
                .unwrap();
        }
        outbox.write(&tx).await.unwrap();
        tx.commit().await.unwrap();
        outbox.committed();
    }
}

/// Sends `count` plain notes to `to` and waits until `records` has `count` more rows, so
/// that the endpoint has left its careful mode (twenty successes) before a test starts.
pub async fn warm_up(db: &TestDb, to: &str, count: usize) {
    let sender = sender(&db.database(), to);
    let before = db.count("SELECT count(*) FROM records").await;
    for i in 0..count {
        sender
            .send(&Note {
                text: format!("warm-{i}"),
                ..Note::default()
            })
            .await
            .expect("warm-up send");
    }
    let target = before + count as i64;
    let warmed = tests::wait_until(Duration::from_secs(30), || async {
        db.count("SELECT count(*) FROM records").await >= target
    })
    .await;
    assert!(warmed, "warm-up notes handled");
}

/// Fails every note while `broken` is set, recording the instant of every attempt.
pub struct Switch {
    pub broken: Arc<std::sync::atomic::AtomicBool>,
    pub attempts: Arc<std::sync::Mutex<Vec<std::time::Instant>>>,
}

impl Handler<Note> for Switch {
    async fn handle(&self, note: Note, ctx: &mut Context<'_>) -> Result<(), HandlerError> {
        self.attempts
            .lock()
            .unwrap()
            .push(std::time::Instant::now());
        if self.broken.load(Ordering::SeqCst) {
            return Err(HandlerError::msg("the switch is off"));
        }
        ctx.tx()
            .execute(
                "INSERT INTO public.records (message_id, text, failed_attempts, headers) \
                 VALUES ($1, $2, $3, '{}')",
                &[
                    &ctx.message_id(),
                    &note.text,
                    &(ctx.failed_attempts() as i32),
                ],
            )
            .await?;
        Ok(())
    }
}

/// An event for the publish/subscribe tests.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Happened {
    pub text: String,
}

impl Message for Happened {
    const NAME: &'static str = "test.Happened";
    const KIND: MessageKind = MessageKind::Event;
}

/// Records each event as `<endpoint>:<text>`; on "ask" text it replies with a Note.
pub struct EventRecorder;

impl Handler<Happened> for EventRecorder {
    async fn handle(&self, event: Happened, ctx: &mut Context<'_>) -> Result<(), HandlerError> {
        let text = format!("{}:{}", ctx.endpoint(), event.text);
        ctx.tx()
            .execute(
                "INSERT INTO public.records (message_id, text, failed_attempts, headers) \
                 VALUES ($1, $2, 0, '{}')",
                &[&ctx.message_id(), &text],
            )
            .await?;
        if event.text == "ask" {
            ctx.reply(&Note {
                text: format!("reply from {}", ctx.endpoint()),
                ..Note::default()
            })?;
        }
        Ok(())
    }
}

/// Starts endpoint `name` subscribed to [`Happened`].
pub async fn start_subscriber(db: &Database, name: &str) -> Endpoint {
    EndpointBuilder::new(name, db.clone())
        .handler::<Happened, _>(EventRecorder)
        .idle_poll_max(Duration::from_millis(200))
        .start()
        .await
        .expect("subscriber starts")
}
