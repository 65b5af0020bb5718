//! The pipelined batch: sends deferred to one write per table, savepoints taken only by
//! handlers that run statements, what a later handler in the batch can see, and the
//! chain of transactions a busy worker runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use message::{Message, MessageKind};
use serde::{Deserialize, Serialize};
use tests::{TIMING, TestDb, wait_until};
use transport_pg::{Context, Endpoint, Handler, HandlerError};
use uuid::Uuid;

use crate::fixtures::{create_records, install_only, start_recorder, warm_up};

/// What [`Steps`] does with one message.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Step {
    /// Request a timeout for the saga, a minute away.
    RequestTimeout(Uuid),
    /// Cancel the saga's timeouts (a statement in the receive transaction).
    CancelTimeouts(Uuid),
    /// Send `n` on to `sink` without running any statement; fail the first attempt
    /// after sending when `fail_first` is set.
    Relay { n: u32, fail_first: bool },
    /// Send itself back to `steps`, so the queue never empties.
    Circle,
    /// Send `n` to `sink` and to `side` and request a timeout for the saga: three tables.
    Fan { n: u32, saga: Uuid },
}

impl Message for Step {
    const NAME: &'static str = "test.Step";
    const KIND: MessageKind = MessageKind::Command;
}

struct Steps {
    calls: Arc<AtomicU32>,
}

impl Handler<Step> for Steps {
    async fn handle(&self, step: Step, ctx: &mut Context<'_>) -> Result<(), HandlerError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        match step {
            Step::RequestTimeout(saga) => {
                ctx.request_timeout(Duration::from_secs(60), &step, saga, "test.Saga")?;
            }
            Step::CancelTimeouts(saga) => {
                ctx.cancel_timeouts(saga).await?;
            }
            Step::Relay { n, fail_first } => {
                ctx.send_to("sink", &Step::Relay { n, fail_first })?;
                if fail_first && ctx.failed_attempts() == 0 {
                    return Err(HandlerError::msg("failing the first attempt on purpose"));
                }
            }
            Step::Circle => {
                ctx.send_to("steps", &Step::Circle)?;
            }
            Step::Fan { n, saga } => {
                let relay = Step::Relay {
                    n,
                    fail_first: false,
                };
                ctx.send_to("sink", &relay)?;
                ctx.send_to("side", &relay)?;
                ctx.request_timeout(Duration::from_secs(60), &relay, saga, "test.Saga")?;
            }
        }
        Ok(())
    }
}

/// Starts endpoint `steps` (batch size 10, one worker) past its careful start-up mode.
async fn start_steps(db: &TestDb, calls: Arc<AtomicU32>) -> Endpoint {
    create_records(db).await;
    let database = db.database();
    install_only(&database, "sink").await;
    let endpoint = start_recorder(&database, "steps", Arc::new(AtomicU32::new(0)), |b| {
        b.handler::<Step, _>(Steps { calls })
            .batch_size(10)
            .concurrency(1)
    })
    .await;
    warm_up(db, "steps", 25).await;
    endpoint
}

/// The sagas whose timeouts wait in `steps`' delayed table, sorted.
async fn timeouts_left(db: &TestDb) -> Vec<Uuid> {
    let rows = db
        .client()
        .await
        .query(
            "SELECT saga_id FROM bus.steps_delayed WHERE saga_id IS NOT NULL ORDER BY saga_id",
            &[],
        )
        .await
        .unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

/// Sends `steps` to endpoint `steps` in one transaction, so that they arrive as one batch.
async fn send_together(db: &TestDb, steps: &[Step]) {
    let sender = transport_pg::Sender::builder(&db.database(), "test-client")
        .route::<Step>("steps")
        .expect("route")
        .build()
        .expect("sender");
    let mut client = sender.pool().get().await.unwrap();
    let tx = client.transaction().await.unwrap();
    let mut outbox = sender.outbox();
    for step in steps {
        outbox.send(step).unwrap();
    }
    outbox.write(&tx).await.unwrap();
    tx.commit().await.unwrap();
    outbox.committed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_handler_in_a_batch_sees_the_timeouts_an_earlier_one_requested() {
    let db = TestDb::new().await;
    let calls = Arc::new(AtomicU32::new(0));
    let endpoint = start_steps(&db, calls.clone()).await;
    let (cancelled, kept) = (Uuid::new_v4(), Uuid::new_v4());

    send_together(
        &db,
        &[
            Step::RequestTimeout(cancelled),
            Step::RequestTimeout(kept),
            Step::CancelTimeouts(cancelled),
        ],
    )
    .await;
    let handled = wait_until(Duration::from_secs(30), || async {
        calls.load(Ordering::SeqCst) >= 3
            && db.count("SELECT count(*) FROM bus.steps_queue").await == 0
    })
    .await;
    endpoint.shutdown(Duration::from_secs(5)).await;
    assert!(handled, "the three steps were handled");

    // The cancel ran after the first request in the same transaction; had that request's
    // timeout not been written before the cancel's statement, it would have survived.
    assert_eq!(
        timeouts_left(&db).await,
        vec![kept],
        "only the uncancelled saga's timeout is left"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3, "each step handled once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_to_three_tables_go_out_together_and_before_a_later_statement() {
    let db = TestDb::new().await;
    install_only(&db.database(), "side").await;
    let calls = Arc::new(AtomicU32::new(0));
    let endpoint = start_steps(&db, calls.clone()).await;
    let sagas: Vec<Uuid> = (0..9).map(|_| Uuid::new_v4()).collect();

    // Each Fan writes a queue, another queue and the delayed table, in one statement when
    // the pipeline has them all prepared; the cancel in the middle must see the first six.
    let mut steps: Vec<Step> = (0..9)
        .map(|n| Step::Fan {
            n,
            saga: sagas[n as usize],
        })
        .collect();
    steps.insert(6, Step::CancelTimeouts(sagas[2]));
    send_together(&db, &steps).await;
    let handled = wait_until(Duration::from_secs(30), || async {
        calls.load(Ordering::SeqCst) >= 10
            && db.count("SELECT count(*) FROM bus.steps_queue").await == 0
    })
    .await;
    endpoint.shutdown(Duration::from_secs(5)).await;
    assert!(handled, "the ten steps were handled");

    for table in ["sink_queue", "side_queue"] {
        let sql = format!("SELECT count(DISTINCT body) FROM bus.{table}");
        assert_eq!(db.count(&sql).await, 9, "nine distinct relays in {table}");
    }
    let mut expected: Vec<Uuid> = sagas.iter().filter(|s| **s != sagas[2]).copied().collect();
    expected.sort();
    assert_eq!(
        timeouts_left(&db).await,
        expected,
        "every timeout but the cancelled saga's, each to its saga"
    );
    // A failed pipelined write would have been retaken one message at a time, which runs
    // every handler again and writes each table alone: the same rows, more calls.
    assert_eq!(
        calls.load(Ordering::SeqCst),
        10,
        "each step handled once, in its pipelined batch"
    );
    assert_eq!(
        db.count("SELECT count(*) FROM bus.failed_messages").await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_handler_that_ran_no_statement_leaves_no_send_and_the_rest_commit() {
    let db = TestDb::new().await;
    let calls = Arc::new(AtomicU32::new(0));
    let endpoint = start_steps(&db, calls.clone()).await;

    let steps: Vec<Step> = (0..10)
        .map(|n| Step::Relay {
            n,
            fail_first: n == 3 || n == 9,
        })
        .collect();
    send_together(&db, &steps).await;
    let settled = wait_until(Duration::from_secs(30), || async {
        db.count("SELECT count(*) FROM bus.sink_queue").await >= 10
            && db.count("SELECT count(*) FROM bus.steps_queue").await == 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    endpoint.shutdown(Duration::from_secs(5)).await;
    assert!(settled, "every relay reached the sink");

    // One send per relay: the failed first attempts' sends were never written.
    let sent = db.count("SELECT count(*) FROM bus.sink_queue").await;
    assert_eq!(sent, 10, "one send per relay, none from a failed attempt");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        12,
        "two relays were tried twice"
    );
    assert_eq!(
        db.count("SELECT count(*) FROM bus.failed_messages").await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_drains_its_queue_in_full_batches_holds_no_transaction_when_idle() {
    let db = TestDb::new().await;
    let calls = Arc::new(AtomicU32::new(0));
    let endpoint = start_steps(&db, calls.clone()).await;

    // Four full batches: each commit begins the next transaction, and the receive that
    // finds the queue empty must end it before the worker waits.
    let steps: Vec<Step> = (0..40)
        .map(|n| Step::Relay {
            n,
            fail_first: false,
        })
        .collect();
    send_together(&db, &steps).await;
    let drained = wait_until(Duration::from_secs(30), || async {
        db.count("SELECT count(*) FROM bus.sink_queue").await == 40
            && db.count("SELECT count(*) FROM bus.steps_queue").await == 0
    })
    .await;
    assert!(drained, "the forty relays were handled");

    let settled = wait_until(Duration::from_secs(5), || async {
        db.count(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND state LIKE 'idle in transaction%'",
        )
        .await
            == 0
    })
    .await;
    endpoint.shutdown(Duration::from_secs(5)).await;
    assert!(
        settled,
        "no connection of the idle endpoint was left inside a transaction"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 40);
}

/// Rows deleted from `bus.steps_queue` as the server's statistics report them.
async fn reported_deletes(db: &TestDb) -> i64 {
    db.count(
        "SELECT coalesce(sum(n_tup_del), 0)::bigint FROM pg_stat_user_tables \
         WHERE schemaname = 'bus' AND relname = 'steps_queue'",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_is_never_idle_still_lets_the_server_report_its_deletes() {
    // Autovacuum goes by these statistics, and a backend reports them only between
    // transactions: a busy worker whose every COMMIT carried the next BEGIN never was.
    let db = TestDb::new().await;
    let calls = Arc::new(AtomicU32::new(0));
    let endpoint = start_steps(&db, calls.clone()).await;
    let before = reported_deletes(&db).await;

    // Thirty messages going round: every batch of ten is full, so every commit may chain.
    send_together(&db, &vec![Step::Circle; 30]).await;
    let circling = wait_until(Duration::from_secs(30), || async {
        calls.load(Ordering::SeqCst) >= 3000
    })
    .await;
    assert!(circling, "the circle ran 3,000 messages");
    let reported = wait_until(Duration::from_secs(10), || async {
        reported_deletes(&db).await - before >= 2000
    })
    .await;
    let deletes = reported_deletes(&db).await - before;
    let handled = calls.load(Ordering::SeqCst);
    endpoint.shutdown(Duration::from_secs(5)).await;
    assert!(
        reported,
        "the server reported {deletes} deletes from the queue while the worker was busy \
         and had handled {handled}"
    );
}

/// Starts endpoint `steps` with thirty messages circling (every batch of ten full, so every
/// commit carries the next BEGIN and receive), once it has handled `handled` of them.
async fn start_circle(db: &TestDb, handled: u32) -> Endpoint {
    let calls = Arc::new(AtomicU32::new(0));
    let endpoint = start_steps(db, calls.clone()).await;
    send_together(db, &vec![Step::Circle; 30]).await;
    let circling = wait_until(Duration::from_secs(30), || async {
        calls.load(Ordering::SeqCst) >= handled
    })
    .await;
    assert!(circling, "the circle ran {handled} messages");
    endpoint
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_received_behind_a_commit_is_back_in_the_queue_after_a_shutdown() {
    // A busy worker sends its next receive behind each COMMIT, so at any moment it may
    // hold ten messages taken in a transaction no handler has run in yet. Stopping it
    // then must give them back: thirty messages circling stay thirty.
    let db = TestDb::new().await;
    let endpoint = start_circle(&db, 500).await;
    endpoint.shutdown(Duration::from_secs(5)).await;
    assert_eq!(
        db.count("SELECT count(*) FROM bus.steps_queue").await,
        30,
        "every circling message is back in the queue, once"
    );
    assert_eq!(
        db.count("SELECT count(DISTINCT message_id) FROM bus.steps_queue")
            .await,
        30
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timing_a_row_committed_behind_a_busy_chain_is_found_within_the_position_reset() {
    // A row can commit after rows with higher seqs. A worker that never goes idle probes
    // from its last seq, so it finds such a row only when it probes from the start again,
    // which it does every 100 ms even in the middle of a chain of full batches (without
    // that, only when the chain ends, up to half a second later).
    let _serial = TIMING.lock().await;
    let db = TestDb::new().await;
    let endpoint = start_circle(&db, 200).await;

    let sender = transport_pg::Sender::builder(&db.database(), "late-client")
        .route::<Step>("steps")
        .expect("route")
        .build()
        .expect("sender");
    let mut latencies = Vec::new();
    for n in 0..10u32 {
        let mut client = sender.pool().get().await.unwrap();
        let tx = client.transaction().await.unwrap();
        let mut outbox = sender.outbox();
        let relay = Step::Relay {
            n,
            fail_first: false,
        };
        outbox.send(&relay).unwrap();
        outbox.write(&tx).await.unwrap();
        // Meanwhile the circle takes the worker's position past this row's seq.
        tokio::time::sleep(Duration::from_millis(150)).await;
        tx.commit().await.unwrap();
        let committed = Instant::now();
        outbox.committed();

        let relayed = wait_until(Duration::from_secs(5), || async {
            db.count("SELECT count(*) FROM bus.sink_queue").await > i64::from(n)
        })
        .await;
        assert!(relayed, "the late row {n} was handled");
        latencies.push(committed.elapsed());
    }
    endpoint.shutdown(Duration::from_secs(5)).await;

    latencies.sort();
    println!("late rows found after {latencies:?}");
    let ninth = latencies[8];
    assert!(
        ninth < Duration::from_millis(300),
        "nine of ten late rows should be found within 300 ms; the ninth took {ninth:?}"
    );
}

/// Counts the steps endpoint `sink` receives, doing nothing else.
struct Sunk {
    calls: Arc<AtomicU32>,
}

impl Handler<Step> for Sunk {
    async fn handle(&self, _step: Step, _ctx: &mut Context<'_>) -> Result<(), HandlerError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timing_a_send_from_a_pipelined_batch_wakes_its_destination() {
    let _serial = TIMING.lock().await;
    let db = TestDb::new().await;
    let endpoint = start_steps(&db, Arc::new(AtomicU32::new(0))).await;
    let sunk = Arc::new(AtomicU32::new(0));
    // The sink polls at most a minute apart, so only a wake-up finds the message soon.
    let sink = transport_pg::EndpointBuilder::new("sink", db.database())
        .handler::<Step, _>(Sunk {
            calls: sunk.clone(),
        })
        .idle_poll_max(Duration::from_secs(60))
        .start()
        .await
        .expect("sink starts");

    // Idle for six seconds: the sink's next poll is then seconds away.
    tokio::time::sleep(Duration::from_secs(6)).await;
    send_together(
        &db,
        &[Step::Relay {
            n: 1,
            fail_first: false,
        }],
    )
    .await;
    let started = std::time::Instant::now();
    let arrived = wait_until(Duration::from_secs(2), || async {
        sunk.load(Ordering::SeqCst) == 1
    })
    .await;
    let took = started.elapsed();
    sink.shutdown(Duration::from_secs(5)).await;
    endpoint.shutdown(Duration::from_secs(5)).await;
    assert!(
        arrived,
        "the relayed step reached the idle sink within 2 s ({took:?})"
    );
}
