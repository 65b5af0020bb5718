//! The retail order flow: the real Sales, Billing and Shipping binaries with the gateways
//! at zero latency, fed by the retail client's own placing code; orders per second,
//! message hops per second against the batch-1 ceiling, and order-to-shipped latency at
//! a moderate load.
//!
//! Throughput is measured on a backlog, so that the client's speed does not bound it:
//! Sales is stopped, the orders are placed (four placers at once), Sales is started
//! again, and the clock runs from the first order Sales stored to the last one it marked
//! shipped, both by the database's clock. A hop is one message received by one of the
//! three endpoints: the rows their receive statements returned, from pg_stat_statements,
//! so delayed moves and the gateways' own writes do not count. Latency is measured
//! afterwards with orders placed in small groups five times a second, from the client's
//! record of each order to its shipment, again by the database's clock.
//!
//! It runs only when every binary it needs has been built; until then the section says
//! which are missing instead of showing a figure.

use std::path::Path;
use std::time::Duration;

use retail::place::{PlaceOptions, place};
use serde::Serialize;
use tokio::time::Instant;
use transport_pg::sql::QueueStatements;
use transport_pg::tokio_postgres::Client;
use transport_pg::{Database, EndpointName};

use crate::db::Server;
use crate::error::{Error, Result};
use crate::process::{self, Running};
use crate::report::row;
use crate::statements::as_recorded;
use crate::stats::percentile;

/// The binaries the flow runs, in `target/release`.
pub const BINARIES: [&str; 5] = ["sales", "billing", "shipping", "gateways", "retail"];

/// The endpoints whose receives are hops.
const ENDPOINTS: [&str; 3] = ["sales", "billing", "shipping"];

/// Placers running at once for the backlog.
const PLACERS: usize = 4;

/// Longest the flow may take to finish a batch of orders.
const FINISH_LIMIT: Duration = Duration::from_secs(600);

/// The order flow's figures, or why there are none.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum FlowSection {
    /// Not run.
    Skipped {
        /// Why.
        reason: String,
    },
    /// Run.
    Ran(Flow),
}

/// What the flow measured.
#[derive(Debug, Clone, Serialize)]
pub struct Flow {
    /// Each endpoint's batch size, as it reported it when ready.
    pub batches: Vec<EndpointBatch>,
    /// Orders in the throughput run (all approved, none slow).
    pub orders: usize,
    /// Seconds from the first order stored by Sales to the last marked shipped.
    pub seconds: f64,
    /// Orders per second.
    pub orders_per_s: f64,
    /// Messages received by the three endpoints in that time.
    pub hops: i64,
    /// Hops per order.
    pub hops_per_order: f64,
    /// Hops per second.
    pub hops_per_s: f64,
    /// The hops by endpoint.
    pub per_endpoint: Vec<EndpointHops>,
    /// Transactions committed in the flow's database per order during the backlog (every
    /// process's: endpoints, gateways, and the bench's own polling, which is a few).
    pub commits_per_order: f64,
    /// The batch-1 ceiling at 16 clients (median), messages per second.
    pub ceiling_b1_c16: Option<f64>,
    /// `hops_per_s / ceiling_b1_c16`.
    pub ratio: Option<f64>,
    /// Orders per second offered in the latency run.
    pub latency_rate: f64,
    /// Orders in the latency run.
    pub latency_orders: usize,
    /// Median order-to-shipped latency, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile, milliseconds.
    pub p99_ms: f64,
    /// The last line of `retail verify` over every order of the flow.
    pub verify: String,
    /// Whether verify passed.
    pub verified: bool,
}

impl Flow {
    /// The flow's rows of the table.
    pub fn rows(&self, out: &mut String) {
        let ratio = self
            .ratio
            .map(|r| format!("{r:.2} of b1 c16 ceiling"))
            .unwrap_or_else(|| "-".into());
        row(
            out,
            &format!("order flow (backlog, {})", batch_label(&self.batches)),
            &[
                &format!("{:.0} orders/s", self.orders_per_s),
                &format!("{:.0} hops/s", self.hops_per_s),
                &ratio,
            ],
        );
        row(
            out,
            &format!("  order to shipped, {:.0}/s", self.latency_rate),
            &[
                &format!("p50 {:.0} ms", self.p50_ms),
                &format!("p99 {:.0} ms", self.p99_ms),
                &format!("verify {}", if self.verified { "ok" } else { "FAILED" }),
            ],
        );
    }
}

/// One endpoint's batch size in the flow.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointBatch {
    /// The endpoint.
    pub endpoint: String,
    /// Messages per transaction.
    pub batch: usize,
}

/// `b1` when every endpoint ran at batch 1, else the sizes in the order Sales, Billing,
/// Shipping: `b10/1/1`.
fn batch_label(batches: &[EndpointBatch]) -> String {
    let sizes: Vec<String> = batches.iter().map(|b| b.batch.to_string()).collect();
    match sizes.split_first() {
        Some((first, rest)) if rest.iter().all(|s| s == first) => format!("b{first}"),
        _ => format!("b{}", sizes.join("/")),
    }
}

/// The binaries of [`BINARIES`] missing from `bin_dir`.
pub fn missing(bin_dir: &Path) -> Vec<&'static str> {
    BINARIES
        .iter()
        .copied()
        .filter(|name| !bin_dir.join(name).is_file())
        .collect()
}

/// Why the flow is skipped, if it must be: the endpoint binaries are not built yet.
pub fn skip_reason(bin_dir: &Path) -> Option<String> {
    let missing = missing(bin_dir);
    if missing.is_empty() {
        return None;
    }
    Some(if missing == ENDPOINTS {
        "sales/billing/shipping not built yet".to_owned()
    } else {
        format!("{} not built yet", missing.join("/"))
    })
}

/// How big the runs are.
#[derive(Debug, Clone, Copy)]
pub struct FlowPlan {
    /// Orders in the backlog.
    pub orders: usize,
    /// Seconds of the latency run.
    pub latency_seconds: u64,
    /// The endpoints' batch size; `None` leaves each at its own default.
    pub batch: Option<usize>,
}

/// The processes of the flow, stopped together.
struct Processes {
    gateways: Option<Running>,
    endpoints: Vec<(String, Running)>,
}

impl Processes {
    async fn stop_all(self) -> Result<()> {
        let mut result = Ok(());
        for (_, endpoint) in self.endpoints {
            if let Err(e) = endpoint.stop(Duration::from_secs(20)).await {
                result = Err(e);
            }
        }
        if let Some(gateways) = self.gateways
            && let Err(e) = gateways.stop(Duration::from_secs(10)).await
        {
            result = Err(e);
        }
        result
    }
}

/// Runs the flow on database `db` (fresh), comparing its hops with `ceiling_b1_c16`.
pub async fn run(
    server: &Server,
    db: &str,
    bin_dir: &Path,
    work_dir: &Path,
    plan: FlowPlan,
    ceiling_b1_c16: Option<f64>,
) -> Result<Flow> {
    let url = server.url(db);
    let gateways = start_gateways(bin_dir, work_dir, &url).await?;
    let gateway_url = format!("http://{}", gateways.1);
    let mut processes = Processes {
        gateways: Some(gateways.0),
        endpoints: Vec::new(),
    };
    let result = drive(
        server,
        db,
        bin_dir,
        work_dir,
        &gateway_url,
        plan,
        ceiling_b1_c16,
        &mut processes,
    )
    .await;
    let stopped = processes.stop_all().await;
    let flow = result?;
    stopped?;
    Ok(flow)
}

#[allow(
    clippy::too_many_arguments,
    reason = "one call site, every argument named there"
)]
async fn drive(
    server: &Server,
    db: &str,
    bin_dir: &Path,
    work_dir: &Path,
    gateway_url: &str,
    plan: FlowPlan,
    ceiling_b1_c16: Option<f64>,
    processes: &mut Processes,
) -> Result<Flow> {
    let url = server.url(db);
    let mut batches = Vec::new();
    for name in ENDPOINTS {
        let (endpoint, batch) =
            start_endpoint(bin_dir, work_dir, name, &url, gateway_url, plan.batch, 0).await?;
        processes.endpoints.push((name.to_owned(), endpoint));
        batches.push(EndpointBatch {
            endpoint: name.to_owned(),
            batch,
        });
    }
    let client = server.connect(db).await?;
    let database = server.database(db)?;

    // The backlog: Sales stopped, the orders placed, Sales started again.
    let (_, sales) = processes.endpoints.remove(0);
    sales.stop(Duration::from_secs(20)).await?;
    let runs: Vec<String> = (0..PLACERS).map(|p| format!("bench-flow-{p}")).collect();
    let per_placer = plan.orders.div_ceil(PLACERS);
    let placing = runs
        .iter()
        .map(|run| place_orders(&database, run, per_placer));
    for placed in futures_join(placing.collect()).await {
        placed?;
    }
    let orders = per_placer * PLACERS;
    // The backlog must all still be waiting: a Sales left running by an earlier run
    // that was killed would have taken it, and the window would measure nothing.
    let waiting: i64 = client
        .query_one("SELECT count(*) FROM bus.sales_queue", &[])
        .await
        .map_err(Error::db("count the backlog"))?
        .get(0);
    if waiting < orders as i64 {
        return Err(Error::Process {
            program: "sales".to_owned(),
            reason: format!(
                "only {waiting} of the {orders} orders placed wait in bus.sales_queue with \
                 Sales stopped: another consumer is taking them (a sales process left over \
                 from an earlier run?)"
            ),
        });
    }
    let before = hop_counts(server, db).await?;
    let commits_before = commits(&client, db).await?;
    let (sales, _) =
        start_endpoint(bin_dir, work_dir, "sales", &url, gateway_url, plan.batch, 1).await?;
    processes.endpoints.insert(0, ("sales".to_owned(), sales));
    wait_shipped(&client, orders, processes).await?;
    let after = hop_counts(server, db).await?;
    // Backends report their transaction counts at most once a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let commits_after = commits(&client, db).await?;

    let row = client
        .query_one(
            "SELECT extract(epoch FROM max(s.updated_at) - min(s.placed_at))::float8 \
             FROM sales.orders AS s JOIN retail.orders AS r USING (order_id) \
             WHERE r.run_id LIKE 'bench-flow-%'",
            &[],
        )
        .await
        .map_err(Error::db("time the backlog"))?;
    let seconds: f64 = row.get(0);
    let per_endpoint = difference(&before, &after);
    let hops: i64 = per_endpoint.iter().map(|e| e.hops).sum();

    // Latency: small groups five times a second at about a quarter of the capacity.
    let orders_per_s = orders as f64 / seconds;
    let latency_rate = (orders_per_s / 4.0).clamp(5.0, 100.0);
    let latency_orders = latency_run(&database, latency_rate, plan.latency_seconds).await?;
    wait_shipped(&client, orders + latency_orders, processes).await?;
    let latencies = latencies(&client).await?;

    let (verified, verify) = verify(bin_dir, work_dir, &url).await?;
    Ok(Flow {
        batches,
        orders,
        seconds,
        orders_per_s,
        hops,
        hops_per_order: hops as f64 / orders as f64,
        hops_per_s: hops as f64 / seconds,
        per_endpoint,
        commits_per_order: (commits_after - commits_before) as f64 / orders as f64,
        ceiling_b1_c16,
        ratio: ceiling_b1_c16.map(|c| hops as f64 / seconds / c),
        latency_rate,
        latency_orders,
        p50_ms: percentile(&latencies, 50.0).unwrap_or(0.0),
        p99_ms: percentile(&latencies, 99.0).unwrap_or(0.0),
        verify,
        verified,
    })
}

/// Polls every future in turn until all are done, in one task.
async fn futures_join<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut pinned: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in pinned.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => *output = Some(value),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().map(|o| o.expect("all done")).collect()
}

async fn place_orders(database: &Database, run: &str, count: usize) -> Result<()> {
    let options = PlaceOptions {
        count,
        run_id: run.to_owned(),
        declined_share: 0.0,
        slow_share: 0.0,
        resubmit_share: 0.0,
        currency: "EUR".to_owned(),
    };
    place(database, &options)
        .await
        .map_err(|e| Error::Process {
            program: "retail place".into(),
            reason: format!("run {run}: {}", transport_pg::error_chain(&e)),
        })?;
    Ok(())
}

/// Places orders in groups five times a second for `seconds`; returns how many.
async fn latency_run(database: &Database, rate: f64, seconds: u64) -> Result<usize> {
    let ticks = seconds * 5;
    let mut placed = 0usize;
    let mut owed = 0.0;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    for t in 0..ticks {
        tick.tick().await;
        owed += rate / 5.0;
        let count = owed.floor() as usize;
        if count == 0 {
            continue;
        }
        owed -= count as f64;
        place_orders(database, &format!("bench-lat-{t}"), count).await?;
        placed += count;
    }
    Ok(placed)
}

async fn latencies(client: &Client) -> Result<Vec<f64>> {
    let rows = client
        .query(
            "SELECT extract(epoch FROM s.shipped_at - r.placed_at)::float8 * 1000 \
             FROM retail.orders AS r JOIN shipping.shipments AS s USING (order_id) \
             WHERE r.run_id LIKE 'bench-lat-%'",
            &[],
        )
        .await
        .map_err(Error::db("read order-to-shipped latencies"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Waits until `count` orders in the (fresh) database are shipped. Every order the
/// flow places is approved, so none ends otherwise. The poll runs every 100 ms during the
/// measured backlog, so it counts one table without a join: the count through
/// retail.orders cost the server about 26 ms a call, several per cent of its CPU.
async fn wait_shipped(client: &Client, count: usize, processes: &mut Processes) -> Result<()> {
    let started = Instant::now();
    loop {
        for (_, endpoint) in processes.endpoints.iter_mut() {
            endpoint.check_alive()?;
        }
        let row = client
            .query_one(
                "SELECT count(*) FROM sales.orders WHERE status = 'shipped'",
                &[],
            )
            .await
            .map_err(Error::db("count shipped orders"))?;
        if row.get::<_, i64>(0) >= count as i64 {
            return Ok(());
        }
        if started.elapsed() > FINISH_LIMIT {
            return Err(Error::Timeout(format!(
                "fewer than {count} orders shipped within {} s",
                FINISH_LIMIT.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Transactions committed so far in database `db`.
async fn commits(client: &Client, db: &str) -> Result<i64> {
    let row = client
        .query_one(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = $1",
            &[&db],
        )
        .await
        .map_err(Error::db("read the commit count"))?;
    Ok(row.get(0))
}

/// One endpoint's share of the hops.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointHops {
    /// The endpoint.
    pub endpoint: String,
    /// Messages its receive statements returned.
    pub hops: i64,
    /// Runs of its batch receive, empty probes included.
    pub probes: i64,
}

/// Per endpoint, the rows returned so far by its receive statements (the batch receive,
/// and the take of a claimed or retaken row) and the runs of the batch receive.
async fn hop_counts(server: &Server, db: &str) -> Result<Vec<EndpointHops>> {
    let admin = server.connect("postgres").await?;
    let rows = admin
        .query(
            "SELECT s.query, s.rows, s.calls FROM pg_stat_statements AS s \
             JOIN pg_database AS d ON d.oid = s.dbid \
             WHERE d.datname = $1 AND s.toplevel",
            &[&db],
        )
        .await
        .map_err(Error::db("read the receive statements' rows"))?;
    let mut counts = Vec::new();
    for name in ENDPOINTS {
        let endpoint = EndpointName::new(name).map_err(Error::transport("endpoint name"))?;
        let statements = QueueStatements::new(&endpoint.tables(), 1);
        let (receive, take) = (
            normalize(&as_recorded(&statements.receive.sql)),
            normalize(&statements.take_seqs),
        );
        let mut count = EndpointHops {
            endpoint: name.to_owned(),
            hops: 0,
            probes: 0,
        };
        for row in &rows {
            let query = normalize(row.get::<_, &str>(0));
            if query == receive || query == take {
                count.hops += row.get::<_, i64>(1);
            }
            if query == receive {
                count.probes += row.get::<_, i64>(2);
            }
        }
        counts.push(count);
    }
    Ok(counts)
}

/// `after - before`, endpoint by endpoint.
fn difference(before: &[EndpointHops], after: &[EndpointHops]) -> Vec<EndpointHops> {
    after
        .iter()
        .map(|a| {
            let b = before.iter().find(|b| b.endpoint == a.endpoint);
            EndpointHops {
                endpoint: a.endpoint.clone(),
                hops: a.hops - b.map_or(0, |b| b.hops),
                probes: a.probes - b.map_or(0, |b| b.probes),
            }
        })
        .collect()
}

fn normalize(sql: &str) -> String {
    sql.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Text with ANSI colour sequences removed, for reading log lines.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Waits for a log line containing `needle`; returns it.
async fn wait_for_line(running: &mut Running, needle: &str) -> Result<String> {
    let started = Instant::now();
    loop {
        let text = strip_ansi(&std::fs::read_to_string(&running.log).unwrap_or_default());
        if let Some(line) = text.lines().find(|l| l.contains(needle)) {
            return Ok(line.to_owned());
        }
        running.check_alive()?;
        if started.elapsed() > Duration::from_secs(90) {
            return Err(Error::Timeout(format!(
                "{} logged no {needle:?} within 90 s",
                running.name
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of field `key` (`key=value`) in a log line of `program`'s.
fn logged_field<'a>(line: &'a str, program: &str, key: &str) -> Result<&'a str> {
    let prefix = format!("{key}=");
    line.split_whitespace()
        .find_map(|token| token.strip_prefix(prefix.as_str()))
        .ok_or_else(|| Error::Process {
            program: program.to_owned(),
            reason: format!("no {key}= in its ready line: {line}"),
        })
}

async fn start_gateways(bin_dir: &Path, work_dir: &Path, url: &str) -> Result<(Running, String)> {
    let args: Vec<String> = [
        "--database-url",
        url,
        "--listen",
        "127.0.0.1:0",
        "--latency-ms",
        "0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let log = work_dir.join("flow-gateways.log");
    let env = [("RUST_LOG", "info"), ("NO_COLOR", "1")];
    let mut gateways = process::start(&bin_dir.join("gateways"), &args, &env, &log)?;
    let line = wait_for_line(&mut gateways, "gateways ready").await?;
    let addr = logged_field(&line, "gateways", "addr")?.to_owned();
    Ok((gateways, addr))
}

/// Starts endpoint `name` (at `batch`, or at its own default) and waits until it is
/// ready; returns it with the batch size its ready line reports.
async fn start_endpoint(
    bin_dir: &Path,
    work_dir: &Path,
    name: &str,
    url: &str,
    gateway_url: &str,
    batch: Option<usize>,
    generation: usize,
) -> Result<(Running, usize)> {
    let mut args: Vec<String> = vec!["--database-url".into(), url.into()];
    if let Some(batch) = batch {
        args.push("--batch-size".into());
        args.push(batch.to_string());
    }
    if name != "sales" {
        args.push("--gateway-url".into());
        args.push(gateway_url.into());
    }
    let log = work_dir.join(format!("flow-{name}-{generation}.log"));
    let env = [("RUST_LOG", "info"), ("NO_COLOR", "1")];
    let mut endpoint = process::start(&bin_dir.join(name), &args, &env, &log)?;
    let ready = wait_for_line(&mut endpoint, "endpoint ready").await?;
    let reported = logged_field(&ready, name, "batch_size")?;
    let reported = reported.parse().map_err(|_| Error::Process {
        program: name.to_owned(),
        reason: format!("batch_size={reported} in its ready line is not a number"),
    })?;
    Ok((endpoint, reported))
}

async fn verify(bin_dir: &Path, work_dir: &Path, url: &str) -> Result<(bool, String)> {
    let log = work_dir.join("flow-verify.log");
    let args: Vec<String> = vec!["verify".into(), "--database-url".into(), url.into()];
    let mut running = process::start(&bin_dir.join("retail"), &args, &[], &log)?;
    let status = tokio::time::timeout(Duration::from_secs(120), running.child.wait())
        .await
        .map_err(|_| Error::Timeout("retail verify took over 120 s".into()))?
        .map_err(|e| Error::Process {
            program: "retail verify".into(),
            reason: e.to_string(),
        })?;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let last = text.lines().last().unwrap_or("").to_owned();
    Ok((status.success(), last))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ansi_sequences_are_stripped() {
        let line = "\u{1b}[2m2026\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m gateways ready \
                    \u{1b}[3maddr\u{1b}[0m\u{1b}[2m=\u{1b}[0m127.0.0.1:4000";
        assert_eq!(
            strip_ansi(line),
            "2026  INFO gateways ready addr=127.0.0.1:4000"
        );
    }

    #[test]
    fn the_batch_label_names_each_size_only_when_they_differ() {
        let of = |sizes: &[usize]| -> Vec<EndpointBatch> {
            let names = ENDPOINTS.iter();
            let batches = names.zip(sizes).map(|(name, &batch)| EndpointBatch {
                endpoint: name.to_string(),
                batch,
            });
            batches.collect()
        };
        assert_eq!(batch_label(&of(&[1, 1, 1])), "b1");
        assert_eq!(batch_label(&of(&[10, 1, 1])), "b10/1/1");
    }

    #[test]
    fn a_ready_line_field_is_found_or_named_missing() {
        let line = "2026  INFO endpoint ready endpoint=sales batch_size=10 wakeups=true";
        assert_eq!(logged_field(line, "sales", "batch_size").unwrap(), "10");
        let missing = logged_field(line, "sales", "addr").unwrap_err().to_string();
        assert!(missing.contains("no addr="), "{missing}");
    }

    #[test]
    fn missing_endpoints_are_named() {
        let dir = std::env::temp_dir().join("pgbus-bench-no-binaries");
        assert_eq!(
            skip_reason(&dir).unwrap(),
            "sales/billing/shipping/gateways/retail not built yet"
        );
    }
}
