//! Staying up: graceful shutdown, database outages, pool timeouts and TLS refusals.

use std::time::{Duration, Instant};

use example_endpoint::Work;
use tests::cluster::PrivateCluster;
use tests::process::Process;
use tests::{TestDb, wait_until};
use transport_pg::{Database, DatabaseSettings, Error, Sender};

fn work_sender(db: &Database) -> Sender {
    Sender::builder(db, "test-client")
        .route::<Work>("example")
        .unwrap()
        .build()
        .unwrap()
}

fn example(url: &str, extra: &[&str]) -> Process {
    let mut args = vec!["--database-url", url];
    args.extend_from_slice(extra);
    Process::start("example-endpoint", &args, &[])
}

async fn handled(db: &TestDb) -> i64 {
    db.count("SELECT count(*) FROM example.handled").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_slow_handler_finish_and_commit_then_exits_zero() {
    let db = TestDb::new().await;
    let mut endpoint = example(&db.url, &["--grace-ms", "10000"]);
    endpoint
        .wait_for_line("endpoint ready", Duration::from_secs(30))
        .await;
    work_sender(&db.database())
        .send(&Work {
            key: "slow".into(),
            sleep_ms: 1500,
            ..Work::default()
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(handled(&db).await, 0, "still running when the signal comes");

    endpoint.signal("TERM");
    assert_eq!(
        endpoint.wait_exit(Duration::from_secs(20)).await,
        Some(0),
        "{}",
        endpoint.log()
    );
    assert_eq!(handled(&db).await, 1, "the in-flight handler committed");
    assert_eq!(db.count("SELECT count(*) FROM bus.example_queue").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_grace_period_the_batch_rolls_back_and_nothing_is_lost() {
    let db = TestDb::new().await;
    let mut endpoint = example(&db.url, &["--grace-ms", "300"]);
    endpoint
        .wait_for_line("endpoint ready", Duration::from_secs(30))
        .await;
    work_sender(&db.database())
        .send(&Work {
            key: "too-slow".into(),
            sleep_ms: 5000,
            ..Work::default()
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;

    endpoint.signal("TERM");
    let code = endpoint.wait_exit(Duration::from_secs(20)).await;
    assert!(matches!(code, Some(c) if c != 0), "non-zero exit: {code:?}");
    assert!(endpoint.has_line("rolled back"), "{}", endpoint.log());
    assert_eq!(handled(&db).await, 0);
    // The message is back, and the next process handles it.
    let back = wait_until(Duration::from_secs(10), || async {
        db.count("SELECT count(*) FROM bus.example_queue").await == 1
    })
    .await;
    assert!(back, "the message is back in its queue");
    let next = example(&db.url, &[]);
    let done = wait_until(Duration::from_secs(20), || async {
        handled(&db).await == 1
    })
    .await;
    assert!(done, "{}", next.log());
}

/// Fills the example queue with `count` work items, 500 per transaction.
async fn fill(db: &Database, count: usize) {
    let sender = work_sender(db);
    let mut client = sender.pool().get().await.unwrap();
    for chunk in 0..count.div_ceil(500) {
        let tx = client.transaction().await.unwrap();
        let mut outbox = sender.outbox();
        for i in chunk * 500..((chunk + 1) * 500).min(count) {
            outbox
                .send(&Work {
                    key: format!("w{i}"),
                    ..Work::default()
                })
                .unwrap();
        }
        outbox.write(&tx).await.unwrap();
        tx.commit().await.unwrap();
    }
}

async fn assert_each_handled_once(client: &transport_pg::tokio_postgres::Client, count: i64) {
    let row = client
        .query_one(
            "SELECT count(*), count(DISTINCT key) FROM example.handled",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), count, "no message handled twice");
    assert_eq!(row.get::<_, i64>(1), count, "no message lost");
}

async fn wait_for_outage_end(endpoint: &Process) {
    endpoint
        .wait_for_line("database outage ended", Duration::from_secs(30))
        .await;
    // Long enough for a second outage, were one to be logged.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        endpoint.count_lines("database outage started"),
        1,
        "{}",
        endpoint.log()
    );
    assert_eq!(
        endpoint.count_lines("database outage ended"),
        1,
        "{}",
        endpoint.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connection_killed_mid_flow_loses_nothing_and_logs_one_outage() {
    const WORK: usize = 5000;
    let db = TestDb::new().await;
    let endpoint = example(&db.url, &["--batch-size", "10"]);
    endpoint
        .wait_for_line("endpoint ready", Duration::from_secs(30))
        .await;
    fill(&db.database(), WORK).await;
    let flowing = wait_until(Duration::from_secs(60), || async {
        handled(&db).await >= 1000
    })
    .await;
    assert!(flowing, "{}", endpoint.log());

    let killed = db
        .count(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name LIKE 'pgbus%') k",
        )
        .await;
    assert!(
        killed >= 3,
        "pool, listener and notifier connections: {killed}"
    );

    let done = wait_until(Duration::from_secs(120), || async {
        handled(&db).await >= WORK as i64
    })
    .await;
    assert!(done, "{}", endpoint.log());
    wait_for_outage_end(&endpoint).await;
    assert_each_handled_once(&db.client().await, WORK as i64).await;
    assert_eq!(db.count("SELECT count(*) FROM bus.example_queue").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_crash_and_restart_mid_flow_loses_nothing_and_logs_one_outage() {
    const WORK: usize = 5000;
    let cluster = PrivateCluster::start();
    let admin = tests::connect(&cluster.url("postgres")).await;
    admin.batch_execute("CREATE DATABASE flow").await.unwrap();
    let url = cluster.url("flow");
    let database = Database::from_url(&url).unwrap();

    let endpoint = example(&url, &["--batch-size", "10"]);
    endpoint
        .wait_for_line("endpoint ready", Duration::from_secs(30))
        .await;
    fill(&database, WORK).await;
    let client = tests::connect(&url).await;
    let flowing = wait_until(Duration::from_secs(60), || async {
        handled_in(&client).await >= 1000
    })
    .await;
    assert!(flowing, "{}", endpoint.log());

    cluster.restart_immediate();
    let client = tests::connect(&url).await;
    let done = wait_until(Duration::from_secs(120), || async {
        handled_in(&client).await >= WORK as i64
    })
    .await;
    assert!(done, "{}", endpoint.log());
    wait_for_outage_end(&endpoint).await;
    assert_each_handled_once(&client, WORK as i64).await;
}

async fn handled_in(client: &transport_pg::tokio_postgres::Client) -> i64 {
    match client
        .query_one("SELECT count(*) FROM example.handled", &[])
        .await
    {
        Ok(row) => row.get(0),
        Err(_) => -1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_pool_gives_a_timeout_error_not_a_hang() {
    let db = TestDb::new().await;
    let settings = DatabaseSettings {
        pool_wait_timeout: Duration::from_millis(500),
        ..DatabaseSettings::default()
    };
    let database = db.database().with_settings(settings).unwrap();
    let sender = Sender::builder(&database, "squeezed")
        .pool_size(1)
        .build()
        .unwrap();

    // A stuck handler holding the only connection in an open transaction.
    let mut stuck = sender.pool().get().await.unwrap();
    let _open = stuck.transaction().await.unwrap();

    let started = Instant::now();
    let result = sender.send_to("example", &Work::default()).await;
    let waited = started.elapsed();
    assert!(matches!(result, Err(Error::Pool { .. })), "{result:?}");
    assert!(waited < Duration::from_secs(5), "it waited {waited:?}");
    assert!(result.unwrap_err().is_retryable());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asking_for_tls_from_a_server_without_it_fails_with_a_clear_message() {
    // A private cluster, started without TLS (the shared one may have it).
    let cluster = PrivateCluster::start();
    let url = format!("{} sslmode=require", cluster.url("postgres"));
    let database = Database::from_url(&url).unwrap();
    let error = database
        .connect("tls check")
        .await
        .expect_err("the server has no TLS");
    let text = transport_pg::error_chain(&error);
    assert!(text.contains("server does not support TLS"), "{text}");
    // The default, prefer, falls back to a plain connection.
    Database::from_url(&cluster.url("postgres"))
        .unwrap()
        .connect("plain")
        .await
        .expect("prefer connects without TLS");

    let mut endpoint = example(&url, &[]);
    let code = endpoint.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(code, Some(1), "{}", endpoint.log());
    assert!(
        endpoint.log().to_lowercase().contains("tls"),
        "{}",
        endpoint.log()
    );
}
