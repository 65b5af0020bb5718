//! The run: set up the databases and rings, run every cell's repetitions interleaved with
//! their baselines, then the one-off measurements, and write the report.
//!
//! Each repetition runs every cell once, ceiling and transport back to back (their order
//! alternating between repetitions), then pgmq at each client count, so that a slow
//! minute of the shared machine lands on a cell and its baseline alike.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use transport_pg::EndpointName;
use transport_pg::sql::QueueStatements;
use transport_pg::tokio_postgres::Client;

use crate::db::{self, Server};
use crate::error::{Error, Result};
use crate::flow::{self, FlowSection};
use crate::pgbench::{self, HOPS_PER_SCRIPT, PgbenchRun};
use crate::report::{
    BestVsPgmq, DatabaseStatements, HopCell, PgmqCell, PgmqSection, Report, RingSize, ServerInfo,
    Settings, Wakeups, clients, thousands,
};
use crate::ring::{self, SampleRow};
use crate::stats::{Spread, paired_ratios};
use crate::transport::{self, HopRun};
use crate::{Args, memory, pgmq, soak, statements, targets, wakeups};

/// The databases, one per kind of measurement, so that pg_stat_statements keeps them apart.
const DB_CEILING: &str = "bench_ceiling";
const DB_TRANSPORT: &str = "bench_transport";
const DB_POLL: &str = "bench_poll_only";
const DB_PGMQ: &str = "bench_pgmq";
const DB_WAKEUPS: &str = "bench_wakeups";
const DB_RSS: &str = "bench_rss";
const DB_SOAK: &str = "bench_soak";
const DB_FLOW: &str = "bench_flow";

/// How long the transport's ring runs before its newest row is copied to the ceiling's.
const PRIME: Duration = Duration::from_millis(300);

/// The ring endpoint's name in every ring database.
const RING_ENDPOINT: &str = "hop";

/// Prints one progress line per step, numbered, and samples the machine's load average
/// at each, since other work on a shared machine is what makes the figures noisy.
struct Progress {
    done: usize,
    total: usize,
    started: Instant,
    loads: Vec<f64>,
}

/// The 1-minute load average.
fn load_average() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

impl Progress {
    fn step(&mut self, what: &str) {
        self.done += 1;
        self.loads.extend(load_average());
        eprintln!(
            "bench: [{:>3}/{}] {:>5.0}s  {what}",
            self.done,
            self.total,
            self.started.elapsed().as_secs_f64()
        );
    }

    fn note(&self, what: &str) {
        eprintln!(
            "bench:           {:>5.0}s  {what}",
            self.started.elapsed().as_secs_f64()
        );
    }
}

/// The knobs resolved from the flags.
struct Knobs {
    seconds: u64,
    warmup: Duration,
    latency_sends: usize,
    rss_messages: usize,
    flow_orders: usize,
    flow_latency_seconds: u64,
}

impl Knobs {
    fn from(args: &Args) -> Knobs {
        Knobs {
            seconds: args.seconds.unwrap_or(if args.quick { 1 } else { 5 }),
            warmup: Duration::from_millis(if args.quick { 300 } else { 500 }),
            latency_sends: args
                .latency_sends
                .unwrap_or(if args.quick { 300 } else { 1000 }),
            rss_messages: args
                .rss_messages
                .unwrap_or(if args.quick { 5000 } else { 20_000 }),
            flow_orders: args
                .flow_orders
                .unwrap_or(if args.quick { 400 } else { 2000 }),
            flow_latency_seconds: if args.quick { 4 } else { 10 },
        }
    }
}

/// One cell's samples as they come in.
struct CellSamples {
    batch: usize,
    clients: usize,
    ceiling: Vec<f64>,
    transport: Vec<f64>,
}

fn check(args: &Args) -> Result<()> {
    if args.reps == 0 {
        return Err(Error::Config("--reps must be at least 1".into()));
    }
    if args.clients.is_empty() || args.clients.contains(&0) {
        return Err(Error::Config("--clients needs counts of at least 1".into()));
    }
    if args.batches.is_empty() || args.batches.iter().any(|b| !(1..=50).contains(b)) {
        return Err(Error::Config("--batches must be between 1 and 50".into()));
    }
    let in_flight =
        args.clients.iter().max().unwrap_or(&1) * args.batches.iter().max().unwrap_or(&1);
    if args.ring < 4 * in_flight {
        return Err(Error::Config(format!(
            "--ring {} is too small: keep it at least four times the {in_flight} messages \
             in flight",
            args.ring
        )));
    }
    if !args.pgbench.is_file() {
        return Err(Error::Config(format!(
            "pgbench not found at {}",
            args.pgbench.display()
        )));
    }
    Ok(())
}

/// Runs everything the flags ask for and writes the report.
pub async fn run(args: Args) -> Result<()> {
    check(&args)?;
    let server = Server::new(&args.host, args.port, &args.user)?;
    let knobs = Knobs::from(&args);
    let started_at = transport_pg::format_rfc3339(SystemTime::now());
    std::fs::create_dir_all(&args.work_dir).map_err(Error::io("create", &args.work_dir))?;

    let mut cells: Vec<CellSamples> = Vec::new();
    for &batch in &args.batches {
        for &clients in &args.clients {
            cells.push(CellSamples {
                batch,
                clients,
                ceiling: Vec::new(),
                transport: Vec::new(),
            });
        }
    }
    let max_clients = *args.clients.iter().max().expect("checked non-empty");
    let wake_batch = if args.batches.contains(&1) {
        1
    } else {
        args.batches[0]
    };
    let wake_cell = (wake_batch, max_clients);
    let pgmq_runs = if args.pgmq_sql.is_some() {
        args.clients.len()
    } else {
        0
    };
    let mut progress = Progress {
        done: 0,
        total: 1 + args.reps * (cells.len() * 2 + pgmq_runs) + 5 + usize::from(args.soak),
        started: Instant::now(),
        loads: Vec::new(),
    };

    // Set-up: databases, rings, pgmq, scripts.
    let setup = setup(&server, &args).await?;
    progress.step(&format!(
        "set up: rings of {} messages in {DB_CEILING}, {DB_TRANSPORT}, {DB_POLL}{}",
        args.ring,
        if setup.pgmq.skipped.is_none() {
            ", pgmq"
        } else {
            ""
        }
    ));

    let admin = server.connect("postgres").await?;
    admin
        .batch_execute("SELECT pg_stat_statements_reset()")
        .await
        .map_err(Error::db("reset pg_stat_statements"))?;

    let mut poll_only = Vec::new();
    let mut pgmq_cells: Vec<PgmqCell> = args
        .clients
        .iter()
        .map(|&clients| PgmqCell {
            clients,
            samples: Vec::new(),
            rate: None,
        })
        .collect();
    for rep in 0..args.reps {
        for cell in cells.iter_mut() {
            let is_wake_cell = (cell.batch, cell.clients) == wake_cell;
            let ceiling_first = rep % 2 == 0;
            if ceiling_first {
                run_ceiling(&server, &setup, &knobs, cell, rep, &mut progress, &args).await?;
            }
            run_transport(&server, &knobs, cell, rep, &mut progress, &args).await?;
            if is_wake_cell {
                let rate = run_poll_only(&server, &knobs, cell.batch, cell.clients).await?;
                poll_only.push(rate);
                progress.note(&format!(
                    "rep {}/{}: batch {}, {}, poll-only: {} msg/s",
                    rep + 1,
                    args.reps,
                    cell.batch,
                    clients(cell.clients),
                    thousands(rate)
                ));
            }
            if !ceiling_first {
                run_ceiling(&server, &setup, &knobs, cell, rep, &mut progress, &args).await?;
            }
        }
        if setup.pgmq.skipped.is_none() {
            for pgmq_cell in pgmq_cells.iter_mut() {
                let rate = run_pgmq(&server, &setup, &knobs, pgmq_cell.clients, &args).await?;
                pgmq_cell.samples.push(rate);
                progress.step(&format!(
                    "rep {}/{}: pgmq pop + send, {}: {} msg/s",
                    rep + 1,
                    args.reps,
                    clients(pgmq_cell.clients),
                    thousands(rate)
                ));
            }
        }
    }

    let info = server_info(&admin).await?;
    let statement_pairs = statements::side_by_side(
        &admin,
        &setup.statements,
        DB_CEILING,
        DB_TRANSPORT,
        info.version_num,
    )
    .await?;
    let mut busiest = Vec::new();
    for database in [DB_CEILING, DB_TRANSPORT, DB_PGMQ] {
        busiest.push(DatabaseStatements {
            database: database.to_owned(),
            entries: statements::busiest(&admin, database, 100).await?,
        });
    }
    progress.step("pg_stat_statements: the hop's statements, ceiling and transport");

    let latency = wakeups::measure(
        &server.database(DB_WAKEUPS)?,
        "wake",
        knobs.latency_sends,
        Duration::from_millis(args.latency_pause_ms),
    )
    .await?;
    progress.step(&format!(
        "wake-ups: idle latency p50 {:.2} ms, p99 {:.2} ms over {} sends",
        latency.p50_ms, latency.p99_ms, latency.sends
    ));

    let order_flow = match flow::skip_reason(&args.bin_dir) {
        Some(reason) => FlowSection::Skipped { reason },
        None => {
            let ceiling = cells
                .iter()
                .find(|c| (c.batch, c.clients) == (1, 16))
                .and_then(|c| Spread::of(&c.ceiling))
                .map(|s| s.median);
            let plan = flow::FlowPlan {
                orders: knobs.flow_orders,
                latency_seconds: knobs.flow_latency_seconds,
            };
            let ran = flow::run(
                &server,
                DB_FLOW,
                &args.bin_dir,
                &args.work_dir,
                plan,
                ceiling,
            )
            .await?;
            FlowSection::Ran(ran)
        }
    };
    progress.step(&match &order_flow {
        FlowSection::Skipped { reason } => format!("order flow: skipped ({reason})"),
        FlowSection::Ran(f) => format!(
            "order flow: {:.0} orders/s, {:.0} hops/s; order to shipped p50 {:.0} ms",
            f.orders_per_s, f.hops_per_s, f.p50_ms
        ),
    });

    let memory = memory::measure(
        &server,
        DB_RSS,
        &args.bin_dir.join("example-endpoint"),
        &args.work_dir.join("rss-example-endpoint.log"),
        knobs.rss_messages,
    )
    .await?;
    progress.step(&format!(
        "memory: example endpoint peak RSS {:.1} MB over {} messages",
        memory.peak_rss_mb, memory.messages
    ));

    let soak = if args.soak {
        let result = run_soak(&server, &args, &progress).await?;
        progress.step(&format!(
            "soak: {} messages, last window / first {:.2}",
            thousands(result.messages as f64),
            result.ratio
        ));
        Some(result)
    } else {
        None
    };

    let rings_at_end = ring_sizes(&server, &args, &setup).await?;
    progress.step("rings checked");

    let hops: Vec<HopCell> = cells
        .iter()
        .map(|c| HopCell {
            batch: c.batch,
            clients: c.clients,
            ceiling: Spread::of(&c.ceiling),
            transport: Spread::of(&c.transport),
            ratio: Spread::of(&paired_ratios(&c.transport, &c.ceiling)),
            ceiling_samples: c.ceiling.clone(),
            transport_samples: c.transport.clone(),
            round_trips: (pgbench::ceiling_round_trips(), 1.0 + c.batch as f64),
        })
        .collect();
    for cell in pgmq_cells.iter_mut() {
        cell.rate = Spread::of(&cell.samples);
    }
    let mut pgmq_section = setup.pgmq.clone();
    pgmq_section.cells = pgmq_cells;
    let best_vs_pgmq = best_against_pgmq(&hops, &pgmq_section);

    let wake_samples = cells
        .iter()
        .find(|c| (c.batch, c.clients) == wake_cell)
        .map(|c| c.transport.clone())
        .unwrap_or_default();
    let wakeups = Wakeups {
        latency: Some(latency),
        cell: wake_cell,
        with_wakeups: Spread::of(&wake_samples),
        poll_only: Spread::of(&poll_only),
        ratio: Spread::of(&paired_ratios(&wake_samples, &poll_only)),
        poll_only_samples: poll_only,
    };

    let mut report = Report {
        started_at,
        elapsed_s: progress.started.elapsed().as_secs_f64(),
        settings: settings(&args, &knobs, &progress.loads),
        server: info,
        hops,
        pgmq: pgmq_section,
        best_vs_pgmq,
        statements: statement_pairs,
        busiest_statements: busiest,
        wakeups,
        order_flow,
        memory: Some(memory),
        soak,
        targets: Vec::new(),
        rings_at_end,
        scripts: setup
            .ceiling_scripts
            .iter()
            .map(|(_, path)| path)
            .chain(&setup.pgmq_script)
            .map(|path| path.display().to_string())
            .collect(),
    };
    report.targets = targets::evaluate(&report);

    println!("{}", report.table());
    write_json(&args.json, &report)?;
    eprintln!("bench: report written to {}", args.json.display());
    Ok(())
}

/// What the set-up made.
struct Setup {
    statements: QueueStatements,
    sample: SampleRow,
    ceiling_scripts: Vec<(usize, PathBuf)>,
    pgmq: PgmqSection,
    pgmq_script: Option<PathBuf>,
}

async fn setup(server: &Server, args: &Args) -> Result<Setup> {
    let admin = server.connect("postgres").await?;
    admin
        .batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .await
        .map_err(Error::db("create pg_stat_statements"))?;
    for database in [
        DB_CEILING,
        DB_TRANSPORT,
        DB_POLL,
        DB_PGMQ,
        DB_WAKEUPS,
        DB_RSS,
        DB_SOAK,
        DB_FLOW,
    ] {
        server.recreate_database(database).await?;
    }

    let name = EndpointName::new(RING_ENDPOINT).map_err(Error::transport("endpoint name"))?;
    let tables = name.tables();
    for database in [DB_TRANSPORT, DB_POLL] {
        ring::fill_transport(&server.database(database)?, &name, args.ring).await?;
    }
    // A moment of the endpoint, so that the sample is a message it sent itself: its
    // headers (reply_to, related_to) are what every hop writes, larger than the fill's.
    let primer = HopRun {
        batch: 1,
        workers: 1,
        wakeups: false,
    };
    let transport_db = server.database(DB_TRANSPORT)?;
    transport::measure(&transport_db, RING_ENDPOINT, primer, Duration::ZERO, PRIME).await?;
    let sample = ring::sample_newest(&server.connect(DB_TRANSPORT).await?, &tables.queue).await?;
    ring::fill_ceiling(&server.database(DB_CEILING)?, &name, &sample, args.ring).await?;

    let statements = QueueStatements::new(&tables);
    let mut ceiling_scripts = Vec::new();
    for &batch in &args.batches {
        let path = args.work_dir.join(format!("ceiling-batch-{batch}.sql"));
        let script = pgbench::ceiling_script(&statements, batch)?;
        std::fs::write(&path, script).map_err(Error::io("write", &path))?;
        ceiling_scripts.push((batch, path));
    }

    let (pgmq, pgmq_script) = setup_pgmq(server, args, &sample).await?;
    Ok(Setup {
        statements,
        sample,
        ceiling_scripts,
        pgmq,
        pgmq_script,
    })
}

async fn setup_pgmq(
    server: &Server,
    args: &Args,
    sample: &SampleRow,
) -> Result<(PgmqSection, Option<PathBuf>)> {
    let Some(sql) = &args.pgmq_sql else {
        let reason = args
            .pgmq_skip_reason
            .clone()
            .unwrap_or_else(|| "no install script given (--pgmq-sql)".into());
        let section = PgmqSection {
            skipped: Some(reason),
            version: None,
            installed_from: None,
            cells: Vec::new(),
        };
        return Ok((section, None));
    };
    let client = server.connect(DB_PGMQ).await?;
    let installed = pgmq::install(&client, sql, &sample.headers, args.ring).await?;
    let path = args.work_dir.join("pgmq-hop.sql");
    std::fs::write(&path, pgbench::PGMQ_SCRIPT).map_err(Error::io("write", &path))?;
    let section = PgmqSection {
        skipped: None,
        version: installed.version,
        installed_from: Some(
            args.pgmq_source
                .clone()
                .unwrap_or_else(|| sql.display().to_string()),
        ),
        cells: Vec::new(),
    };
    Ok((section, Some(path)))
}

async fn vacuum_ring(server: &Server, database: &str) -> Result<Client> {
    let client = server.connect(database).await?;
    let name = EndpointName::new(RING_ENDPOINT).map_err(Error::transport("endpoint name"))?;
    db::vacuum(&client, &name.tables().queue).await?;
    Ok(client)
}

async fn run_ceiling(
    server: &Server,
    setup: &Setup,
    knobs: &Knobs,
    cell: &mut CellSamples,
    rep: usize,
    progress: &mut Progress,
    args: &Args,
) -> Result<()> {
    vacuum_ring(server, DB_CEILING).await?;
    let script = setup
        .ceiling_scripts
        .iter()
        .find(|(b, _)| *b == cell.batch)
        .map(|(_, p)| p.clone())
        .expect("a script per batch size");
    let result = pgbench::run(
        server,
        &PgbenchRun {
            pgbench: &args.pgbench,
            script,
            database: DB_CEILING,
            clients: cell.clients,
            seconds: knobs.seconds,
            variables: pgbench::ceiling_variables(&setup.sample, cell.batch),
        },
    )
    .await?;
    if result.failed > 0 {
        return Err(Error::Process {
            program: "pgbench".into(),
            reason: format!("{} ceiling transactions failed", result.failed),
        });
    }
    let rate = result.tps * (HOPS_PER_SCRIPT * cell.batch) as f64;
    cell.ceiling.push(rate);
    progress.step(&format!(
        "rep {}/{}: batch {}, {}, ceiling: {} msg/s",
        rep + 1,
        args.reps,
        cell.batch,
        clients(cell.clients),
        thousands(rate)
    ));
    Ok(())
}

async fn run_transport(
    server: &Server,
    knobs: &Knobs,
    cell: &mut CellSamples,
    rep: usize,
    progress: &mut Progress,
    args: &Args,
) -> Result<()> {
    vacuum_ring(server, DB_TRANSPORT).await?;
    let rate = transport::measure(
        &server.database(DB_TRANSPORT)?,
        RING_ENDPOINT,
        HopRun {
            batch: cell.batch,
            workers: cell.clients,
            wakeups: true,
        },
        knobs.warmup,
        Duration::from_secs(knobs.seconds),
    )
    .await?;
    cell.transport.push(rate);
    progress.step(&format!(
        "rep {}/{}: batch {}, {}, transport: {} msg/s",
        rep + 1,
        args.reps,
        cell.batch,
        clients(cell.clients),
        thousands(rate)
    ));
    Ok(())
}

async fn run_poll_only(
    server: &Server,
    knobs: &Knobs,
    batch: usize,
    clients: usize,
) -> Result<f64> {
    vacuum_ring(server, DB_POLL).await?;
    transport::measure(
        &server.database(DB_POLL)?,
        RING_ENDPOINT,
        HopRun {
            batch,
            workers: clients,
            wakeups: false,
        },
        knobs.warmup,
        Duration::from_secs(knobs.seconds),
    )
    .await
}

async fn run_pgmq(
    server: &Server,
    setup: &Setup,
    knobs: &Knobs,
    clients: usize,
    args: &Args,
) -> Result<f64> {
    let client = server.connect(DB_PGMQ).await?;
    db::vacuum(&client, pgmq::QUEUE_TABLE).await?;
    let script = setup.pgmq_script.clone().expect("pgmq set up");
    let result = pgbench::run(
        server,
        &PgbenchRun {
            pgbench: &args.pgbench,
            script,
            database: DB_PGMQ,
            clients,
            seconds: knobs.seconds,
            variables: vec![
                ("queue".into(), pgmq::QUEUE.into()),
                ("msg".into(), setup.sample.headers.to_string()),
            ],
        },
    )
    .await?;
    if result.failed > 0 {
        return Err(Error::Process {
            program: "pgbench".into(),
            reason: format!("{} pgmq transactions failed", result.failed),
        });
    }
    Ok(result.tps)
}

async fn run_soak(server: &Server, args: &Args, progress: &Progress) -> Result<soak::Soak> {
    let database = server.database(DB_SOAK)?;
    let name = EndpointName::new(RING_ENDPOINT).map_err(Error::transport("endpoint name"))?;
    ring::fill_transport(&database, &name, args.ring).await?;
    progress.note(&format!(
        "soak: {} messages, batch {}, {} workers",
        thousands(args.soak_messages as f64),
        args.soak_batch,
        args.soak_workers
    ));
    soak::run(
        &database,
        RING_ENDPOINT,
        args.soak_batch,
        args.soak_workers,
        args.soak_messages,
        |count, at| {
            if (at as u64) % 60 < 10 {
                progress.note(&format!(
                    "soak: {} messages so far",
                    thousands(count as f64)
                ));
            }
        },
    )
    .await
}

fn best_against_pgmq(hops: &[HopCell], pgmq: &PgmqSection) -> Option<BestVsPgmq> {
    let best = hops
        .iter()
        .filter(|c| c.transport.is_some())
        .max_by(|a, b| {
            let (a, b) = (a.transport.unwrap().median, b.transport.unwrap().median);
            a.total_cmp(&b)
        })?;
    let peer = pgmq
        .cells
        .iter()
        .filter(|c| c.rate.is_some())
        .max_by(|a, b| a.rate.unwrap().median.total_cmp(&b.rate.unwrap().median))?;
    Some(BestVsPgmq {
        batch: best.batch,
        clients: best.clients,
        transport: best.transport?.median,
        pgmq_clients: peer.clients,
        pgmq: peer.rate?.median,
        ratio: Spread::of(&paired_ratios(&best.transport_samples, &peer.samples)),
    })
}

async fn ring_sizes(server: &Server, args: &Args, setup: &Setup) -> Result<Vec<RingSize>> {
    let name = EndpointName::new(RING_ENDPOINT).map_err(Error::transport("endpoint name"))?;
    let queue = name.tables().queue;
    let mut sizes = Vec::new();
    let mut databases = vec![DB_CEILING, DB_TRANSPORT, DB_POLL];
    if args.soak {
        databases.push(DB_SOAK);
    }
    for database in databases {
        let client = server.connect(database).await?;
        sizes.push(RingSize {
            ring: database.to_owned(),
            filled: args.ring,
            rows: ring::count_rows(&client, &queue).await?,
        });
    }
    if setup.pgmq.skipped.is_none() {
        let client = server.connect(DB_PGMQ).await?;
        sizes.push(RingSize {
            ring: DB_PGMQ.to_owned(),
            filled: args.ring,
            rows: ring::count_rows(&client, pgmq::QUEUE_TABLE).await?,
        });
    }
    Ok(sizes)
}

fn settings(args: &Args, knobs: &Knobs, loads: &[f64]) -> Settings {
    let mode = match (args.quick, args.soak) {
        (true, false) => "quick",
        (true, true) => "quick+soak",
        (false, false) => "default",
        (false, true) => "default+soak",
    };
    Settings {
        mode: mode.to_owned(),
        reps: args.reps,
        seconds: knobs.seconds,
        warmup_ms: knobs.warmup.as_millis() as u64,
        ring: args.ring,
        clients: args.clients.clone(),
        batches: args.batches.clone(),
        ceiling_hops_per_script: HOPS_PER_SCRIPT,
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        memory_gib: memory_gib(),
        load_1min: Spread::of(loads),
    }
}

fn memory_gib() -> f64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    text.lines()
        .find_map(|line| {
            let kb = line.strip_prefix("MemTotal:")?.split_whitespace().next()?;
            kb.parse::<f64>().ok()
        })
        .map(|kb| kb / 1024.0 / 1024.0)
        .unwrap_or(0.0)
}

/// The settings that bound the figures.
const SERVER_SETTINGS: [&str; 13] = [
    "fsync",
    "synchronous_commit",
    "full_page_writes",
    "wal_sync_method",
    "shared_buffers",
    "max_connections",
    "max_wal_size",
    "checkpoint_timeout",
    "autovacuum",
    "autovacuum_naptime",
    "shared_preload_libraries",
    "pg_stat_statements.track",
    "pg_stat_statements.track_utility",
];

async fn server_info(admin: &Client) -> Result<ServerInfo> {
    let version: String = admin
        .query_one("SELECT version()", &[])
        .await
        .map_err(Error::db("read the version"))?
        .get(0);
    let names: Vec<&str> = SERVER_SETTINGS.to_vec();
    let rows = admin
        .query(
            "SELECT name, current_setting(name) FROM pg_settings \
             WHERE name = ANY($1) ORDER BY array_position($1, name)",
            &[&names],
        )
        .await
        .map_err(Error::db("read the settings"))?;
    let version_num: i32 = admin
        .query_one("SELECT current_setting('server_version_num')::integer", &[])
        .await
        .map_err(Error::db("read the version number"))?
        .get(0);
    Ok(ServerInfo {
        version,
        version_num,
        settings: rows.iter().map(|r| (r.get(0), r.get(1))).collect(),
    })
}

fn write_json(path: &Path, report: &Report) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(Error::io("create", parent))?;
    }
    let text = serde_json::to_string_pretty(report)
        .map_err(|e| Error::Config(format!("cannot serialize the report: {e}")))?;
    std::fs::write(path, text + "\n").map_err(Error::io("write", path))
}
