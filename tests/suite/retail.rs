//! The retail client as a real process: migrate, place, status and verify, with verify
//! run against records written with SQL and then broken on purpose, one invariant at a
//! time.

use std::collections::BTreeSet;
use std::time::Duration;

use messages::PlaceOrder;
use tests::TestDb;
use tests::process::Process;
use transport_pg::EndpointName;

/// Applies `migrations/retail` (the template already has `migrations/bus`).
async fn migrate(db: &TestDb) {
    transport_pg::migrate(&db.database(), &::retail::migrations())
        .await
        .expect("apply migrations/retail");
}

/// Installs an endpoint's queue and delayed tables without starting it, so nothing
/// consumes what lands there.
async fn install(db: &TestDb, name: &str) {
    let mut client = db.client().await;
    transport_pg::install_endpoint(&mut client, &EndpointName::new(name).unwrap())
        .await
        .expect("install endpoint");
}

/// Runs `retail` with `args` against `db`; returns its exit code and its output.
async fn retail(db: &TestDb, args: &[&str]) -> (Option<i32>, String) {
    let mut all = vec!["--database-url", db.url.as_str()];
    all.extend_from_slice(args);
    let mut process = Process::start("retail", &all, &[]);
    let code = process.wait_exit(Duration::from_secs(60)).await;
    // Give the log readers a moment to drain the pipes after the exit.
    tokio::time::sleep(Duration::from_millis(50)).await;
    (code, process.log())
}

/// The numbers of the invariants verify reports as failing.
fn failing(output: &str) -> BTreeSet<u8> {
    output
        .lines()
        .filter_map(|l| l.strip_prefix("FAIL "))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect()
}

/// Runs `retail verify` (for `run`, or everything) and checks it fails exactly
/// `expected`, naming each in the summary line.
async fn assert_verify_fails(db: &TestDb, run: Option<&str>, expected: &[u8]) -> String {
    let mut args = vec!["verify"];
    if let Some(run) = run {
        args.extend(["--run", run]);
    }
    let (code, output) = retail(db, &args).await;
    assert_eq!(code, Some(1), "verify must fail:\n{output}");
    assert_eq!(
        failing(&output),
        expected.iter().copied().collect(),
        "wrong invariants failed:\n{output}"
    );
    let summary = output
        .lines()
        .find(|l| l.starts_with("invariants failed"))
        .unwrap_or_else(|| panic!("no summary line:\n{output}"));
    for n in expected {
        assert!(summary.contains(&format!("{n} (")), "{summary}");
    }
    output
}

/// A consistent run `r1`: one order shipped, one declined and cancelled, one charged late
/// and refunded after its cancellation; one message of the run in the error queue. Run
/// `r0` before it left an order open and a message in Billing's queue.
async fn consistent_records(db: &TestDb) {
    migrate(db).await;
    for endpoint in ["sales", "billing", "shipping"] {
        install(db, endpoint).await;
    }
    db.client()
        .await
        .batch_execute(
            "
INSERT INTO retail.orders
    (order_id, run_id, kind, customer_id, amount_cents, currency, card_token)
VALUES ('r1-1', 'r1', 'normal', 'c-1', 1000, 'EUR', 'tok_ok'),
       ('r1-2', 'r1', 'declined', 'c-2', 2000, 'EUR', 'tok_decline'),
       ('r1-3', 'r1', 'slow', 'c-3', 3000, 'EUR', 'tok_slow'),
       ('r0-1', 'r0', 'normal', 'c-4', 4000, 'EUR', 'tok_ok');

INSERT INTO sales.orders (order_id, customer_id, amount_cents, currency, status, cancel_reason)
VALUES ('r1-1', 'c-1', 1000, 'EUR', 'shipped', NULL),
       ('r1-2', 'c-2', 2000, 'EUR', 'cancelled', 'payment failed: card declined'),
       ('r1-3', 'c-3', 3000, 'EUR', 'cancelled', 'payment timed out'),
       ('r0-1', 'c-4', 4000, 'EUR', 'placed', NULL);
INSERT INTO sales.notifications (order_id, kind, message)
VALUES ('r1-1', 'shipped', 'on its way'),
       ('r1-2', 'cancelled', 'card declined'),
       ('r1-3', 'cancelled', 'payment timed out'),
       ('r1-3', 'refunded', 'money back');

INSERT INTO billing.payments
    (order_id, state, charge_key, charge_id, amount_cents, currency, decline_reason,
     refund_key, refund_id, refunded_cents, charged_at, refunded_at)
VALUES ('r1-1', 'charged', 'charge-r1-1', 'ch_1', 1000, 'EUR', NULL,
        NULL, NULL, NULL, now(), NULL),
       ('r1-2', 'declined', 'charge-r1-2', NULL, 2000, 'EUR', 'card declined',
        NULL, NULL, NULL, NULL, NULL),
       ('r1-3', 'refunded', 'charge-r1-3', 'ch_3', 3000, 'EUR', NULL,
        'refund-r1-3', 're_3', 3000, now(), now());

INSERT INTO shipping.shipments (order_id, shipment_key, tracking_number)
VALUES ('r1-1', 'shipment-r1-1', 'trk_1');

INSERT INTO gateway.ledger
    (idempotency_key, operation, order_id, amount_cents, currency, card_token, state,
     http_status, result, requests_seen, settled_at)
VALUES ('charge-r1-1', 'charge', 'r1-1', 1000, 'EUR', 'tok_ok', 'succeeded',
        200, '{\"status\": \"succeeded\", \"charge_id\": \"ch_1\"}', 1, now()),
       ('shipment-r1-1', 'shipment', 'r1-1', NULL, NULL, NULL, 'succeeded',
        200, '{\"status\": \"succeeded\", \"tracking_number\": \"trk_1\"}', 2, now()),
       ('charge-r1-2', 'charge', 'r1-2', 2000, 'EUR', 'tok_decline', 'declined',
        402, '{\"status\": \"declined\", \"reason\": \"card declined\"}', 1, now()),
       ('charge-r1-3', 'charge', 'r1-3', 3000, 'EUR', 'tok_slow', 'succeeded',
        200, '{\"status\": \"succeeded\", \"charge_id\": \"ch_3\"}', 3, now()),
       ('refund-r1-3', 'refund', 'r1-3', 3000, 'EUR', NULL, 'succeeded',
        200, '{\"status\": \"succeeded\", \"refund_id\": \"re_3\"}', 1, now());

INSERT INTO bus.failed_messages
    (message_id, origin_queue, message_type, headers, body, error_kind, error_message,
     fingerprint)
VALUES (gen_random_uuid(), 'sales', 'retail.OrderShipped',
        '{\"message_type\": \"retail.OrderShipped\", \"baggage.run_id\": \"r1\"}', '',
        'handler_error', 'notification service said no', 'fp-1');

INSERT INTO bus.billing_queue (message_id, headers, body)
VALUES (gen_random_uuid(),
        '{\"message_type\": \"retail.OrderPlaced\", \"baggage.run_id\": \"r0\"}', '');
",
        )
        .await
        .expect("write the consistent records");
}

async fn sql(db: &TestDb, statement: &str) {
    db.client()
        .await
        .batch_execute(statement)
        .await
        .unwrap_or_else(|e| panic!("{statement}: {e:?}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retail_migrate_applies_both_sets_and_is_idempotent() {
    let db = TestDb::empty().await;
    let (code, output) = retail(&db, &["verify"]).await;
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("run `retail migrate` first"), "{output}");

    for _ in 0..2 {
        let (code, output) = retail(&db, &["migrate"]).await;
        assert_eq!(code, Some(0), "{output}");
    }
    let files = (::retail::migrations().runner)().get_migrations().len() as i64;
    assert_eq!(
        db.count("SELECT count(*) FROM retail.schema_history").await,
        files,
        "every file of migrations/retail applied once"
    );
    assert!(db.count("SELECT count(*) FROM bus.schema_history").await >= 2);
    for table in [
        "sales.orders",
        "billing.payments",
        "shipping.shipments",
        "gateway.ledger",
    ] {
        let exists = db
            .count(&format!(
                "SELECT (to_regclass('{table}') IS NOT NULL)::int::bigint"
            ))
            .await;
        assert_eq!(exists, 1, "{table} missing");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_passes_on_consistent_records_and_scopes_by_run() {
    let db = TestDb::new().await;
    consistent_records(&db).await;

    let (code, output) = retail(&db, &["verify", "--run", "r1"]).await;
    assert_eq!(code, Some(0), "{output}");
    for n in 1..=5 {
        assert!(
            output.lines().any(|l| l.starts_with(&format!("ok   {n} "))),
            "no ok line for {n}:\n{output}"
        );
    }
    assert!(
        output.contains("all 5 invariants hold for run r1"),
        "{output}"
    );
    assert!(
        output.contains("1 shipped, 0 without a charge"),
        "counts on the line:\n{output}"
    );
    assert!(
        output.contains("retail.OrderShipped failed: handler_error: notification service said no"),
        "the error-queue row is listed with its reason:\n{output}"
    );

    // Run r0 left an order open and a message in a queue; unscoped, they count.
    assert_verify_fails(&db, None, &[3, 5]).await;
    assert_verify_fails(&db, Some("r0"), &[3, 5]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_a_shipment_without_a_charge() {
    let db = TestDb::new().await;
    consistent_records(&db).await;
    sql(
        &db,
        "DELETE FROM gateway.ledger WHERE idempotency_key = 'charge-r1-1'",
    )
    .await;
    let output = assert_verify_fails(&db, Some("r1"), &[1]).await;
    assert!(output.contains("e.g. r1-1"), "names the order:\n{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_a_charge_kept_without_a_shipment_or_refund() {
    let db = TestDb::new().await;
    consistent_records(&db).await;
    // The late charge of the cancelled order is no longer refunded: the money is kept
    // (2) and the cancelled order is not finished (3).
    sql(
        &db,
        "DELETE FROM gateway.ledger WHERE idempotency_key = 'refund-r1-3'",
    )
    .await;
    assert_verify_fails(&db, Some("r1"), &[2, 3]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_an_order_left_open() {
    let db = TestDb::new().await;
    consistent_records(&db).await;
    sql(
        &db,
        "INSERT INTO retail.orders
             (order_id, run_id, kind, customer_id, amount_cents, currency, card_token)
         VALUES ('r1-4', 'r1', 'normal', 'c-5', 500, 'EUR', 'tok_ok');
         INSERT INTO sales.orders (order_id, customer_id, amount_cents, currency, status)
         VALUES ('r1-4', 'c-5', 500, 'EUR', 'billed');",
    )
    .await;
    let output = assert_verify_fails(&db, Some("r1"), &[3]).await;
    assert!(output.contains("1 open (e.g. r1-4)"), "{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_a_second_charge_for_one_order() {
    let db = TestDb::new().await;
    consistent_records(&db).await;
    // Another key for the same order: the ledger keeps the order id apart from the key.
    sql(
        &db,
        "INSERT INTO gateway.ledger
             (idempotency_key, operation, order_id, amount_cents, currency, card_token,
              state, http_status, result, settled_at)
         VALUES ('charge-r1-1-again', 'charge', 'r1-1', 1000, 'EUR', 'tok_ok',
                 'succeeded', 200, '{\"status\": \"succeeded\"}', now())",
    )
    .await;
    assert_verify_fails(&db, Some("r1"), &[4]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_a_message_of_the_run_left_in_a_queue_or_delayed_table() {
    let db = TestDb::new().await;
    consistent_records(&db).await;
    sql(
        &db,
        "INSERT INTO bus.shipping_queue (message_id, headers, body)
         VALUES (gen_random_uuid(),
                 '{\"message_type\": \"retail.OrderBilled\", \"baggage.run_id\": \"r1\"}', '')",
    )
    .await;
    let output = assert_verify_fails(&db, Some("r1"), &[5]).await;
    assert!(output.contains("1 waiting in queues"), "{output}");
    assert!(output.contains("bus.shipping_queue: 1"), "{output}");

    sql(&db, "DELETE FROM bus.shipping_queue").await;
    sql(
        &db,
        "INSERT INTO bus.shipping_delayed (due_at, message_id, headers, body)
         VALUES (now() + interval '1 hour', gen_random_uuid(),
                 '{\"message_type\": \"retail.PaymentTimeout\", \"baggage.run_id\": \"r1\"}',
                 '')",
    )
    .await;
    let output = assert_verify_fails(&db, Some("r1"), &[5]).await;
    assert!(output.contains("1 in delayed tables"), "{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_an_order_that_never_reached_sales() {
    let db = TestDb::new().await;
    consistent_records(&db).await;
    sql(
        &db,
        "DELETE FROM sales.notifications WHERE order_id = 'r1-2';
         DELETE FROM sales.orders WHERE order_id = 'r1-2';",
    )
    .await;
    let output = assert_verify_fails(&db, Some("r1"), &[3, 5]).await;
    assert!(output.contains("1 orders unknown to Sales"), "{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn place_records_each_order_with_its_place_order_and_run_id() {
    let db = TestDb::new().await;
    migrate(&db).await;
    install(&db, "sales").await;

    let (code, output) = retail(
        &db,
        &[
            "place",
            "--count",
            "20",
            "--run",
            "r7",
            "--declined-share",
            "0.2",
            "--slow-share",
            "0.1",
            "--resubmit-share",
            "0.1",
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{output}");
    assert!(
        output.lines().any(|l| l == "r7"),
        "prints the run id:\n{output}"
    );

    let client = db.client().await;
    let kinds: Vec<(String, i64)> = client
        .query(
            "SELECT kind, count(*) FROM retail.orders WHERE run_id = 'r7' GROUP BY kind \
             ORDER BY kind",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        kinds,
        [
            ("declined".to_owned(), 4),
            ("normal".to_owned(), 14),
            ("slow".to_owned(), 2)
        ]
    );
    assert_eq!(
        db.count("SELECT count(*) FROM retail.orders WHERE resubmitted")
            .await,
        2
    );

    // Every message carries the run id, and its card token matches the recorded kind.
    let tagged = db
        .count(
            "SELECT count(*) FROM bus.sales_queue \
             WHERE headers->>'baggage.run_id' = 'r7' \
               AND headers->>'message_type' = 'retail.PlaceOrder'",
        )
        .await;
    assert_eq!(
        tagged, 22,
        "20 orders, 2 of them sent twice, all tagged with the run"
    );
    let mut per_order = std::collections::BTreeMap::<String, usize>::new();
    for row in client
        .query("SELECT body FROM bus.sales_queue", &[])
        .await
        .unwrap()
    {
        let order: PlaceOrder = rmp_serde::from_slice(row.get::<_, &[u8]>(0)).unwrap();
        let token: String = client
            .query_one(
                "SELECT card_token FROM retail.orders WHERE order_id = $1",
                &[&order.order_id],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(order.card_token, token, "{}", order.order_id);
        *per_order.entry(order.order_id).or_default() += 1;
    }
    assert_eq!(per_order.len(), 20);
    assert_eq!(
        per_order.values().filter(|&&n| n == 2).count(),
        2,
        "two sent twice"
    );

    // Nothing has handled them: verify says they wait and the orders are open.
    assert_verify_fails(&db, Some("r7"), &[3, 5]).await;

    let (code, output) = retail(&db, &["status", "r7-000001"]).await;
    assert_eq!(code, Some(0), "{output}");
    assert!(output.contains("not known to Sales"), "{output}");
    assert!(output.contains("run r7"), "{output}");
    let (code, output) = retail(&db, &["status", "no-such-order"]).await;
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("is unknown"), "{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn place_fails_clearly_and_records_nothing_when_sales_is_not_installed() {
    let db = TestDb::new().await;
    migrate(&db).await;

    let (code, output) = retail(&db, &["place", "--count", "3", "--run", "r9"]).await;
    assert_eq!(code, Some(1), "{output}");
    assert!(
        output.contains("endpoint \"sales\" is not installed"),
        "{output}"
    );
    assert_eq!(
        db.count("SELECT count(*) FROM retail.orders").await,
        0,
        "the record and the send commit together or not at all"
    );

    let (code, output) = retail(
        &db,
        &["place", "--slow-share", "0.7", "--declined-share", "0.7"],
    )
    .await;
    assert_eq!(code, Some(1), "{output}");
    assert!(output.contains("add up to more than 1"), "{output}");
}
