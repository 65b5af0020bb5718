//! The operator CLI, `pgbus`, run as a real process against a real database: what each
//! command says on an empty database and to bad arguments, and that retries, purges,
//! counts, peeks and unsubscribes do what they say.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;
use tests::process::Process;
use tests::{TestDb, wait_until};
use transport_pg::{EndpointBuilder, RetryPolicy, SUBSCRIPTION_CACHE_TTL, Sender};
use uuid::Uuid;

use crate::fixtures::{
    Happened, Note, Switch, create_records, install_only, sender, start_subscriber,
};

/// What one run of `pgbus` printed and how it ended.
struct Run {
    code: Option<i32>,
    /// Standard output and standard error, line by line.
    out: String,
}

impl Run {
    /// Fails unless the run exited with `code` and printed `needle`.
    #[track_caller]
    fn expect(&self, code: i32, needle: &str) {
        assert_eq!(self.code, Some(code), "exit code; output:\n{}", self.out);
        assert!(
            self.out.contains(needle),
            "expected {needle:?} in the output:\n{}",
            self.out
        );
    }

    /// The output parsed as JSON; only for runs that print nothing but JSON.
    #[track_caller]
    fn json(&self) -> Value {
        assert_eq!(self.code, Some(0), "exit code; output:\n{}", self.out);
        serde_json::from_str(&self.out)
            .unwrap_or_else(|e| panic!("output is not JSON ({e}):\n{}", self.out))
    }
}

/// Starts `pgbus --database-url <db> args...` with warnings-only logs.
fn start(db: &TestDb, args: &[&str]) -> Process {
    let mut all = vec!["--database-url", db.url.as_str()];
    all.extend_from_slice(args);
    Process::start("pgbus", &all, &[("RUST_LOG", "warn")])
}

async fn finish(mut process: Process) -> Run {
    let code = process.wait_output(Duration::from_secs(120)).await;
    Run {
        code,
        out: process.log(),
    }
}

async fn pgbus(db: &TestDb, args: &[&str]) -> Run {
    finish(start(db, args)).await
}

/// Puts `count` failed messages from `queue` with `fingerprint` into the error queue, as
/// the pump would have left them: failure headers, raised counters, a JSON Note body.
async fn insert_failed(db: &TestDb, queue: &str, fingerprint: &str, count: i32) {
    db.client()
        .await
        .execute(
            "INSERT INTO bus.failed_messages (
                 message_id, origin_queue, message_type, headers, body, enqueued_at,
                 error_kind, error_message, fingerprint, failed_attempts, delayed_retries)
             SELECT id, $1::text, 'test.Note',
                    jsonb_build_object(
                        'message_id', id::text, 'message_type', 'test.Note',
                        'content_type', 'application/json', 'failed_attempts', '4',
                        'delayed_retries', '3', 'error_kind', 'message',
                        'error_message', 'boom', 'error_source', '', 'failed_queue', $1::text,
                        'failed_at', '2026-12-03T12:00:00.000Z'),
                    convert_to(format('{\"text\": \"%s-%s\"}', $2::text, g), 'UTF8'),
                    now() - interval '1 minute', 'message', 'boom', $2::text, 4, 3
             FROM (SELECT g, gen_random_uuid() AS id
                   FROM generate_series(1, $3::integer) AS g) AS u",
            &[&queue, &fingerprint, &count],
        )
        .await
        .expect("insert failed messages");
}

async fn ids_of(db: &TestDb, sql: &str) -> Vec<i64> {
    let rows = db.client().await.query(sql, &[]).await.expect(sql);
    rows.iter().map(|row| row.get(0)).collect()
}

async fn message_ids(db: &TestDb, sql: &str) -> Vec<Uuid> {
    let rows = db.client().await.query(sql, &[]).await.expect(sql);
    rows.iter().map(|row| row.get(0)).collect()
}

/// Checks that every message of `expected` is in exactly one of the queue tables named
/// in `queues` or the error queue, and nothing else is there.
async fn assert_each_once(db: &TestDb, queues: &[&str], expected: &HashSet<Uuid>) {
    let mut seen = message_ids(db, "SELECT message_id FROM bus.failed_messages").await;
    for queue in queues {
        let sql = format!("SELECT message_id FROM bus.{queue}_queue");
        seen.extend(message_ids(db, &sql).await);
    }
    let distinct: HashSet<Uuid> = seen.iter().copied().collect();
    assert_eq!(
        seen.len(),
        distinct.len(),
        "a message is in two places (or twice in one)"
    );
    assert_eq!(&distinct, expected, "a message went missing or appeared");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_on_an_empty_database_gives_a_clear_answer() {
    let db = TestDb::new().await;
    let cases: &[(&[&str], i32, &str)] = &[
        (&["migrate"], 0, "0 migrations applied"),
        (&["endpoints"], 0, "no endpoints installed"),
        (&["queues"], 0, "no endpoints installed"),
        (&["errors", "list"], 0, "no failed messages"),
        (&["errors", "list", "--group"], 0, "no failed messages"),
        (&["errors", "show", "1"], 3, "no failed message with id 1"),
        (
            &["errors", "retry", "1", "2"],
            3,
            "no failed messages with id 1, 2",
        ),
        (
            &["errors", "retry", "--group", "abc"],
            3,
            "no failed messages with fingerprint abc",
        ),
        (
            &["errors", "retry", "--all"],
            0,
            "retried 0 failed messages",
        ),
        (
            &["errors", "retry", "--all", "--queue", "sales"],
            3,
            "unknown queue sales",
        ),
        (&["errors", "purge", "--all"], 0, "purged 0 failed messages"),
        (
            &["errors", "purge", "7", "--yes"],
            3,
            "no failed message with id 7",
        ),
        (
            &["errors", "list", "--queue", "sales"],
            3,
            "unknown queue sales",
        ),
        (&["peek", "sales"], 3, "bus.sales_queue does not exist"),
        (&["peek", "sales_queue"], 3, "`pgbus peek sales`"),
        (
            &["unsubscribe", "sales"],
            3,
            "endpoint sales is not installed",
        ),
        (
            &["decommission", "sales", "--yes"],
            3,
            "endpoint sales is not installed",
        ),
        (
            &["sagas", "show", "shop.Checkout", "o-1"],
            3,
            "no saga shop.Checkout with",
        ),
        (
            &["sagas", "list", "shop.Checkout"],
            0,
            "no sagas of type shop.Checkout",
        ),
        (
            &[
                "sagas",
                "list",
                "shop.Checkout",
                "--open",
                "--older-than",
                "1h",
            ],
            0,
            "no open",
        ),
    ];
    for (args, code, needle) in cases {
        let run = pgbus(&db, args).await;
        assert_eq!(run.code, Some(*code), "pgbus {args:?}:\n{}", run.out);
        assert!(
            run.out.contains(needle),
            "pgbus {args:?}: no {needle:?} in:\n{}",
            run.out
        );
        if *code == 3 {
            assert!(
                run.out.starts_with("pgbus: "),
                "one clear line: {}",
                run.out
            );
            assert_eq!(run.out.lines().count(), 1, "one line: {}", run.out);
        }
    }

    for args in [
        &["--json", "endpoints"][..],
        &["queues", "--json"],
        &["errors", "list", "--json"],
        &["errors", "list", "--group", "--json"],
        &["sagas", "list", "shop.Checkout", "--json"],
    ] {
        assert_eq!(
            pgbus(&db, args).await.json(),
            Value::Array(Vec::new()),
            "{args:?}"
        );
    }
    let report = pgbus(&db, &["errors", "retry", "--all", "--json"])
        .await
        .json();
    assert_eq!(report["count"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_arguments_are_usage_errors_and_a_missing_database_is_a_runtime_error() {
    let db = TestDb::new().await;
    let usage: &[(&[&str], &str)] = &[
        (&["frobnicate"], "unrecognized subcommand"),
        (&["peek", "Bad"], "invalid endpoint name \"Bad\""),
        (&["peek", "sales", "--limit", "0"], "--limit"),
        (&["errors", "retry"], "required"),
        (
            &["errors", "retry", "1", "--group", "abc"],
            "cannot be used with",
        ),
        (&["errors", "retry", "--queue", "sales"], "required"),
        (
            &["errors", "retry", "--all", "--batch-size", "0"],
            "--batch-size",
        ),
        (&["errors", "purge", "--group"], "a value is required"),
        (&["errors", "show", "abc"], "invalid value 'abc'"),
        (&["errors", "show", "0"], "invalid value '0'"),
        (
            &["errors", "list", "--queue", "a-b"],
            "invalid endpoint name",
        ),
        (
            &["unsubscribe", "sales", "--type", "nodots"],
            "expected <contract>.<Type>",
        ),
        (&["decommission"], "required"),
        (
            &["sagas", "show", "nodots", "o-1"],
            "invalid saga type \"nodots\"",
        ),
        (&["sagas", "show", "shop.Checkout"], "required"),
        (
            &["sagas", "list", "shop.Checkout", "--older-than", "5x"],
            "unknown unit \"x\"",
        ),
        (
            &["sagas", "list", "shop.Checkout", "--older-than", "30"],
            "has no unit",
        ),
    ];
    for (args, needle) in usage {
        let run = pgbus(&db, args).await;
        assert_eq!(run.code, Some(2), "pgbus {args:?}:\n{}", run.out);
        assert!(
            run.out.contains(needle),
            "pgbus {args:?}: no {needle:?} in:\n{}",
            run.out
        );
    }

    // No database at all: a usage error that says what to pass.
    let run = finish(Process::start(
        "pgbus",
        &["queues"],
        &[("DATABASE_URL", "")],
    ))
    .await;
    run.expect(
        2,
        "pgbus: no database given; pass --database-url or set DATABASE_URL",
    );

    let unreachable = "host=127.0.0.1 port=1 user=nobody dbname=none";
    let run = finish(Process::start(
        "pgbus",
        &["--database-url", unreachable, "queues"],
        &[],
    ));
    run.await
        .expect(1, "pgbus: could not connect to the database");

    // A database without the bus schema: a runtime error with a hint.
    let bare = TestDb::empty().await;
    let run = pgbus(&bare, &["errors", "list"]).await;
    run.expect(1, "run `pgbus migrate`");

    for args in [
        &["--help"][..],
        &["errors", "retry", "--help"],
        &["peek", "--help"],
    ] {
        let run = finish(Process::start("pgbus", args, &[])).await;
        run.expect(0, "Exit codes");
    }
    let run = finish(Process::start("pgbus", &["errors", "retry", "--help"], &[])).await;
    run.expect(0, "--batch-size");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_message_goes_from_the_error_queue_back_to_its_queue_and_is_handled() {
    let db = TestDb::new().await;
    create_records(&db).await;
    let broken = Arc::new(AtomicBool::new(true));
    let endpoint = EndpointBuilder::new("walk", db.database())
        .handler::<Note, _>(Switch {
            broken: broken.clone(),
            attempts: Default::default(),
        })
        .retry_policy(RetryPolicy {
            immediate: 1,
            delayed: 0,
            ..RetryPolicy::default()
        })
        .idle_poll_max(Duration::from_millis(200))
        .start()
        .await
        .expect("endpoint starts");
    sender(&db.database(), "walk")
        .send(&Note {
            text: "walked".into(),
            ..Note::default()
        })
        .await
        .unwrap();
    let failed = wait_until(Duration::from_secs(20), || async {
        db.count("SELECT count(*) FROM bus.failed_messages").await == 1
    })
    .await;
    assert!(failed, "the note reached the error queue");

    let listed = pgbus(&db, &["errors", "list", "--json"]).await.json();
    let row = &listed[0];
    assert_eq!(row["origin_queue"], "walk");
    assert_eq!(row["message_type"], "test.Note");
    assert_eq!(row["error_message"], "the switch is off");
    assert_eq!(row["failed_attempts"], 2);
    let id = row["id"].as_i64().expect("id");
    let table = pgbus(&db, &["errors", "list"]).await;
    table.expect(0, "the switch is off");
    assert!(table.out.starts_with("ID  QUEUE"), "{}", table.out);

    let shown = pgbus(&db, &["errors", "show", &id.to_string(), "--json"])
        .await
        .json();
    assert_eq!(shown["body"]["format"], "msgpack");
    assert_eq!(shown["body"]["value"]["text"], "walked");
    assert_eq!(shown["headers"]["error_message"], "the switch is off");
    let text = pgbus(&db, &["errors", "show", &id.to_string()]).await;
    text.expect(0, "\"text\": \"walked\"");
    assert!(
        text.out
            .contains("shown as JSON (decoded from MessagePack)"),
        "{}",
        text.out
    );

    let groups = pgbus(&db, &["errors", "list", "--group", "--json"])
        .await
        .json();
    assert_eq!(groups[0]["count"], 1);
    assert_eq!(groups[0]["sample_id"], id);
    assert_eq!(groups[0]["fingerprint"], row["fingerprint"]);

    broken.store(false, Ordering::SeqCst);
    pgbus(&db, &["errors", "retry", &id.to_string()])
        .await
        .expect(
            0,
            &format!("retried 1 failed message: 1 back to walk (id {id})"),
        );
    let handled = wait_until(Duration::from_secs(20), || async {
        db.count("SELECT count(*) FROM records WHERE text = 'walked'")
            .await
            == 1
    })
    .await;
    endpoint.shutdown(Duration::from_secs(5)).await;
    assert!(handled, "the retried note was handled");
    assert_eq!(
        db.count("SELECT count(*) FROM records WHERE failed_attempts = 0")
            .await,
        1,
        "the retry starts with its counters reset"
    );
    assert_eq!(
        db.count("SELECT count(*) FROM bus.failed_messages").await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retrying_one_and_a_group_moves_each_message_exactly_once_with_counters_reset() {
    let db = TestDb::new().await;
    install_only(&db.database(), "sink").await;
    insert_failed(&db, "sink", "aaaaaaaaaaaaaaaa", 5).await;
    insert_failed(&db, "sink", "bbbbbbbbbbbbbbbb", 3).await;
    let all: HashSet<Uuid> = message_ids(&db, "SELECT message_id FROM bus.failed_messages")
        .await
        .into_iter()
        .collect();
    let b_ids = ids_of(
        &db,
        "SELECT id FROM bus.failed_messages WHERE fingerprint LIKE 'b%'",
    );
    let one = b_ids.await[0];

    let run = pgbus(&db, &["errors", "retry", &one.to_string()]).await;
    run.expect(
        0,
        &format!("retried 1 failed message: 1 back to sink (id {one})"),
    );
    assert_eq!(db.count("SELECT count(*) FROM bus.sink_queue").await, 1);
    assert_each_once(&db, &["sink"], &all).await;

    let run = pgbus(&db, &["errors", "retry", "--group", "aaaaaaaaaaaaaaaa"]).await;
    run.expect(0, "retried 5 failed messages: 5 back to sink");
    assert_eq!(db.count("SELECT count(*) FROM bus.sink_queue").await, 6);
    assert_eq!(
        db.count("SELECT count(*) FROM bus.failed_messages WHERE fingerprint LIKE 'b%'")
            .await,
        2,
        "the other group stays"
    );
    assert_each_once(&db, &["sink"], &all).await;
    assert_eq!(
        db.count(
            "SELECT count(*) FROM bus.sink_queue
             WHERE headers ?| ARRAY['failed_attempts', 'delayed_retries', 'error_kind',
                                   'error_message', 'failed_queue', 'failed_at']"
        )
        .await,
        0,
        "failure headers and counters are gone"
    );

    // The same id again is gone from the error queue: not found, nothing moved.
    pgbus(&db, &["errors", "retry", &one.to_string()])
        .await
        .expect(3, &format!("no failed message with id {one}"));
    assert_eq!(db.count("SELECT count(*) FROM bus.sink_queue").await, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retrying_all_of_a_queue_takes_several_batches_and_leaves_other_queues_alone() {
    let db = TestDb::new().await;
    install_only(&db.database(), "sink").await;
    install_only(&db.database(), "other").await;
    insert_failed(&db, "sink", "cccccccccccccccc", 1_200).await;
    insert_failed(&db, "other", "dddddddddddddddd", 10).await;
    let all: HashSet<Uuid> = message_ids(&db, "SELECT message_id FROM bus.failed_messages")
        .await
        .into_iter()
        .collect();

    // 1,200 at the default batch of 500: three transactions.
    let run = pgbus(&db, &["errors", "retry", "--all", "--queue", "sink"]).await;
    run.expect(0, "retried 1200 failed messages: 1200 back to sink");
    assert_eq!(db.count("SELECT count(*) FROM bus.sink_queue").await, 1_200);
    assert_eq!(db.count("SELECT count(*) FROM bus.other_queue").await, 0);
    assert_eq!(
        db.count("SELECT count(*) FROM bus.failed_messages WHERE origin_queue = 'other'")
            .await,
        10
    );
    assert_each_once(&db, &["sink", "other"], &all).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_retries_of_everything_at_once_move_each_message_exactly_once() {
    let db = TestDb::new().await;
    install_only(&db.database(), "sink").await;
    install_only(&db.database(), "other").await;
    insert_failed(&db, "sink", "eeeeeeeeeeeeeeee", 900).await;
    insert_failed(&db, "other", "ffffffffffffffff", 300).await;
    let all: HashSet<Uuid> = message_ids(&db, "SELECT message_id FROM bus.failed_messages")
        .await
        .into_iter()
        .collect();
    assert_eq!(all.len(), 1_200);

    let args = ["errors", "retry", "--all", "--batch-size", "50", "--json"];
    let first = start(&db, &args);
    let second = start(&db, &args);
    let (first, second) = (finish(first).await, finish(second).await);
    let moved = |run: &Run| run.json()["count"].as_u64().expect("count");
    println!("moved: {} and {}", moved(&first), moved(&second));
    assert_eq!(
        moved(&first) + moved(&second),
        1_200,
        "together they moved each message once:\n{}\n{}",
        first.out,
        second.out
    );

    assert_eq!(
        db.count("SELECT count(*) FROM bus.failed_messages").await,
        0
    );
    assert_eq!(db.count("SELECT count(*) FROM bus.sink_queue").await, 900);
    assert_eq!(db.count("SELECT count(*) FROM bus.other_queue").await, 300);
    assert_each_once(&db, &["sink", "other"], &all).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_to_an_endpoint_that_is_gone_leaves_its_messages_in_the_error_queue() {
    let db = TestDb::new().await;
    install_only(&db.database(), "sink").await;
    insert_failed(&db, "sink", "1111111111111111", 3).await;
    insert_failed(&db, "gone", "2222222222222222", 2).await;

    let run = pgbus(&db, &["errors", "retry", "--all"]).await;
    run.expect(1, "retried 3 failed messages: 3 back to sink");
    assert!(
        run.out.contains("gone: endpoint \"gone\" is not installed"),
        "{}",
        run.out
    );
    assert_eq!(db.count("SELECT count(*) FROM bus.sink_queue").await, 3);
    assert_eq!(
        db.count("SELECT count(*) FROM bus.failed_messages WHERE origin_queue = 'gone'")
            .await,
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_asks_for_confirmation_and_deletes_only_what_was_named() {
    let db = TestDb::new().await;
    install_only(&db.database(), "sink").await;
    insert_failed(&db, "sink", "aaaaaaaaaaaaaaaa", 3).await;
    insert_failed(&db, "sink", "bbbbbbbbbbbbbbbb", 2).await;

    // The test's stdin is not a terminal, so without --yes nothing may happen.
    let run = pgbus(&db, &["errors", "purge", "--all"]).await;
    run.expect(4, "refusing to purge 5 failed messages");
    assert!(run.out.contains("pass --yes"), "{}", run.out);
    assert_eq!(
        db.count("SELECT count(*) FROM bus.failed_messages").await,
        5
    );

    let run = pgbus(
        &db,
        &["errors", "purge", "--group", "aaaaaaaaaaaaaaaa", "--yes"],
    )
    .await;
    run.expect(0, "purged 3 failed messages: 3 from sink");
    assert_eq!(
        db.count("SELECT count(*) FROM bus.failed_messages").await,
        2
    );

    let b = ids_of(&db, "SELECT id FROM bus.failed_messages ORDER BY id").await;
    let run = pgbus(
        &db,
        &["errors", "purge", &b[0].to_string(), "999999", "--yes"],
    )
    .await;
    run.expect(3, "no failed message with id 999999");
    assert!(run.out.contains(&format!(
        "purged 1 failed message: 1 from sink (id {})",
        b[0]
    )));
    assert_eq!(
        ids_of(&db, "SELECT id FROM bus.failed_messages").await,
        [b[1]]
    );

    let run = pgbus(&db, &["errors", "purge", "--all", "--queue", "sink", "-y"]).await;
    run.expect(0, "purged 1 failed message");
    assert_eq!(
        db.count("SELECT count(*) FROM bus.failed_messages").await,
        0
    );
    assert_eq!(
        db.count("SELECT count(*) FROM bus.sink_queue").await,
        0,
        "nothing retried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_counts_match_the_rows_in_each_table() {
    let db = TestDb::new().await;
    install_only(&db.database(), "alpha").await;
    install_only(&db.database(), "beta").await;
    db.client()
        .await
        .batch_execute(
            "INSERT INTO bus.alpha_queue (message_id, headers, body, enqueued_at)
             SELECT gen_random_uuid(), '{\"message_type\": \"test.Note\"}', '\\x80',
                    now() - g * interval '1 hour'
             FROM generate_series(1, 3) AS g;
             INSERT INTO bus.alpha_delayed (due_at, message_id, headers, body)
             VALUES (now() - interval '1 minute', gen_random_uuid(), '{}', '\\x80'),
                    (now() + interval '1 hour', gen_random_uuid(), '{}', '\\x80');",
        )
        .await
        .unwrap();
    insert_failed(&db, "alpha", "aaaaaaaaaaaaaaaa", 4).await;
    insert_failed(&db, "beta", "bbbbbbbbbbbbbbbb", 1).await;

    let queues = pgbus(&db, &["queues", "--json"]).await.json();
    let alpha = &queues[0];
    assert_eq!(alpha["endpoint"], "alpha");
    assert_eq!(alpha["ready"], 3);
    assert_eq!(alpha["delayed"], 2);
    assert_eq!(alpha["due"], 1);
    assert_eq!(alpha["failed"], 4);
    let oldest = alpha["oldest_age_seconds"].as_f64().expect("an age");
    assert!(
        (3.0 * 3600.0..3.0 * 3600.0 + 600.0).contains(&oldest),
        "{oldest}"
    );
    let next_due = alpha["next_due_in_seconds"].as_f64().expect("next due");
    assert!(next_due < 0.0, "one is overdue: {next_due}");
    let beta = &queues[1];
    assert_eq!(beta["endpoint"], "beta");
    assert_eq!(
        (beta["ready"].as_i64(), beta["delayed"].as_i64()),
        (Some(0), Some(0))
    );
    assert_eq!(beta["failed"], 1);
    assert!(beta["oldest_age_seconds"].is_null());

    let table = pgbus(&db, &["queues"]).await;
    table.expect(0, "ENDPOINT  READY  OLDEST  DELAYED  DUE  NEXT DUE  FAILED");
    let alpha_line = table
        .out
        .lines()
        .find(|l| l.starts_with("alpha"))
        .expect("alpha row");
    let cells: Vec<&str> = alpha_line.split_whitespace().collect();
    assert_eq!(cells[1], "3", "{alpha_line}");
    assert!(cells[2].starts_with("3h"), "{alpha_line}");
    assert_eq!(&cells[3..5], ["2", "1"], "{alpha_line}");
    assert_eq!(cells[6], "4", "{alpha_line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peek_decodes_waiting_messages_and_leaves_them_there() {
    let db = TestDb::new().await;
    install_only(&db.database(), "inbox").await;
    sender(&db.database(), "inbox")
        .send(&Note {
            text: "peeked".into(),
            ..Note::default()
        })
        .await
        .unwrap();
    db.client()
        .await
        .batch_execute(
            "INSERT INTO bus.inbox_queue (message_id, headers, body)
             VALUES (gen_random_uuid(),
                     '{\"message_type\": \"test.Note\", \"content_type\": \"application/json\"}',
                     convert_to('{\"text\": \"by hand\"}', 'UTF8')),
                    (gen_random_uuid(), '{\"message_type\": \"test.Note\"}', '\\xc1ff');",
        )
        .await
        .unwrap();

    let peeked = pgbus(&db, &["peek", "inbox", "--json"]).await.json();
    let messages = peeked.as_array().expect("an array");
    assert_eq!(messages.len(), 3);
    assert_eq!(messages[0]["message_type"], "test.Note");
    assert_eq!(messages[0]["body"]["format"], "msgpack");
    assert_eq!(messages[0]["body"]["value"]["text"], "peeked");
    assert_eq!(messages[0]["headers"]["sending_endpoint"], "test-client");
    assert_eq!(messages[1]["body"]["format"], "json");
    assert_eq!(messages[1]["body"]["value"]["text"], "by hand");
    assert_eq!(messages[2]["body"]["format"], "hex");
    assert_eq!(messages[2]["body"]["value"], "c1ff");
    assert!(messages[2]["body"]["error"].is_string());

    let text = pgbus(&db, &["peek", "inbox", "--limit", "1"]).await;
    text.expect(0, "\"text\": \"peeked\"");
    assert!(
        !text.out.contains("by hand"),
        "--limit 1 shows one:\n{}",
        text.out
    );
    assert_eq!(
        db.count("SELECT count(*) FROM bus.inbox_queue").await,
        3,
        "still waiting"
    );

    pgbus(&db, &["peek", "inbox", "--delayed"])
        .await
        .expect(0, "no messages waiting in bus.inbox_delayed");
}

fn publisher(db: &TestDb) -> Sender {
    Sender::builder(&db.database(), "publisher")
        .build()
        .unwrap()
}

async fn records(db: &TestDb) -> Vec<String> {
    let rows = db
        .client()
        .await
        .query("SELECT text FROM records ORDER BY text", &[])
        .await
        .unwrap();
    rows.iter().map(|row| row.get(0)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_stops_an_endpoints_copies_and_the_others_still_get_theirs() {
    let db = TestDb::new().await;
    create_records(&db).await;
    let database = db.database();
    let stays = start_subscriber(&database, "stays").await;
    let leaves = start_subscriber(&database, "leaves").await;
    let publisher = publisher(&db);

    publisher
        .publish(&Happened {
            text: "before".into(),
        })
        .await
        .unwrap();
    let both = wait_until(Duration::from_secs(10), || async {
        db.count("SELECT count(*) FROM records").await == 2
    })
    .await;
    assert!(
        both,
        "both subscribers got the first event: {:?}",
        records(&db).await
    );

    let endpoints = pgbus(&db, &["endpoints", "--json"]).await.json();
    assert_eq!(endpoints[0]["name"], "leaves");
    assert_eq!(
        endpoints[0]["subscriptions"],
        serde_json::json!(["test.Happened"])
    );

    pgbus(&db, &["unsubscribe", "leaves", "--type", "test.Happened"])
        .await
        .expect(0, "removed 1 subscription of leaves");
    tokio::time::sleep(SUBSCRIPTION_CACHE_TTL + Duration::from_millis(200)).await;
    publisher
        .publish(&Happened {
            text: "after".into(),
        })
        .await
        .unwrap();
    let got = wait_until(Duration::from_secs(10), || async {
        db.count("SELECT count(*) FROM records").await == 3
    })
    .await;
    // Give a wrong copy to leaves time to arrive and be handled.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stays.shutdown(Duration::from_secs(5)).await;
    leaves.shutdown(Duration::from_secs(5)).await;
    assert!(got, "stays got the second event: {:?}", records(&db).await);
    assert_eq!(
        records(&db).await,
        ["leaves:before", "stays:after", "stays:before"]
    );
    assert_eq!(db.count("SELECT count(*) FROM bus.leaves_queue").await, 0);

    let endpoints = pgbus(&db, &["endpoints"]).await;
    endpoints.expect(0, "ENDPOINT");
    let leaves_line = endpoints
        .out
        .lines()
        .find(|l| l.starts_with("leaves"))
        .unwrap();
    assert!(
        leaves_line.ends_with(" -"),
        "no subscriptions left: {leaves_line}"
    );
    pgbus(&db, &["unsubscribe", "leaves"])
        .await
        .expect(3, "endpoint leaves has no subscriptions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decommission_asks_first_then_removes_the_endpoint_and_its_tables() {
    let db = TestDb::new().await;
    install_only(&db.database(), "old").await;
    sender(&db.database(), "old")
        .send(&Note::default())
        .await
        .unwrap();

    pgbus(&db, &["decommission", "old"])
        .await
        .expect(4, "refusing to decommission endpoint old");
    assert_eq!(db.count("SELECT count(*) FROM bus.old_queue").await, 1);

    pgbus(&db, &["decommission", "old", "--yes"])
        .await
        .expect(0, "decommissioned old");
    assert_eq!(
        db.count("SELECT count(*) FROM pg_tables WHERE tablename LIKE 'old_%'")
            .await,
        0
    );
    assert_eq!(
        pgbus(&db, &["endpoints", "--json"]).await.json(),
        Value::Array(vec![])
    );
}

/// Inserts a saga row of `saga_type` for `correlation`, created `age` ago (an SQL
/// interval), completed `completed` ago when given; returns its id.
async fn insert_saga(
    db: &TestDb,
    saga_type: &str,
    correlation: &str,
    age: &str,
    completed: Option<&str>,
) -> Uuid {
    let id = Uuid::new_v4();
    db.client()
        .await
        .execute(
            "INSERT INTO bus.sagas (id, saga_type, correlation, state, data, version,
                                    started_by, created_at, updated_at, completed_at)
             VALUES ($1, $2, $3,
                     CASE WHEN $5::text IS NULL THEN 'open' ELSE 'completed' END,
                     jsonb_build_object('order', $3::text, 'billed', $5::text IS NOT NULL),
                     2, 'shop.OrderPlaced',
                     now() - $4::text::interval, now() - $4::text::interval,
                     now() - $5::text::interval)",
            &[&id, &saga_type, &correlation, &age, &completed],
        )
        .await
        .expect("insert saga");
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_show_finds_open_and_closed_ones_and_list_finds_the_stuck_one() {
    let db = TestDb::new().await;
    let stuck = insert_saga(&db, "shop.Checkout", "o-stuck", "3 hours", None).await;
    insert_saga(&db, "shop.Checkout", "o-done", "2 hours", Some("1 hour")).await;
    insert_saga(&db, "shop.Checkout", "o-fresh", "1 second", None).await;
    insert_saga(&db, "shop.Other", "o-stuck", "5 hours", None).await;
    // The stuck saga's pending timeout, in the delayed table of the endpoint running it.
    install_only(&db.database(), "shipping").await;
    db.client()
        .await
        .execute(
            "INSERT INTO bus.shipping_delayed (due_at, message_id, headers, body, saga_id)
             VALUES (now() + interval '1 hour', gen_random_uuid(),
                     '{\"message_type\": \"shop.PaymentDue\"}', '\\x80', $1)",
            &[&stuck],
        )
        .await
        .unwrap();

    let open = pgbus(
        &db,
        &["sagas", "show", "shop.Checkout", "o-stuck", "--json"],
    )
    .await;
    let open = open.json();
    assert_eq!(open["id"], stuck.to_string());
    assert_eq!(open["state"], "open");
    assert_eq!(open["data"]["order"], "o-stuck");
    assert!(open["completed_at"].is_null());
    assert!(open["age_seconds"].as_f64().unwrap() >= 3.0 * 3600.0);
    assert_eq!(open["timeouts"][0]["endpoint"], "shipping");
    assert_eq!(open["timeouts"][0]["message_type"], "shop.PaymentDue");

    let closed = pgbus(&db, &["sagas", "show", "shop.Checkout", "o-done"]).await;
    closed.expect(0, "state         completed");
    assert!(closed.out.contains("\"billed\": true"), "{}", closed.out);
    assert!(
        closed.out.contains("timeouts:     none pending"),
        "{}",
        closed.out
    );
    pgbus(&db, &["sagas", "show", "shop.Checkout", "o-nobody"])
        .await
        .expect(
            3,
            "no saga shop.Checkout with correlation value \"o-nobody\"",
        );

    let correlations = |list: Value| -> Vec<String> {
        let list = list.as_array().expect("an array").clone();
        list.iter()
            .map(|s| s["correlation"].as_str().unwrap().to_owned())
            .collect()
    };
    let args = [
        "sagas",
        "list",
        "shop.Checkout",
        "--open",
        "--older-than",
        "1h",
        "--json",
    ];
    let stuck_list = pgbus(&db, &args).await.json();
    assert_eq!(correlations(stuck_list), ["o-stuck"]);
    let every = pgbus(&db, &["sagas", "list", "shop.Checkout", "--json"])
        .await
        .json();
    assert_eq!(correlations(every), ["o-stuck", "o-done", "o-fresh"]);
    let older = [
        "sagas",
        "list",
        "shop.Checkout",
        "--older-than",
        "1h30m",
        "--json",
    ];
    assert_eq!(
        correlations(pgbus(&db, &older).await.json()),
        ["o-stuck", "o-done"]
    );

    let table = pgbus(
        &db,
        &[
            "sagas",
            "list",
            "shop.Checkout",
            "--open",
            "--older-than",
            "1h",
        ],
    );
    let table = table.await;
    table.expect(0, "CORRELATION  STATE");
    assert!(table.out.contains(&stuck.to_string()), "{}", table.out);
    assert_eq!(
        table.out.lines().count(),
        2,
        "a header and one saga:\n{}",
        table.out
    );
}
