//! The example endpoint as a real process.

use std::time::Duration;

use example_endpoint::Work;
use tests::TestDb;
use tests::process::Process;
use transport_pg::Sender;

fn work_sender(db: &TestDb) -> Sender {
    Sender::builder(&db.database(), "test-client")
        .route::<Work>("example")
        .unwrap()
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_endpoint_handles_work_and_exits_zero_on_sigterm() {
    let db = TestDb::new().await;
    let mut endpoint = Process::start("example-endpoint", &["--database-url", &db.url], &[]);
    endpoint
        .wait_for_line("endpoint ready", Duration::from_secs(30))
        .await;

    let sender = work_sender(&db);
    for i in 0..10 {
        let work = Work {
            key: format!("w{i}"),
            forward_to: None,
            ..Work::default()
        };
        sender.send(&work).await.unwrap();
    }
    let done = tests::wait_until(Duration::from_secs(20), || async {
        db.count("SELECT count(*) FROM example.handled").await == 10
    })
    .await;
    assert!(done, "10 handled; log:\n{}", endpoint.log());

    endpoint.signal("TERM");
    assert_eq!(endpoint.wait_exit(Duration::from_secs(20)).await, Some(0));
    assert!(endpoint.has_line("stopped cleanly"), "{}", endpoint.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_endpoint_exits_non_zero_with_a_reason_when_the_database_is_unreachable() {
    let url = "host=127.0.0.1 port=1 user=nobody dbname=none connect_timeout=2";
    let mut endpoint = Process::start("example-endpoint", &["--database-url", url], &[]);
    let code = endpoint.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(code, Some(1), "log:\n{}", endpoint.log());
    assert!(
        endpoint.has_line("could not connect"),
        "log:\n{}",
        endpoint.log()
    );

    let mut bad_flag = Process::start("example-endpoint", &["--batch-size", "many"], &[]);
    let code = bad_flag.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(code, Some(2), "clap exits 2 on a bad flag");
}
