//! Retries, the outage throttle, fingerprints and retrying from the error queue.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use example_endpoint::Work;
use tests::process::Process;
use tests::{TIMING, TestDb, wait_until};
use transport_pg::{Endpoint, EndpointBuilder, FailedSelection, RetryPolicy, Sender, retry_failed};

use crate::fixtures::{Mode, Note, Switch, create_records, sender, start_recorder};

fn policy(immediate: u32, delayed: u32, first_delay_ms: u64) -> RetryPolicy {
    RetryPolicy {
        immediate,
        delayed,
        first_delay: Duration::from_millis(first_delay_ms),
        backoff_factor: 2.0,
        ..RetryPolicy::default()
    }
}

async fn start_switch(
    db: &TestDb,
    name: &str,
    policy: RetryPolicy,
) -> (Endpoint, Arc<AtomicBool>, Arc<Mutex<Vec<Instant>>>) {
    let broken = Arc::new(AtomicBool::new(true));
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let endpoint = EndpointBuilder::new(name, db.database())
        .handler::<Note, _>(Switch {
            broken: broken.clone(),
            attempts: attempts.clone(),
        })
        .retry_policy(policy)
        .idle_poll_max(Duration::from_millis(200))
        .start()
        .await
        .unwrap();
    (endpoint, broken, attempts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timing_an_always_failing_message_is_tried_1_plus_immediate_plus_delayed_times() {
    let _serial = TIMING.lock().await;
    let db = TestDb::new().await;
    create_records(&db).await;
    let (endpoint, _broken, attempts) = start_switch(&db, "failing", policy(2, 2, 1000)).await;
    sender(&db.database(), "failing")
        .send(&Note {
            text: "never".into(),
            ..Note::default()
        })
        .await
        .unwrap();

    let failed = wait_until(Duration::from_secs(20), || async {
        db.count("SELECT count(*) FROM bus.failed_messages").await == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    endpoint.shutdown(Duration::from_secs(5)).await;
    assert!(failed, "it reached the error queue");

    let attempts = attempts.lock().unwrap().clone();
    assert_eq!(attempts.len(), 5, "1 + 2 immediate + 2 delayed tries");
    let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1] - w[0]).collect();
    println!("gaps between tries: {gaps:?}");
    assert!(gaps[0] < Duration::from_millis(500) && gaps[1] < Duration::from_millis(500));
    // The delayed tries wait 1 s, then 2 s; generous bounds for a busy machine.
    assert!(gaps[2] >= Duration::from_millis(950) && gaps[2] < Duration::from_millis(2500));
    assert!(gaps[3] >= Duration::from_millis(1950) && gaps[3] < Duration::from_millis(3500));

    let row = db
        .client()
        .await
        .query_one(
            "SELECT failed_attempts, delayed_retries, error_kind, error_message, fingerprint, \
                    origin_queue, headers->>'failed_at' IS NOT NULL \
             FROM bus.failed_messages",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 5);
    assert_eq!(row.get::<_, i32>(1), 2);
    assert_eq!(row.get::<_, String>(2), "message");
    assert_eq!(row.get::<_, String>(3), "the switch is off");
    assert_eq!(row.get::<_, String>(4).len(), 16);
    assert_eq!(row.get::<_, String>(5), "failing");
    assert!(row.get::<_, bool>(6));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_fails_twice_then_succeeds_is_handled_once() {
    let db = TestDb::new().await;
    create_records(&db).await;
    let calls = Arc::new(AtomicU32::new(0));
    let endpoint = start_recorder(&db.database(), "twice", calls.clone(), |b| {
        b.retry_policy(policy(1, 2, 200))
    })
    .await;
    sender(&db.database(), "twice")
        .send(&Note {
            text: "flaky".into(),
            mode: Mode::FailTwice,
        })
        .await
        .unwrap();
    let done = wait_until(Duration::from_secs(20), || async {
        db.count("SELECT count(*) FROM records").await == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    endpoint.shutdown(Duration::from_secs(5)).await;
    assert!(done);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(
        db.count("SELECT count(*) FROM records").await,
        1,
        "one business write"
    );
    assert_eq!(
        db.count("SELECT failed_attempts::bigint FROM records")
            .await,
        2
    );
    assert_eq!(
        db.count("SELECT count(*) FROM bus.failed_messages").await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_between_delayed_retries_loses_nothing_and_keeps_the_counters() {
    let db = TestDb::new().await;
    let args = [
        "--database-url",
        db.url.as_str(),
        "--immediate-retries",
        "0",
        "--delayed-retries",
        "3",
        "--retry-delay-ms",
        "1500",
        "--retry-backoff",
        "1",
    ];
    let first = Process::start("example-endpoint", &args, &[]);
    first
        .wait_for_line("endpoint ready", Duration::from_secs(30))
        .await;
    let sender = Sender::builder(&db.database(), "test")
        .route::<Work>("example")
        .unwrap()
        .build()
        .unwrap();
    sender
        .send(&Work {
            key: "stubborn".into(),
            fail_times: 2,
            ..Work::default()
        })
        .await
        .unwrap();

    // After its first failure it waits in the delayed table with its counter.
    let waiting = wait_until(Duration::from_secs(10), || async {
        db.count(
            "SELECT count(*) FROM bus.example_delayed \
             WHERE headers->>'failed_attempts' = '1' AND headers->>'delayed_retries' = '1'",
        )
        .await
            == 1
    })
    .await;
    assert!(waiting, "log:\n{}", first.log());
    first.signal("KILL");
    drop(first);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        db.count("SELECT count(*) FROM bus.example_delayed").await,
        1
    );

    let second = Process::start("example-endpoint", &args, &[]);
    let handled = wait_until(Duration::from_secs(20), || async {
        db.count("SELECT count(*) FROM example.handled").await == 1
    })
    .await;
    assert!(handled, "log:\n{}", second.log());
    // attempt is the failed_attempts the successful try saw: both failures were kept.
    assert_eq!(
        db.count("SELECT attempt::bigint FROM example.handled")
            .await,
        2
    );
    assert_eq!(
        db.count("SELECT count(*) FROM bus.failed_messages").await,
        0
    );
    second.signal("TERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_sharing_a_failing_message_never_retry_it_more_than_configured() {
    let db = TestDb::new().await;
    create_records(&db).await;
    let calls = Arc::new(AtomicU32::new(0));
    let configure = |b: EndpointBuilder| b.retry_policy(policy(3, 2, 100)).concurrency(2);
    let one = start_recorder(&db.database(), "shared", calls.clone(), configure).await;
    let two = start_recorder(&db.database(), "shared", calls.clone(), configure).await;
    let sender = sender(&db.database(), "shared");
    for i in 0..5 {
        sender
            .send(&Note {
                text: format!("bad-{i}"),
                mode: Mode::AlwaysFail,
            })
            .await
            .unwrap();
    }
    let failed = wait_until(Duration::from_secs(30), || async {
        db.count("SELECT count(*) FROM bus.failed_messages").await == 5
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    one.shutdown(Duration::from_secs(5)).await;
    two.shutdown(Duration::from_secs(5)).await;
    assert!(failed);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        5 * 6,
        "exactly 1 + 3 + 2 tries each"
    );
    assert_eq!(
        db.count("SELECT count(*) FROM bus.failed_messages WHERE failed_attempts = 6")
            .await,
        5
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_failures_in_a_row_throttle_the_endpoint_and_one_success_ends_it() {
    let db = TestDb::new().await;
    create_records(&db).await;
    let calls = Arc::new(AtomicU32::new(0));
    let endpoint = start_recorder(&db.database(), "outage", calls.clone(), |b| {
        b.retry_policy(policy(0, 0, 100))
            .throttle(40, Duration::from_millis(200))
    })
    .await;
    assert!(!endpoint.is_throttled());
    let sender = sender(&db.database(), "outage");
    for i in 0..45 {
        sender
            .send(&Note {
                text: format!("down-{i}"),
                mode: Mode::AlwaysFail,
            })
            .await
            .unwrap();
    }
    let throttled = wait_until(Duration::from_secs(30), || async {
        endpoint.is_throttled()
    })
    .await;
    assert!(throttled, "throttled after forty failures");
    let at_forty = calls.load(Ordering::SeqCst);
    assert!((40..45).contains(&at_forty), "{at_forty}");

    // Throttled: one message per pause, not all the rest at once.
    tokio::time::sleep(Duration::from_millis(450)).await;
    let later = calls.load(Ordering::SeqCst);
    assert!(later - at_forty <= 3, "{at_forty} -> {later}");

    sender
        .send(&Note {
            text: "recovered".into(),
            mode: Mode::Record,
        })
        .await
        .unwrap();
    let recovered = wait_until(Duration::from_secs(30), || async {
        !endpoint.is_throttled()
    })
    .await;
    endpoint.shutdown(Duration::from_secs(5)).await;
    assert!(recovered, "the first success ended the throttle");
    assert_eq!(db.count("SELECT count(*) FROM records").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_of_one_cause_share_a_fingerprint_and_other_causes_do_not() {
    let db = TestDb::new().await;
    create_records(&db).await;
    let calls = Arc::new(AtomicU32::new(0));
    let endpoint = start_recorder(&db.database(), "prints", calls, |b| {
        b.retry_policy(policy(0, 0, 100))
    })
    .await;
    let sender = sender(&db.database(), "prints");
    for text in [
        uuid::Uuid::new_v4().to_string(),
        uuid::Uuid::new_v4().to_string(),
    ] {
        sender
            .send(&Note {
                text,
                mode: Mode::Decline,
            })
            .await
            .unwrap();
    }
    sender
        .send(&Note {
            text: "x".into(),
            mode: Mode::AlwaysFail,
        })
        .await
        .unwrap();
    let failed = wait_until(Duration::from_secs(20), || async {
        db.count("SELECT count(*) FROM bus.failed_messages").await == 3
    })
    .await;
    endpoint.shutdown(Duration::from_secs(5)).await;
    assert!(failed);
    assert_eq!(
        db.count("SELECT count(DISTINCT fingerprint) FROM bus.failed_messages")
            .await,
        2
    );
    assert_eq!(
        db.count(
            "SELECT count(*) FROM bus.failed_messages WHERE fingerprint = \
             (SELECT fingerprint FROM bus.failed_messages \
              WHERE error_message LIKE '%declined' LIMIT 1)"
        )
        .await,
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_retried_from_the_error_queue_is_handled_by_the_fixed_handler() {
    let db = TestDb::new().await;
    create_records(&db).await;
    let (endpoint, broken, _attempts) = start_switch(&db, "fixable", policy(1, 0, 100)).await;
    sender(&db.database(), "fixable")
        .send(&Note {
            text: "again".into(),
            ..Note::default()
        })
        .await
        .unwrap();
    let failed = wait_until(Duration::from_secs(20), || async {
        db.count("SELECT count(*) FROM bus.failed_messages").await == 1
    })
    .await;
    assert!(failed);
    let id = db.count("SELECT id FROM bus.failed_messages").await;

    broken.store(false, Ordering::SeqCst);
    let mut client = db.client().await;
    let report = retry_failed(&mut client, &FailedSelection::Ids(vec![id, 999_999]), 100)
        .await
        .unwrap();
    assert_eq!(report.moved, vec![(id, "fixable".to_owned())]);
    assert_eq!(report.missing, vec![999_999]);
    assert_eq!(
        db.count("SELECT count(*) FROM bus.failed_messages").await,
        0
    );

    let handled = wait_until(Duration::from_secs(10), || async {
        db.count("SELECT count(*) FROM records").await == 1
    })
    .await;
    endpoint.shutdown(Duration::from_secs(5)).await;
    assert!(handled);
    assert_eq!(
        db.count("SELECT failed_attempts::bigint FROM records")
            .await,
        0,
        "counters reset by the retry"
    );
}
