//! Processes that die mid-batch: SIGKILL, and a handler that aborts the process.

use std::time::Duration;

use example_endpoint::Work;
use tests::process::Process;
use tests::{TestDb, wait_until};
use transport_pg::Sender;

fn work_sender(db: &TestDb) -> Sender {
    Sender::builder(&db.database(), "test-client")
        .route::<Work>("example")
        .unwrap()
        .build()
        .unwrap()
}

fn start_example(db: &TestDb, extra: &[&str]) -> Process {
    let mut args = vec!["--database-url", db.url.as_str()];
    args.extend_from_slice(extra);
    Process::start("example-endpoint", &args, &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_batch_loses_nothing_and_the_restart_begins_in_careful_mode() {
    const WORK: usize = 150;
    let db = TestDb::new().await;
    let first = start_example(&db, &["--batch-size", "10", "--concurrency", "2"]);
    first
        .wait_for_line("endpoint ready", Duration::from_secs(30))
        .await;

    let sender = work_sender(&db);
    let mut outbox = sender.outbox();
    for i in 0..WORK {
        outbox
            .send(&Work {
                key: format!("k{i}"),
                sleep_ms: 10,
                ..Work::default()
            })
            .unwrap();
    }
    let mut client = sender.pool().get().await.unwrap();
    let tx = client.transaction().await.unwrap();
    outbox.write(&tx).await.unwrap();
    tx.commit().await.unwrap();
    outbox.committed();

    // Kill it once it is past the careful mode and in the middle of batches.
    let midway = wait_until(Duration::from_secs(60), || async {
        db.count("SELECT count(*) FROM example.handled").await >= 40
    })
    .await;
    assert!(midway, "log:\n{}", first.log());
    assert!(
        first.has_line("leaving careful mode"),
        "log:\n{}",
        first.log()
    );
    first.signal("KILL");
    drop(first);
    let at_kill = db.count("SELECT count(*) FROM example.handled").await;
    assert!(at_kill < WORK as i64, "killed before the end");

    let second = start_example(&db, &["--batch-size", "10", "--concurrency", "2"]);
    second
        .wait_for_line("starting in careful mode", Duration::from_secs(30))
        .await;
    let done = wait_until(Duration::from_secs(90), || async {
        db.count("SELECT count(*) FROM example.handled").await >= WORK as i64
    })
    .await;
    assert!(done, "log:\n{}", second.log());
    tokio::time::sleep(Duration::from_millis(500)).await;

    assert_eq!(
        db.count("SELECT count(*) FROM example.handled").await,
        WORK as i64
    );
    assert_eq!(
        db.count("SELECT count(DISTINCT key) FROM example.handled")
            .await,
        WORK as i64,
        "every work item took effect exactly once"
    );
    assert_eq!(db.count("SELECT count(*) FROM bus.example_queue").await, 0);
    assert_eq!(
        db.count("SELECT count(*) FROM bus.failed_messages").await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_aborts_its_process_ends_in_the_error_queue_after_the_claim_limit() {
    let db = TestDb::new().await;
    // Install the queue first, so the work can be queued before any process runs.
    let installer = start_example(&db, &[]);
    installer
        .wait_for_line("endpoint ready", Duration::from_secs(30))
        .await;
    installer.signal("TERM");
    drop(installer);

    let sender = work_sender(&db);
    for i in 0..3 {
        sender
            .send(&Work {
                key: format!("before-{i}"),
                ..Work::default()
            })
            .await
            .unwrap();
    }
    sender
        .send(&Work {
            key: "killer".into(),
            abort: true,
            ..Work::default()
        })
        .await
        .unwrap();
    for i in 0..3 {
        sender
            .send(&Work {
                key: format!("after-{i}"),
                ..Work::default()
            })
            .await
            .unwrap();
    }

    let mut deaths = 0;
    for _start in 0..8 {
        let mut process = start_example(&db, &[]);
        let settled = wait_until(Duration::from_secs(15), || async {
            db.count("SELECT count(*) FROM bus.failed_messages").await == 1
                && db.count("SELECT count(*) FROM example.handled").await == 6
        });
        let died = async { process.wait_exit(Duration::from_secs(15)).await };
        tokio::select! {
            done = settled => {
                assert!(done, "neither settled nor died; log:\n{}", process.log());
                process.signal("TERM");
                break;
            }
            code = died => {
                assert_eq!(code, None, "the abort kills the process by signal");
                deaths += 1;
            }
        }
    }
    assert_eq!(
        deaths, 3,
        "the killer was tried until its claims passed the limit"
    );

    let row = db
        .client()
        .await
        .query_one("SELECT error_kind, body FROM bus.failed_messages", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "claim_limit");
    assert_eq!(db.count("SELECT count(*) FROM example.handled").await, 6);
    assert_eq!(
        db.count("SELECT count(DISTINCT key) FROM example.handled")
            .await,
        6
    );
    assert_eq!(db.count("SELECT count(*) FROM bus.example_queue").await, 0);
}
