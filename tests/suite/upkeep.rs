//! Queue upkeep: an endpoint vacuums its own queue table as its messages go through, so
//! the dead rows of a busy queue do not wait a minute for autovacuum.

use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use tests::{TestDb, wait_until};

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

/// Runs `count` notes through endpoint `name`, whose builder has `messages` and `gap` as
/// its upkeep, and waits until they are handled.
async fn run_notes(db: &TestDb, name: &str, messages: u64, gap: Duration, count: usize) {
    create_records(db).await;
    let database = db.database();
    let endpoint = start_recorder(&database, name, Arc::new(AtomicU32::new(0)), |b| {
        b.batch_size(10).concurrency(2).queue_vacuum(messages, gap)
    })
    .await;

    let sender = sender(&database, name);
    send_numbered_notes(&sender, count, 100).await;
    let handled = wait_until(Duration::from_secs(60), || async {
        db.count("SELECT count(*) FROM records").await >= count as i64
    })
    .await;
    assert!(handled, "every note was handled");

    // Long enough for the upkeep's next look at the count (every half second).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    endpoint.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_vacuums_its_queue_after_enough_messages() {
    let db = TestDb::new().await;
    run_notes(&db, "tidy", 300, Duration::from_millis(100), 1000).await;

    let done = wait_until(Duration::from_secs(10), || async {
        vacuums(&db, "tidy_queue").await >= 1
    })
    .await;
    assert!(
        done,
        "the endpoint vacuumed its queue: {} manual vacuums after 1,000 messages",
        vacuums(&db, "tidy_queue").await
    );
    let left = db.count("SELECT count(*) FROM bus.tidy_queue").await;
    assert_eq!(left, 0, "and handled every message");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_its_upkeep_off_an_endpoint_leaves_the_queue_to_autovacuum() {
    let db = TestDb::new().await;
    run_notes(&db, "untidy", 0, Duration::from_millis(100), 1000).await;

    // The statistics of a vacuum that ran would be in by now (see the test above).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        vacuums(&db, "untidy_queue").await,
        0,
        "no manual vacuum of the queue"
    );
}
