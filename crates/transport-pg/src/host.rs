//! The endpoint host: the builder that names an endpoint, sets its routes and handlers,
//! and starts its workers; and the running [`Endpoint`] with its shutdown.
//!
//! Starting applies the `bus` migrations, installs the endpoint's tables, builds the
//! pool, starts the wake-up listener and the notifier, and spawns the workers. The
//! returned [`Endpoint`] owns the workers; its [`sender`](Endpoint::sender) is a cheap
//! handle for sending from outside a handler.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use message::Message;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::connect::Database;
use crate::delayed::DueMessageMover;
use crate::envelope::Headers;
use crate::error::{Error, Result};
use crate::handler::{ErasedHandler, Handler, TypedHandler};
use crate::install::install_endpoint;
use crate::migrate::{bus_migrations, migrate};
use crate::name::EndpointName;
use crate::outage::Outage;
use crate::receive::{CarefulMode, Pump, PumpConfig};
use crate::recoverability::{RetryPolicy, Throttle};
use crate::send::{DEFAULT_MAX_BODY_BYTES, Origin, Routes, Sender};
use crate::sql::QueueStatements;
use crate::subscriptions::{SUBSCRIPTION_CACHE_TTL, SubscriberCache, subscribe};
use crate::upkeep::{QueueUpkeep, ReceivedCount, UpkeepConfig};
use crate::wakeup::{Notifier, WakeupListener};

/// The largest batch: more than 64 savepoints in one transaction overflow PostgreSQL's
/// subtransaction cache and slow every snapshot.
pub const MAX_BATCH_SIZE: usize = 50;

/// Builds and starts an endpoint.
///
/// ```no_run
/// # use transport_pg::{Database, EndpointBuilder};
/// # async fn run(db: Database) -> Result<(), transport_pg::Error> {
/// let endpoint = EndpointBuilder::new("billing", db)
///     .concurrency(4)
///     .batch_size(10)
///     .start()
///     .await?;
/// endpoint.run_until_signal(std::time::Duration::from_secs(10)).await?;
/// # Ok(()) }
/// ```
pub struct EndpointBuilder {
    name: String,
    db: Database,
    routes: Routes,
    handlers: HashMap<String, Arc<dyn ErasedHandler>>,
    problems: Vec<Error>,
    config: PumpConfig,
    wakeups: bool,
    max_body: usize,
    headers: Headers,
    upkeep: UpkeepConfig,
}

impl EndpointBuilder {
    /// Starts building endpoint `name` on `db`.
    pub fn new(name: &str, db: Database) -> Self {
        EndpointBuilder {
            name: name.to_owned(),
            db,
            routes: Routes::new(),
            handlers: HashMap::new(),
            problems: Vec::new(),
            config: PumpConfig::default(),
            wakeups: true,
            max_body: DEFAULT_MAX_BODY_BYTES,
            headers: Headers::new(),
            upkeep: UpkeepConfig::default(),
        }
    }

    /// Routes command `M` to `endpoint`.
    pub fn route<M: Message>(mut self, endpoint: &str) -> Self {
        if let Err(e) = self.routes.add::<M>(endpoint) {
            self.problems.push(e);
        }
        self
    }

    /// Registers `handler` for messages of type `M`; one handler per type.
    pub fn handler<M: Message, H: Handler<M>>(mut self, handler: H) -> Self {
        if self.handlers.contains_key(M::NAME) {
            self.problems.push(Error::Config(format!(
                "a second handler for {} was registered; one handler per type",
                M::NAME
            )));
            return self;
        }
        self.handlers.insert(
            M::NAME.to_owned(),
            Arc::new(TypedHandler::<M, H>::new(handler)),
        );
        self
    }

    /// Worker tasks (default 4).
    pub fn concurrency(mut self, workers: usize) -> Self {
        self.config.concurrency = workers;
        self
    }

    /// Messages per transaction, 1 to [`MAX_BATCH_SIZE`] (default 1).
    pub fn batch_size(mut self, size: usize) -> Self {
        self.config.batch_size = size;
        self
    }

    /// At most `attempts` tries, all immediate, then the error queue: a shorthand for
    /// [`retry_policy`](EndpointBuilder::retry_policy).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.config.retry = RetryPolicy::immediate_only(attempts);
        self
    }

    /// The retry policy (default [`RetryPolicy::default`]).
    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.config.retry = policy;
        self
    }

    /// Consecutive failures that start the outage throttle (default 40; 0 turns it off),
    /// and the pause between messages while it lasts (default 1 s).
    pub fn throttle(mut self, after_failures: u32, pause: Duration) -> Self {
        self.config.throttle_after = after_failures;
        self.config.throttle_pause = pause;
        self
    }

    /// The longest idle poll interval (default 1 s).
    pub fn idle_poll_max(mut self, interval: Duration) -> Self {
        self.config.idle_poll_max = interval;
        self
    }

    /// Whether to LISTEN for wake-ups and notify after commits (default on). Off, the
    /// endpoint only polls, for networks where LISTEN is not allowed.
    pub fn wakeups(mut self, on: bool) -> Self {
        self.wakeups = on;
        self
    }

    /// Vacuums the queue table after every `messages` received by this process, at most
    /// once per `min_gap` (default 20,000 and 2 s); `messages` 0 leaves the table to
    /// autovacuum alone. See [`UpkeepConfig`].
    pub fn queue_vacuum(mut self, messages: u64, min_gap: Duration) -> Self {
        self.upkeep = UpkeepConfig {
            every: messages,
            min_gap,
        };
        self
    }

    /// Refuses bodies over `bytes` at send (default 4 MiB).
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    fn validate(&mut self) -> Result<EndpointName> {
        if let Some(problem) = self.problems.drain(..).next() {
            return Err(problem);
        }
        let name = EndpointName::new(&self.name)?;
        if !(1..=MAX_BATCH_SIZE).contains(&self.config.batch_size) {
            return Err(Error::Config(format!(
                "batch size {} is outside 1 to {MAX_BATCH_SIZE}",
                self.config.batch_size
            )));
        }
        if self.config.concurrency == 0 {
            return Err(Error::Config("concurrency must be at least 1".to_owned()));
        }
        let factor = self.config.retry.backoff_factor;
        if factor.is_nan() || factor < 1.0 {
            return Err(Error::Config(format!(
                "retry back-off factor {} must be at least 1",
                self.config.retry.backoff_factor
            )));
        }
        Ok(name)
    }

    /// Warns, with the numbers, when this process would need more connections than the
    /// server has free: the pool, plus the listener and the notifier.
    async fn check_connection_budget(&self, name: &EndpointName, pool_size: usize) {
        let needed = pool_size as i64 + if self.wakeups { 2 } else { 0 };
        match self.db.connection_budget().await {
            Ok((max_connections, reserved, in_use)) => {
                let free = i64::from(max_connections) - i64::from(reserved) - in_use;
                if needed > free {
                    warn!(
                        endpoint = %name,
                        needed,
                        free,
                        max_connections,
                        superuser_reserved = reserved,
                        in_use,
                        "this process may need more connections than the server has free; \
                         lower the concurrency or raise max_connections"
                    );
                } else {
                    debug!(endpoint = %name, needed, free, "connection budget fits");
                }
            }
            Err(error) => {
                debug!(endpoint = %name, error = %crate::error::chain(&error),
                    "could not check the connection budget");
            }
        }
    }

    /// Migrates, installs, and starts the workers; returns once the endpoint is ready.
    pub async fn start(mut self) -> Result<Endpoint> {
        let name = self.validate()?;
        crate::panic_location::install();

        migrate(&self.db, &bus_migrations()).await?;
        let mut client = self.db.connect("installer").await?;
        install_endpoint(&mut client, &name).await?;
        let events: Vec<String> = self
            .handlers
            .iter()
            .filter(|(_, h)| h.message_kind() == message::MessageKind::Event)
            .map(|(name, _)| name.clone())
            .collect();
        let event_names: Vec<&str> = events.iter().map(String::as_str).collect();
        subscribe(&client, &name, &event_names).await?;
        drop(client);

        // One connection per worker, one for the mover, two spare for sends from outside
        // handlers, and one the queue upkeep borrows for its vacuums.
        let upkeep_connection = usize::from(self.upkeep.every > 0);
        let pool_size = self.config.concurrency + 3 + upkeep_connection;
        info!(
            endpoint = %name,
            database = ?self.db,
            pool_size,
            config = ?self.config,
            upkeep = ?self.upkeep,
            wakeups = self.wakeups,
            "effective configuration"
        );
        self.check_connection_budget(&name, pool_size).await;
        let pool = self.db.pool(&format!("pgbus {name}"), pool_size)?;
        let outage = Outage::new(name.as_str());
        let notifier = self
            .wakeups
            .then(|| Notifier::start(self.db.clone(), outage.clone()));
        let (stop_tx, stop) = watch::channel(false);
        let wakeups = self.wakeups.then(|| {
            WakeupListener::start(self.db.clone(), name.clone(), stop.clone(), outage.clone())
        });

        let origin = Arc::new(Origin {
            name: name.to_string(),
            reply_to: Some(name.clone()),
            host: crate::host_name(),
            routes: self.routes,
            max_body: self.max_body,
            extra_headers: self.headers,
            subscribers: SubscriberCache::default(),
        });
        let sender = Sender::from_parts(origin.clone(), pool.clone(), notifier.clone());

        let statements = Arc::new(QueueStatements::new(&name.tables(), self.config.batch_size));
        let received = ReceivedCount::default();
        let pump = Arc::new(Pump {
            statements: statements.clone(),
            endpoint: name.clone(),
            pool,
            handlers: self.handlers,
            origin,
            notifier,
            config: self.config.clone(),
            careful: CarefulMode::new(),
            claim_class: claim_class(&name),
            received: received.clone(),
            throttle: Throttle::new(self.config.throttle_after, self.config.throttle_pause),
            outage: outage.clone(),
            work: tokio::sync::Notify::new(),
            listening: wakeups
                .as_ref()
                .map(|w| w.listening.clone())
                .unwrap_or_default(),
        });

        // Without a listener the wake channel never changes, and workers poll.
        let (_never_tx, never) = watch::channel(0u64);
        let (wake, wake_delayed) = match wakeups {
            Some(w) => (w.queue, w.delayed),
            None => (never.clone(), never),
        };
        let mut workers = JoinSet::new();
        let mover = DueMessageMover {
            endpoint: name.clone(),
            pool: pump.pool.clone(),
            statements,
            notifier: pump.notifier.clone(),
            // With wake-ups on, a lost notification is rare; without, this is the poll.
            max_sleep: if self.wakeups {
                Duration::from_secs(5)
            } else {
                self.config.idle_poll_max
            },
            outage,
        };
        workers.spawn(mover.run(wake_delayed, stop.clone()));
        let upkeep = QueueUpkeep {
            endpoint: name.clone(),
            pool: pump.pool.clone(),
            queue: name.tables().queue,
            received,
            config: self.upkeep,
        };
        workers.spawn(upkeep.run(stop.clone()));
        workers.spawn(pump.clone().relay_wakeups(wake, stop.clone()));
        for worker in 0..self.config.concurrency {
            workers.spawn(pump.clone().run_worker(worker, stop.clone()));
        }

        // Publishers may hold a subscriber list this old: after this wait, every event
        // whose publishing transaction begins reaches this endpoint.
        if !events.is_empty() {
            tokio::time::sleep(SUBSCRIPTION_CACHE_TTL).await;
        }
        info!(endpoint = %name, "starting in careful mode: one claimed message at a time");
        info!(
            endpoint = %name,
            concurrency = self.config.concurrency,
            batch_size = self.config.batch_size,
            wakeups = self.wakeups,
            handlers = pump.handlers.len(),
            "endpoint ready"
        );
        Ok(Endpoint {
            name,
            pump,
            sender,
            stop: stop_tx,
            workers,
            _never_tx,
        })
    }
}

/// A running endpoint. Dropping it stops nothing; call [`shutdown`](Endpoint::shutdown).
#[must_use = "an endpoint runs until shut down; keep it and call shutdown"]
pub struct Endpoint {
    name: EndpointName,
    pump: Arc<Pump>,
    sender: Sender,
    stop: watch::Sender<bool>,
    workers: JoinSet<()>,
    // Keeps the poll-only wake channel open, so waiting on it means "no wake-up".
    _never_tx: watch::Sender<u64>,
}

/// How a shutdown ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// Every in-flight batch finished and committed.
    Clean,
    /// The grace period ran out; the batches still running were rolled back, and their
    /// messages are back in the queue.
    TimedOut,
}

impl Endpoint {
    /// The endpoint's name.
    pub fn name(&self) -> &EndpointName {
        &self.name
    }

    /// Whether the pump is still in its careful start-up mode.
    pub fn is_careful(&self) -> bool {
        self.pump
            .careful
            .active
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the outage throttle is on.
    pub fn is_throttled(&self) -> bool {
        self.pump.throttle.is_active()
    }

    /// A sender whose messages come from this endpoint (replies come back to it).
    pub fn sender(&self) -> &Sender {
        &self.sender
    }

    /// Stops taking messages, lets in-flight batches finish within `grace`, and rolls
    /// back the ones that do not.
    pub async fn shutdown(mut self, grace: Duration) -> Shutdown {
        info!(endpoint = %self.name, grace_ms = grace.as_millis() as u64, "shutting down");
        let _ = self.stop.send(true);

        let drained = tokio::time::timeout(grace, async {
            while self.workers.join_next().await.is_some() {}
        })
        .await;
        if drained.is_ok() {
            info!(endpoint = %self.name, "stopped cleanly");
            return Shutdown::Clean;
        }

        // Dropping a worker's future drops its open transaction, which closes the
        // connection; the server rolls the batch back.
        self.workers.abort_all();
        while self.workers.join_next().await.is_some() {}
        warn!(endpoint = %self.name, "grace period over; in-flight batches rolled back");
        Shutdown::TimedOut
    }

    /// Runs until SIGINT or SIGTERM, then shuts down with `grace`.
    pub async fn run_until_signal(self, grace: Duration) -> Result<Shutdown> {
        wait_for_signal().await?;
        Ok(self.shutdown(grace).await)
    }
}

/// Waits for SIGINT or SIGTERM.
pub async fn wait_for_signal() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| Error::Config(format!("cannot install the SIGTERM handler: {e}")))?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    Ok(())
}

/// A stable advisory lock class per endpoint for the careful mode's claims (FNV-1a of
/// the name, folded to 31 bits so it is never the installer's class).
fn claim_class(name: &EndpointName) -> i32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in name.as_str().bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    (hash & 0x3fff_ffff) as i32
}
