//! The retail system as real processes: the gateways, Sales, Billing and Shipping, driven
//! by the retail client and checked with `retail verify` and SQL on every table. Orders of
//! every kind, crashes in the middle of a gateway call, events arriving out of order,
//! duplicates written straight into a queue, and the binaries' flags.

use std::time::Duration;

use tests::TestDb;
use tests::process::Process;
use transport_pg::tokio_postgres::Client;

use crate::gateways::{self, Gateways};

/// Long enough for any process to start, migrate and subscribe on two busy cores.
const READY: Duration = Duration::from_secs(60);

/// Long enough for every order of a small run to finish.
const FINISH: Duration = Duration::from_secs(90);

/// A payment timeout no order of a test reaches unless the test means it to.
const PATIENT_MS: &str = "60000";

/// Retries short enough for a test: one immediate retry, then delayed ones from 250 ms
/// doubling, about 16 s in all, longer than any settle time used here.
const RETRY: [&str; 8] = [
    "--immediate-retries",
    "1",
    "--delayed-retries",
    "6",
    "--retry-delay-ms",
    "250",
    "--retry-backoff",
    "2",
];

/// The gateways and the three endpoints on one test database.
struct System {
    db: TestDb,
    gateways: Gateways,
    payment_timeout_ms: String,
    http_timeout_ms: String,
}

impl System {
    /// Migrates, starts the gateways with `gateway_flags`, and returns before any
    /// endpoint runs; see [`start`](System::start) for the usual set.
    async fn gateways_only(gateway_flags: &[&str], payment_timeout_ms: &str) -> System {
        let db = TestDb::new().await;
        transport_pg::migrate(&db.database(), &::retail::migrations())
            .await
            .expect("apply migrations/retail");
        let gateways = gateways::start(&db, gateway_flags).await;
        System {
            db,
            gateways,
            payment_timeout_ms: payment_timeout_ms.to_owned(),
            http_timeout_ms: "1000".to_owned(),
        }
    }

    /// The gateways, Sales, two Billing instances and Shipping, all ready.
    async fn start(gateway_flags: &[&str], payment_timeout_ms: &str) -> (System, Vec<Process>) {
        let system = System::gateways_only(gateway_flags, payment_timeout_ms).await;
        let processes = vec![
            system.spawn("sales", "s1"),
            system.spawn("billing", "b1"),
            system.spawn("billing", "b2"),
            system.spawn("shipping", "sh1"),
        ];
        for process in &processes {
            process.wait_for_line("endpoint ready", READY).await;
        }
        (system, processes)
    }

    /// Starts endpoint binary `bin` as instance `instance`, without waiting; its own
    /// crate logs at debug, so tests can see where a handler is.
    fn spawn(&self, bin: &str, instance: &str) -> Process {
        let gateway_url = format!("http://{}", self.gateways.addr);
        let mut args = vec!["--database-url", &self.db.url, "--instance", instance];
        args.extend_from_slice(&RETRY);
        if bin != "sales" {
            args.extend([
                "--gateway-url",
                &gateway_url,
                "--http-timeout-ms",
                &self.http_timeout_ms,
            ]);
        }
        if bin == "shipping" {
            args.extend(["--payment-timeout-ms", &self.payment_timeout_ms]);
        }
        let filter = format!("info,{bin}=debug,persistence_pg=debug");
        Process::start(bin, &args, &[("RUST_LOG", &filter)])
    }

    /// [`spawn`](System::spawn), then waits for the ready line.
    async fn run(&self, bin: &str, instance: &str) -> Process {
        let process = self.spawn(bin, instance);
        process.wait_for_line("endpoint ready", READY).await;
        process
    }

    /// Runs the retail client with `args`; returns its exit code and output.
    async fn retail(&self, args: &[&str]) -> (Option<i32>, String) {
        let mut all = vec!["--database-url", self.db.url.as_str()];
        all.extend_from_slice(args);
        let mut process = Process::start("retail", &all, &[]);
        let code = process.wait_output(Duration::from_secs(60)).await;
        (code, process.log())
    }

    /// Places `count` orders with the given shares; returns the run id.
    async fn place(&self, count: usize, declined: f64, slow: f64, resubmit: f64) -> String {
        let (count, declined, slow, resubmit) = (
            count.to_string(),
            declined.to_string(),
            slow.to_string(),
            resubmit.to_string(),
        );
        let (code, output) = self
            .retail(&[
                "place",
                "--count",
                &count,
                "--declined-share",
                &declined,
                "--slow-share",
                &slow,
                "--resubmit-share",
                &resubmit,
            ])
            .await;
        assert_eq!(code, Some(0), "retail place failed:\n{output}");
        output
            .lines()
            .find(|l| l.starts_with("run-"))
            .unwrap_or_else(|| panic!("no run id in:\n{output}"))
            .trim()
            .to_owned()
    }

    /// Waits until every order of `run` is terminal and no message of the run waits in
    /// a queue or delayed table.
    async fn wait_finished(&self, run: &str, processes: &[&Process]) {
        let client = self.db.client().await;
        let finished = tests::wait_until(FINISH, || async {
            let row = client
                .query_one(UNFINISHED, &[&run])
                .await
                .expect("count unfinished work");
            row.get::<_, i64>(0) == 0 && row.get::<_, i64>(1) == 0
        })
        .await;
        if !finished {
            let logs: Vec<String> = processes.iter().map(|p| p.log()).collect();
            panic!(
                "run {run} did not finish within {FINISH:?}:\n{}\nlogs:\n{}",
                self.dump(run).await,
                logs.join("\n----\n")
            );
        }
    }

    /// Runs `retail verify --run` and asserts every invariant holds.
    async fn assert_verified(&self, run: &str) {
        let (code, output) = self.retail(&["verify", "--run", run]).await;
        assert_eq!(code, Some(0), "verify failed:\n{output}");
        assert!(
            output.contains(&format!("all 5 invariants hold for run {run}")),
            "{output}"
        );
    }

    /// The run's orders of kind `kind`.
    async fn orders(&self, run: &str, kind: &str) -> Vec<String> {
        self.db
            .client()
            .await
            .query(
                "SELECT order_id FROM retail.orders WHERE run_id = $1 AND kind = $2 \
                 ORDER BY order_id",
                &[&run, &kind],
            )
            .await
            .expect("read retail.orders")
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    /// What every table says about `order_id`.
    async fn facts(&self, order_id: &str) -> Facts {
        facts(&self.db.client().await, order_id).await
    }

    /// Everything about the run, for a failing test's message.
    async fn dump(&self, run: &str) -> String {
        let client = self.db.client().await;
        let ids: Vec<String> = client
            .query(
                "SELECT order_id FROM retail.orders WHERE run_id = $1",
                &[&run],
            )
            .await
            .expect("read retail.orders")
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut text = String::new();
        for id in ids {
            text.push_str(&format!("{id}: {:?}\n", facts(&client, &id).await));
        }
        let failed = client
            .query(
                "SELECT origin_queue, message_type, error_message FROM bus.failed_messages",
                &[],
            )
            .await
            .expect("read bus.failed_messages");
        for row in failed {
            let (queue, kind, error): (String, Option<String>, String) =
                (row.get(0), row.get(1), row.get(2));
            text.push_str(&format!("error queue: {queue} {kind:?}: {error}\n"));
        }
        text
    }
}

/// Open orders of run `$1` (not shipped, and not cancelled without keeping a charge), and
/// messages of the run waiting in the endpoints' queues and delayed tables.
const UNFINISHED: &str = "
WITH run AS (
    SELECT order_id FROM retail.orders WHERE run_id = $1
),
money AS (
    SELECT order_id,
           bool_or(operation = 'charge') AS charged,
           bool_or(operation = 'refund') AS refunded
    FROM gateway.ledger
    JOIN run USING (order_id)
    WHERE state = 'succeeded'
    GROUP BY order_id
)
SELECT (SELECT count(*)
        FROM run
        LEFT JOIN sales.orders s USING (order_id)
        LEFT JOIN money m USING (order_id)
        WHERE s.status IS DISTINCT FROM 'shipped'
          AND NOT (s.status = 'cancelled'
                   AND NOT (coalesce(m.charged, false) AND NOT coalesce(m.refunded, false)))),
       (SELECT count(*) FROM bus.sales_queue WHERE headers->>'baggage.run_id' = $1)
     + (SELECT count(*) FROM bus.billing_queue WHERE headers->>'baggage.run_id' = $1)
     + (SELECT count(*) FROM bus.shipping_queue WHERE headers->>'baggage.run_id' = $1)
     + (SELECT count(*) FROM bus.sales_delayed WHERE headers->>'baggage.run_id' = $1)
     + (SELECT count(*) FROM bus.billing_delayed WHERE headers->>'baggage.run_id' = $1)
     + (SELECT count(*) FROM bus.shipping_delayed WHERE headers->>'baggage.run_id' = $1)";

/// What every table says about one order.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Facts {
    /// `sales.orders.status`.
    status: Option<String>,
    /// `sales.orders.cancel_reason`.
    cancel_reason: Option<String>,
    /// `billing.payments.state`.
    payment: Option<String>,
    /// Rows in `shipping.shipments`.
    shipments: i64,
    /// `sales.notifications` kinds, sorted.
    notices: Vec<String>,
    /// `gateway.ledger` as `operation state requests_seen`, sorted.
    ledger: Vec<String>,
    /// `bus.sagas` states of the order's fulfilment saga.
    sagas: Vec<String>,
}

async fn facts(client: &Client, order_id: &str) -> Facts {
    let one = client
        .query_opt(
            "SELECT status, cancel_reason FROM sales.orders WHERE order_id = $1",
            &[&order_id],
        )
        .await
        .expect("read sales.orders");
    let payment = client
        .query_opt(
            "SELECT state FROM billing.payments WHERE order_id = $1",
            &[&order_id],
        )
        .await
        .expect("read billing.payments")
        .map(|r| r.get(0));
    let shipments: i64 = client
        .query_one(
            "SELECT count(*) FROM shipping.shipments WHERE order_id = $1",
            &[&order_id],
        )
        .await
        .expect("read shipping.shipments")
        .get(0);
    let texts = |sql: &'static str| async move {
        client
            .query(sql, &[&order_id])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>()
    };
    Facts {
        status: one.as_ref().map(|r| r.get(0)),
        cancel_reason: one.as_ref().and_then(|r| r.get(1)),
        payment,
        shipments,
        notices: texts(
            "SELECT kind FROM sales.notifications WHERE order_id = $1 ORDER BY kind, id",
        )
        .await,
        ledger: texts(
            "SELECT operation || ' ' || state || ' ' || requests_seen FROM gateway.ledger \
             WHERE order_id = $1 ORDER BY operation",
        )
        .await,
        sagas: texts(
            "SELECT state FROM bus.sagas \
             WHERE saga_type = 'shipping.Fulfilment' AND correlation = $1",
        )
        .await,
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// A normal order that shipped with one charge and one booking, each asked for once.
fn shipped_once() -> Facts {
    Facts {
        status: Some("shipped".to_owned()),
        cancel_reason: None,
        payment: Some("charged".to_owned()),
        shipments: 1,
        notices: strings(&["shipped"]),
        ledger: strings(&["charge succeeded 1", "shipment succeeded 1"]),
        sagas: strings(&["completed"]),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_normal_orders_ship_once_with_two_billing_instances() {
    let (system, processes) = System::start(&[], PATIENT_MS).await;
    let run = system.place(6, 0.0, 0.0, 0.0).await;
    system
        .wait_finished(&run, &processes.iter().collect::<Vec<_>>())
        .await;

    let orders = system.orders(&run, "normal").await;
    assert_eq!(orders.len(), 6);
    for id in &orders {
        assert_eq!(system.facts(id).await, shipped_once(), "order {id}");
    }
    system.assert_verified(&run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_a_declined_payment_cancels_the_order_and_ships_nothing() {
    let (system, processes) = System::start(&[], PATIENT_MS).await;
    let run = system.place(2, 1.0, 0.0, 0.0).await;
    system
        .wait_finished(&run, &processes.iter().collect::<Vec<_>>())
        .await;

    for id in system.orders(&run, "declined").await {
        let expected = Facts {
            status: Some("cancelled".to_owned()),
            cancel_reason: Some("payment failed: card declined".to_owned()),
            payment: Some("declined".to_owned()),
            shipments: 0,
            notices: strings(&["cancelled"]),
            ledger: strings(&["charge declined 1"]),
            sagas: strings(&["completed"]),
        };
        assert_eq!(system.facts(&id).await, expected, "order {id}");
    }
    system.assert_verified(&run).await;
}

/// The payment timeout (1 s) fires long before the slow card settles (4 s), so the order
/// is cancelled first; Billing's retries (about 16 s) outlast the settle time, get the
/// late charge, and the saga has it refunded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timing_a_payment_slower_than_the_timeout_is_cancelled_then_refunded() {
    let (system, processes) = System::start(&["--settle-ms", "4000"], "1000").await;
    let run = system.place(2, 0.0, 1.0, 0.0).await;
    system
        .wait_finished(&run, &processes.iter().collect::<Vec<_>>())
        .await;

    for id in system.orders(&run, "slow").await {
        let facts = system.facts(&id).await;
        assert_eq!(facts.status.as_deref(), Some("cancelled"), "{facts:?}");
        assert_eq!(
            facts.cancel_reason.as_deref(),
            Some("payment timed out"),
            "{facts:?}"
        );
        assert_eq!(facts.payment.as_deref(), Some("refunded"), "{facts:?}");
        assert_eq!(facts.shipments, 0, "{facts:?}");
        assert_eq!(facts.notices, strings(&["cancelled", "refunded"]));
        assert_eq!(facts.sagas, strings(&["completed"]));
        // One charge, asked for more than once while it settled, and one refund.
        assert_eq!(facts.ledger.len(), 2, "{facts:?}");
        assert!(
            facts.ledger[0].starts_with("charge succeeded "),
            "{facts:?}"
        );
        assert_eq!(facts.ledger[1], "refund succeeded 1", "{facts:?}");
    }
    system.assert_verified(&run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_a_resubmitted_order_is_stored_charged_and_shipped_once() {
    let (system, processes) = System::start(&[], PATIENT_MS).await;
    let run = system.place(3, 0.0, 0.0, 1.0).await;
    system
        .wait_finished(&run, &processes.iter().collect::<Vec<_>>())
        .await;

    let client = system.db.client().await;
    let resubmitted: i64 = client
        .query_one(
            "SELECT count(*) FROM retail.orders WHERE run_id = $1 AND resubmitted",
            &[&run],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(resubmitted, 3, "every order was sent twice");
    for id in system.orders(&run, "normal").await {
        assert_eq!(system.facts(&id).await, shipped_once(), "order {id}");
    }
    let sales = &processes[0];
    assert_eq!(
        sales.count_lines("order resubmitted; already stored"),
        3,
        "{}",
        sales.log()
    );
    system.assert_verified(&run).await;
}

/// With every gateway call taking 1.5 s, Billing is frozen (SIGSTOP) while its charge is
/// in flight and killed (SIGKILL) once the provider has answered into the frozen
/// process's socket: the charge took effect, the receive transaction did not commit.
/// The restarted instance charges again with the same key and gets the same charge.
/// Then the same for Shipping and the courier.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timing_billing_and_shipping_killed_mid_call_take_each_effect_once() {
    let mut system = System::gateways_only(&["--latency-ms", "1500"], PATIENT_MS).await;
    // Every call takes the latency; a shorter timeout would never get an answer.
    system.http_timeout_ms = "5000".to_owned();
    let sales = system.run("sales", "s1").await;
    let mut billing = system.run("billing", "b1").await;
    let mut shipping = system.run("shipping", "sh1").await;

    let run = system.place(1, 0.0, 0.0, 0.0).await;
    let id = &system.orders(&run, "normal").await[0];
    let client = system.db.client().await;

    billing
        .wait_for_line("charging", Duration::from_secs(30))
        .await;
    billing.signal("STOP");
    wait_for_ledger(&client, &format!("charge-{id}"), "succeeded").await;
    billing.signal("KILL");
    billing.wait_exit(Duration::from_secs(10)).await;
    let facts = system.facts(id).await;
    assert_eq!(
        facts.payment, None,
        "the charge's record rolled back: {facts:?}"
    );
    assert_eq!(facts.status.as_deref(), Some("placed"), "{facts:?}");

    let billing = system.run("billing", "b2").await;
    shipping
        .wait_for_line("booking the courier", Duration::from_secs(30))
        .await;
    shipping.signal("STOP");
    wait_for_ledger(&client, &format!("shipment-{id}"), "succeeded").await;
    shipping.signal("KILL");
    shipping.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(system.facts(id).await.shipments, 0);

    let shipping = system.run("shipping", "sh2").await;
    system
        .wait_finished(&run, &[&sales, &billing, &shipping])
        .await;
    let facts = system.facts(id).await;
    let expected = Facts {
        // Each key seen twice (before and after the kill), each effect taken once.
        ledger: strings(&["charge succeeded 2", "shipment succeeded 2"]),
        ..shipped_once()
    };
    assert_eq!(facts, expected);
    system.assert_verified(&run).await;
}

/// Waits until the ledger holds `key` in `state`.
async fn wait_for_ledger(client: &Client, key: &str, state: &str) {
    let found = tests::wait_until(Duration::from_secs(30), || async {
        client
            .query_opt(
                "SELECT 1 FROM gateway.ledger WHERE idempotency_key = $1 AND state = $2",
                &[&key, &state],
            )
            .await
            .expect("read the ledger")
            .is_some()
    })
    .await;
    assert!(found, "ledger never had {key} {state}");
}

/// Places one order of `kind` with Shipping installed but stopped, waits until both of
/// its events wait in Shipping's queue, and moves OrderPlaced behind the other one, so
/// Shipping, started again, sees the payment's outcome first. Returns the run, the order
/// id and Shipping's process.
async fn place_with_outcome_first(
    system: &System,
    declined: f64,
    kind: &str,
    outcome: &str,
) -> (String, String, Process) {
    let mut first = system.run("shipping", "sh1").await;
    first.signal("TERM");
    assert_eq!(first.wait_exit(Duration::from_secs(30)).await, Some(0));

    let run = system.place(1, declined, 0.0, 0.0).await;
    let id = system.orders(&run, kind).await.remove(0);
    let client = system.db.client().await;
    let both = tests::wait_until(FINISH, || async {
        client
            .query_one("SELECT count(*) FROM bus.shipping_queue", &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
            == 2
    })
    .await;
    assert!(both, "{}", system.dump(&run).await);

    client
        .batch_execute(
            "WITH moved AS (
                 DELETE FROM bus.shipping_queue
                 WHERE headers->>'message_type' = 'retail.OrderPlaced'
                 RETURNING message_id, headers, body
             )
             INSERT INTO bus.shipping_queue (message_id, headers, body)
             SELECT message_id, headers, body FROM moved",
        )
        .await
        .expect("move OrderPlaced to the back of the queue");
    let order: Vec<String> = client
        .query(
            "SELECT headers->>'message_type' FROM bus.shipping_queue ORDER BY seq",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(order, [outcome, "retail.OrderPlaced"]);

    let shipping = system.run("shipping", "sh2").await;
    (run, id, shipping)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_order_billed_before_order_placed_still_ships_once() {
    let system = System::gateways_only(&[], PATIENT_MS).await;
    let sales = system.run("sales", "s1").await;
    let billing = system.run("billing", "b1").await;
    let (run, id, shipping) =
        place_with_outcome_first(&system, 0.0, "normal", "retail.OrderBilled").await;
    system
        .wait_finished(&run, &[&sales, &billing, &shipping])
        .await;

    assert!(
        shipping.has_line("stage=\"billed, awaiting the order\""),
        "OrderBilled was not handled first:\n{}",
        shipping.log()
    );
    assert_eq!(system.facts(&id).await, shipped_once());
    // The payment timeout the saga asked for went with it.
    assert_eq!(
        system
            .db
            .count("SELECT count(*) FROM bus.shipping_delayed")
            .await,
        0
    );
    system.assert_verified(&run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_payment_failed_before_order_placed_cancels_once_and_leaves_no_saga_open() {
    let system = System::gateways_only(&[], PATIENT_MS).await;
    let sales = system.run("sales", "s1").await;
    let billing = system.run("billing", "b1").await;
    let (run, id, shipping) =
        place_with_outcome_first(&system, 1.0, "declined", "retail.PaymentFailed").await;
    system
        .wait_finished(&run, &[&sales, &billing, &shipping])
        .await;

    let expected = Facts {
        status: Some("cancelled".to_owned()),
        cancel_reason: Some("payment failed: card declined".to_owned()),
        payment: Some("declined".to_owned()),
        shipments: 0,
        notices: strings(&["cancelled"]),
        ledger: strings(&["charge declined 1"]),
        sagas: strings(&["completed"]),
    };
    assert_eq!(system.facts(&id).await, expected);
    let open = system
        .db
        .count("SELECT count(*) FROM bus.sagas WHERE state <> 'completed'")
        .await;
    assert_eq!(open, 0, "no saga left open");
    assert_eq!(
        system
            .db
            .count("SELECT count(*) FROM bus.shipping_delayed")
            .await,
        0
    );
    system.assert_verified(&run).await;
}

/// Everything a duplicate could change, as one comparable text.
async fn snapshot(client: &Client) -> String {
    client
        .query_one(
            "SELECT concat_ws(' | ',
                 (SELECT string_agg(idempotency_key || ' ' || state || ' ' || requests_seen,
                                    ', ' ORDER BY idempotency_key) FROM gateway.ledger),
                 (SELECT string_agg(order_id || ' ' || state || ' ' || updated_at, ', ')
                  FROM billing.payments),
                 (SELECT string_agg(order_id || ' ' || tracking_number, ', ')
                  FROM shipping.shipments),
                 (SELECT string_agg(order_id || ' ' || status || ' ' || updated_at, ', ')
                  FROM sales.orders),
                 (SELECT count(*) FROM sales.notifications)::text,
                 (SELECT string_agg(state || ' v' || version, ', ') FROM bus.sagas),
                 (SELECT count(*) FROM bus.failed_messages)::text)",
            &[],
        )
        .await
        .expect("take a snapshot")
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_a_duplicate_order_placed_or_ship_order_written_with_sql_changes_nothing() {
    let (system, processes) = System::start(&[], PATIENT_MS).await;
    let run = system.place(1, 0.0, 0.0, 0.0).await;
    let all: Vec<&Process> = processes.iter().collect();
    system.wait_finished(&run, &all).await;
    let id = system.orders(&run, "normal").await.remove(0);
    let client = system.db.client().await;
    let before = snapshot(&client).await;

    // Plain SQL, as an operator or a buggy peer would write it: JSON bodies built from
    // the client's own record of the order.
    for (queue, message_type, body) in [
        (
            "billing",
            "retail.OrderPlaced",
            "json_build_object('order_id', order_id, 'customer_id', customer_id,
                 'amount_cents', amount_cents, 'currency', currency, 'card_token', card_token)",
        ),
        (
            "shipping",
            "retail.OrderPlaced",
            "json_build_object('order_id', order_id, 'customer_id', customer_id,
                 'amount_cents', amount_cents, 'currency', currency, 'card_token', card_token)",
        ),
        (
            "shipping",
            "retail.ShipOrder",
            "json_build_object('order_id', order_id, 'customer_id', customer_id)",
        ),
        // Late and repeated events for an order Sales has already marked shipped: the
        // status moves only forward, so neither moves it nor notifies the customer again.
        (
            "sales",
            "retail.OrderBilled",
            "json_build_object('order_id', order_id, 'charge_id', 'late-charge',
                 'amount_cents', amount_cents, 'currency', currency)",
        ),
        (
            "sales",
            "retail.OrderShipped",
            "json_build_object('order_id', order_id, 'tracking_number', 'again')",
        ),
    ] {
        let sql = format!(
            "INSERT INTO bus.{queue}_queue (message_id, headers, body)
             SELECT gen_random_uuid(),
                    jsonb_build_object('message_type', $2::text,
                        'content_type', 'application/json', 'baggage.run_id', run_id),
                    convert_to(({body})::text, 'UTF8')
             FROM retail.orders
             WHERE order_id = $1"
        );
        let written = client.execute(&sql, &[&id, &message_type]).await.unwrap();
        assert_eq!(written, 1, "{sql}");
    }
    client
        .batch_execute("NOTIFY pgbus_billing; NOTIFY pgbus_shipping; NOTIFY pgbus_sales")
        .await
        .unwrap();

    let (sales, billing, shipping) = (&processes[0], &processes[1], &processes[3]);
    let not_moved = || sales.log().matches("status not moved").count();
    let noticed = tests::wait_until(FINISH, || async {
        (billing.has_line("order placed again") || processes[2].has_line("order placed again"))
            && shipping.has_line("order already shipped; nothing to do")
            && not_moved() >= 2
    })
    .await;
    assert!(
        noticed,
        "the duplicates were not handled:\n{}\n----\n{}\n----\n{}",
        sales.log(),
        billing.log(),
        shipping.log()
    );
    system.wait_finished(&run, &all).await;

    assert_eq!(
        snapshot(&client).await,
        before,
        "a duplicate changed something"
    );
    assert_eq!(system.facts(&id).await, shipped_once());
    system.assert_verified(&run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_endpoints_refuse_a_bad_flag_or_database_with_one_line() {
    let unreachable = "host=127.0.0.1 port=1 user=nobody dbname=none connect_timeout=2";
    for bin in ["sales", "billing", "shipping"] {
        let mut help = Process::start(bin, &["--help"], &[]);
        assert_eq!(help.wait_output(Duration::from_secs(10)).await, Some(0));
        let prefix = bin.to_uppercase();
        assert!(
            help.has_line(&format!("{prefix}_CONCURRENCY")),
            "{bin} --help names no env var:\n{}",
            help.log()
        );

        let mut version = Process::start(bin, &["--version"], &[]);
        assert_eq!(version.wait_output(Duration::from_secs(10)).await, Some(0));
        assert!(version.has_line(&format!("{bin} 0.")), "{}", version.log());

        let mut bad = Process::start(
            bin,
            &["--database-url", unreachable, "--concurrency", "zero"],
            &[],
        );
        assert_eq!(bad.wait_output(Duration::from_secs(10)).await, Some(2));
        let log = bad.log();
        assert_eq!(log.lines().count(), 1, "not one line:\n{log}");
        assert!(log.starts_with(&format!("{bin}: ")), "{log}");
        assert!(log.contains("--concurrency"), "{log}");

        // The same flag through its environment variable.
        let env = format!("{prefix}_BATCH_SIZE");
        let mut bad_env = Process::start(bin, &["--database-url", unreachable], &[(&env, "99")]);
        assert_eq!(bad_env.wait_output(Duration::from_secs(10)).await, Some(2));
        let log = bad_env.log();
        assert_eq!(log.lines().count(), 1, "not one line:\n{log}");
        assert!(log.contains("--batch-size"), "{log}");

        let mut no_db = Process::start(bin, &["--database-url", unreachable], &[]);
        assert_eq!(no_db.wait_output(Duration::from_secs(30)).await, Some(1));
        let log = no_db.log();
        let last = log.lines().last().unwrap_or_default();
        assert!(
            last.starts_with(&format!("{bin}: could not connect")),
            "{log}"
        );
    }
}
