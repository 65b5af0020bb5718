//! Batches: failures isolated inside a batch, pipelined sends that fail, lock ordering.

use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use tests::{TestDb, wait_until};
use transport_pg::EndpointBuilder;

use crate::fixtures::{
    LOCKS_SQL, Lock, Locker, Mode, Note, create_records, install_only, sender, start_recorder,
    warm_up,
};

/// Runs nine good notes and one of `odd` through an endpoint with batch size 10, all
/// committed in one transaction so that they arrive as one batch.
async fn batch_with_one_odd(odd: Mode, batch_size: usize) -> TestDb {
    let db = TestDb::new().await;
    create_records(&db).await;
    let database = db.database();
    install_only(&database, "sink").await;
    let calls = Arc::new(AtomicU32::new(0));
    let endpoint = start_recorder(&database, "batched", calls, |b| {
        b.batch_size(batch_size).concurrency(1).max_attempts(3)
    })
    .await;
    warm_up(&db, "batched", 25).await;

    let sender = sender(&database, "batched");
    let mut client = sender.pool().get().await.unwrap();
    let tx = client.transaction().await.unwrap();
    let mut outbox = sender.outbox();
    for i in 0..10 {
        let mode = if i == 4 { odd } else { Mode::Record };
        outbox
            .send(&Note {
                text: format!("batch-{i}"),
                mode,
            })
            .unwrap();
    }
    outbox.write(&tx).await.unwrap();
    tx.commit().await.unwrap();
    outbox.committed();

    let settled = wait_until(Duration::from_secs(30), || async {
        let good = db
            .count("SELECT count(DISTINCT text) FROM records WHERE text LIKE 'batch-%'")
            .await;
        let failed = db.count("SELECT count(*) FROM bus.failed_messages").await;
        good == 10 || (good == 9 && failed == 1)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    endpoint.shutdown(Duration::from_secs(5)).await;
    assert!(settled, "the batch settled");
    db
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_batch_of_ten_one_failure_leaves_the_other_nine_committed() {
    let db = batch_with_one_odd(Mode::FailFirst, 10).await;

    // The nine committed together, in one transaction, on their first attempt.
    let nine_txids = db
        .count(
            "SELECT count(DISTINCT txid) FROM records \
             WHERE text LIKE 'batch-%' AND text <> 'batch-4'",
        )
        .await;
    assert_eq!(nine_txids, 1, "the nine good notes shared one transaction");
    assert_eq!(
        db.count("SELECT count(*) FROM records WHERE text LIKE 'batch-%'")
            .await,
        10,
        "each note recorded once"
    );
    assert_eq!(
        db.count("SELECT failed_attempts::bigint FROM records WHERE text = 'batch-4'")
            .await,
        1,
        "the failed one came back with its counter raised"
    );
    // Only the successful attempt's send survived.
    assert_eq!(db.count("SELECT count(*) FROM bus.sink_queue").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_batch_of_ten_one_panic_leaves_the_other_nine_committed() {
    let db = batch_with_one_odd(Mode::PanicFirst, 10).await;
    assert_eq!(
        db.count("SELECT count(*) FROM records WHERE text LIKE 'batch-%'")
            .await,
        10
    );
    assert_eq!(
        db.count("SELECT failed_attempts::bigint FROM records WHERE text = 'batch-4'")
            .await,
        1
    );
    assert_eq!(db.count("SELECT count(*) FROM bus.sink_queue").await, 1);
}

async fn assert_bad_destination_is_charged_to_its_message(batch_size: usize) {
    let db = batch_with_one_odd(Mode::SendToGhost, batch_size).await;
    let good = db
        .count("SELECT count(*) FROM records WHERE text LIKE 'batch-%' AND text <> 'batch-4'")
        .await;
    assert_eq!(good, 9, "the other nine committed");
    let row = db
        .client()
        .await
        .query_one(
            "SELECT failed_attempts, error_kind, error_message FROM bus.failed_messages",
            &[],
        )
        .await
        .expect("the bad one is in the error queue");
    assert_eq!(row.get::<_, i32>(0), 3, "tried exactly max_attempts times");
    assert!(row.get::<_, String>(1).contains("EndpointNotInstalled"));
    assert!(row.get::<_, String>(2).contains("ghost"));
    assert_eq!(db.count("SELECT count(*) FROM bus.batched_queue").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_destination_in_a_pipelined_batch_fails_only_its_own_message() {
    assert_bad_destination_is_charged_to_its_message(10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_destination_at_batch_one_raises_its_counter_without_looping() {
    assert_bad_destination_is_charged_to_its_message(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_locking_the_same_keys_in_opposite_orders_do_not_deadlock() {
    let db = TestDb::new().await;
    db.client().await.batch_execute(LOCKS_SQL).await.unwrap();
    let database = db.database();
    let endpoint = EndpointBuilder::new("lockers", database.clone())
        .handler::<Lock, _>(Locker)
        .batch_size(2)
        .concurrency(2)
        .idle_poll_max(Duration::from_millis(100))
        .start()
        .await
        .unwrap();
    let sender = transport_pg::Sender::builder(&database, "test")
        .route::<Lock>("lockers")
        .unwrap()
        .build()
        .unwrap();
    for _ in 0..25 {
        sender
            .send(&Lock {
                key: "warm".into(),
                hold_ms: 0,
            })
            .await
            .unwrap();
    }
    let warmed = wait_until(Duration::from_secs(30), || async {
        db.count("SELECT count(*) FROM lock_log").await == 25
    })
    .await;
    assert!(warmed);

    // Pairs in opposite orders, each pair committed at once so it forms one batch.
    let mut client = sender.pool().get().await.unwrap();
    for round in 0..10 {
        let tx = client.transaction().await.unwrap();
        let mut outbox = sender.outbox();
        let (first, second) = if round % 2 == 0 {
            ("a", "b")
        } else {
            ("b", "a")
        };
        for key in [first, second] {
            outbox
                .send(&Lock {
                    key: key.into(),
                    hold_ms: 150,
                })
                .unwrap();
        }
        outbox.write(&tx).await.unwrap();
        tx.commit().await.unwrap();
        outbox.committed();
    }
    let done = wait_until(Duration::from_secs(60), || async {
        db.count("SELECT count(*) FROM lock_log WHERE key <> 'warm'")
            .await
            == 20
    })
    .await;
    endpoint.shutdown(Duration::from_secs(5)).await;
    assert!(done, "all twenty handled");
    assert_eq!(
        db.count("SELECT coalesce(sum(failed_attempts), 0)::bigint FROM lock_log")
            .await,
        0,
        "no attempt failed (a deadlock would have raised a counter)"
    );
    assert_eq!(
        db.count("SELECT count(*) FROM bus.failed_messages").await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_size_outside_1_to_50_is_refused_before_anything_is_installed() {
    let db = TestDb::new().await;
    for size in [0, transport_pg::MAX_BATCH_SIZE + 1] {
        let started = EndpointBuilder::new("oversized", db.database())
            .batch_size(size)
            .start()
            .await;
        let error = match started {
            Ok(_) => panic!("batch size {size} was accepted"),
            Err(error) => transport_pg::error_chain(&error),
        };
        assert!(
            error.contains(&format!(
                "batch size {size} is outside 1 to {}",
                transport_pg::MAX_BATCH_SIZE
            )),
            "{error}"
        );
    }
    let tables = db
        .count("SELECT count(*) FROM pg_tables WHERE tablename LIKE 'oversized%'")
        .await;
    assert_eq!(tables, 0, "nothing was installed");
}
