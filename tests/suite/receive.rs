//! Receiving: competing consumers, failures rolled back to the savepoint, poison rows.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::Value;
use tests::{TestDb, wait_until};
use transport_pg::Sender;

use crate::fixtures::{
    Mode, Note, create_records, install_only, send_numbered_notes, sender, start_recorder,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn competing_consumers_take_every_message_exactly_once() {
    const MESSAGES: usize = 20_000;
    let db = TestDb::new().await;
    create_records(&db).await;
    let database = db.database();
    install_only(&database, "crowd").await;
    let sender = sender(&database, "crowd");

    // Fill the queue first, in transactions of a thousand, so both hosts start on a
    // full queue and really compete.
    send_numbered_notes(&sender, MESSAGES, 1000).await;

    let calls = Arc::new(AtomicU32::new(0));
    let one = start_recorder(&database, "crowd", calls.clone(), |b| b.concurrency(4)).await;
    let two = start_recorder(&database, "crowd", calls.clone(), |b| b.concurrency(4)).await;

    let done = wait_until(Duration::from_secs(240), || async {
        db.count("SELECT count(*) FROM records").await >= MESSAGES as i64
    })
    .await;
    one.shutdown(Duration::from_secs(10)).await;
    two.shutdown(Duration::from_secs(10)).await;
    assert!(
        done,
        "handled {} of {MESSAGES}",
        db.count("SELECT count(*) FROM records").await
    );

    assert_eq!(
        db.count("SELECT count(*) FROM records").await,
        MESSAGES as i64
    );
    assert_eq!(
        db.count("SELECT count(DISTINCT message_id) FROM records")
            .await,
        MESSAGES as i64,
        "every message handled exactly once"
    );
    assert_eq!(
        db.count("SELECT count(DISTINCT text) FROM records").await,
        MESSAGES as i64
    );
    assert_eq!(db.count("SELECT count(*) FROM bus.crowd_queue").await, 0);
    assert_eq!(
        db.count("SELECT count(*) FROM bus.failed_messages").await,
        0
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        MESSAGES as u32,
        "no handler ran twice"
    );
}

/// Sends one note of `mode` to a fresh endpoint `name` (with `sink` installed) and runs
/// it until `records` reaches `expect_records` or the error queue has a row.
async fn run_one(
    db: &TestDb,
    name: &str,
    notes: &[Note],
    max_attempts: u32,
) -> (transport_pg::Endpoint, Arc<AtomicU32>) {
    create_records(db).await;
    let database = db.database();
    install_only(&database, "sink").await;
    install_only(&database, name).await;
    let sender = sender(&database, name);
    for note in notes {
        sender.send(note).await.unwrap();
    }
    let calls = Arc::new(AtomicU32::new(0));
    let endpoint = start_recorder(&database, name, calls.clone(), |b| {
        b.max_attempts(max_attempts).concurrency(1)
    })
    .await;
    (endpoint, calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_error_rolls_back_its_write_and_sends_then_the_retry_succeeds() {
    let db = TestDb::new().await;
    let note = Note {
        text: "flaky".into(),
        mode: Mode::FailFirst,
    };
    let (endpoint, calls) = run_one(&db, "flaky", &[note], 5).await;

    let done = wait_until(Duration::from_secs(20), || async {
        db.count("SELECT count(*) FROM records").await >= 1
    })
    .await;
    assert!(done, "the retry was handled");
    tokio::time::sleep(Duration::from_millis(300)).await;
    endpoint.shutdown(Duration::from_secs(5)).await;

    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "one failed attempt, one success"
    );
    // The failed attempt's insert and send rolled back; only the retry's remain.
    assert_eq!(db.count("SELECT count(*) FROM records").await, 1);
    assert_eq!(
        db.count("SELECT failed_attempts::bigint FROM records")
            .await,
        1,
        "the retry saw attempt count 1"
    );
    assert_eq!(db.count("SELECT count(*) FROM bus.sink_queue").await, 1);
    assert_eq!(db.count("SELECT count(*) FROM bus.flaky_queue").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_is_a_failing_handler_and_the_pump_survives() {
    let db = TestDb::new().await;
    let notes = [
        Note {
            text: "panics".into(),
            mode: Mode::PanicFirst,
        },
        Note {
            text: "after".into(),
            mode: Mode::Record,
        },
    ];
    let (endpoint, calls) = run_one(&db, "panicky", &notes, 5).await;

    let done = wait_until(Duration::from_secs(20), || async {
        db.count("SELECT count(*) FROM records").await >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    endpoint.shutdown(Duration::from_secs(5)).await;
    assert!(done, "both notes handled after the panic");

    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(
        db.count("SELECT failed_attempts::bigint FROM records WHERE text = 'panics'")
            .await,
        1
    );
    assert_eq!(db.count("SELECT count(*) FROM records").await, 2);
    assert_eq!(db.count("SELECT count(*) FROM bus.sink_queue").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_swallows_a_database_error_is_still_counted_as_failed() {
    let db = TestDb::new().await;
    let note = Note {
        text: "swallow".into(),
        mode: Mode::SwallowError,
    };
    let (endpoint, calls) = run_one(&db, "swallower", &[note], 2).await;

    let failed = wait_until(Duration::from_secs(20), || async {
        db.count("SELECT count(*) FROM bus.failed_messages").await == 1
    })
    .await;
    endpoint.shutdown(Duration::from_secs(5)).await;
    assert!(failed, "the message reached the error queue");

    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "both attempts counted as failures"
    );
    assert_eq!(
        db.count("SELECT count(*) FROM records").await,
        0,
        "its write rolled back"
    );
    let row = db
        .client()
        .await
        .query_one(
            "SELECT error_kind, failed_attempts, origin_queue FROM bus.failed_messages",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "swallowed_database_error");
    assert_eq!(row.get::<_, i32>(1), 2);
    assert_eq!(row.get::<_, String>(2), "swallower");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_message_reaches_the_error_queue_with_its_details() {
    let db = TestDb::new().await;
    let notes = [
        Note {
            text: "ghost".into(),
            mode: Mode::SendToGhost,
        },
        Note {
            text: "doomed".into(),
            mode: Mode::AlwaysFail,
        },
    ];
    let (endpoint, _calls) = run_one(&db, "doomed", &notes, 3).await;

    let failed = wait_until(Duration::from_secs(20), || async {
        db.count("SELECT count(*) FROM bus.failed_messages").await == 2
    })
    .await;
    endpoint.shutdown(Duration::from_secs(5)).await;
    assert!(failed, "both reached the error queue");
    assert_eq!(db.count("SELECT count(*) FROM records").await, 0);
    assert_eq!(db.count("SELECT count(*) FROM bus.doomed_queue").await, 0);

    let client = db.client().await;
    let rows = client
        .query(
            "SELECT error_kind, error_message, failed_attempts, headers, message_type, \
                    fingerprint, body \
             FROM bus.failed_messages ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    let mut kinds = Vec::new();
    for row in &rows {
        let kind: String = row.get(0);
        let message: String = row.get(1);
        let attempts: i32 = row.get(2);
        let headers: Value = row.get(3);
        assert_eq!(attempts, 3, "{kind}: tried max_attempts times");
        assert_eq!(row.get::<_, String>(4), "test.Note");
        assert_eq!(row.get::<_, String>(5).len(), 16);
        assert!(!row.get::<_, Vec<u8>>(6).is_empty(), "original body kept");
        for name in ["error_kind", "error_message", "failed_queue", "failed_at"] {
            assert!(
                headers[name].is_string(),
                "{name} header missing: {headers}"
            );
        }
        assert_eq!(headers["failed_queue"], "doomed");
        assert_eq!(headers["failed_attempts"], "3");
        assert_eq!(headers["message_type"], "test.Note");
        if kind.contains("EndpointNotInstalled") {
            assert!(message.contains("ghost"), "{message}");
        }
        kinds.push(kind);
    }
    assert!(
        kinds.iter().any(|k| k.contains("EndpointNotInstalled")),
        "{kinds:?}"
    );
    assert!(kinds.iter().any(|k| k == "message"), "{kinds:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_rows_go_to_the_error_queue_and_good_messages_around_them_are_handled() {
    let db = TestDb::new().await;
    create_records(&db).await;
    let database = db.database();
    install_only(&database, "mixed").await;
    let sender: Sender = sender(&database, "mixed");

    sender
        .send(&Note {
            text: "good-1".into(),
            ..Note::default()
        })
        .await
        .unwrap();
    let client = db.client().await;
    client
        .batch_execute(
            r#"
            INSERT INTO bus.mixed_queue (message_id, headers, body) VALUES
              (gen_random_uuid(), '{"message_type": "test.Note"}', '\xdeadbeefff00'),
              (gen_random_uuid(), '["not", "an", "object"]', '\x80'),
              (gen_random_uuid(), '{"message_type": {"nested": true}}', '\x80'),
              (gen_random_uuid(), '{"content_type": "application/msgpack"}', '\x80'),
              (gen_random_uuid(), '{"message_type": "test.Unknown"}', '\x80'),
              (gen_random_uuid(), '{"message_type": "test.Note", "content_type": "text/x"}',
               '\x80'),
              (gen_random_uuid(),
               '{"message_type": "test.Note", "content_type": "application/json"}',
               convert_to('{"text": "good-by-hand"}', 'UTF8'));
            "#,
        )
        .await
        .unwrap();
    sender
        .send(&Note {
            text: "good-2".into(),
            ..Note::default()
        })
        .await
        .unwrap();

    let calls = Arc::new(AtomicU32::new(0));
    let endpoint = start_recorder(&database, "mixed", calls, |b| b).await;
    let settled = wait_until(Duration::from_secs(20), || async {
        db.count("SELECT count(*) FROM records").await == 3
            && db.count("SELECT count(*) FROM bus.failed_messages").await == 6
    })
    .await;
    endpoint.shutdown(Duration::from_secs(5)).await;
    assert!(settled, "3 handled and 6 in the error queue");

    let texts: Vec<String> = client
        .query("SELECT text FROM records ORDER BY text", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(texts, ["good-1", "good-2", "good-by-hand"]);

    let kinds: Vec<(String, String)> = client
        .query(
            "SELECT error_kind, error_message FROM bus.failed_messages ORDER BY error_kind",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let count = |kind: &str| kinds.iter().filter(|(k, _)| k == kind).count();
    assert_eq!(count("undecodable_body"), 2, "{kinds:?}");
    assert_eq!(count("unreadable_headers"), 2, "{kinds:?}");
    assert_eq!(count("missing_message_type"), 1, "{kinds:?}");
    assert_eq!(count("no_handler"), 1, "{kinds:?}");
    assert!(kinds.iter().all(|(_, reason)| !reason.is_empty()));
    // Poison skips the retries: one attempt, straight to the error queue.
    assert_eq!(
        db.count("SELECT count(*) FROM bus.failed_messages WHERE origin_queue = 'mixed'")
            .await,
        6
    );
    assert_eq!(db.count("SELECT count(*) FROM bus.mixed_queue").await, 0);
}

/// Times `rounds` receives of ten, each in its own committed transaction, starting at
/// `position` and carrying the position forward as a worker does (or not, when
/// `remember` is false); returns the median time of one receive.
async fn time_receives(
    client: &mut transport_pg::tokio_postgres::Client,
    statement: &str,
    mut position: i64,
    remember: bool,
    rounds: usize,
) -> Duration {
    let statement = client.prepare(statement).await.unwrap();
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let tx = client.transaction().await.unwrap();
        let started = std::time::Instant::now();
        let rows = tx.query(&statement, &[&position]).await.unwrap();
        times.push(started.elapsed());
        tx.commit().await.unwrap();
        assert_eq!(rows.len(), 10, "the queue ran dry");
        if remember {
            position = rows.iter().map(|r| r.get::<_, i64>(0)).max().unwrap();
        }
    }
    times.sort();
    times[times.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timing_a_receive_after_200000_deletes_stays_near_its_speed_on_a_fresh_table() {
    let _serial = tests::TIMING.lock().await;
    let db = TestDb::new().await;
    install_only(&db.database(), "churned").await;
    let mut client = db.database().connect("test").await.unwrap();
    // Keep the dead rows in the index, as a busy queue between vacuums has them.
    client
        .batch_execute("ALTER TABLE bus.churned_queue SET (autovacuum_enabled = off)")
        .await
        .unwrap();
    let statement = transport_pg::sql::QueueStatements::new(
        &transport_pg::EndpointName::new("churned").unwrap().tables(),
        10,
    )
    .receive
    .sql;
    let fill = |n: i64| {
        format!(
            "INSERT INTO bus.churned_queue (message_id, headers, body) \
             SELECT gen_random_uuid(), '{{\"message_type\": \"t.T\"}}', '\\x80' \
             FROM generate_series(1, {n})"
        )
    };

    client.batch_execute(&fill(3000)).await.unwrap();
    let fresh = time_receives(&mut client, &statement, 0, true, 200).await;
    client
        .batch_execute("DELETE FROM bus.churned_queue")
        .await
        .unwrap();

    client.batch_execute(&fill(200_000)).await.unwrap();
    let last_dead: i64 = client
        .query_one("SELECT max(seq) FROM bus.churned_queue", &[])
        .await
        .unwrap()
        .get(0);
    client
        .batch_execute("DELETE FROM bus.churned_queue")
        .await
        .unwrap();
    client.batch_execute(&fill(5000)).await.unwrap();

    let remembered = time_receives(&mut client, &statement, last_dead, true, 200).await;
    let from_start = time_receives(&mut client, &statement, 0, false, 50).await;
    println!(
        "receive of 10: fresh table {fresh:?}; after 200,000 deletes {remembered:?} from the \
         remembered position, {from_start:?} from the start"
    );
    let bound = fresh * 4 + Duration::from_millis(1);
    assert!(
        remembered <= bound,
        "{remembered:?} against {fresh:?} fresh"
    );
}
