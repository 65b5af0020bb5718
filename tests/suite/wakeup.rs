//! Wake-ups: latency on an idle endpoint, poll-only mode, and a killed listener.

use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant};

use tests::{TIMING, TestDb, wait_until};
use tokio::sync::mpsc;
use transport_pg::{Endpoint, EndpointBuilder, Sender};

use crate::fixtures::{Note, Ping, Pinger, create_records, start_recorder};

/// Starts endpoint `pinged` with wake-ups on, warmed up past the careful mode and the
/// statement caches by thirty pings; the receiver gets each ping's number and the moment
/// its handler started.
async fn start_pinger(db: &TestDb) -> (Endpoint, Sender, mpsc::UnboundedReceiver<(u32, Instant)>) {
    let (started, mut receiver) = mpsc::unbounded_channel();
    let database = db.database();
    let endpoint = EndpointBuilder::new("pinged", database.clone())
        .handler::<Ping, _>(Pinger { started })
        .start()
        .await
        .unwrap();
    let sender = Sender::builder(&database, "test")
        .route::<Ping>("pinged")
        .unwrap()
        .build()
        .unwrap();
    for n in 0..30 {
        ping(&sender, &mut receiver, n, Duration::from_secs(5)).await;
    }
    (endpoint, sender, receiver)
}

/// Sends ping `n`, returning the time from its commit to its handler's start.
async fn ping(
    sender: &Sender,
    started: &mut mpsc::UnboundedReceiver<(u32, Instant)>,
    n: u32,
    timeout: Duration,
) -> Duration {
    sender.send(&Ping { n }).await.unwrap();
    let committed = Instant::now();
    loop {
        let (got, at) = tokio::time::timeout(timeout, started.recv())
            .await
            .unwrap_or_else(|_| panic!("ping {n} not handled within {timeout:?}"))
            .expect("handler alive");
        if got == n {
            return at.saturating_duration_since(committed);
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timing_an_idle_endpoint_wakes_within_milliseconds_of_a_commit() {
    let _serial = TIMING.lock().await;
    let db = TestDb::new().await;
    let (endpoint, sender, mut started) = start_pinger(&db).await;

    let mut latencies = Vec::new();
    for n in 1000..1200 {
        // Let the endpoint go idle, so it is the wake-up, not a busy loop, that finds it.
        tokio::time::sleep(Duration::from_millis(5)).await;
        latencies.push(ping(&sender, &mut started, n, Duration::from_secs(5)).await);
    }
    endpoint.shutdown(Duration::from_secs(5)).await;

    latencies.sort();
    let p50 = percentile(&latencies, 0.5);
    let p99 = percentile(&latencies, 0.99);
    println!(
        "idle wake-up over {} sends: p50 {p50:?}, p99 {p99:?}",
        latencies.len()
    );
    assert!(p50 < Duration::from_millis(100), "p50 {p50:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_wake_ups_off_everything_still_arrives_by_the_poll() {
    let db = TestDb::new().await;
    create_records(&db).await;
    let database = db.database();
    let calls = Arc::new(AtomicU32::new(0));
    let endpoint = start_recorder(&database, "polled", calls, |b| {
        b.wakeups(false).idle_poll_max(Duration::from_millis(300))
    })
    .await;
    let client = Sender::builder(&database, "quiet")
        .route::<Note>("polled")
        .unwrap()
        .wakeups(false)
        .build()
        .unwrap();
    for i in 0..20 {
        client
            .send(&Note {
                text: format!("p{i}"),
                ..Note::default()
            })
            .await
            .unwrap();
        if i % 5 == 0 {
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
    }
    let all = wait_until(Duration::from_secs(20), || async {
        db.count("SELECT count(*) FROM records").await == 20
    })
    .await;
    // No LISTEN connection was ever opened.
    let listeners = db
        .count(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name = 'pgbus listener'",
        )
        .await;
    endpoint.shutdown(Duration::from_secs(5)).await;
    assert!(all, "all twenty arrived by polling");
    assert_eq!(listeners, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timing_a_killed_listener_costs_at_most_the_poll_and_then_wake_ups_resume() {
    let _serial = TIMING.lock().await;
    let db = TestDb::new().await;
    let (endpoint, sender, mut started) = start_pinger(&db).await;
    let listener_count = || async {
        db.count(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name = 'pgbus listener'",
        )
        .await
    };
    assert_eq!(listener_count().await, 1);

    let killed = db
        .count(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name = 'pgbus listener') k",
        )
        .await;
    assert_eq!(killed, 1);

    // Right after the kill: the poll (at most about a second idle) still finds it.
    let during = ping(&sender, &mut started, 500, Duration::from_secs(3)).await;
    assert!(during < Duration::from_millis(2500), "{during:?}");

    let back = wait_until(Duration::from_secs(10), || async {
        listener_count().await == 1
    })
    .await;
    assert!(back, "the listener reconnected");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut after = Vec::new();
    for n in 600..620 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        after.push(ping(&sender, &mut started, n, Duration::from_secs(3)).await);
    }
    endpoint.shutdown(Duration::from_secs(5)).await;
    after.sort();
    let p50 = percentile(&after, 0.5);
    println!("during the outage {during:?}; after reconnect p50 {p50:?}");
    assert!(
        p50 < Duration::from_millis(50),
        "wake-ups resumed: p50 {p50:?}"
    );
}

/// Transactions rolled back in the test's database, once every backend has reported (an
/// idle backend reports within about a second): a receive that finds nothing rolls back,
/// and nothing else in these tests does.
async fn rollbacks(db: &TestDb) -> i64 {
    tokio::time::sleep(Duration::from_millis(1500)).await;
    db.count("SELECT xact_rollback FROM pg_stat_database WHERE datname = current_database()")
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timing_a_message_after_a_gap_costs_one_empty_receive_not_a_herd_of_probes() {
    let _serial = TIMING.lock().await;
    let db = TestDb::new().await;
    let (endpoint, sender, mut started) = start_pinger(&db).await;

    // Four workers at batch 1, a message every 30 ms: the worker that takes one probes
    // once more (a full batch may have more behind it) and then waits for the next
    // wake-up. Waking a second worker after every message, or polling from 1 ms, costs
    // several empty receives a message.
    let messages = 50;
    let before = rollbacks(&db).await;
    let started_at = Instant::now();
    for n in 100..100 + messages {
        tokio::time::sleep(Duration::from_millis(30)).await;
        ping(&sender, &mut started, n, Duration::from_secs(5)).await;
    }
    let after = rollbacks(&db).await;
    let elapsed = started_at.elapsed();
    endpoint.shutdown(Duration::from_secs(5)).await;

    // The idle poll (from 250 ms up to a second, four workers) adds a few a second.
    let per_message = (after - before) as f64 / f64::from(messages);
    println!(
        "{} empty receives over {messages} messages in {elapsed:?}: {per_message:.1} a message",
        after - before
    );
    assert!(
        per_message <= 3.0,
        "{per_message:.1} empty receives a message; expected at most 3"
    );
}
