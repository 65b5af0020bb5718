//! The run's results: one serializable report, written as JSON, and the table printed
//! from it, so the screen and the file always say the same.

use std::fmt::Write as _;

use serde::Serialize;

use crate::flow::FlowSection;
use crate::memory::Memory;
use crate::soak::Soak;
use crate::statements::Pair;
use crate::stats::Spread;
use crate::wakeups::Latency;

/// Everything one run measured, with the settings it ran under.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// When the run started (UTC, RFC 3339).
    pub started_at: String,
    /// Wall-clock seconds of the measuring binary.
    pub elapsed_s: f64,
    /// How it was run.
    pub settings: Settings,
    /// The server and its settings.
    pub server: ServerInfo,
    /// The hop cells.
    pub hops: Vec<HopCell>,
    /// pgmq's hop, or why it was not run.
    pub pgmq: PgmqSection,
    /// Our best hop against pgmq's best.
    pub best_vs_pgmq: Option<BestVsPgmq>,
    /// The hop's statements, ceiling and transport, from pg_stat_statements.
    pub statements: Vec<Pair>,
    /// The busiest statements of each database, for a closer look.
    pub busiest_statements: Vec<DatabaseStatements>,
    /// Wake-up latency and cost.
    pub wakeups: Wakeups,
    /// The retail order flow.
    pub order_flow: FlowSection,
    /// Peak memory of an endpoint process.
    pub memory: Option<Memory>,
    /// The soak, when asked for.
    pub soak: Option<Soak>,
    /// Issue 11's targets against the figures above.
    pub targets: Vec<Target>,
    /// Queue sizes at the end, to show every ring kept its size.
    pub rings_at_end: Vec<RingSize>,
    /// The pgbench scripts this run wrote (ceilings by batch size, then pgmq's).
    pub scripts: Vec<String>,
}

/// How the run was configured.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// `quick`, `default`, or `default+soak`.
    pub mode: String,
    /// Repetitions of each cell, interleaved with its ceiling.
    pub reps: usize,
    /// Measuring seconds per run.
    pub seconds: u64,
    /// Warm-up of each transport run after its careful mode, milliseconds.
    pub warmup_ms: u64,
    /// Messages in each ring.
    pub ring: usize,
    /// Client counts.
    pub clients: Vec<usize>,
    /// Batch sizes.
    pub batches: Vec<usize>,
    /// Hops per run of the ceiling script.
    pub ceiling_hops_per_script: usize,
    /// Logical cores of the machine.
    pub cores: usize,
    /// Memory of the machine, GiB.
    pub memory_gib: f64,
    /// The 1-minute load average, sampled at every step.
    pub load_1min: Option<Spread>,
}

/// The server's version and the settings that bound the figures.
#[derive(Debug, Clone, Serialize)]
pub struct ServerInfo {
    /// `SELECT version()`.
    pub version: String,
    /// `server_version_num`.
    pub version_num: i32,
    /// Name and value of each setting that matters here.
    pub settings: Vec<(String, String)>,
}

/// One cell: a batch size and a client count.
#[derive(Debug, Clone, Serialize)]
pub struct HopCell {
    /// Messages per transaction.
    pub batch: usize,
    /// pgbench clients and transport workers.
    pub clients: usize,
    /// The ceiling's messages per second, one per repetition.
    pub ceiling_samples: Vec<f64>,
    /// The transport's messages per second, one per repetition.
    pub transport_samples: Vec<f64>,
    /// The ceiling's median and range.
    pub ceiling: Option<Spread>,
    /// The transport's median and range.
    pub transport: Option<Spread>,
    /// Transport over ceiling, paired by repetition.
    pub ratio: Option<Spread>,
    /// Round trips per hop of the ceiling script (the pump's depend on its pipelining;
    /// see the transport's receive module).
    pub ceiling_round_trips: f64,
    /// CPU per message of each side.
    pub cpu: CpuCell,
}

/// CPU microseconds per message, medians and ranges over the repetitions. The client is
/// pgbench for the ceiling and the bench process (the endpoint) for the transport; the
/// server is the postmaster with its reaped backends (see the bench's cpu module).
#[derive(Debug, Clone, Serialize)]
pub struct CpuCell {
    /// pgbench.
    pub ceiling_client_us: Option<Spread>,
    /// The server under the ceiling.
    pub ceiling_server_us: Option<Spread>,
    /// The endpoint.
    pub transport_client_us: Option<Spread>,
    /// The server under the transport.
    pub transport_server_us: Option<Spread>,
}

impl CpuCell {
    /// The spreads of `(client, server)` samples of the ceiling and the transport.
    pub fn of(ceiling: &[(f64, f64)], transport: &[(f64, f64)]) -> CpuCell {
        let side = |samples: &[(f64, f64)], server: bool| {
            let values: Vec<f64> = samples
                .iter()
                .map(|&(c, s)| if server { s } else { c })
                .filter(|v| *v > 0.0)
                .collect();
            Spread::of(&values)
        };
        CpuCell {
            ceiling_client_us: side(ceiling, false),
            ceiling_server_us: side(ceiling, true),
            transport_client_us: side(transport, false),
            transport_server_us: side(transport, true),
        }
    }
}

/// pgmq's figures, or why there are none.
#[derive(Debug, Clone, Serialize)]
pub struct PgmqSection {
    /// Why pgmq was not measured, if it was not.
    pub skipped: Option<String>,
    /// The pgmq version installed.
    pub version: Option<String>,
    /// How it was installed.
    pub installed_from: Option<String>,
    /// One entry per client count.
    pub cells: Vec<PgmqCell>,
}

/// pgmq's hop at one client count.
#[derive(Debug, Clone, Serialize)]
pub struct PgmqCell {
    /// pgbench clients.
    pub clients: usize,
    /// Messages per second, one per repetition.
    pub samples: Vec<f64>,
    /// Median and range.
    pub rate: Option<Spread>,
}

/// The best of ours against the best of pgmq's.
#[derive(Debug, Clone, Serialize)]
pub struct BestVsPgmq {
    /// Our best cell's batch size.
    pub batch: usize,
    /// Our best cell's clients.
    pub clients: usize,
    /// Its median.
    pub transport: f64,
    /// pgmq's best client count.
    pub pgmq_clients: usize,
    /// Its median.
    pub pgmq: f64,
    /// Ours over pgmq's, paired by repetition.
    pub ratio: Option<Spread>,
}

/// A database's busiest statements.
#[derive(Debug, Clone, Serialize)]
pub struct DatabaseStatements {
    /// The database.
    pub database: String,
    /// Its entries.
    pub entries: Vec<crate::statements::Entry>,
}

/// Wake-up figures.
#[derive(Debug, Clone, Serialize)]
pub struct Wakeups {
    /// Idle commit-to-handler latency.
    pub latency: Option<Latency>,
    /// The cell whose load the comparison uses: batch, clients.
    pub cell: (usize, usize),
    /// Poll-only messages per second, one per repetition.
    pub poll_only_samples: Vec<f64>,
    /// With wake-ups (the transport cell itself), median and range.
    pub with_wakeups: Option<Spread>,
    /// Poll-only, median and range.
    pub poll_only: Option<Spread>,
    /// With over without, paired by repetition.
    pub ratio: Option<Spread>,
}

/// One of issue 11's targets.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// What is compared.
    pub what: String,
    /// The measured value, as shown.
    pub measured: String,
    /// The target, as shown.
    pub target: String,
    /// Met, missed, or not measured.
    pub verdict: String,
}

/// A ring's queue size at the end of the run.
#[derive(Debug, Clone, Serialize)]
pub struct RingSize {
    /// Which ring.
    pub ring: String,
    /// Rows it was filled with.
    pub filled: usize,
    /// Rows at the end.
    pub rows: i64,
}

/// `n` with thousands separators, no decimals.
pub fn thousands(n: f64) -> String {
    let digits = format!("{:.0}", n.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn rate(spread: &Option<Spread>) -> String {
    match spread {
        Some(s) => format!(
            "{} ({}–{})",
            thousands(s.median),
            thousands(s.min),
            thousands(s.max)
        ),
        None => "-".into(),
    }
}

fn ratio(spread: &Option<Spread>) -> String {
    match spread {
        Some(s) => format!("{:.2} ({:.2}–{:.2})", s.median, s.min, s.max),
        None => "-".into(),
    }
}

/// `1 client`, `4 clients`.
pub fn clients(n: usize) -> String {
    if n == 1 {
        "1 client".into()
    } else {
        format!("{n} clients")
    }
}

/// Width of the label column.
const LABEL: usize = 30;

/// Width of each value column.
const COLUMN: usize = 23;

/// One row of a label and up to three columns, inside 100 columns; a value too wide for
/// its column pushes the rest right rather than touching it.
pub fn row(out: &mut String, label: &str, columns: &[&str]) {
    let mut line = String::from(label);
    pad(&mut line, label, LABEL);
    for column in columns {
        line.push_str(column);
        pad(&mut line, column, COLUMN);
    }
    out.push_str(line.trim_end());
    out.push('\n');
}

fn pad(line: &mut String, text: &str, width: usize) {
    let len = text.chars().count();
    let spaces = if len < width { width - len } else { 1 };
    line.extend(std::iter::repeat_n(' ', spaces));
}

impl Report {
    /// The table shown on screen.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let s = &self.settings;
        let _ = writeln!(
            out,
            "pgbus bench, {} run of {}\n\
             {} runs per cell, {} s each, interleaved with their baselines; medians (min–max)",
            s.mode, self.started_at, s.reps, s.seconds
        );
        let load = match &s.load_1min {
            Some(l) => format!(
                ", 1-minute load average {:.1} to {:.1} during the run",
                l.min, l.max
            ),
            None => String::new(),
        };
        let _ = writeln!(
            out,
            "machine: {} cores, {:.0} GiB{load}",
            s.cores, s.memory_gib
        );
        let _ = writeln!(out, "server: {}", self.server_line());
        out.push('\n');

        row(
            &mut out,
            "hop: receive n, send n, commit",
            &[
                "ceiling msg/s (pgbench)",
                "transport msg/s",
                "transport / ceiling",
            ],
        );
        for cell in &self.hops {
            let label = format!("  batch {:>2}, {}", cell.batch, clients(cell.clients));
            row(
                &mut out,
                &label,
                &[
                    &rate(&cell.ceiling),
                    &rate(&cell.transport),
                    &ratio(&cell.ratio),
                ],
            );
        }
        out.push('\n');
        self.cpu_rows(&mut out);
        out.push('\n');
        self.pgmq_rows(&mut out);
        out.push('\n');
        self.wakeup_rows(&mut out);
        out.push('\n');
        self.other_rows(&mut out);
        out.push('\n');
        self.statement_rows(&mut out);
        out.push('\n');
        row(
            &mut out,
            "targets (issue 11)",
            &["measured", "target", "verdict"],
        );
        for target in &self.targets {
            row(
                &mut out,
                &format!("  {}", target.what),
                &[&target.measured, &target.target, &target.verdict],
            );
        }
        out
    }

    fn server_line(&self) -> String {
        let get = |name: &str| {
            self.server
                .settings
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
                .unwrap_or("?")
        };
        let version = self
            .server
            .version
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        format!(
            "{version}, fsync {}, synchronous_commit {}, full_page_writes {}, shared_buffers {}",
            get("fsync"),
            get("synchronous_commit"),
            get("full_page_writes"),
            get("shared_buffers")
        )
    }

    fn cpu_rows(&self, out: &mut String) {
        row(
            out,
            "CPU µs per message (median)",
            &["ceiling: pgbench, server", "transport: client, server"],
        );
        let us = |s: &Option<Spread>| match s {
            Some(s) => format!("{:.0}", s.median),
            None => "-".into(),
        };
        for cell in &self.hops {
            let c = &cell.cpu;
            row(
                out,
                &format!("  batch {:>2}, {}", cell.batch, clients(cell.clients)),
                &[
                    &format!(
                        "{} / {}",
                        us(&c.ceiling_client_us),
                        us(&c.ceiling_server_us)
                    ),
                    &format!(
                        "{} / {}",
                        us(&c.transport_client_us),
                        us(&c.transport_server_us)
                    ),
                ],
            );
        }
    }

    fn pgmq_rows(&self, out: &mut String) {
        if let Some(reason) = &self.pgmq.skipped {
            row(out, "pgmq pop + send", &[&format!("skipped ({reason})")]);
            return;
        }
        let version = self.pgmq.version.as_deref().unwrap_or("?");
        row(
            out,
            &format!("pgmq {version} pop + send"),
            &["msg/s (pgbench)"],
        );
        for cell in &self.pgmq.cells {
            row(
                out,
                &format!("  {}", clients(cell.clients)),
                &[&rate(&cell.rate)],
            );
        }
        if let Some(best) = &self.best_vs_pgmq {
            row(
                out,
                "  our best / pgmq's best",
                &[
                    &format!(
                        "{} (batch {}, {})",
                        thousands(best.transport),
                        best.batch,
                        clients(best.clients)
                    ),
                    &format!("{} ({})", thousands(best.pgmq), clients(best.pgmq_clients)),
                    &ratio(&best.ratio),
                ],
            );
        }
    }

    fn wakeup_rows(&self, out: &mut String) {
        let w = &self.wakeups;
        match &w.latency {
            Some(l) => row(
                out,
                "wake-ups: idle latency",
                &[
                    &format!("p50 {:.2} ms", l.p50_ms),
                    &format!("p99 {:.2} ms", l.p99_ms),
                    &format!("{} sends, max {:.1} ms", l.sends, l.max_ms),
                ],
            ),
            None => row(out, "wake-ups: idle latency", &["not measured"]),
        }
        row(
            out,
            &format!("  on vs poll-only, b{} c{}", w.cell.0, w.cell.1),
            &[
                &format!("on {}", rate(&w.with_wakeups)),
                &format!("off {}", rate(&w.poll_only)),
                &ratio(&w.ratio),
            ],
        );
    }

    fn other_rows(&self, out: &mut String) {
        match &self.order_flow {
            FlowSection::Skipped { reason } => {
                row(out, "order flow", &[&format!("skipped ({reason})")]);
            }
            FlowSection::Ran(flow) => flow.rows(out),
        }
        match &self.memory {
            Some(m) => row(
                out,
                "memory: example endpoint",
                &[
                    &format!("peak RSS {:.1} MB", m.peak_rss_mb),
                    &format!("at end {:.1} MB", m.rss_mb),
                    &format!(
                        "{} msgs, {}w b{}",
                        thousands(m.messages as f64),
                        m.workers,
                        m.batch
                    ),
                ],
            ),
            None => row(out, "memory: example endpoint", &["not measured"]),
        }
        match &self.soak {
            Some(soak) => {
                row(
                    out,
                    &format!(
                        "soak: {} msgs, {:.0} s",
                        thousands(soak.messages as f64),
                        soak.seconds
                    ),
                    &[
                        &format!(
                            "first {:.0}s {}/s",
                            soak.window_s,
                            thousands(soak.first_rate)
                        ),
                        &format!("last {:.0}s {}/s", soak.window_s, thousands(soak.last_rate)),
                        &format!("ratio {:.2}", soak.ratio),
                    ],
                );
                row(
                    out,
                    "  queue table at the end",
                    &[
                        &format!(
                            "{:.1} MB (start {:.1})",
                            soak.table_end.total_mb, soak.table_start.total_mb
                        ),
                        &format!(
                            "dead tuples {}",
                            thousands(soak.table_end.dead_tuples as f64)
                        ),
                        &format!(
                            "vacuums {} + auto {}",
                            soak.table_end.vacuums - soak.table_start.vacuums,
                            soak.table_end.autovacuums - soak.table_start.autovacuums
                        ),
                    ],
                );
                if let Some((slowest, fastest)) = soak.sample_rates() {
                    row(
                        out,
                        "  rate in each 10 s",
                        &[
                            &format!("slowest {}/s", thousands(slowest)),
                            &format!("fastest {}/s", thousands(fastest)),
                        ],
                    );
                }
            }
            None => row(out, "soak", &["not run (add --soak)"]),
        }
    }

    fn statement_rows(&self, out: &mut String) {
        row(
            out,
            "statements (pg_stat_statements)",
            &[
                "ceiling calls, mean ms",
                "transport calls, mean ms",
                "same text",
            ],
        );
        for pair in &self.statements {
            let entry = |e: &Option<crate::statements::Entry>, once: bool| match e {
                Some(e) => format!(
                    "{}{} × {:.3}",
                    thousands(e.calls as f64),
                    if once { "*" } else { "" },
                    e.mean_ms
                ),
                None => "-".into(),
            };
            row(
                out,
                &format!("  {}", pair.role),
                &[
                    &entry(&pair.ceiling, pair.ceiling_counted_once),
                    &entry(&pair.transport, false),
                    if pair.same_text { "yes" } else { "no" },
                ],
            );
        }
        if self.statements.iter().any(|p| p.ceiling_counted_once) {
            out.push_str(
                "  * counted on first use per connection only: PostgreSQL 15's \
                 pg_stat_statements\n    does not count a prepared utility statement's \
                 later runs (pgbench -M prepared)\n",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(0.4), "0");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(1234567.8), "1,234,568");
    }

    #[test]
    fn rows_fit_in_a_hundred_columns() {
        let mut out = String::new();
        row(
            &mut out,
            "  batch 10, 16 clients",
            &[
                "16,000 (15,000–17,000)",
                "16,000 (15,000–17,000)",
                "0.99 (0.95–1.02)",
            ],
        );
        assert!(out.trim_end().chars().count() <= 100, "{out}");
    }
}
