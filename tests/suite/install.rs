//! Migrations and the installer under concurrency, and the plans of the hot statements.

use tests::TestDb;
use transport_pg::tokio_postgres::Client;
use transport_pg::{EndpointName, InstallOutcome, bus_migrations, install_endpoint, migrate, sql};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_installers_at_once_on_an_empty_database_make_one_set_of_tables() {
    for round in 0..10 {
        let db = TestDb::empty().await;
        let database = db.database();
        let name = EndpointName::new("racer").unwrap();

        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(8));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let database = database.clone();
            let name = name.clone();
            let barrier = barrier.clone();
            tasks.push(tokio::spawn(async move {
                let mut client = database.connect("test installer").await?;
                barrier.wait().await;
                migrate(&database, &bus_migrations()).await?;
                install_endpoint(&mut client, &name).await
            }));
        }
        let mut installed = 0;
        for task in tasks {
            let outcome = task
                .await
                .expect("task")
                .unwrap_or_else(|e| panic!("round {round}: {}", transport_pg::error_chain(&e)));
            if outcome == InstallOutcome::Installed {
                installed += 1;
            }
        }
        assert_eq!(
            installed, 1,
            "round {round}: exactly one installer did the DDL"
        );

        let tables = db
            .count(
                "SELECT count(*) FROM pg_tables WHERE schemaname = 'bus' \
                 AND tablename IN ('racer_queue', 'racer_delayed')",
            )
            .await;
        assert_eq!(tables, 2, "round {round}: one queue and one delayed table");
        let migrations = (bus_migrations().runner)().get_migrations().len() as i64;
        assert_eq!(
            db.count("SELECT count(*) FROM bus.schema_history").await,
            migrations,
            "round {round}: every migration applied once"
        );
        assert_eq!(
            db.count("SELECT installer_version::bigint FROM bus.endpoints WHERE name = 'racer'")
                .await,
            i64::from(transport_pg::INSTALLER_VERSION)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_installer_sets_churn_friendly_autovacuum_with_index_cleanup() {
    let db = TestDb::new().await;
    let mut client = db.database().connect("test").await.unwrap();
    let name = EndpointName::new("tuned").unwrap();
    assert_eq!(
        install_endpoint(&mut client, &name).await.unwrap(),
        InstallOutcome::Installed
    );
    assert_eq!(
        install_endpoint(&mut client, &name).await.unwrap(),
        InstallOutcome::AlreadyInstalled
    );

    let options: Vec<String> = client
        .query_one(
            "SELECT reloptions FROM pg_class WHERE oid = 'bus.tuned_queue'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        options.contains(&"vacuum_index_cleanup=on".to_owned()),
        "{options:?}"
    );
    assert!(
        options
            .iter()
            .any(|o| o.starts_with("autovacuum_vacuum_threshold="))
    );
    let indexes = db
        .count(
            "SELECT count(*) FROM pg_indexes WHERE schemaname = 'bus' \
             AND tablename = 'tuned_delayed'",
        )
        .await;
    assert_eq!(indexes, 3, "primary key, due time and saga id");
}

/// Gives `name`'s queue what a plan is judged on: 20,000 rows and fresh statistics.
async fn fill_realistically(client: &Client, name: &EndpointName) {
    let queue = name.tables().queue;
    client
        .batch_execute(&format!(
            "INSERT INTO {queue} (message_id, headers, body) \
             SELECT gen_random_uuid(), '{{\"message_type\": \"t.T\"}}', '\\x80' \
             FROM generate_series(1, 20000); ANALYZE {queue}"
        ))
        .await
        .unwrap();
}

/// Prepares `statement` as `hot`, alone on `client`, with `plan_cache_mode` set to `mode`.
async fn prepare_hot(client: &Client, mode: &str, statement: &str) {
    client
        .batch_execute(&format!("SET plan_cache_mode = {mode}; DEALLOCATE ALL"))
        .await
        .unwrap();
    client
        .batch_execute(&format!("PREPARE hot AS {statement}"))
        .await
        .unwrap_or_else(|e| panic!("prepare {statement}: {e:?}"));
}

/// The plan of `statement` prepared as a generic plan, one line per plan node.
async fn generic_plan(client: &Client, statement: &str, params: &str) -> String {
    prepare_hot(client, "force_generic_plan", statement).await;
    let rows = client
        .query(&format!("EXPLAIN EXECUTE hot{params}"), &[])
        .await
        .unwrap();
    client.batch_execute("DEALLOCATE hot").await.unwrap();
    rows.iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_statements_have_no_sequential_scan_of_a_queue_in_their_generic_plans() {
    let db = TestDb::new().await;
    let mut client = db.database().connect("test").await.unwrap();
    let name = EndpointName::new("planned").unwrap();
    install_endpoint(&mut client, &name).await.unwrap();
    let tables = name.tables();

    fill_realistically(&client, &name).await;

    let statements = sql::QueueStatements::new(&tables, 10);
    let cases = [
        ("receive", statements.receive.sql.clone(), "(0)".to_owned()),
        (
            "send",
            statements.insert.clone(),
            "(ARRAY[gen_random_uuid()], ARRAY['{}'::jsonb], ARRAY['\\x80'::bytea])".to_owned(),
        ),
        (
            "install check",
            sql::INSTALL_CHECK.to_owned(),
            "('planned', 'planned_queue', 'planned_delayed')".to_owned(),
        ),
    ];
    for (what, statement, params) in cases {
        let plan = generic_plan(&client, &statement, &params).await;
        assert!(
            !plan.contains("Seq Scan on planned_queue"),
            "{what} scans the whole queue:\n{plan}"
        );
        if what == "receive" {
            assert!(
                plan.contains("planned_queue_pkey"),
                "receive uses the key:\n{plan}"
            );
        }
    }

    // The check can fail: the IN form that DESIGN.md warns about does scan the queue.
    let naive = "DELETE FROM bus.planned_queue WHERE seq IN (SELECT seq FROM \
                 bus.planned_queue WHERE seq > $1 ORDER BY seq LIMIT $2 FOR UPDATE SKIP LOCKED)";
    let plan = generic_plan(&client, naive, "(0, 10)").await;
    assert!(
        plan.contains("Seq Scan on planned_queue"),
        "expected a seq scan:\n{plan}"
    );
}

/// How many of `runs` executions of `statement` (prepared, with `params`) used the
/// generic plan, as `pg_prepared_statements` counts them, under the default plan cache mode.
async fn generic_runs(client: &Client, statement: &str, params: &str, runs: usize) -> i64 {
    prepare_hot(client, "auto", statement).await;
    // Inside a transaction that rolls back, so the queue keeps its rows for every run.
    client.batch_execute("BEGIN").await.unwrap();
    for _ in 0..runs {
        client
            .batch_execute(&format!("EXECUTE hot{params}"))
            .await
            .unwrap();
    }
    client.batch_execute("ROLLBACK").await.unwrap();
    let row = client
        .query_one(
            "SELECT generic_plans FROM pg_prepared_statements WHERE name = 'hot'",
            &[],
        )
        .await
        .unwrap();
    client.batch_execute("DEALLOCATE hot").await.unwrap();
    row.get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_receive_settles_on_its_generic_plan_instead_of_planning_every_run() {
    let db = TestDb::new().await;
    let mut client = db.database().connect("test").await.unwrap();
    let name = EndpointName::new("settling").unwrap();
    install_endpoint(&mut client, &name).await.unwrap();
    fill_realistically(&client, &name).await;

    // PostgreSQL plans a prepared statement afresh for its first five runs, then keeps
    // the generic plan unless that one looks dearer.
    for batch in [1, 10, 50] {
        let statements = sql::QueueStatements::new(&name.tables(), batch);
        let generic = generic_runs(&client, &statements.receive.sql, "(0)", 10).await;
        assert_eq!(
            generic, 5,
            "batch {batch}: the last five of ten runs are generic"
        );
    }

    // The check can fail: with the limit as a parameter, every run is planned again.
    let with_parameter = sql::QueueStatements::new(&name.tables(), 10)
        .receive
        .sql
        .replace("LIMIT 10", "LIMIT $2");
    let generic = generic_runs(&client, &with_parameter, "(0, 10)", 10).await;
    assert_eq!(
        generic, 0,
        "a parameter limit was expected to plan every run"
    );
}
