//! Sending: the envelope on the wire, transactions, and destinations that do not exist.

use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use serde_json::Value;
use tests::{TestDb, wait_until};
use transport_pg::{
    DEFAULT_MAX_BODY_BYTES, Database, EndpointBuilder, Error, Sender, encode_body, header,
};

use crate::fixtures::{Note, create_records, install_only, sender, start_recorder};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_keeps_every_header_and_the_body_byte_for_byte() {
    let db = TestDb::new().await;
    create_records(&db).await;
    let database = db.database();
    install_only(&database, "roundtrip").await;

    let saga_id = uuid::Uuid::new_v4().to_string();
    let sender = Sender::builder(&database, "test-client")
        .route::<Note>("roundtrip")
        .unwrap()
        .header(header::CORRELATION_ID, "корреляция-42 ✓ 注文")
        .header(header::SAGA_ID, &saga_id)
        .header(header::SAGA_TYPE, "test.Saga")
        .header(
            header::TRACEPARENT,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .header(header::TRACESTATE, "vendor=opaque")
        .header("baggage.run_id", "run-ü")
        .header("custom.with_nul", "before\0after")
        .build()
        .unwrap();

    let big = "ä".repeat(512 * 1024);
    assert_eq!(big.len(), 1024 * 1024);
    let notes = [
        Note::default(),
        Note {
            text: big,
            ..Note::default()
        },
    ];

    let client = db.client().await;
    let mut sent_headers = Vec::new();
    for note in &notes {
        let id = sender.send(note).await.expect("send");
        let row = client
            .query_one(
                "SELECT headers, body FROM bus.roundtrip_queue WHERE message_id = $1",
                &[&id],
            )
            .await
            .expect("row is in the queue");
        let headers: Value = row.get(0);
        let body: Vec<u8> = row.get(1);
        assert_eq!(body, encode_body(note, DEFAULT_MAX_BODY_BYTES).unwrap());

        let expect = |name: &str| -> String {
            headers[name]
                .as_str()
                .unwrap_or_else(|| panic!("header {name} missing from {headers}"))
                .to_owned()
        };
        assert_eq!(expect(header::MESSAGE_ID), id.to_string());
        assert_eq!(expect(header::MESSAGE_TYPE), "test.Note");
        assert_eq!(expect(header::INTENT), "send");
        assert_eq!(expect(header::CONTENT_TYPE), "application/msgpack");
        assert_eq!(expect(header::CONVERSATION_ID), id.to_string());
        assert_eq!(expect(header::SENDING_ENDPOINT), "test-client");
        assert!(!expect(header::SENDING_HOST).is_empty());
        assert!(expect(header::TIME_SENT).ends_with('Z'));
        assert_eq!(expect(header::CORRELATION_ID), "корреляция-42 ✓ 注文");
        assert_eq!(expect(header::SAGA_ID), saga_id);
        assert_eq!(expect(header::SAGA_TYPE), "test.Saga");
        assert!(expect(header::TRACEPARENT).starts_with("00-4bf92f"));
        assert_eq!(expect(header::TRACESTATE), "vendor=opaque");
        assert_eq!(expect("baggage.run_id"), "run-ü");
        // jsonb cannot hold NUL: it is replaced, and the insert did not fail.
        assert_eq!(expect("custom.with_nul"), "before\u{FFFD}after");
        sent_headers.push((id, headers));
    }

    let calls = Arc::new(AtomicU32::new(0));
    let endpoint = start_recorder(&database, "roundtrip", calls, |b| b).await;
    let handled = wait_until(Duration::from_secs(20), || async {
        db.count("SELECT count(*) FROM records").await == 2
    })
    .await;
    assert!(handled, "both notes handled");

    for ((id, headers), note) in sent_headers.iter().zip(&notes) {
        let row = client
            .query_one(
                "SELECT text, headers FROM records WHERE message_id = $1",
                &[id],
            )
            .await
            .unwrap();
        let text: String = row.get(0);
        let seen: Value = row.get(1);
        assert_eq!(text, note.text, "body decoded as sent");
        assert_eq!(&seen, headers, "the handler saw every header as sent");
    }
    endpoint.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_sent_in_a_transaction_that_rolls_back_is_never_delivered() {
    let db = TestDb::new().await;
    create_records(&db).await;
    let database = db.database();
    install_only(&database, "rollback").await;
    let sender = sender(&database, "rollback");

    let mut client = sender.pool().get().await.unwrap();
    let tx = client.transaction().await.unwrap();
    let mut outbox = sender.outbox();
    outbox
        .send(&Note {
            text: "never".into(),
            ..Note::default()
        })
        .unwrap();
    outbox.write(&tx).await.unwrap();
    tx.rollback().await.unwrap();
    drop(client);

    let committed = Note {
        text: "after".into(),
        ..Note::default()
    };
    sender.send(&committed).await.unwrap();

    let calls = Arc::new(AtomicU32::new(0));
    let endpoint = start_recorder(&database, "rollback", calls, |b| b).await;
    let handled = wait_until(Duration::from_secs(10), || async {
        db.count("SELECT count(*) FROM records WHERE text = 'after'")
            .await
            == 1
    })
    .await;
    assert!(handled, "the committed message arrives");
    // The committed one arrived after the rolled-back one would have; nothing else came.
    assert_eq!(db.count("SELECT count(*) FROM records").await, 1);
    assert_eq!(db.count("SELECT count(*) FROM bus.rollback_queue").await, 0);
    endpoint.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_to_an_endpoint_that_is_not_installed_fails_naming_it() {
    let db = TestDb::new().await;
    let sender = sender(&db.database(), "nowhere");

    let error = sender
        .send(&Note::default())
        .await
        .expect_err("no such endpoint");
    match &error {
        Error::EndpointNotInstalled { endpoint } => assert_eq!(endpoint, "nowhere"),
        other => panic!("expected EndpointNotInstalled, got {other:?}"),
    }
    assert!(error.to_string().contains("nowhere"), "{error}");

    // Nothing was created as a side effect.
    let tables = db
        .count("SELECT count(*) FROM pg_tables WHERE tablename LIKE 'nowhere%'")
        .await;
    assert_eq!(tables, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_endpoint_name_is_refused_before_any_sql_runs() {
    // Port 1 has no server: any attempt at SQL would fail with a connection error
    // instead of the name error.
    let unreachable =
        Database::from_url("host=127.0.0.1 port=1 user=nobody dbname=none").expect("parses");
    for bad in [
        "Billing",
        "1billing",
        "bill-ing",
        "billing; DROP TABLE x",
        &"b".repeat(41),
    ] {
        let result = EndpointBuilder::new(bad, unreachable.clone()).start().await;
        match result {
            Err(Error::InvalidEndpointName { name, .. }) => assert_eq!(name, bad),
            Err(other) => panic!("{bad:?}: expected InvalidEndpointName, got {other:?}"),
            Ok(_) => panic!("{bad:?} was accepted"),
        }
        let send = Sender::builder(&unreachable, "client")
            .build()
            .unwrap()
            .send_to(bad, &Note::default())
            .await;
        assert!(
            matches!(send, Err(Error::InvalidEndpointName { .. })),
            "{bad:?}: {send:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_is_refused_at_send() {
    let db = TestDb::new().await;
    let database = db.database();
    install_only(&database, "limited").await;
    let sender = Sender::builder(&database, "client")
        .route::<Note>("limited")
        .unwrap()
        .max_body_bytes(1024)
        .build()
        .unwrap();
    let error = sender
        .send(&Note {
            text: "x".repeat(2000),
            ..Note::default()
        })
        .await
        .expect_err("too large");
    assert!(
        matches!(error, Error::MessageTooLarge { limit: 1024, .. }),
        "{error:?}"
    );
    assert_eq!(db.count("SELECT count(*) FROM bus.limited_queue").await, 0);
}
