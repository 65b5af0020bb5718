//! Queue upkeep: an endpoint vacuums its own queue table as its messages go through, so
//! the dead rows of a busy queue do not wait a minute for autovacuum.

use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use tests::{TestDb, wait_until};
use transport_pg::Endpoint;

use crate::fixtures::{create_records, send_numbered_notes, sender, start_recorder};

/// Manual (not auto-) vacuums of `table` in schema bus so far.
async fn vacuums(db: &TestDb, table: &str) -> i64 {
    db.client()
        .await
        .query_one(
            "SELECT vacuum_count FROM pg_stat_user_tables \
             WHERE schemaname = 'bus' AND relname = $1",
            &[&table],
        )
        .await
        .expect("the queue's statistics")
        .get(0)
}

/// Starts endpoint `name` with `messages` and `gap` as its upkeep.
async fn start(db: &TestDb, name: &str, messages: u64, gap: Duration) -> Endpoint {
    create_records(db).await;
    start_recorder(&db.database(), name, Arc::new(AtomicU32::new(0)), |b| {
        b.batch_size(10).concurrency(2).queue_vacuum(messages, gap)
    })
    .await
}

/// Sends `count` more notes to `name` and waits until `records` holds `total` rows.
async fn run_notes(db: &TestDb, name: &str, count: usize, total: i64) {
    send_numbered_notes(&sender(&db.database(), name), count, 100).await;
    let handled = wait_until(Duration::from_secs(60), || async {
        db.count("SELECT count(*) FROM records").await >= total
    })
    .await;
    assert!(handled, "every note was handled");

    // Long enough for the upkeep's next look at the count (every half second) and for
    // the statistics of a vacuum it ran to be in.
    tokio::time::sleep(Duration::from_millis(1500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_vacuums_its_queue_once_it_has_taken_enough_messages() {
    let db = TestDb::new().await;
    let endpoint = start(&db, "tidy", 1500, Duration::from_millis(100)).await;

    run_notes(&db, "tidy", 1000, 1000).await;
    assert_eq!(
        vacuums(&db, "tidy_queue").await,
        0,
        "no vacuum before 1,500 messages were taken"
    );

    run_notes(&db, "tidy", 1000, 2000).await;
    let done = wait_until(Duration::from_secs(10), || async {
        vacuums(&db, "tidy_queue").await >= 1
    })
    .await;
    endpoint.shutdown(Duration::from_secs(5)).await;
    assert!(
        done,
        "the endpoint vacuumed its queue: {} manual vacuums after 2,000 messages",
        vacuums(&db, "tidy_queue").await
    );
    let left = db.count("SELECT count(*) FROM bus.tidy_queue").await;
    assert_eq!(left, 0, "and handled every message");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_its_upkeep_off_an_endpoint_leaves_the_queue_to_autovacuum() {
    let db = TestDb::new().await;
    let endpoint = start(&db, "untidy", 0, Duration::from_millis(100)).await;
    run_notes(&db, "untidy", 2000, 2000).await;
    endpoint.shutdown(Duration::from_secs(5)).await;
    assert_eq!(
        vacuums(&db, "untidy_queue").await,
        0,
        "no manual vacuum of the queue"
    );
}
