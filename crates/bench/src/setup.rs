//! Before the first measurement: one database per kind of measurement, the rings, pgmq,
//! the pgbench scripts; and the facts about the machine and server the report states.

use std::path::{Path, PathBuf};
use std::time::Duration;

use transport_pg::EndpointName;
use transport_pg::sql::QueueStatements;
use transport_pg::tokio_postgres::Client;

use crate::db::Server;
use crate::error::{Error, Result};
use crate::pgbench;
use crate::report::{PgmqSection, RingSize, ServerInfo};
use crate::ring::{self, SampleRow};
use crate::transport::{self, HopRun};
use crate::{Args, pgmq};

/// The databases, one per kind of measurement, so that pg_stat_statements keeps them apart.
pub const DB_CEILING: &str = "bench_ceiling";
/// The transport's hop cells.
pub const DB_TRANSPORT: &str = "bench_transport";
/// The poll-only runs.
pub const DB_POLL: &str = "bench_poll_only";
/// pgmq.
pub const DB_PGMQ: &str = "bench_pgmq";
/// Wake-up latency.
pub const DB_WAKEUPS: &str = "bench_wakeups";
/// The example endpoint's memory.
pub const DB_RSS: &str = "bench_rss";
/// The soak.
pub const DB_SOAK: &str = "bench_soak";
/// The order flow.
pub const DB_FLOW: &str = "bench_flow";

const DATABASES: [&str; 8] = [
    DB_CEILING,
    DB_TRANSPORT,
    DB_POLL,
    DB_PGMQ,
    DB_WAKEUPS,
    DB_RSS,
    DB_SOAK,
    DB_FLOW,
];

/// The ring endpoint's name in every ring database.
pub const RING_ENDPOINT: &str = "hop";

/// How long the transport's ring runs before its newest row is copied to the ceiling's.
const PRIME: Duration = Duration::from_millis(300);

/// What the set-up made.
pub struct Setup {
    /// The ring endpoint's statements (at batch 1), to find the hop's entries in
    /// `pg_stat_statements` by.
    pub statements: QueueStatements,
    /// A message the transport wrote, copied into the ceiling's ring and pgmq's.
    pub sample: SampleRow,
    /// The ceiling script of each batch size.
    pub ceiling_scripts: Vec<(usize, PathBuf)>,
    /// pgmq's section of the report, without figures yet.
    pub pgmq: PgmqSection,
    /// pgmq's pgbench script, when pgmq is installed.
    pub pgmq_script: Option<PathBuf>,
}

impl Setup {
    /// The ceiling script for `batch`.
    pub fn ceiling_script(&self, batch: usize) -> PathBuf {
        self.ceiling_scripts
            .iter()
            .find(|(b, _)| *b == batch)
            .map(|(_, path)| path.clone())
            .expect("a script per batch size")
    }

    /// Every script written, for the report.
    pub fn script_paths(&self) -> Vec<String> {
        self.ceiling_scripts
            .iter()
            .map(|(_, path)| path)
            .chain(&self.pgmq_script)
            .map(|path| path.display().to_string())
            .collect()
    }
}

/// The ring endpoint's validated name.
pub fn ring_endpoint() -> Result<EndpointName> {
    EndpointName::new(RING_ENDPOINT).map_err(Error::transport("endpoint name"))
}

/// Creates the databases, fills the rings, installs pgmq and writes the scripts.
pub async fn prepare(server: &Server, args: &Args) -> Result<Setup> {
    let admin = server.connect("postgres").await?;
    admin
        .batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .await
        .map_err(Error::db("create pg_stat_statements"))?;
    for database in DATABASES {
        server.recreate_database(database).await?;
    }

    let name = ring_endpoint()?;
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

    let mut ceiling_scripts = Vec::new();
    for &batch in &args.batches {
        let path = args.work_dir.join(format!("ceiling-batch-{batch}.sql"));
        let script = pgbench::ceiling_script(&QueueStatements::new(&tables, batch))?;
        std::fs::write(&path, script).map_err(Error::io("write", &path))?;
        ceiling_scripts.push((batch, path));
    }

    let (pgmq, pgmq_script) = prepare_pgmq(server, args, &sample).await?;
    // The statements differ by batch only in the receive's limit, which the extension
    // records as a placeholder; any batch's texts find the entries of all of them.
    let statements = QueueStatements::new(&tables, 1);
    Ok(Setup {
        statements,
        sample,
        ceiling_scripts,
        pgmq,
        pgmq_script,
    })
}

async fn prepare_pgmq(
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

/// Rows in every ring at the end, to show that each kept its size.
pub async fn ring_sizes(server: &Server, args: &Args, setup: &Setup) -> Result<Vec<RingSize>> {
    let queue = ring_endpoint()?.tables().queue;
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

/// The machine's memory, GiB.
pub fn memory_gib() -> f64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    text.lines()
        .find_map(|line| {
            let kb = line.strip_prefix("MemTotal:")?.split_whitespace().next()?;
            kb.parse::<f64>().ok()
        })
        .map(|kb| kb / 1024.0 / 1024.0)
        .unwrap_or(0.0)
}

/// The 1-minute load average.
pub fn load_average() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    text.split_whitespace().next()?.parse().ok()
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

/// The server's version and the settings of [`SERVER_SETTINGS`].
pub async fn server_info(admin: &Client) -> Result<ServerInfo> {
    let row = admin
        .query_one(
            "SELECT version(), current_setting('server_version_num')::integer",
            &[],
        )
        .await
        .map_err(Error::db("read the version"))?;
    let names: Vec<&str> = SERVER_SETTINGS.to_vec();
    let rows = admin
        .query(
            "SELECT name, current_setting(name) FROM pg_settings \
             WHERE name = ANY($1) ORDER BY array_position($1, name)",
            &[&names],
        )
        .await
        .map_err(Error::db("read the settings"))?;
    Ok(ServerInfo {
        version: row.get(0),
        version_num: row.get(1),
        settings: rows.iter().map(|r| (r.get(0), r.get(1))).collect(),
    })
}

/// Writes the report's JSON to `path`.
pub fn write_json(path: &Path, report: &crate::report::Report) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(Error::io("create", parent))?;
    }
    let text = serde_json::to_string_pretty(report)
        .map_err(|e| Error::Config(format!("cannot serialize the report: {e}")))?;
    std::fs::write(path, text + "\n").map_err(Error::io("write", path))
}
