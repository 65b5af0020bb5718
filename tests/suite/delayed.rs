//! Delayed delivery: deferred messages wait in the destination's delayed table.

use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant};

use tests::{TIMING, TestDb, wait_until};
use transport_pg::EndpointName;

use crate::fixtures::{Note, create_records, install_only, sender, start_recorder};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timing_a_deferred_message_arrives_after_its_time_and_within_a_second() {
    let _serial = TIMING.lock().await;
    let db = TestDb::new().await;
    create_records(&db).await;
    let database = db.database();
    let calls = Arc::new(AtomicU32::new(0));
    let endpoint = start_recorder(&database, "later", calls, |b| b).await;
    let sender = sender(&database, "later");

    let delay = Duration::from_secs(2);
    let sent = Instant::now();
    sender
        .defer(
            None,
            delay,
            &Note {
                text: "deferred".into(),
                ..Note::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(db.count("SELECT count(*) FROM bus.later_delayed").await, 1);

    let arrived = wait_until(Duration::from_secs(10), || async {
        db.count("SELECT count(*) FROM records").await == 1
    })
    .await;
    let elapsed = sent.elapsed();
    endpoint.shutdown(Duration::from_secs(5)).await;
    assert!(arrived, "the deferred message arrived");
    println!("deferred by {delay:?}, handled after {elapsed:?}");
    assert!(elapsed >= delay, "not before its time: {elapsed:?}");
    assert!(
        elapsed <= delay + Duration::from_secs(1),
        "within a second after: {elapsed:?}"
    );
    assert_eq!(db.count("SELECT count(*) FROM bus.later_delayed").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferred_messages_to_an_endpoint_that_is_down_wait_and_are_moved_when_it_starts() {
    let db = TestDb::new().await;
    create_records(&db).await;
    let database = db.database();
    install_only(&database, "sleeper").await;
    let sender = sender(&database, "sleeper");
    for i in 0..30 {
        let note = Note {
            text: format!("d{i}"),
            ..Note::default()
        };
        sender
            .defer(None, Duration::from_millis(10), &note)
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        db.count("SELECT count(*) FROM bus.sleeper_delayed").await,
        30
    );

    let calls = Arc::new(AtomicU32::new(0));
    let endpoint = start_recorder(&database, "sleeper", calls, |b| b).await;
    let all = wait_until(Duration::from_secs(20), || async {
        db.count("SELECT count(*) FROM records").await == 30
    })
    .await;
    endpoint.shutdown(Duration::from_secs(5)).await;
    assert!(all);
    assert_eq!(
        db.count("SELECT count(DISTINCT text) FROM records").await,
        30
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_statements_have_no_sequential_scan_in_their_generic_plans() {
    let db = TestDb::new().await;
    let client = db.client().await;
    install_only(&db.database(), "planned").await;
    client
        .batch_execute(
            "INSERT INTO bus.planned_delayed (due_at, message_id, headers, body) \
             SELECT now() + i * interval '1 second', gen_random_uuid(), '{}', '\\x80' \
             FROM generate_series(1, 20000) AS i; ANALYZE bus.planned_delayed",
        )
        .await
        .unwrap();
    let statements =
        transport_pg::sql::QueueStatements::new(&EndpointName::new("planned").unwrap().tables(), 1);
    let cases = [
        (statements.move_due.as_str(), "(100)"),
        (statements.next_due_ms.as_str(), ""),
        (statements.take_seqs.as_str(), "(ARRAY[1::bigint])"),
        (statements.claim_next.as_str(), "(0, 1)"),
    ];
    client
        .batch_execute("SET plan_cache_mode = force_generic_plan")
        .await
        .unwrap();
    for (statement, params) in cases {
        client
            .batch_execute(&format!("PREPARE hot AS {statement}"))
            .await
            .unwrap();
        let plan: Vec<String> = client
            .query(&format!("EXPLAIN EXECUTE hot{params}"), &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        client.batch_execute("DEALLOCATE hot").await.unwrap();
        let plan = plan.join("\n");
        assert!(
            !plan.contains("Seq Scan on planned_delayed")
                && !plan.contains("Seq Scan on planned_queue"),
            "{statement}\n{plan}"
        );
    }
}
