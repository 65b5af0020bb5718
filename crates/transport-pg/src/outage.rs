//! Host-wide outage tracking: one log line when the database goes away, one when every
//! task of the host has reconnected, however many tasks and attempts lie between.
//!
//! Each background task (the workers, the listener, the notifier, the mover) reports
//! [`Outage::lost`] when its connection fails and [`Outage::restored`] on its next
//! success. The outage starts with the first loss and ends when no task is down; the end
//! is logged only after a short quiet period, because some tasks notice a lost
//! connection only when they next use it, and a straggler should extend the outage it
//! belongs to rather than start a new one.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tracing::{error, info, warn};

/// How long no task may be down before an outage is declared over.
const QUIET_PERIOD: Duration = Duration::from_secs(2);

/// An outage longer than this is logged at error level when it ends.
const LONG_OUTAGE: Duration = Duration::from_secs(60);

/// The outage state of one host (an endpoint process, or a sender). Cheap to clone.
#[derive(Clone)]
pub struct Outage {
    inner: Arc<Mutex<State>>,
    scope: Arc<str>,
}

#[derive(Default)]
struct State {
    down: HashSet<String>,
    started: Option<Instant>,
    /// When the last task came back, while waiting out the quiet period.
    all_back_at: Option<Instant>,
    last_error: String,
    attempts: u64,
}

impl Outage {
    /// A tracker for the host named `scope` (an endpoint name), with its quiet-period
    /// watcher running until every handle is dropped.
    pub fn new(scope: &str) -> Outage {
        let outage = Outage {
            inner: Arc::new(Mutex::new(State::default())),
            scope: scope.into(),
        };
        let weak = Arc::downgrade(&outage.inner);
        let scope = outage.scope.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(QUIET_PERIOD / 4).await;
                let Some(inner) = weak.upgrade() else { return };
                end_if_quiet(&scope, &inner);
            }
        });
        outage
    }

    /// `task` could not reach the database.
    pub fn lost(&self, task: &str, error: &str) {
        let mut state = self.inner.lock().expect("outage lock poisoned");
        state.attempts += 1;
        state.last_error = error.to_owned();
        state.all_back_at = None;
        let first = state.down.is_empty() && state.started.is_none();
        state.down.insert(task.to_owned());
        if first {
            state.started = Some(Instant::now());
            warn!(
                target: "pgbus::outage",
                scope = %self.scope,
                task,
                error,
                "database outage started: reconnecting with back-off"
            );
        }
    }

    /// `task` reached the database again (or never lost it).
    pub fn restored(&self, task: &str) {
        let mut state = self.inner.lock().expect("outage lock poisoned");
        if state.down.remove(task) && state.down.is_empty() {
            state.all_back_at = Some(Instant::now());
        }
    }

    /// Whether an outage is in progress.
    pub fn is_down(&self) -> bool {
        self.inner
            .lock()
            .expect("outage lock poisoned")
            .started
            .is_some()
    }
}

fn end_if_quiet(scope: &str, inner: &Mutex<State>) {
    let mut state = inner.lock().expect("outage lock poisoned");
    let (Some(started), Some(back)) = (state.started, state.all_back_at) else {
        return;
    };
    if !state.down.is_empty() || back.elapsed() < QUIET_PERIOD {
        return;
    }
    let lasted = back.duration_since(started);
    let lasted_ms = lasted.as_millis() as u64;
    let attempts = state.attempts;
    let last_error = std::mem::take(&mut state.last_error);
    *state = State::default();
    drop(state);

    if lasted >= LONG_OUTAGE {
        error!(target: "pgbus::outage", scope, lasted_ms, attempts, last_error,
            "database outage ended");
    } else {
        info!(target: "pgbus::outage", scope, lasted_ms, attempts, last_error,
            "database outage ended");
    }
}

/// Capped exponential back-off with jitter, for reconnect loops.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    /// Starts at `min`, doubling up to `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            next: min,
            min,
            max,
        }
    }

    /// The next wait: the current step with up to half of it added at random, so that
    /// many processes do not reconnect in lock step.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let jitter = base.as_secs_f64() * 0.5 * random_fraction();
        base + Duration::from_secs_f64(jitter)
    }

    /// Back to the first step after a success.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// A number in [0, 1) from a fresh v4 uuid's random bits; plenty for jitter.
fn random_fraction() -> f64 {
    let bits = uuid::Uuid::new_v4().as_u128() as u64;
    (bits >> 11) as f64 / (1u64 << 53) as f64
}
