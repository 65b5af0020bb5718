//! Publish/subscribe and replies.

use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use tests::{TestDb, wait_until};
use transport_pg::{EndpointName, Sender, decommission, unsubscribe};

use crate::fixtures::{Happened, create_records, install_only, start_recorder, start_subscriber};

fn publisher(db: &TestDb) -> Sender {
    Sender::builder(&db.database(), "publisher")
        .build()
        .unwrap()
}

async fn texts(db: &TestDb) -> Vec<String> {
    let mut texts: Vec<String> = db
        .client()
        .await
        .query("SELECT text FROM records ORDER BY text", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    texts.sort();
    texts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_reaches_every_subscriber_and_no_other_endpoint() {
    let db = TestDb::new().await;
    create_records(&db).await;
    let database = db.database();
    let one = start_subscriber(&database, "sub_one").await;
    let two = start_subscriber(&database, "sub_two").await;
    install_only(&database, "bystander").await;

    publisher(&db)
        .publish(&Happened { text: "e1".into() })
        .await
        .unwrap();
    let both = wait_until(Duration::from_secs(10), || async {
        db.count("SELECT count(*) FROM records").await == 2
    })
    .await;
    assert!(both, "both subscribers got it");
    tokio::time::sleep(Duration::from_millis(300)).await;
    one.shutdown(Duration::from_secs(5)).await;
    two.shutdown(Duration::from_secs(5)).await;

    assert_eq!(texts(&db).await, ["sub_one:e1", "sub_two:e1"]);
    assert_eq!(
        db.count("SELECT count(*) FROM bus.bystander_queue").await,
        0
    );
    assert_eq!(
        db.count("SELECT count(*) FROM bus.subscriptions WHERE message_type = 'test.Happened'")
            .await,
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ready_subscriber_gets_every_later_event_and_none_from_before_it_subscribed() {
    let db = TestDb::new().await;
    create_records(&db).await;
    let database = db.database();
    let early = start_subscriber(&database, "early").await;
    let publisher = publisher(&db);

    // Published while only "early" subscribes; primes the publisher's cache too.
    publisher
        .publish(&Happened {
            text: "before".into(),
        })
        .await
        .unwrap();
    let late = start_subscriber(&database, "late").await;
    // Ready reported: the very next publish must reach it, cache or not.
    publisher
        .publish(&Happened {
            text: "after".into(),
        })
        .await
        .unwrap();

    let settled = wait_until(Duration::from_secs(10), || async {
        db.count("SELECT count(*) FROM records").await == 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    early.shutdown(Duration::from_secs(5)).await;
    late.shutdown(Duration::from_secs(5)).await;
    assert!(settled, "{:?}", texts(&db).await);
    assert_eq!(
        texts(&db).await,
        ["early:after", "early:before", "late:after"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_is_down_keeps_receiving_into_its_queue() {
    let db = TestDb::new().await;
    create_records(&db).await;
    let database = db.database();
    let subscriber = start_subscriber(&database, "napper").await;
    subscriber.shutdown(Duration::from_secs(5)).await;

    let publisher = publisher(&db);
    for i in 0..5 {
        publisher
            .publish(&Happened {
                text: format!("while-down-{i}"),
            })
            .await
            .unwrap();
    }
    assert_eq!(db.count("SELECT count(*) FROM bus.napper_queue").await, 5);

    let back = start_subscriber(&database, "napper").await;
    let all = wait_until(Duration::from_secs(10), || async {
        db.count("SELECT count(*) FROM records").await == 5
    })
    .await;
    back.shutdown(Duration::from_secs(5)).await;
    assert!(all, "it handled everything when it came back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_and_decommission_stop_copies_and_publishing_goes_on() {
    let db = TestDb::new().await;
    create_records(&db).await;
    let database = db.database();
    let stays = start_subscriber(&database, "stays").await;
    let leaves = start_subscriber(&database, "leaves").await;
    let removed = start_subscriber(&database, "removed").await;
    leaves.shutdown(Duration::from_secs(5)).await;
    removed.shutdown(Duration::from_secs(5)).await;

    let client = db.client().await;
    let leaves_name = EndpointName::new("leaves").unwrap();
    assert_eq!(
        unsubscribe(&client, &leaves_name, Some("test.Happened"))
            .await
            .unwrap(),
        1
    );
    assert!(
        decommission(&client, &EndpointName::new("removed").unwrap())
            .await
            .unwrap()
    );
    tokio::time::sleep(transport_pg::SUBSCRIPTION_CACHE_TTL).await;

    publisher(&db)
        .publish(&Happened {
            text: "later".into(),
        })
        .await
        .unwrap();
    let got = wait_until(Duration::from_secs(10), || async {
        db.count("SELECT count(*) FROM records").await == 1
    })
    .await;
    stays.shutdown(Duration::from_secs(5)).await;
    assert!(got);
    assert_eq!(texts(&db).await, ["stays:later"]);
    assert_eq!(db.count("SELECT count(*) FROM bus.leaves_queue").await, 0);
    assert_eq!(
        db.count("SELECT count(*) FROM pg_tables WHERE tablename LIKE 'removed_%'")
            .await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_whose_queue_was_dropped_does_not_make_publishing_fail() {
    let db = TestDb::new().await;
    create_records(&db).await;
    let database = db.database();
    let alive = start_subscriber(&database, "alive").await;
    let gone = start_subscriber(&database, "gone").await;
    gone.shutdown(Duration::from_secs(5)).await;
    // Someone dropped the table by hand, leaving the registry and subscription behind.
    db.client()
        .await
        .batch_execute("DROP TABLE bus.gone_queue")
        .await
        .unwrap();

    publisher(&db)
        .publish(&Happened {
            text: "still".into(),
        })
        .await
        .expect("publish works");
    let got = wait_until(Duration::from_secs(10), || async {
        db.count("SELECT count(*) FROM records").await == 1
    })
    .await;
    alive.shutdown(Duration::from_secs(5)).await;
    assert!(got);
    assert_eq!(texts(&db).await, ["alive:still"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_goes_back_to_the_sending_endpoint() {
    let db = TestDb::new().await;
    create_records(&db).await;
    let database = db.database();
    let answerer = start_subscriber(&database, "answerer").await;
    // The asker publishes from its own endpoint, so reply_to names it.
    let calls = Arc::new(AtomicU32::new(0));
    let asker = start_recorder(&database, "asker", calls, |b| b).await;
    asker
        .sender()
        .publish(&Happened { text: "ask".into() })
        .await
        .unwrap();

    let replied = wait_until(Duration::from_secs(10), || async {
        db.count("SELECT count(*) FROM records WHERE text = 'reply from answerer'")
            .await
            == 1
    })
    .await;
    answerer.shutdown(Duration::from_secs(5)).await;
    asker.shutdown(Duration::from_secs(5)).await;
    assert!(replied, "{:?}", texts(&db).await);
}
