//! The gateways as a real process on a loopback port: idempotency keys, concurrent
//! requests with one key, a slow charge whose caller hung up, declines, injected faults,
//! and the flags.

use std::time::Duration;

use ::gateways::api::{self, ChargeRequest, RefundRequest, ShipmentRequest};
use ::gateways::client::{ClientError, GatewayClient, Outcome};
use tests::TestDb;
use tests::process::Process;
use tokio::io::AsyncWriteExt;

/// A running gateways process and a client for it.
pub struct Gateways {
    /// The process; its log is in the panic messages of failing asserts.
    pub process: Process,
    /// `host:port` it serves on.
    pub addr: String,
    /// A client with a 10 s timeout.
    pub client: GatewayClient,
}

/// Starts the gateways on `db` on a free loopback port, with `extra` flags.
pub async fn start(db: &TestDb, extra: &[&str]) -> Gateways {
    let mut args = vec!["--database-url", &db.url, "--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let process = Process::start("gateways", &args, &[]);
    process
        .wait_for_line("gateways ready", Duration::from_secs(30))
        .await;
    let log = process.log();
    let addr = log
        .lines()
        .find(|l| l.contains("gateways ready"))
        .and_then(|l| l.split("addr=").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no addr= in the ready line; log:\n{log}"))
        .to_owned();
    let client = GatewayClient::new(&format!("http://{addr}"), Duration::from_secs(10));
    Gateways {
        process,
        addr,
        client,
    }
}

fn charge(order_id: &str, token: &str) -> ChargeRequest {
    ChargeRequest {
        order_id: order_id.to_owned(),
        amount_cents: 1250,
        currency: "EUR".to_owned(),
        card_token: token.to_owned(),
    }
}

fn shipment(order_id: &str) -> ShipmentRequest {
    ShipmentRequest {
        order_id: order_id.to_owned(),
        customer_id: "c-1".to_owned(),
    }
}

/// The ledger's rows for `order_id`: (operation, state, requests_seen).
async fn ledger(db: &TestDb, order_id: &str) -> Vec<(String, String, i32)> {
    db.client()
        .await
        .query(
            "SELECT operation, state, requests_seen FROM gateway.ledger \
             WHERE order_id = $1 ORDER BY first_seen_at",
            &[&order_id],
        )
        .await
        .expect("read the ledger")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

fn succeeded(outcome: Result<Outcome, ClientError>) -> api::Reply {
    match outcome {
        Ok(Outcome::Succeeded(reply)) => reply,
        other => panic!("expected success, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_key_charges_once_and_answers_the_same() {
    let db = TestDb::new().await;
    let gw = start(&db, &[]).await;
    let key = api::charge_key("o-1");

    let first = succeeded(gw.client.charge(&key, &charge("o-1", "tok_ok")).await);
    let second = succeeded(gw.client.charge(&key, &charge("o-1", "tok_ok")).await);
    assert!(first.charge_id.is_some(), "{first:?}");
    assert_eq!(first, second, "a repeat gets the first answer");
    assert_eq!(
        ledger(&db, "o-1").await,
        [("charge".to_owned(), "succeeded".to_owned(), 2)]
    );

    // The same key for another amount is a caller's bug: refused, and nothing charged.
    let mut other = charge("o-1", "tok_ok");
    other.amount_cents = 99;
    match gw.client.charge(&key, &other).await {
        Ok(Outcome::Rejected { status: 422, reply }) => {
            let reason = reply.reason.unwrap_or_default();
            assert!(reason.contains("first used for a charge"), "{reason}");
        }
        other => panic!("expected 422, got {other:?}"),
    }
    assert_eq!(ledger(&db, "o-1").await.len(), 1);
}

/// Whether `key` was settled by the statement that recorded it: `now()` is the
/// transaction's start, so the two stamps are equal exactly when one commit did both.
async fn settled_when_recorded(db: &TestDb, key: &str) -> bool {
    db.client()
        .await
        .query_one(
            "SELECT settled_at = first_seen_at FROM gateway.ledger WHERE idempotency_key = $1",
            &[&key],
        )
        .await
        .expect("read the key's stamps")
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outcome_that_needs_only_the_request_is_recorded_settled() {
    let db = TestDb::new().await;
    let gw = start(&db, &["--settle-ms", "300"]).await;

    let charged = succeeded(
        gw.client
            .charge(&api::charge_key("o-f"), &charge("o-f", "tok_ok"))
            .await,
    );
    assert!(charged.charge_id.is_some(), "{charged:?}");
    assert!(settled_when_recorded(&db, &api::charge_key("o-f")).await);
    let ship = shipment("o-f");
    let booked = succeeded(
        gw.client
            .book_shipment(&api::shipment_key("o-f"), &ship)
            .await,
    );
    assert!(booked.tracking_number.is_some(), "{booked:?}");
    assert!(settled_when_recorded(&db, &api::shipment_key("o-f")).await);

    // A slow charge still goes through flight and settles later, in its own commit.
    let slow = succeeded(
        gw.client
            .charge(&api::charge_key("o-s"), &charge("o-s", "tok_slow"))
            .await,
    );
    assert!(slow.charge_id.is_some(), "{slow:?}");
    assert!(!settled_when_recorded(&db, &api::charge_key("o-s")).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_with_one_key_charge_once() {
    let db = TestDb::new().await;
    let gw = start(&db, &[]).await;
    let key = api::charge_key("o-race");

    let calls: Vec<_> = (0..16)
        .map(|_| {
            let client = gw.client.clone();
            let key = key.clone();
            tokio::spawn(async move { client.charge(&key, &charge("o-race", "tok_ok")).await })
        })
        .collect();
    let mut charge_ids = Vec::new();
    for call in calls {
        match call.await.expect("task") {
            Ok(Outcome::Succeeded(reply)) => charge_ids.push(reply.charge_id.expect("charge id")),
            Ok(Outcome::Pending(_)) => {}
            other => panic!(
                "a concurrent request got {other:?}; log:\n{}",
                gw.process.log()
            ),
        }
    }
    assert!(
        !charge_ids.is_empty(),
        "at least the first request succeeds"
    );
    charge_ids.dedup();
    assert_eq!(charge_ids.len(), 1, "one charge, one id: {charge_ids:?}");
    assert_eq!(
        ledger(&db, "o-race").await,
        [("charge".to_owned(), "succeeded".to_owned(), 16)],
        "one ledger row that saw all 16 requests"
    );
}

/// Sends a charge over a raw connection and hangs up without reading the answer.
async fn charge_and_hang_up(addr: &str, key: &str, request: &ChargeRequest) {
    let body = serde_json::to_string(request).unwrap();
    let text = format!(
        "POST {} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Idempotency-Key: {key}\r\nContent-Length: {}\r\n\r\n{body}",
        api::CHARGE_PATH,
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(text.as_bytes()).await.expect("send");
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(stream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timing_a_slow_charge_whose_caller_hung_up_settles_and_is_returned_on_retry() {
    let db = TestDb::new().await;
    let gw = start(&db, &["--settle-ms", "1500"]).await;
    let key = api::charge_key("o-slow");
    let request = charge("o-slow", "tok_slow");

    charge_and_hang_up(&gw.addr, &key, &request).await;
    match gw.client.charge(&key, &request).await {
        Ok(Outcome::Pending(reply)) => assert!(reply.retry_after_ms.is_some(), "{reply:?}"),
        other => panic!("a retry while in flight must be pending, got {other:?}"),
    }

    // Nobody waits for the first request any more; its settle task finishes it anyway.
    let settled = tests::wait_until(Duration::from_secs(10), || async {
        ledger(&db, "o-slow").await.first().map(|r| r.1.as_str()) == Some("succeeded")
    })
    .await;
    assert!(
        settled,
        "slow charge never settled; log:\n{}",
        gw.process.log()
    );
    let reply = succeeded(gw.client.charge(&key, &request).await);
    assert!(reply.charge_id.is_some(), "{reply:?}");

    let took: f64 = db
        .client()
        .await
        .query_one(
            "SELECT extract(epoch FROM settled_at - first_seen_at)::float8 \
             FROM gateway.ledger WHERE idempotency_key = $1",
            &[&key],
        )
        .await
        .unwrap()
        .get(0);
    assert!(took >= 1.4, "settled after {took}s, before the settle time");
    assert_eq!(
        ledger(&db, "o-slow").await,
        [("charge".to_owned(), "succeeded".to_owned(), 3)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declining_card_declines_for_good() {
    let db = TestDb::new().await;
    let gw = start(&db, &[]).await;
    let key = api::charge_key("o-no");

    for _ in 0..2 {
        match gw.client.charge(&key, &charge("o-no", "tok_decline")).await {
            Ok(Outcome::Declined(reply)) => {
                assert_eq!(reply.reason.as_deref(), Some("card declined"));
                assert!(reply.charge_id.is_none());
            }
            other => panic!("expected a decline, got {other:?}"),
        }
    }
    assert_eq!(
        ledger(&db, "o-no").await,
        [("charge".to_owned(), "declined".to_owned(), 2)]
    );

    // Nothing was taken, so nothing can be refunded.
    let refund = RefundRequest {
        order_id: "o-no".to_owned(),
        amount_cents: 1250,
        currency: "EUR".to_owned(),
        charge_id: None,
    };
    match gw.client.refund(&api::refund_key("o-no"), &refund).await {
        Ok(Outcome::Declined(reply)) => {
            assert_eq!(
                reply.reason.as_deref(),
                Some("no charge to refund for this order")
            );
        }
        other => panic!("expected a declined refund, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refunds_and_shipments_are_idempotent_and_bounded_by_the_charge() {
    let db = TestDb::new().await;
    let gw = start(&db, &[]).await;
    let charged = succeeded(
        gw.client
            .charge(&api::charge_key("o-r"), &charge("o-r", "tok_ok"))
            .await,
    );

    let refund = RefundRequest {
        order_id: "o-r".to_owned(),
        amount_cents: 1250,
        currency: "EUR".to_owned(),
        charge_id: charged.charge_id.clone(),
    };
    let first = succeeded(gw.client.refund(&api::refund_key("o-r"), &refund).await);
    let again = succeeded(gw.client.refund(&api::refund_key("o-r"), &refund).await);
    assert_eq!(first, again);
    match gw.client.refund("another-refund-key", &refund).await {
        Ok(Outcome::Declined(reply)) => assert!(
            reply.reason.as_deref().unwrap_or("").contains("exceeds"),
            "{reply:?}"
        ),
        other => panic!("a second refund of the whole charge must be declined: {other:?}"),
    }

    let ship = shipment("o-r");
    let booked = succeeded(
        gw.client
            .book_shipment(&api::shipment_key("o-r"), &ship)
            .await,
    );
    let rebooked = succeeded(
        gw.client
            .book_shipment(&api::shipment_key("o-r"), &ship)
            .await,
    );
    assert!(booked.tracking_number.is_some());
    assert_eq!(booked.tracking_number, rebooked.tracking_number);

    let rows = ledger(&db, "o-r").await;
    let summary: Vec<(&str, &str, i32)> = rows
        .iter()
        .map(|(op, state, seen)| (op.as_str(), state.as_str(), *seen))
        .collect();
    assert_eq!(
        summary,
        [
            ("charge", "succeeded", 1),
            ("refund", "succeeded", 2),
            ("refund", "declined", 1),
            ("shipment", "succeeded", 2),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fail_rate_answers_5xx_at_about_that_rate_without_taking_effect() {
    let db = TestDb::new().await;
    let gw = start(&db, &["--fail-rate", "0.5"]).await;

    let (mut failed, mut ok) = (0, 0);
    for i in 0..200 {
        let order = format!("o-f{i}");
        match gw
            .client
            .charge(&api::charge_key(&order), &charge(&order, "tok_ok"))
            .await
        {
            Ok(Outcome::Succeeded(_)) => ok += 1,
            Err(ClientError::Unavailable { status: 503, .. }) => failed += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert!(
        (60..=140).contains(&failed),
        "{failed} of 200 requests failed at --fail-rate 0.5"
    );
    let charges = db
        .count("SELECT count(*) FROM gateway.ledger WHERE state = 'succeeded'")
        .await;
    assert_eq!(charges, ok, "an injected failure takes no effect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_help_and_clear_errors_for_bad_flags_or_no_database() {
    let db = TestDb::new().await;
    let gw = start(&db, &[]).await;
    assert!(gw.client.healthy().await, "GET /health must answer 200");

    let mut help = Process::start("gateways", &["--help"], &[]);
    assert_eq!(help.wait_exit(Duration::from_secs(10)).await, Some(0));
    for needle in [
        "--settle-ms",
        "retry window",
        "GATEWAYS_FAIL_RATE",
        "--latency-ms",
    ] {
        assert!(
            help.has_line(needle),
            "--help lacks {needle:?}:\n{}",
            help.log()
        );
    }
    let mut version = Process::start("gateways", &["--version"], &[]);
    assert_eq!(version.wait_exit(Duration::from_secs(10)).await, Some(0));

    let mut bad_rate = Process::start(
        "gateways",
        &["--database-url", &db.url, "--fail-rate", "1.5"],
        &[],
    );
    assert_eq!(bad_rate.wait_exit(Duration::from_secs(10)).await, Some(2));
    assert!(
        bad_rate.has_line("outside 0.0 to 1.0"),
        "{}",
        bad_rate.log()
    );

    let mut from_env = Process::start(
        "gateways",
        &["--database-url", &db.url],
        &[("GATEWAYS_FAIL_RATE", "-1")],
    );
    assert_eq!(from_env.wait_exit(Duration::from_secs(10)).await, Some(2));

    let unreachable = "host=127.0.0.1 port=1 user=nobody dbname=none connect_timeout=2";
    let mut no_db = Process::start("gateways", &["--database-url", unreachable], &[]);
    assert_eq!(no_db.wait_exit(Duration::from_secs(30)).await, Some(1));
    assert!(
        no_db.has_line("gateways: could not connect"),
        "{}",
        no_db.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timing_a_key_left_in_flight_by_a_killed_gateway_settles_after_a_restart() {
    let db = TestDb::new().await;
    let mut first = start(&db, &["--settle-ms", "60000"]).await;
    let key = api::charge_key("o-crash");
    let request = charge("o-crash", "tok_slow");
    charge_and_hang_up(&first.addr, &key, &request).await;
    assert_eq!(
        ledger(&db, "o-crash").await,
        [("charge".to_owned(), "in_flight".to_owned(), 1)]
    );
    first.process.signal("KILL");
    first.process.wait_exit(Duration::from_secs(10)).await;

    // The new process finds the key in flight, older than its settle time, and settles it.
    let mut second = start(&db, &["--settle-ms", "500"]).await;
    assert!(
        second.process.has_line("resumed=1"),
        "{}",
        second.process.log()
    );
    let settled = tests::wait_until(Duration::from_secs(10), || async {
        ledger(&db, "o-crash").await.first().map(|r| r.1.as_str()) == Some("succeeded")
    })
    .await;
    assert!(settled, "never settled; log:\n{}", second.process.log());
    let reply = succeeded(second.client.charge(&key, &request).await);
    assert!(reply.charge_id.is_some());

    second.process.signal("TERM");
    assert_eq!(
        second.process.wait_exit(Duration::from_secs(20)).await,
        Some(0)
    );
    assert!(
        second.process.has_line("stopped cleanly"),
        "{}",
        second.process.log()
    );
}
