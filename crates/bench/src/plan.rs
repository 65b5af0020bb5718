//! The run: set up, run every cell's repetitions interleaved with their baselines, then
//! the one-off measurements, and write the report.
//!
//! Each repetition runs every cell once, ceiling and transport back to back (their order
//! alternating between repetitions), then pgmq at each client count, so that a slow
//! minute of the shared machine lands on a cell and its baseline alike.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use transport_pg::tokio_postgres::Client;

use crate::db::{self, Server};
use crate::error::{Error, Result};
use crate::flow::{self, FlowSection};
use crate::memory::{self, Memory};
use crate::pgbench::{self, HOPS_PER_SCRIPT, PgbenchRun};
use crate::report::{
    BestVsPgmq, CpuCell, DatabaseStatements, HopCell, PgmqCell, PgmqSection, Report, RingSize,
    ServerInfo, Settings, Wakeups, clients, thousands,
};
use crate::setup::{
    DB_CEILING, DB_FLOW, DB_PGMQ, DB_POLL, DB_RSS, DB_SOAK, DB_TRANSPORT, DB_WAKEUPS,
    RING_ENDPOINT, Setup,
};
use crate::soak::Soak;
use crate::statements::Pair;
use crate::stats::{Spread, paired_ratios};
use crate::transport::{self, HopRun};
use crate::wakeups::Latency;
use crate::{Args, cpu, pgmq, ring, setup, soak, statements, targets, wakeups};

/// Prints one progress line per step, numbered, and samples the machine's load average
/// at each, since other work on a shared machine is what makes the figures noisy.
struct Progress {
    done: usize,
    total: usize,
    started: Instant,
    loads: Vec<f64>,
}

impl Progress {
    fn step(&mut self, what: &str) {
        self.done += 1;
        self.loads.extend(setup::load_average());
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
        let pick = |quick, default| if args.quick { quick } else { default };
        Knobs {
            seconds: args.seconds.unwrap_or(pick(1, 5)),
            warmup: Duration::from_millis(pick(300, 500)),
            latency_sends: args.latency_sends.unwrap_or(pick(300, 1000) as usize),
            rss_messages: args.rss_messages.unwrap_or(pick(5000, 20_000) as usize),
            flow_orders: args.flow_orders.unwrap_or(pick(400, 2000) as usize),
            flow_latency_seconds: pick(4, 10),
        }
    }
}

/// One cell's samples as they come in.
struct CellSamples {
    batch: usize,
    clients: usize,
    ceiling: Vec<f64>,
    transport: Vec<f64>,
    /// CPU µs per message of each ceiling run: client (pgbench), server.
    ceiling_cpu: Vec<(f64, f64)>,
    /// The same for each transport run: client (this process), server.
    transport_cpu: Vec<(f64, f64)>,
}

/// Everything the repetitions measured.
struct Measured {
    cells: Vec<CellSamples>,
    pgmq: Vec<PgmqCell>,
    /// The cell run again poll-only: batch, clients.
    wake_cell: (usize, usize),
    poll_only: Vec<f64>,
}

/// What the one-off measurements after the repetitions found.
struct OneOffs {
    statements: Vec<Pair>,
    busiest: Vec<DatabaseStatements>,
    latency: Latency,
    order_flow: FlowSection,
    memory: Memory,
    soak: Option<Soak>,
    rings: Vec<RingSize>,
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
    let started_at = transport_pg::format_rfc3339(SystemTime::now());
    std::fs::create_dir_all(&args.work_dir).map_err(Error::io("create", &args.work_dir))?;
    let pgmq_runs = if args.pgmq_sql.is_some() {
        args.clients.len()
    } else {
        0
    };
    let cells = args.batches.len() * args.clients.len();
    let mut progress = Progress {
        done: 0,
        total: 1 + args.reps * (cells * 2 + pgmq_runs) + 5 + usize::from(args.soak),
        started: Instant::now(),
        loads: Vec::new(),
    };

    let setup = setup::prepare(&server, &args).await?;
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
    let mut bench = Bench {
        knobs: Knobs::from(&args),
        args,
        server,
        setup,
        progress,
        postmaster: cpu::postmaster_pid(&admin).await,
    };

    admin
        .batch_execute("SELECT pg_stat_statements_reset()")
        .await
        .map_err(Error::db("reset pg_stat_statements"))?;
    let measured = bench.repetitions().await?;
    let info = setup::server_info(&admin).await?;
    let one_offs = bench.one_offs(&admin, &info, &measured).await?;

    let report = bench.report(started_at, info, measured, one_offs);
    println!("{}", report.table());
    setup::write_json(&bench.args.json, &report)?;
    eprintln!("bench: report written to {}", bench.args.json.display());
    Ok(())
}

/// The run's state: its flags, the server, what the set-up made, and the progress.
struct Bench {
    args: Args,
    server: Server,
    knobs: Knobs,
    setup: Setup,
    progress: Progress,
    /// The postmaster's pid, for the server's CPU time, when it could be found.
    postmaster: Option<u64>,
}

/// CPU µs per message of the client and the server between two samples.
fn cpu_per_message(
    before: cpu::Sample,
    after: cpu::Sample,
    client: f64,
    messages: f64,
) -> (f64, f64) {
    let server = after.server - before.server;
    (
        cpu::per_message_us(client, messages).unwrap_or(0.0),
        cpu::per_message_us(server, messages).unwrap_or(0.0),
    )
}

impl Bench {
    /// Every cell and pgmq, `--reps` times, interleaved.
    async fn repetitions(&mut self) -> Result<Measured> {
        let mut cells: Vec<CellSamples> = Vec::new();
        for &batch in &self.args.batches {
            for &clients in &self.args.clients {
                cells.push(CellSamples {
                    batch,
                    clients,
                    ceiling: Vec::new(),
                    transport: Vec::new(),
                    ceiling_cpu: Vec::new(),
                    transport_cpu: Vec::new(),
                });
            }
        }
        let max_clients = *self.args.clients.iter().max().expect("checked non-empty");
        let wake_batch = if self.args.batches.contains(&1) {
            1
        } else {
            self.args.batches[0]
        };
        let mut measured = Measured {
            pgmq: self
                .args
                .clients
                .iter()
                .map(|&clients| PgmqCell {
                    clients,
                    samples: Vec::new(),
                    rate: None,
                })
                .collect(),
            cells: Vec::new(),
            wake_cell: (wake_batch, max_clients),
            poll_only: Vec::new(),
        };

        for rep in 0..self.args.reps {
            for cell in cells.iter_mut() {
                let ceiling_first = rep % 2 == 0;
                if ceiling_first {
                    self.run_ceiling(cell, rep).await?;
                }
                self.run_transport(cell, rep).await?;
                if (cell.batch, cell.clients) == measured.wake_cell {
                    let rate = self.run_poll_only(cell, rep).await?;
                    measured.poll_only.push(rate);
                }
                if !ceiling_first {
                    self.run_ceiling(cell, rep).await?;
                }
            }
            if self.setup.pgmq.skipped.is_none() {
                for pgmq_cell in measured.pgmq.iter_mut() {
                    let rate = self.run_pgmq(pgmq_cell.clients).await?;
                    pgmq_cell.samples.push(rate);
                    self.progress.step(&format!(
                        "rep {}/{}: pgmq pop + send, {}: {} msg/s",
                        rep + 1,
                        self.args.reps,
                        clients(pgmq_cell.clients),
                        thousands(rate)
                    ));
                }
            }
        }
        measured.cells = cells;
        Ok(measured)
    }

    /// The statements, wake-up latency, order flow, memory, soak and ring sizes.
    async fn one_offs(
        &mut self,
        admin: &Client,
        info: &ServerInfo,
        measured: &Measured,
    ) -> Result<OneOffs> {
        let statements = statements::side_by_side(
            admin,
            &self.setup.statements,
            DB_CEILING,
            DB_TRANSPORT,
            info.version_num,
        )
        .await?;
        let mut busiest = Vec::new();
        for database in [DB_CEILING, DB_TRANSPORT, DB_PGMQ] {
            busiest.push(DatabaseStatements {
                database: database.to_owned(),
                entries: statements::busiest(admin, database, 100).await?,
            });
        }
        self.progress
            .step("pg_stat_statements: the hop's statements, ceiling and transport");

        let latency = wakeups::measure(
            &self.server.database(DB_WAKEUPS)?,
            "wake",
            self.knobs.latency_sends,
            Duration::from_millis(self.args.latency_pause_ms),
        )
        .await?;
        self.progress.step(&format!(
            "wake-ups: idle latency p50 {:.2} ms, p99 {:.2} ms over {} sends",
            latency.p50_ms, latency.p99_ms, latency.sends
        ));

        let order_flow = self.order_flow(measured).await?;
        let memory = self.memory().await?;
        let soak = if self.args.soak {
            Some(self.soak().await?)
        } else {
            None
        };
        let rings = setup::ring_sizes(&self.server, &self.args, &self.setup).await?;
        self.progress.step("rings checked");
        Ok(OneOffs {
            statements,
            busiest,
            latency,
            order_flow,
            memory,
            soak,
            rings,
        })
    }

    /// Checkpoints before a long section, ahead of its set-up. `checkpoint_timeout` is 30
    /// min, so none falls due by time inside a section of a few minutes, but with
    /// `max_wal_size` at 8 GB one starts after every 4.4 GB or so of WAL, which the ring
    /// cells before the soak write, and one that starts inside a section slows what
    /// follows it: every page then changed for the first time since is written whole to
    /// the WAL, and the checkpointer writes on the shared disk. In one run its start fell
    /// 8 s before the soak's end and the soak's last window lost a tenth. A failure (no
    /// right to CHECKPOINT on a server of the user's) is noted, not fatal.
    async fn checkpoint_before(&self, section: &str) {
        let done = async { db::checkpoint(&self.server.connect("postgres").await?).await };
        if let Err(error) = done.await {
            self.progress.note(&format!(
                "no checkpoint before the {section}: {}",
                crate::chain(&error)
            ));
        }
    }

    async fn vacuum_ring(&self, database: &str) -> Result<()> {
        let client = self.server.connect(database).await?;
        db::vacuum(&client, &setup::ring_endpoint()?.tables().queue).await
    }

    fn rep_line(&self, rep: usize, cell: &CellSamples, what: &str, rate: f64) -> String {
        format!(
            "rep {}/{}: batch {}, {}, {what}: {} msg/s",
            rep + 1,
            self.args.reps,
            cell.batch,
            clients(cell.clients),
            thousands(rate)
        )
    }

    async fn run_ceiling(&mut self, cell: &mut CellSamples, rep: usize) -> Result<()> {
        self.vacuum_ring(DB_CEILING).await?;
        let run = PgbenchRun {
            pgbench: &self.args.pgbench,
            script: self.setup.ceiling_script(cell.batch),
            database: DB_CEILING,
            clients: cell.clients,
            seconds: self.knobs.seconds,
            variables: pgbench::ceiling_variables(&self.setup.sample, cell.batch),
        };
        let before = cpu::sample(self.postmaster);
        let result = pgbench::run(&self.server, &run).await?;
        tokio::time::sleep(cpu::REAP_PAUSE).await;
        let after = cpu::sample(self.postmaster);
        if result.failed > 0 {
            return Err(Error::Process {
                program: "pgbench".into(),
                reason: format!("{} ceiling transactions failed", result.failed),
            });
        }
        let per_script = (HOPS_PER_SCRIPT * cell.batch) as f64;
        let rate = result.tps * per_script;
        cell.ceiling.push(rate);
        let messages = result.processed as f64 * per_script;
        let client = after.children - before.children;
        cell.ceiling_cpu
            .push(cpu_per_message(before, after, client, messages));
        let line = self.rep_line(rep, cell, "ceiling", rate);
        self.progress.step(&line);
        Ok(())
    }

    /// The transport's rate in `database`, and its CPU µs per message (client, server).
    async fn hop_rate(
        &self,
        database: &str,
        cell: &CellSamples,
        wakeups: bool,
    ) -> Result<(f64, (f64, f64))> {
        self.vacuum_ring(database).await?;
        let run = HopRun {
            batch: cell.batch,
            workers: cell.clients,
            wakeups,
        };
        let seconds = Duration::from_secs(self.knobs.seconds);
        let db = self.server.database(database)?;
        let before = cpu::sample(self.postmaster);
        let measured =
            transport::measure(&db, RING_ENDPOINT, run, self.knobs.warmup, seconds).await?;
        tokio::time::sleep(cpu::REAP_PAUSE).await;
        let after = cpu::sample(self.postmaster);
        let client = after.own - before.own;
        let cpu = cpu_per_message(before, after, client, measured.handled as f64);
        Ok((measured.rate, cpu))
    }

    async fn run_transport(&mut self, cell: &mut CellSamples, rep: usize) -> Result<()> {
        let (rate, cpu) = self.hop_rate(DB_TRANSPORT, cell, true).await?;
        cell.transport.push(rate);
        cell.transport_cpu.push(cpu);
        let line = self.rep_line(rep, cell, "transport", rate);
        self.progress.step(&line);
        Ok(())
    }

    async fn run_poll_only(&self, cell: &CellSamples, rep: usize) -> Result<f64> {
        let (rate, _) = self.hop_rate(DB_POLL, cell, false).await?;
        self.progress
            .note(&self.rep_line(rep, cell, "poll-only", rate));
        Ok(rate)
    }

    async fn run_pgmq(&self, clients: usize) -> Result<f64> {
        let client = self.server.connect(DB_PGMQ).await?;
        db::vacuum(&client, pgmq::QUEUE_TABLE).await?;
        let run = PgbenchRun {
            pgbench: &self.args.pgbench,
            script: self.setup.pgmq_script.clone().expect("pgmq set up"),
            database: DB_PGMQ,
            clients,
            seconds: self.knobs.seconds,
            variables: vec![
                ("queue".into(), pgmq::QUEUE.into()),
                ("msg".into(), self.setup.sample.headers.to_string()),
            ],
        };
        let result = pgbench::run(&self.server, &run).await?;
        if result.failed > 0 {
            return Err(Error::Process {
                program: "pgbench".into(),
                reason: format!("{} pgmq transactions failed", result.failed),
            });
        }
        Ok(result.tps)
    }

    async fn order_flow(&mut self, measured: &Measured) -> Result<FlowSection> {
        let section = match flow::skip_reason(&self.args.bin_dir) {
            Some(reason) => FlowSection::Skipped { reason },
            None => {
                let ceiling = measured
                    .cells
                    .iter()
                    .find(|c| (c.batch, c.clients) == (1, 16))
                    .and_then(|c| Spread::of(&c.ceiling))
                    .map(|s| s.median);
                self.checkpoint_before("order flow").await;
                let plan = flow::FlowPlan {
                    orders: self.knobs.flow_orders,
                    latency_seconds: self.knobs.flow_latency_seconds,
                    batch: self.args.flow_batch.map(usize::from),
                };
                let args = &self.args;
                let ran = flow::run(
                    &self.server,
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
        self.progress.step(&match &section {
            FlowSection::Skipped { reason } => format!("order flow: skipped ({reason})"),
            FlowSection::Ran(f) => format!(
                "order flow: {:.0} orders/s, {:.0} hops/s; order to shipped p50 {:.0} ms",
                f.orders_per_s, f.hops_per_s, f.p50_ms
            ),
        });
        Ok(section)
    }

    async fn memory(&mut self) -> Result<Memory> {
        let memory = memory::measure(
            &self.server,
            DB_RSS,
            &self.args.bin_dir.join("example-endpoint"),
            &self.args.work_dir.join("rss-example-endpoint.log"),
            self.knobs.rss_messages,
        )
        .await?;
        self.progress.step(&format!(
            "memory: example endpoint peak RSS {:.1} MB over {} messages",
            memory.peak_rss_mb, memory.messages
        ));
        Ok(memory)
    }

    async fn soak(&mut self) -> Result<Soak> {
        let database = self.server.database(DB_SOAK)?;
        // Before the fill: pages written after a checkpoint need no full-page image, so
        // neither window pays for them.
        self.checkpoint_before("soak").await;
        ring::fill_transport(&database, &setup::ring_endpoint()?, self.args.ring).await?;
        let args = &self.args;
        self.progress.note(&format!(
            "soak: {} messages and at least two {} s windows, batch {}, {} workers",
            thousands(args.soak_messages as f64),
            args.soak_window,
            args.soak_batch,
            args.soak_workers
        ));
        let progress = &self.progress;
        let result = soak::run(
            &database,
            RING_ENDPOINT,
            args.soak_batch,
            args.soak_workers,
            soak::Length {
                messages: args.soak_messages,
                // At most 1800 by the flag's range.
                window_s: args.soak_window as usize,
            },
            |count, at| {
                if (at as u64) % 60 < 10 {
                    progress.note(&format!(
                        "soak: {} messages so far",
                        thousands(count as f64)
                    ));
                }
            },
        )
        .await?;
        self.progress.step(&format!(
            "soak: {} messages, last window / first {:.2}",
            thousands(result.messages as f64),
            result.ratio
        ));
        Ok(result)
    }

    /// The report from everything measured.
    fn report(
        &self,
        started_at: String,
        server: ServerInfo,
        measured: Measured,
        one_offs: OneOffs,
    ) -> Report {
        let hops: Vec<HopCell> = measured
            .cells
            .iter()
            .map(|c| HopCell {
                batch: c.batch,
                clients: c.clients,
                ceiling: Spread::of(&c.ceiling),
                transport: Spread::of(&c.transport),
                ratio: Spread::of(&paired_ratios(&c.transport, &c.ceiling)),
                ceiling_samples: c.ceiling.clone(),
                transport_samples: c.transport.clone(),
                ceiling_round_trips: pgbench::ceiling_round_trips(),
                cpu: CpuCell::of(&c.ceiling_cpu, &c.transport_cpu),
            })
            .collect();
        let mut pgmq_section = self.setup.pgmq.clone();
        pgmq_section.cells = measured.pgmq;
        for cell in pgmq_section.cells.iter_mut() {
            cell.rate = Spread::of(&cell.samples);
        }
        let best_vs_pgmq = best_against_pgmq(&hops, &pgmq_section);

        let wake_samples = measured
            .cells
            .iter()
            .find(|c| (c.batch, c.clients) == measured.wake_cell)
            .map(|c| c.transport.clone())
            .unwrap_or_default();
        let poll_only = measured.poll_only;
        let wakeups = Wakeups {
            latency: Some(one_offs.latency),
            cell: measured.wake_cell,
            with_wakeups: Spread::of(&wake_samples),
            poll_only: Spread::of(&poll_only),
            ratio: Spread::of(&paired_ratios(&wake_samples, &poll_only)),
            poll_only_samples: poll_only,
        };

        let mut report = Report {
            started_at,
            elapsed_s: self.progress.started.elapsed().as_secs_f64(),
            settings: self.settings(),
            server,
            hops,
            pgmq: pgmq_section,
            best_vs_pgmq,
            statements: one_offs.statements,
            busiest_statements: one_offs.busiest,
            wakeups,
            order_flow: one_offs.order_flow,
            memory: Some(one_offs.memory),
            soak: one_offs.soak,
            targets: Vec::new(),
            rings_at_end: one_offs.rings,
            scripts: self.setup.script_paths(),
        };
        report.targets = targets::evaluate(&report);
        report
    }

    fn settings(&self) -> Settings {
        let args = &self.args;
        let mode = match (args.quick, args.soak) {
            (true, false) => "quick",
            (true, true) => "quick+soak",
            (false, false) => "default",
            (false, true) => "default+soak",
        };
        Settings {
            mode: mode.to_owned(),
            reps: args.reps,
            seconds: self.knobs.seconds,
            warmup_ms: self.knobs.warmup.as_millis() as u64,
            ring: args.ring,
            clients: args.clients.clone(),
            batches: args.batches.clone(),
            ceiling_hops_per_script: HOPS_PER_SCRIPT,
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0),
            memory_gib: setup::memory_gib(),
            load_1min: Spread::of(&self.progress.loads),
        }
    }
}

/// Our best cell's median against pgmq's best, with their ratio paired by repetition.
fn best_against_pgmq(hops: &[HopCell], pgmq: &PgmqSection) -> Option<BestVsPgmq> {
    let median = |s: Option<Spread>| s.map_or(f64::NEG_INFINITY, |s| s.median);
    let best = hops
        .iter()
        .filter(|c| c.transport.is_some())
        .max_by(|a, b| median(a.transport).total_cmp(&median(b.transport)))?;
    let peer = pgmq
        .cells
        .iter()
        .filter(|c| c.rate.is_some())
        .max_by(|a, b| median(a.rate).total_cmp(&median(b.rate)))?;
    Some(BestVsPgmq {
        batch: best.batch,
        clients: best.clients,
        transport: best.transport?.median,
        pgmq_clients: peer.clients,
        pgmq: peer.rate?.median,
        ratio: Spread::of(&paired_ratios(&best.transport_samples, &peer.samples)),
    })
}
