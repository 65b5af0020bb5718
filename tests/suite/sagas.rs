//! Sagas: lock-or-create, racing starts, completion and closed records, timeouts, the
//! not-found rule, rollback with the business writes, the purge, and the store's plans.
//!
//! The test saga, `Checkout`, ships an order once it is both placed and billed; every
//! step writes a row to `sagatest.effects` (the business write) in its transaction.

use std::time::Duration;

use message::{Message, MessageKind};
use persistence_pg::{
    NotFound, Saga, SagaContext, SagaEndpointExt, SagaHandles, SagaMessages, SagaRecord,
    SagaRegistration, SagaState, SagaTimeout,
};
use serde::{Deserialize, Serialize};
use tests::{TIMING, TestDb, wait_until};
use transport_pg::{Database, EndpointBuilder, HandlerError, Headers, Sender, header};

use crate::fixtures::install_only;

// --- the test saga's messages ----------------------------------------------------------

macro_rules! sagatest_message {
    ($ty:ident) => {
        impl Message for $ty {
            const NAME: &'static str = concat!("sagatest.", stringify!($ty));
            const KIND: MessageKind = MessageKind::Command;
        }
    };
}

/// Starts a checkout. Optionally requests a timeout, holds the transaction, or fails.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Placed {
    order: String,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    hold_ms: u64,
    #[serde(default)]
    fail: bool,
}
sagatest_message!(Placed);

/// Also starts a checkout.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Billed {
    order: String,
    #[serde(default)]
    hold_ms: u64,
}
sagatest_message!(Billed);

/// Completes the checkout; optionally replies to the originator, or fails afterwards.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Shipped {
    order: String,
    #[serde(default)]
    confirm: bool,
    #[serde(default)]
    fail: bool,
}
sagatest_message!(Shipped);

/// Never starts a checkout: counts, writes, sends, requests a timeout, then maybe fails.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Poke {
    order: String,
    #[serde(default)]
    hold_ms: u64,
    #[serde(default)]
    fail: bool,
}
sagatest_message!(Poke);

/// Sent to `sink` once the order is placed and billed.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Ship {
    order: String,
}
sagatest_message!(Ship);

/// Sent to `sink` by every poke.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Poked {
    order: String,
}
sagatest_message!(Poked);

/// The reply to the originator on a confirmed shipment.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Confirmed {
    order: String,
}
sagatest_message!(Confirmed);

/// The checkout's timeout.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Due {
    order: String,
}
sagatest_message!(Due);

// --- the test saga ---------------------------------------------------------------------

struct Checkout;

/// The checkout's data; `attempts` is each handled message's failed-attempt count.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Progress {
    placed: bool,
    billed: bool,
    ship_sent: bool,
    pokes: u32,
    timeouts: u32,
    attempts: Vec<u32>,
}

const CHECKOUT: &str = "sagatest.Checkout";

impl Saga for Checkout {
    const NAME: &'static str = CHECKOUT;
    type Data = Progress;

    fn messages(m: &mut SagaMessages<Self>) {
        m.handles::<Placed>()
            .handles::<Billed>()
            .handles::<Shipped>()
            .handles::<Poke>()
            .timeout::<Due>();
    }
}

type Ctx<'a, 'm> = SagaContext<'a, 'm, Checkout>;

impl SagaHandles<Placed> for Checkout {
    const STARTS: bool = true;

    fn correlate(placed: &Placed) -> String {
        placed.order.clone()
    }

    async fn handle(
        &self,
        progress: &mut Progress,
        placed: Placed,
        ctx: &mut Ctx<'_, '_>,
    ) -> Result<(), HandlerError> {
        progress.placed = true;
        progress.attempts.push(ctx.failed_attempts());
        effect(ctx, "placed").await?;
        if let Some(ms) = placed.timeout_ms {
            let due = Due {
                order: placed.order,
            };
            ctx.request_timeout(Duration::from_millis(ms), due)?;
        }
        hold(placed.hold_ms).await;
        ship_when_ready(progress, ctx).await?;
        if placed.fail {
            return Err(HandlerError::msg("placed: failing on purpose"));
        }
        Ok(())
    }
}

impl SagaHandles<Billed> for Checkout {
    const STARTS: bool = true;

    fn correlate(billed: &Billed) -> String {
        billed.order.clone()
    }

    async fn handle(
        &self,
        progress: &mut Progress,
        billed: Billed,
        ctx: &mut Ctx<'_, '_>,
    ) -> Result<(), HandlerError> {
        progress.billed = true;
        progress.attempts.push(ctx.failed_attempts());
        effect(ctx, "billed").await?;
        hold(billed.hold_ms).await;
        ship_when_ready(progress, ctx).await
    }
}

impl SagaHandles<Shipped> for Checkout {
    fn correlate(shipped: &Shipped) -> String {
        shipped.order.clone()
    }

    async fn handle(
        &self,
        progress: &mut Progress,
        shipped: Shipped,
        ctx: &mut Ctx<'_, '_>,
    ) -> Result<(), HandlerError> {
        progress.attempts.push(ctx.failed_attempts());
        effect(ctx, "shipped").await?;
        if shipped.confirm {
            ctx.reply_to_originator(&Confirmed {
                order: shipped.order,
            })?;
        }
        ctx.mark_complete();
        if shipped.fail {
            return Err(HandlerError::msg("shipped: failing on purpose"));
        }
        Ok(())
    }
}

impl SagaHandles<Poke> for Checkout {
    fn correlate(poke: &Poke) -> String {
        poke.order.clone()
    }

    async fn handle(
        &self,
        progress: &mut Progress,
        poke: Poke,
        ctx: &mut Ctx<'_, '_>,
    ) -> Result<(), HandlerError> {
        progress.pokes += 1;
        progress.attempts.push(ctx.failed_attempts());
        effect(ctx, "poke").await?;
        ctx.send_to(
            "sink",
            &Poked {
                order: poke.order.clone(),
            },
        )?;
        let due = Due { order: poke.order };
        ctx.request_timeout(Duration::from_secs(3600), due)?;
        hold(poke.hold_ms).await;
        if poke.fail {
            return Err(HandlerError::msg("poke: failing on purpose"));
        }
        Ok(())
    }
}

impl SagaTimeout<Due> for Checkout {
    fn correlate(due: &Due) -> String {
        due.order.clone()
    }

    async fn timeout(
        &self,
        progress: &mut Progress,
        _due: Due,
        ctx: &mut Ctx<'_, '_>,
    ) -> Result<(), HandlerError> {
        progress.timeouts += 1;
        effect(ctx, "due").await
    }
}

async fn ship_when_ready(
    progress: &mut Progress,
    ctx: &mut Ctx<'_, '_>,
) -> Result<(), HandlerError> {
    if progress.placed && progress.billed && !progress.ship_sent {
        ctx.send(&Ship {
            order: ctx.correlation().to_owned(),
        })?;
        progress.ship_sent = true;
        effect(ctx, "ship").await?;
    }
    Ok(())
}

/// The business write of every step.
async fn effect(ctx: &Ctx<'_, '_>, kind: &str) -> Result<(), HandlerError> {
    ctx.tx()
        .execute(
            "INSERT INTO sagatest.effects (order_id, kind, saga_id, failed_attempts) \
             VALUES ($1, $2, $3, $4)",
            &[
                &ctx.correlation(),
                &kind,
                &ctx.saga_id(),
                &(ctx.failed_attempts() as i32),
            ],
        )
        .await?;
    Ok(())
}

async fn hold(ms: u64) {
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

// --- a second saga, whose not-found rule is the error queue ----------------------------

struct Tally;

/// Opens a tally.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Open {
    id: String,
}
sagatest_message!(Open);

/// Counts one on an open tally; may not start one.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Count {
    id: String,
}
sagatest_message!(Count);

impl Saga for Tally {
    const NAME: &'static str = "sagatest.Tally";
    type Data = u32;
    const NOT_FOUND: NotFound = NotFound::ErrorQueue;

    fn messages(m: &mut SagaMessages<Self>) {
        m.handles::<Open>().handles::<Count>();
    }
}

impl SagaHandles<Open> for Tally {
    const STARTS: bool = true;

    fn correlate(open: &Open) -> String {
        open.id.clone()
    }

    async fn handle(
        &self,
        _count: &mut u32,
        _open: Open,
        _ctx: &mut SagaContext<'_, '_, Self>,
    ) -> Result<(), HandlerError> {
        Ok(())
    }
}

impl SagaHandles<Count> for Tally {
    fn correlate(count: &Count) -> String {
        count.id.clone()
    }

    async fn handle(
        &self,
        count: &mut u32,
        _message: Count,
        _ctx: &mut SagaContext<'_, '_, Self>,
    ) -> Result<(), HandlerError> {
        *count += 1;
        Ok(())
    }
}

// --- fixtures --------------------------------------------------------------------------

const SCHEMA_SQL: &str = "\
CREATE SCHEMA sagatest;
CREATE TABLE sagatest.effects (
    order_id        text        NOT NULL,
    kind            text        NOT NULL,
    saga_id         uuid        NOT NULL,
    failed_attempts integer     NOT NULL,
    at              timestamptz NOT NULL DEFAULT clock_timestamp()
);";

/// A database with the business table and an installed `sink` for the saga's sends.
async fn setup() -> TestDb {
    let db = TestDb::new().await;
    db.client()
        .await
        .batch_execute(SCHEMA_SQL)
        .await
        .expect("create sagatest schema");
    install_only(&db.database(), "sink").await;
    db
}

/// The checkout endpoint `name`, before its saga is installed.
fn endpoint(db: &Database, name: &str) -> EndpointBuilder {
    EndpointBuilder::new(name, db.clone())
        .route::<Ship>("sink")
        .idle_poll_max(Duration::from_millis(200))
}

/// A standalone sender routing every test message to `to`.
fn client(db: &TestDb, to: &str) -> Sender {
    Sender::builder(&db.database(), "client")
        .route::<Placed>(to)
        .and_then(|b| b.route::<Billed>(to))
        .and_then(|b| b.route::<Shipped>(to))
        .and_then(|b| b.route::<Poke>(to))
        .and_then(|b| b.route::<Open>(to))
        .and_then(|b| b.route::<Count>(to))
        .expect("routes")
        .build()
        .expect("sender")
}

/// Sends `message` to `to` with extra headers, as another endpoint (or a timeout) would.
async fn send_with_headers(
    sender: &Sender,
    to: &str,
    message: &impl Message,
    extra: &[(&str, &str)],
) {
    let mut headers = Headers::new();
    for (name, value) in extra {
        headers.insert(*name, *value);
    }
    let mut client = sender.pool().get().await.expect("pooled connection");
    let tx = client.transaction().await.expect("begin");
    let mut outbox = sender.outbox();
    outbox
        .send_with(Some(to), message, headers)
        .expect("envelope");
    outbox.write(&tx).await.expect("write");
    tx.commit().await.expect("commit");
    outbox.committed();
}

/// The checkout of `order` with its decoded data, if there is one.
async fn checkout(db: &TestDb, order: &str) -> Option<(SagaRecord, Progress)> {
    let client = db.client().await;
    let record = persistence_pg::find_saga(&client, CHECKOUT, order)
        .await
        .expect("find saga")?;
    let progress = serde_json::from_value(record.data.clone()).expect("data decodes");
    Some((record, progress))
}

/// Waits until the checkout of `order` exists and `done` holds for it.
async fn wait_for(db: &TestDb, order: &str, done: impl Fn(&SagaRecord, &Progress) -> bool) -> bool {
    wait_until(Duration::from_secs(15), || async {
        checkout(db, order)
            .await
            .is_some_and(|(record, progress)| done(&record, &progress))
    })
    .await
}

/// Waits until `queue` is empty: every message sent to it so far was received and its
/// transaction committed (a deleted row stays visible to others until then).
async fn wait_drained(db: &TestDb, endpoint: &str) -> bool {
    let sql = format!("SELECT count(*) FROM bus.\"{endpoint}_queue\"");
    wait_until(Duration::from_secs(15), || async {
        db.count(&sql).await == 0
    })
    .await
}

async fn sink_count(db: &TestDb, message_type: &str) -> i64 {
    db.count(&format!(
        "SELECT count(*) FROM bus.sink_queue WHERE headers->>'message_type' = '{message_type}'"
    ))
    .await
}

async fn effects(db: &TestDb, order: &str, kind: &str) -> i64 {
    db.count(&format!(
        "SELECT count(*) FROM sagatest.effects WHERE order_id = '{order}' AND kind = '{kind}'"
    ))
    .await
}

async fn pending_timeouts(db: &TestDb, endpoint: &str, saga_id: uuid::Uuid) -> i64 {
    db.count(&format!(
        "SELECT count(*) FROM bus.\"{endpoint}_delayed\" WHERE saga_id = '{saga_id}'"
    ))
    .await
}

async fn failed_messages(db: &TestDb) -> i64 {
    db.count("SELECT count(*) FROM bus.failed_messages").await
}

fn placed(order: &str) -> Placed {
    Placed {
        order: order.to_owned(),
        ..Placed::default()
    }
}

fn billed(order: &str) -> Billed {
    Billed {
        order: order.to_owned(),
        ..Billed::default()
    }
}

fn shipped(order: &str) -> Shipped {
    Shipped {
        order: order.to_owned(),
        ..Shipped::default()
    }
}

fn poke(order: &str) -> Poke {
    Poke {
        order: order.to_owned(),
        ..Poke::default()
    }
}

// --- starting --------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_started_by_either_message_ends_in_the_same_state_in_both_orders() {
    let db = setup().await;
    let shop = endpoint(&db.database(), "shop")
        .saga(Checkout)
        .start()
        .await
        .unwrap();
    let client = client(&db, "shop");

    // o-1: placed first, then billed; o-2: billed first, then placed. Each second message
    // is sent only once the first one's step has committed, so the order is certain.
    client.send(&placed("o-1")).await.unwrap();
    client.send(&billed("o-2")).await.unwrap();
    assert!(wait_for(&db, "o-1", |r, _| r.version == 1).await);
    assert!(wait_for(&db, "o-2", |r, _| r.version == 1).await);
    client.send(&billed("o-1")).await.unwrap();
    client.send(&placed("o-2")).await.unwrap();
    assert!(wait_for(&db, "o-1", |r, _| r.version == 2).await);
    assert!(wait_for(&db, "o-2", |r, _| r.version == 2).await);
    shop.shutdown(Duration::from_secs(5)).await;

    let (one, one_data) = checkout(&db, "o-1").await.unwrap();
    let (two, two_data) = checkout(&db, "o-2").await.unwrap();
    assert_eq!(
        one_data, two_data,
        "the same state whichever message came first"
    );
    assert!(one_data.placed && one_data.billed && one_data.ship_sent);
    assert_eq!(one_data.attempts, [0, 0]);
    assert_eq!((one.state, two.state), (SagaState::Open, SagaState::Open));
    assert_eq!(one.started_by, "sagatest.Placed");
    assert_eq!(two.started_by, "sagatest.Billed");
    assert_ne!(one.id, two.id);

    assert_eq!(
        sink_count(&db, "sagatest.Ship").await,
        2,
        "one Ship per order"
    );
    assert_eq!(effects(&db, "o-1", "ship").await, 1);
    assert_eq!(effects(&db, "o-2", "ship").await, 1);
    assert_eq!(db.count("SELECT count(*) FROM bus.sagas").await, 2);
    assert_eq!(failed_messages(&db).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_start_messages_on_two_instances_make_one_saga_and_spend_no_retry() {
    let db = setup().await;
    let database = db.database();
    // Two instances of one endpoint, one worker each: each takes one of the two messages.
    let first = endpoint(&database, "racer")
        .concurrency(1)
        .saga(Checkout)
        .start()
        .await
        .unwrap();
    let second = endpoint(&database, "racer")
        .concurrency(1)
        .saga(Checkout)
        .start()
        .await
        .unwrap();
    let client = client(&db, "racer");

    // The test holds a lock on bus.sagas that a step's first statement (SELECT ... FOR
    // UPDATE) must wait for. Both steps block there inside their receive transactions, so
    // both are open at the same moment, before either has looked for the saga. A barrier
    // inside the saga handlers could not do this: the loser never reaches its handler
    // before the winner commits, which is the point.
    let holder = db.client().await;
    holder
        .batch_execute("BEGIN; LOCK TABLE bus.sagas IN EXCLUSIVE MODE")
        .await
        .unwrap();
    let hold_ms = 600;
    client
        .send(&Placed {
            hold_ms,
            ..placed("r-1")
        })
        .await
        .unwrap();
    client
        .send(&Billed {
            hold_ms,
            ..billed("r-1")
        })
        .await
        .unwrap();

    // Two sessions, each in a transaction that has already taken (deleted) its message,
    // both waiting for the table lock.
    let both_open = wait_until(Duration::from_secs(15), || async {
        db.count(
            "SELECT count(DISTINCT pid) FROM pg_stat_activity \
             WHERE datname = current_database() \
               AND wait_event_type = 'Lock' AND wait_event = 'relation' \
               AND query LIKE '%FROM bus.sagas%' \
               AND xact_start IS NOT NULL AND backend_xid IS NOT NULL",
        )
        .await
            == 2
    })
    .await;
    assert!(
        both_open,
        "both start messages' transactions were open at once"
    );
    holder.batch_execute("COMMIT").await.unwrap();

    // Released together, both find no saga and both insert one. The loser's insert waits
    // on the winner's uncommitted row (a transaction id lock) instead of failing on the
    // unique key; the winner holds its transaction open for hold_ms, so this shows.
    let loser_waited = wait_until(Duration::from_secs(5), || async {
        db.count(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() \
               AND wait_event_type = 'Lock' AND wait_event = 'transactionid' \
               AND query LIKE '%INSERT INTO bus.sagas%'",
        )
        .await
            == 1
    })
    .await;
    assert!(
        loser_waited,
        "the second insert waited for the first transaction"
    );

    let done = wait_for(&db, "r-1", |r, _| r.version == 2).await;
    first.shutdown(Duration::from_secs(5)).await;
    second.shutdown(Duration::from_secs(5)).await;
    assert!(done, "both messages were applied");

    let (record, progress) = checkout(&db, "r-1").await.unwrap();
    assert_eq!(
        db.count("SELECT count(*) FROM bus.sagas WHERE correlation = 'r-1'")
            .await,
        1,
        "exactly one saga"
    );
    assert!(
        progress.placed && progress.billed,
        "both effects: {progress:?}"
    );
    assert!(progress.ship_sent);
    assert_eq!(progress.attempts, [0, 0], "no retry was spent");
    assert_eq!(record.version, 2);
    assert_eq!(
        db.count("SELECT count(*) FROM sagatest.effects WHERE failed_attempts > 0")
            .await,
        0
    );
    assert_eq!(
        db.count(&format!(
            "SELECT count(*) FROM sagatest.effects WHERE saga_id <> '{}'",
            record.id
        ))
        .await,
        0,
        "both steps ran on the one saga"
    );
    assert_eq!(sink_count(&db, "sagatest.Ship").await, 1);
    assert_eq!(failed_messages(&db).await, 0);
    assert_eq!(db.count("SELECT count(*) FROM bus.racer_queue").await, 0);
}

// --- completion and the not-found rule -------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_message_after_completion_finds_the_closed_record_and_starts_nothing() {
    let db = setup().await;
    let shop = endpoint(&db.database(), "shop")
        .saga(Checkout)
        .start()
        .await
        .unwrap();
    let client = client(&db, "shop");

    client.send(&placed("c-1")).await.unwrap();
    client.send(&billed("c-1")).await.unwrap();
    assert!(wait_for(&db, "c-1", |r, _| r.version == 2).await);
    client.send(&shipped("c-1")).await.unwrap();
    assert!(wait_for(&db, "c-1", |r, _| r.state == SagaState::Completed).await);
    let (closed, closed_data) = checkout(&db, "c-1").await.unwrap();
    assert!(closed.completed_at.is_some());

    // A duplicate of each start message, and messages for an order never started.
    client.send(&placed("c-1")).await.unwrap();
    client.send(&billed("c-1")).await.unwrap();
    client.send(&poke("c-1")).await.unwrap();
    client.send(&shipped("nobody")).await.unwrap();
    client.send(&poke("nobody")).await.unwrap();
    let drained = wait_drained(&db, "shop").await;
    shop.shutdown(Duration::from_secs(5)).await;
    assert!(drained);

    let (after, after_data) = checkout(&db, "c-1").await.unwrap();
    assert_eq!(after.state, SagaState::Completed);
    assert_eq!(
        after.version, closed.version,
        "the closed record is untouched"
    );
    assert_eq!(after_data, closed_data);
    assert_eq!(after.completed_at, closed.completed_at);
    assert_eq!(
        db.count("SELECT count(*) FROM bus.sagas").await,
        1,
        "no second saga, none for the order never started"
    );
    assert_eq!(effects(&db, "c-1", "placed").await, 1);
    assert_eq!(effects(&db, "c-1", "poke").await, 0);
    assert_eq!(sink_count(&db, "sagatest.Ship").await, 1);
    assert_eq!(sink_count(&db, "sagatest.Poked").await, 0);
    assert_eq!(failed_messages(&db).await, 0, "consumed, not failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_error_queue_rule_sends_a_message_for_a_missing_saga_there_at_once() {
    let db = setup().await;
    let ledger = EndpointBuilder::new("ledger", db.database())
        .idle_poll_max(Duration::from_millis(200))
        .saga(Tally)
        .start()
        .await
        .unwrap();
    let client = client(&db, "ledger");

    client.send(&Count { id: "none".into() }).await.unwrap();
    client.send(&Open { id: "t".into() }).await.unwrap();
    let failed = wait_until(Duration::from_secs(15), || async {
        failed_messages(&db).await == 1
    })
    .await;
    assert!(
        failed,
        "the message for a missing saga went to the error queue"
    );
    client.send(&Count { id: "t".into() }).await.unwrap();
    let drained = wait_drained(&db, "ledger").await;
    ledger.shutdown(Duration::from_secs(5)).await;
    assert!(drained);

    let row = db
        .client()
        .await
        .query_one(
            "SELECT error_kind, error_message, failed_attempts, message_type \
             FROM bus.failed_messages",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "saga_not_found");
    let reason: String = row.get(1);
    assert!(
        reason.contains("sagatest.Tally") && reason.contains("none"),
        "{reason}"
    );
    assert_eq!(row.get::<_, i32>(2), 1, "no retries: the rule is permanent");
    assert_eq!(row.get::<_, String>(3), "sagatest.Count");

    let client = db.client().await;
    let tally = persistence_pg::find_saga(&client, "sagatest.Tally", "t")
        .await
        .unwrap()
        .expect("tally t");
    assert_eq!(tally.data, serde_json::json!(1));
    assert!(
        persistence_pg::find_saga(&client, "sagatest.Tally", "none")
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_originator_gets_the_reply_however_many_messages_later() {
    let db = setup().await;
    install_only(&db.database(), "origin").await;
    let shop = endpoint(&db.database(), "shop")
        .saga(Checkout)
        .start()
        .await
        .unwrap();
    let client = client(&db, "shop");

    // The start message comes from endpoint "origin", with a correlation id of its own.
    send_with_headers(
        &client,
        "shop",
        &placed("g-1"),
        &[
            (header::REPLY_TO, "origin"),
            (header::CORRELATION_ID, "ask-42"),
        ],
    )
    .await;
    assert!(wait_for(&db, "g-1", |r, _| r.version == 1).await);
    client.send(&billed("g-1")).await.unwrap();
    assert!(wait_for(&db, "g-1", |r, _| r.version == 2).await);
    client
        .send(&Shipped {
            confirm: true,
            ..shipped("g-1")
        })
        .await
        .unwrap();
    let completed = wait_for(&db, "g-1", |r, _| r.state == SagaState::Completed).await;
    shop.shutdown(Duration::from_secs(5)).await;
    assert!(completed);

    let (record, _) = checkout(&db, "g-1").await.unwrap();
    assert_eq!(record.originator.as_deref(), Some("origin"));
    let rows = db
        .client()
        .await
        .query(
            "SELECT headers->>'message_type', headers->>'intent', headers->>'correlation_id', \
                    headers->>'saga_id' \
             FROM bus.origin_queue",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "one reply, to the originator only");
    let row = &rows[0];
    assert_eq!(row.get::<_, String>(0), "sagatest.Confirmed");
    assert_eq!(row.get::<_, String>(1), "reply");
    assert_eq!(row.get::<_, String>(2), "ask-42");
    assert_eq!(row.get::<_, String>(3), record.id.to_string());
    assert_eq!(sink_count(&db, "sagatest.Confirmed").await, 0);
}

// --- timeouts --------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timing_a_timeout_fires_once_after_its_delay_for_the_instance_that_asked() {
    let _serial = TIMING.lock().await;
    let db = setup().await;
    let shop = endpoint(&db.database(), "shop")
        .saga(Checkout)
        .start()
        .await
        .unwrap();
    let client = client(&db, "shop");

    let delay = Duration::from_millis(1500);
    client
        .send(&Placed {
            timeout_ms: Some(delay.as_millis() as u64),
            ..placed("t-1")
        })
        .await
        .unwrap();
    client.send(&placed("t-2")).await.unwrap();
    assert!(wait_for(&db, "t-1", |r, _| r.version == 1).await);
    assert!(wait_for(&db, "t-2", |r, _| r.version == 1).await);
    let (asker, _) = checkout(&db, "t-1").await.unwrap();
    assert_eq!(pending_timeouts(&db, "shop", asker.id).await, 1);

    let fired = wait_for(&db, "t-1", |_, p| p.timeouts == 1).await;
    assert!(fired, "the timeout fired");
    // Long enough for a duplicate delivery to show.
    tokio::time::sleep(Duration::from_secs(2)).await;
    shop.shutdown(Duration::from_secs(5)).await;

    let (_, asker_data) = checkout(&db, "t-1").await.unwrap();
    let (_, other_data) = checkout(&db, "t-2").await.unwrap();
    assert_eq!(asker_data.timeouts, 1, "fired once");
    assert_eq!(other_data.timeouts, 0, "only for the instance that asked");
    assert_eq!(effects(&db, "t-1", "due").await, 1);
    assert_eq!(effects(&db, "t-2", "due").await, 0);

    // By the database's clock: from the start of the saga to the timeout's step.
    let row = db
        .client()
        .await
        .query_one(
            "SELECT extract(epoch FROM e.at - s.created_at)::float8, e.saga_id = s.id \
             FROM sagatest.effects e JOIN bus.sagas s ON s.correlation = e.order_id \
             WHERE e.kind = 'due'",
            &[],
        )
        .await
        .unwrap();
    let after = Duration::from_secs_f64(row.get::<_, f64>(0));
    println!("timeout of {delay:?} handled {after:?} after the saga started");
    assert!(after >= delay, "not before its delay: {after:?}");
    assert!(
        after <= delay + Duration::from_secs(2),
        "soon after it: {after:?}"
    );
    assert!(
        row.get::<_, bool>(1),
        "delivered to the saga id that requested it"
    );
    assert_eq!(db.count("SELECT count(*) FROM bus.shop_delayed").await, 0);
    assert_eq!(failed_messages(&db).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completing_a_saga_deletes_its_pending_timeouts_in_the_same_transaction() {
    let db = setup().await;
    let shop = endpoint(&db.database(), "shop")
        .max_attempts(1)
        .saga(Checkout)
        .start()
        .await
        .unwrap();
    let client = client(&db, "shop");

    let hour = Some(3_600_000);
    for order in ["x-1", "x-2"] {
        let message = Placed {
            timeout_ms: hour,
            ..placed(order)
        };
        client.send(&message).await.unwrap();
    }
    assert!(wait_for(&db, "x-1", |r, _| r.version == 1).await);
    assert!(wait_for(&db, "x-2", |r, _| r.version == 1).await);
    let (one, _) = checkout(&db, "x-1").await.unwrap();
    let (two, _) = checkout(&db, "x-2").await.unwrap();
    assert_eq!(pending_timeouts(&db, "shop", one.id).await, 1);
    assert_eq!(pending_timeouts(&db, "shop", two.id).await, 1);

    // A completing step that fails afterwards: the deletion rolls back with it.
    client
        .send(&Shipped {
            fail: true,
            ..shipped("x-1")
        })
        .await
        .unwrap();
    let failed = wait_until(Duration::from_secs(15), || async {
        failed_messages(&db).await == 1
    })
    .await;
    assert!(failed);
    let (still, _) = checkout(&db, "x-1").await.unwrap();
    assert_eq!(still.state, SagaState::Open);
    assert_eq!(pending_timeouts(&db, "shop", one.id).await, 1);

    client.send(&shipped("x-1")).await.unwrap();
    let completed = wait_for(&db, "x-1", |r, _| r.state == SagaState::Completed).await;
    assert!(completed);
    assert_eq!(
        pending_timeouts(&db, "shop", one.id).await,
        0,
        "gone with completion"
    );
    assert_eq!(
        pending_timeouts(&db, "shop", two.id).await,
        1,
        "the other saga's stays"
    );

    // A timeout of the closed saga that was already on its way: consumed and logged.
    let saga_id = one.id.to_string();
    send_with_headers(
        &client,
        "shop",
        &Due {
            order: "x-1".into(),
        },
        &[
            (header::SAGA_ID, &saga_id),
            (header::SAGA_TYPE, CHECKOUT),
            (header::INTENT, "timeout"),
        ],
    )
    .await;
    let drained = wait_drained(&db, "shop").await;
    shop.shutdown(Duration::from_secs(5)).await;
    assert!(drained);
    let (closed, closed_data) = checkout(&db, "x-1").await.unwrap();
    assert_eq!(closed_data.timeouts, 0, "the late timeout changed nothing");
    assert_eq!(closed.version, 2);
    assert_eq!(effects(&db, "x-1", "due").await, 0);
    assert_eq!(failed_messages(&db).await, 1, "only the deliberate failure");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_never_reaches_a_later_instance_with_the_same_correlation_value() {
    let db = setup().await;
    let shop = endpoint(&db.database(), "shop")
        .saga(Checkout)
        .start()
        .await
        .unwrap();
    let client = client(&db, "shop");

    // The first instance of y-1 completes and its closed record is purged; a second
    // instance of y-1 starts.
    client.send(&placed("y-1")).await.unwrap();
    assert!(wait_for(&db, "y-1", |r, _| r.version == 1).await);
    client.send(&shipped("y-1")).await.unwrap();
    assert!(wait_for(&db, "y-1", |r, _| r.state == SagaState::Completed).await);
    let (first, _) = checkout(&db, "y-1").await.unwrap();
    let pg = db.client().await;
    let purged = persistence_pg::purge_closed(&pg, CHECKOUT, Duration::ZERO, 10)
        .await
        .unwrap();
    assert_eq!(purged, 1);
    client.send(&placed("y-1")).await.unwrap();
    assert!(wait_for(&db, "y-1", |r, _| r.id != first.id).await);
    let (second, _) = checkout(&db, "y-1").await.unwrap();

    let due = Due {
        order: "y-1".into(),
    };
    let timeout_of = |id: uuid::Uuid| {
        [
            (header::SAGA_ID, id.to_string()),
            (header::SAGA_TYPE, CHECKOUT.to_owned()),
            (header::INTENT, "timeout".to_owned()),
        ]
    };
    let headers = timeout_of(first.id);
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    send_with_headers(&client, "shop", &due, &headers).await;
    assert!(wait_drained(&db, "shop").await);
    let (_, data) = checkout(&db, "y-1").await.unwrap();
    assert_eq!(
        data.timeouts, 0,
        "the first instance's timeout did not reach the second"
    );

    let headers = timeout_of(second.id);
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    send_with_headers(&client, "shop", &due, &headers).await;
    let delivered = wait_for(&db, "y-1", |_, p| p.timeouts == 1).await;
    shop.shutdown(Duration::from_secs(5)).await;
    assert!(delivered, "the second instance's own timeout reached it");
    assert_eq!(failed_messages(&db).await, 0);
}

// --- rollback --------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_error_rolls_back_the_saga_with_the_business_write_and_the_sends() {
    let db = setup().await;
    let shop = endpoint(&db.database(), "shop")
        .max_attempts(1)
        .saga(Checkout)
        .start()
        .await
        .unwrap();
    let client = client(&db, "shop");

    client.send(&placed("f-1")).await.unwrap();
    assert!(wait_for(&db, "f-1", |r, _| r.version == 1).await);
    let (before, before_data) = checkout(&db, "f-1").await.unwrap();

    // A step that counts, writes, sends, requests a timeout, then fails.
    client
        .send(&Poke {
            fail: true,
            ..poke("f-1")
        })
        .await
        .unwrap();
    // A start message that fails: its insert of the saga rolls back too.
    client
        .send(&Placed {
            fail: true,
            ..placed("f-2")
        })
        .await
        .unwrap();
    let failed = wait_until(Duration::from_secs(15), || async {
        failed_messages(&db).await == 2
    })
    .await;
    assert!(failed, "both failures reached the error queue");

    let (after, after_data) = checkout(&db, "f-1").await.unwrap();
    assert_eq!(
        after.version, before.version,
        "the saga's change rolled back"
    );
    assert_eq!(after_data, before_data);
    assert_eq!(
        effects(&db, "f-1", "poke").await,
        0,
        "the business write rolled back"
    );
    assert_eq!(
        sink_count(&db, "sagatest.Poked").await,
        0,
        "the send rolled back"
    );
    assert_eq!(pending_timeouts(&db, "shop", before.id).await, 0);
    assert!(
        checkout(&db, "f-2").await.is_none(),
        "the failed start made no saga"
    );
    assert_eq!(effects(&db, "f-2", "placed").await, 0);

    // The same step without the failure takes effect, all of it.
    client.send(&poke("f-1")).await.unwrap();
    let applied = wait_for(&db, "f-1", |r, _| r.version == 2).await;
    shop.shutdown(Duration::from_secs(5)).await;
    assert!(applied);
    let (_, data) = checkout(&db, "f-1").await.unwrap();
    assert_eq!(data.pokes, 1);
    assert_eq!(effects(&db, "f-1", "poke").await, 1);
    assert_eq!(sink_count(&db, "sagatest.Poked").await, 1);
    assert_eq!(pending_timeouts(&db, "shop", before.id).await, 1);
}

/// A save that changes no row (here a trigger skips it, as a bug or a hand-made change under
/// the lock would) fails its step, although in a pipelined batch nobody waits for the save's
/// answer: the batch is retaken one message at a time, the conflict is counted, and the
/// other messages of the batch commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_save_that_changes_no_row_fails_its_step_in_a_pipelined_batch_too() {
    let db = setup().await;
    let shop = endpoint(&db.database(), "shop")
        .batch_size(10)
        .concurrency(1)
        .max_attempts(1)
        .saga(Checkout)
        .start()
        .await
        .unwrap();
    let client = client(&db, "shop");

    // Two sagas, then enough steps to end the pump's careful start-up mode, in which
    // every statement is awaited.
    client.send(&placed("v-ok")).await.unwrap();
    client.send(&placed("v-bad")).await.unwrap();
    for _ in 0..20 {
        client.send(&poke("v-ok")).await.unwrap();
    }
    assert!(wait_for(&db, "v-ok", |r, _| r.version == 21).await);
    assert!(
        !shop.is_careful(),
        "the endpoint left its careful mode, so the steps below run in pipelined batches"
    );
    let (before, before_data) = checkout(&db, "v-bad").await.unwrap();

    db.client()
        .await
        .batch_execute(
            "CREATE FUNCTION sagatest.skip_save() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RETURN NULL; END $$; \
             CREATE TRIGGER skip_save BEFORE UPDATE ON bus.sagas FOR EACH ROW \
             WHEN (OLD.correlation = 'v-bad') EXECUTE FUNCTION sagatest.skip_save()",
        )
        .await
        .unwrap();
    let pokes_sent = sink_count(&db, "sagatest.Poked").await;
    // Most likely one batch (the sends are separate commits, so it may be split; a batch
    // of one is pipelined too): the failing steps, a save then a close, between two that
    // succeed.
    client.send(&poke("v-ok")).await.unwrap();
    client.send(&poke("v-bad")).await.unwrap();
    client.send(&shipped("v-bad")).await.unwrap();
    client.send(&poke("v-ok")).await.unwrap();
    let failed = wait_until(Duration::from_secs(15), || async {
        failed_messages(&db).await == 2
    })
    .await;
    let applied = wait_for(&db, "v-ok", |r, _| r.version == 23).await;
    shop.shutdown(Duration::from_secs(5)).await;
    assert!(
        failed,
        "the steps whose save and close changed nothing reached the error queue"
    );
    assert!(applied, "the other steps of their batch committed");

    let reasons = db
        .client()
        .await
        .query(
            "SELECT message_type, error_message FROM bus.failed_messages ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    let mut types: Vec<String> = reasons.iter().map(|row| row.get(0)).collect();
    types.sort();
    assert_eq!(types, ["sagatest.Poke", "sagatest.Shipped"]);
    for row in &reasons {
        let reason: String = row.get(1);
        assert!(reason.contains("is no longer at version"), "{reason}");
    }
    let (after, after_data) = checkout(&db, "v-bad").await.unwrap();
    assert_eq!(after.version, before.version);
    assert_eq!(after.state, SagaState::Open, "the close rolled back");
    assert_eq!(after_data, before_data);
    assert_eq!(effects(&db, "v-bad", "shipped").await, 0);
    assert_eq!(
        effects(&db, "v-bad", "poke").await,
        0,
        "its business write rolled back"
    );
    assert_eq!(
        sink_count(&db, "sagatest.Poked").await,
        pokes_sent + 2,
        "its send rolled back, the others' went out"
    );
    assert_eq!(pending_timeouts(&db, "shop", before.id).await, 0);
}

// --- locking in batches ----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_lock_sagas_in_one_order_and_never_deadlock() {
    let db = setup().await;
    let shop = endpoint(&db.database(), "shop")
        .batch_size(10)
        .concurrency(3)
        .saga(Checkout)
        .start()
        .await
        .unwrap();
    let client = client(&db, "shop");

    let orders: Vec<String> = (0..5).map(|i| format!("b-{i}")).collect();
    for order in &orders {
        client.send(&placed(order)).await.unwrap();
    }
    // Twenty more to end the pump's careful start-up mode, then the mixed load: every
    // batch holds several sagas, received in an order no two batches share.
    let pokes = 200;
    for i in 0..(20 + pokes) {
        let order = &orders[(i * 7 + i / 5) % orders.len()];
        let message = Poke {
            hold_ms: 2,
            ..poke(order)
        };
        client.send(&message).await.unwrap();
    }
    let total = (20 + pokes) as i64;
    let all = wait_until(Duration::from_secs(120), || async {
        db.count("SELECT count(*) FROM sagatest.effects WHERE kind = 'poke'")
            .await
            >= total
    })
    .await;
    shop.shutdown(Duration::from_secs(5)).await;
    assert!(all, "every poke was applied");

    let mut sum = 0;
    for order in &orders {
        let (_, data) = checkout(&db, order).await.unwrap();
        assert!(
            data.attempts.iter().all(|&a| a == 0),
            "a retry was spent (a deadlock?) on {order}: {:?}",
            data.attempts
        );
        sum += data.pokes;
    }
    assert_eq!(i64::from(sum), total);
    assert_eq!(failed_messages(&db).await, 0);
}

// --- the purge -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_record_is_purged_after_the_retention_period_and_not_before() {
    let db = setup().await;
    let retention = Duration::from_secs(1);
    let shop = endpoint(&db.database(), "shop")
        .saga(
            SagaRegistration::new(Checkout)
                .retention(retention)
                .purge_interval(Duration::ZERO),
        )
        .start()
        .await
        .unwrap();
    let client = client(&db, "shop");

    client.send(&placed("p-1")).await.unwrap();
    client.send(&billed("p-1")).await.unwrap();
    client.send(&placed("p-2")).await.unwrap();
    assert!(wait_for(&db, "p-1", |r, _| r.version == 2).await);
    client.send(&shipped("p-1")).await.unwrap();
    assert!(wait_for(&db, "p-1", |r, _| r.state == SagaState::Completed).await);

    // Every step purges (interval zero); this one runs within the retention period.
    client.send(&poke("nobody")).await.unwrap();
    assert!(wait_drained(&db, "shop").await);
    assert!(
        checkout(&db, "p-1").await.is_some(),
        "kept during its retention"
    );

    let expired = wait_until(Duration::from_secs(10), || async {
        db.count(
            "SELECT count(*) FROM bus.sagas \
             WHERE correlation = 'p-1' AND completed_at < now() - interval '1 second'",
        )
        .await
            == 1
    })
    .await;
    assert!(expired);
    client.send(&poke("nobody")).await.unwrap();
    let purged = wait_until(Duration::from_secs(10), || async {
        checkout(&db, "p-1").await.is_none()
    })
    .await;
    shop.shutdown(Duration::from_secs(5)).await;
    assert!(purged, "purged after its retention");
    let (open, _) = checkout(&db, "p-2")
        .await
        .expect("an open saga is never purged");
    assert_eq!(open.state, SagaState::Open);
}

// --- the store for operators, and its plans --------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_find_list_and_purge_sagas() {
    let db = setup().await;
    let shop = endpoint(&db.database(), "shop")
        .saga(Checkout)
        .start()
        .await
        .unwrap();
    let client = client(&db, "shop");
    client.send(&placed("op-open")).await.unwrap();
    client.send(&placed("op-done")).await.unwrap();
    assert!(wait_for(&db, "op-done", |r, _| r.version == 1).await);
    client.send(&shipped("op-done")).await.unwrap();
    assert!(wait_for(&db, "op-done", |r, _| r.state == SagaState::Completed).await);
    assert!(wait_for(&db, "op-open", |r, _| r.version == 1).await);
    shop.shutdown(Duration::from_secs(5)).await;

    let pg = db.client().await;
    let open = persistence_pg::list_open_sagas(&pg, CHECKOUT, Duration::ZERO, 10)
        .await
        .unwrap();
    let names: Vec<&str> = open.iter().map(|r| r.correlation.as_str()).collect();
    assert_eq!(names, ["op-open"]);
    let none = persistence_pg::list_open_sagas(&pg, CHECKOUT, Duration::from_secs(3600), 10)
        .await
        .unwrap();
    assert!(none.is_empty(), "nothing open for an hour");
    let other_type = persistence_pg::list_open_sagas(&pg, "sagatest.Other", Duration::ZERO, 10)
        .await
        .unwrap();
    assert!(other_type.is_empty());

    let by_id = persistence_pg::find_saga_by_id(&pg, open[0].id)
        .await
        .unwrap()
        .expect("found by id");
    assert_eq!(by_id.correlation, "op-open");
    assert_eq!(by_id.saga_type, CHECKOUT);
    assert_eq!(by_id.data["placed"], serde_json::json!(true));
    let done = persistence_pg::find_saga(&pg, CHECKOUT, "op-done")
        .await
        .unwrap()
        .expect("closed record");
    assert_eq!(done.state, SagaState::Completed);
    assert!(done.completed_at.is_some());

    let purged = persistence_pg::purge_closed(&pg, CHECKOUT, Duration::ZERO, 100)
        .await
        .unwrap();
    assert_eq!(purged, 1, "only the closed record");
    assert!(
        persistence_pg::find_saga(&pg, CHECKOUT, "op-done")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(db.count("SELECT count(*) FROM bus.sagas").await, 1);
}

/// The checked save and close, which a pipelined step sends without waiting: each changes
/// its row and answers one row when the version matches, and otherwise raises an error
/// that says so, so the transaction cannot commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checked_saves_change_their_row_and_raise_only_when_they_change_none() {
    use persistence_pg::sql::{SAGA_CLOSE_CHECKED, SAGA_SAVE_CHECKED};

    let db = setup().await;
    let client = db.client().await;
    let id = uuid::Uuid::new_v4();
    client
        .execute(
            "INSERT INTO bus.sagas (id, saga_type, correlation, data, started_by) \
             VALUES ($1, 't.Type1', 'chk', '{}', 't.Start')",
            &[&id],
        )
        .await
        .unwrap();
    let data = serde_json::json!({ "step": 1 });
    let run = |sql: &'static str, version: i64| {
        let client = &client;
        let data = &data;
        async move { client.query(sql, &[&id, &version, data]).await }
    };

    let saved = run(SAGA_SAVE_CHECKED, 0)
        .await
        .expect("a save at the right version");
    assert_eq!(saved.len(), 1);
    let stale = run(SAGA_SAVE_CHECKED, 0)
        .await
        .expect_err("a save at a stale version");
    let message = stale.as_db_error().expect("raised by the server").message();
    assert!(
        message.contains("was not saved: 0 rows at version 0"),
        "{message}"
    );

    run(SAGA_CLOSE_CHECKED, 1)
        .await
        .expect("a close at the right version");
    let again = run(SAGA_CLOSE_CHECKED, 2)
        .await
        .expect_err("a close of a closed saga");
    let message = again.as_db_error().expect("raised by the server").message();
    assert!(
        message.contains("was not saved: 0 rows open at version 2"),
        "{message}"
    );

    let row = client
        .query_one(
            "SELECT version, state, data FROM bus.sagas WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 2);
    assert_eq!(row.get::<_, String>(1), "completed");
    assert_eq!(row.get::<_, serde_json::Value>(2), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saga_statements_have_no_sequential_scan_in_their_generic_plans() {
    let db = TestDb::new().await;
    let client = db.client().await;
    client
        .batch_execute(
            "INSERT INTO bus.sagas (id, saga_type, correlation, state, data, started_by, \
                                    completed_at) \
             SELECT gen_random_uuid(), 't.Type' || (i % 10), 'c' || i, \
                    CASE WHEN i % 2 = 0 THEN 'completed' ELSE 'open' END, '{}', 't.Start', \
                    CASE WHEN i % 2 = 0 THEN now() - interval '1 day' END \
             FROM generate_series(1, 20000) AS i; \
             ANALYZE bus.sagas",
        )
        .await
        .unwrap();
    let id = "'00000000-0000-4000-8000-000000000000'";
    let params = |name: &str| -> String {
        match name {
            "SAGA_LOCK_BY_CORRELATION" | "SAGA_FIND_BY_CORRELATION" => "('t.Type1', 'c1')".into(),
            "SAGA_LOCK_BY_ID" => format!("({id}, 't.Type1')"),
            "SAGA_LOCK_OR_CREATE" => {
                format!("({id}, 't.Type1', 'c-new', '{{}}', 't.Start', NULL, NULL)")
            }
            "SAGA_SAVE" | "SAGA_CLOSE" | "SAGA_SAVE_CHECKED" | "SAGA_CLOSE_CHECKED" => {
                format!("({id}, 0, '{{}}')")
            }
            "SAGA_PURGE_CLOSED" | "SAGA_LIST_OPEN" => "('t.Type1', 1000, 100)".into(),
            "SAGA_FIND_BY_ID" => format!("({id})"),
            other => panic!("no parameters for {other}: add them to this test"),
        }
    };
    client
        .batch_execute("SET plan_cache_mode = force_generic_plan")
        .await
        .unwrap();
    for (name, statement) in persistence_pg::sql::ALL {
        client
            .batch_execute(&format!("PREPARE hot AS {statement}"))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        let plan: Vec<String> = client
            .query(&format!("EXPLAIN EXECUTE hot{}", params(name)), &[])
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:?}"))
            .iter()
            .map(|r| r.get(0))
            .collect();
        client.batch_execute("DEALLOCATE hot").await.unwrap();
        let plan = plan.join("\n");
        println!("{name}\n{plan}\n");
        assert!(!plan.contains("Seq Scan"), "{name}\n{statement}\n{plan}");
    }
}
