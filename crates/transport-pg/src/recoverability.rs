//! What happens to a message whose handler failed: the retry policy, and the outage
//! throttle that slows an endpoint down when everything is failing.
//!
//! A failed message is tried again at once a few times (immediate retries), then after
//! growing delays (delayed retries, which are deferred messages to the endpoint's own
//! delayed table), then moved to the error queue. The counters travel in the message's
//! headers and are written in the transaction that puts it back, so they are exact across
//! instances, crashes and restarts. Failures that can never succeed skip the retries.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use tracing::{info, warn};

/// How many times, and how soon, a failing message is tried again.
///
/// The defaults, 3 immediate and 3 delayed retries 10 s, 30 s and 90 s apart, suit a
/// provider that recovers within minutes; demos and tests set shorter ones.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Tries again at once after each of the first this many failures.
    pub immediate: u32,
    /// Then tries again after a delay this many times.
    pub delayed: u32,
    /// The first delay.
    pub first_delay: Duration,
    /// Each later delay is the one before times this.
    pub backoff_factor: f64,
    /// No delay is longer than this.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            immediate: 3,
            delayed: 3,
            first_delay: Duration::from_secs(10),
            backoff_factor: 3.0,
            max_delay: Duration::from_secs(3600),
        }
    }
}

/// What to do with a message after its `failures`-th failure.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NextStep {
    /// Put it back in the queue now.
    RetryNow,
    /// Put it in the delayed table, due after this long.
    RetryAfter(Duration),
    /// Move it to the error queue.
    Fail,
}

impl RetryPolicy {
    /// At most `attempts` tries in all, every retry immediate.
    pub fn immediate_only(attempts: u32) -> Self {
        RetryPolicy {
            immediate: attempts.saturating_sub(1),
            delayed: 0,
            ..RetryPolicy::default()
        }
    }

    /// How many times a message that always fails is tried.
    pub fn total_tries(&self) -> u32 {
        1 + self.immediate + self.delayed
    }

    /// The step after failure number `failures` (1 for the first); permanent failures
    /// always fail.
    pub fn next_step(&self, failures: u32, permanent: bool) -> NextStep {
        if permanent {
            return NextStep::Fail;
        }
        if failures <= self.immediate {
            return NextStep::RetryNow;
        }
        let delayed_round = failures - self.immediate;
        if delayed_round <= self.delayed {
            return NextStep::RetryAfter(self.delay(delayed_round));
        }
        NextStep::Fail
    }

    /// The delay before delayed retry number `round` (1 for the first).
    pub fn delay(&self, round: u32) -> Duration {
        let factor = self
            .backoff_factor
            .max(1.0)
            .powi(round.saturating_sub(1) as i32);
        let delay = self.first_delay.as_secs_f64() * factor;
        Duration::from_secs_f64(delay.min(self.max_delay.as_secs_f64()))
    }
}

/// Slows an endpoint to one message at a time, with a pause, after a run of consecutive
/// failures across all its workers (the payment provider is down), instead of burning
/// every message's retries into the error queue; the first success ends it.
pub(crate) struct Throttle {
    /// Consecutive failures that start the throttle; 0 turns it off.
    pub after: u32,
    /// The pause between messages while throttled.
    pub pause: Duration,
    consecutive: AtomicU32,
    active: AtomicBool,
    /// One message at a time across the process while throttled.
    pub one_at_a_time: tokio::sync::Mutex<()>,
}

impl Throttle {
    pub fn new(after: u32, pause: Duration) -> Self {
        Throttle {
            after,
            pause,
            consecutive: AtomicU32::new(0),
            active: AtomicBool::new(false),
            one_at_a_time: tokio::sync::Mutex::new(()),
        }
    }

    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    pub fn failed(&self, endpoint: &str) {
        let run = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        if self.after > 0 && run >= self.after && !self.active.swap(true, Ordering::Relaxed) {
            warn!(
                endpoint,
                consecutive_failures = run,
                pause_ms = self.pause.as_millis() as u64,
                "entering the outage throttle: one message at a time until one succeeds"
            );
        }
    }

    pub fn succeeded(&self, endpoint: &str) {
        self.consecutive.store(0, Ordering::Relaxed);
        if self.active.swap(false, Ordering::Relaxed) {
            info!(endpoint, "leaving the outage throttle: a message succeeded");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn immediate_then_growing_delays_then_the_error_queue() {
        let policy = RetryPolicy {
            immediate: 2,
            delayed: 3,
            first_delay: Duration::from_secs(1),
            backoff_factor: 2.0,
            max_delay: Duration::from_secs(3),
        };
        assert_eq!(policy.total_tries(), 6);
        assert_eq!(policy.next_step(1, false), NextStep::RetryNow);
        assert_eq!(policy.next_step(2, false), NextStep::RetryNow);
        assert_eq!(
            policy.next_step(3, false),
            NextStep::RetryAfter(Duration::from_secs(1))
        );
        assert_eq!(
            policy.next_step(4, false),
            NextStep::RetryAfter(Duration::from_secs(2))
        );
        assert_eq!(
            policy.next_step(5, false),
            NextStep::RetryAfter(Duration::from_secs(3))
        );
        assert_eq!(policy.next_step(6, false), NextStep::Fail);
        assert_eq!(policy.next_step(1, true), NextStep::Fail);
    }
}
