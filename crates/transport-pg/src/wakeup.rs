//! Wake-ups: the post-commit [`Notifier`] and the per-process [`WakeupListener`].
//!
//! A sender never calls `pg_notify` inside its business transaction: a transaction that
//! has notified takes a cluster-wide lock while it commits, so notifying commits queue up
//! behind each other's WAL flush. Instead, after a commit the sender marks the
//! destinations it wrote to, and one notifier task per process sends the notifications on
//! its own connection with `synchronous_commit = off`, each destination at most once per
//! [`COALESCE_INTERVAL`]: the first mark at once, later marks inside the interval folded
//! into one at its end.
//!
//! A notification can be lost (a crash between commit and notify, a listener reconnect);
//! receivers still poll with a bounded back-off, so a lost one costs latency, never a
//! message.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_postgres::Statement;
use tracing::debug;

use crate::connect::Database;
use crate::name::EndpointName;
use crate::outage::{Backoff, Outage};

/// The shortest gap between two notifications to one destination.
pub const COALESCE_INTERVAL: Duration = Duration::from_millis(5);

/// One notification per element: `$1` channels, `$2` payloads.
const NOTIFY_SQL: &str = "SELECT pg_notify(c, p) FROM unnest($1::text[], $2::text[]) AS u(c, p)";

/// Payload of a notification about a delayed-table insert, for the due-message mover.
pub const DELAYED_PAYLOAD: &str = "delayed";

/// The channel an endpoint listens on.
pub fn channel(endpoint: &EndpointName) -> String {
    format!("pgbus_{endpoint}")
}

/// Marks destinations to wake after a commit; one background task sends the
/// notifications. Cheap to clone.
#[derive(Clone)]
pub struct Notifier {
    shared: Arc<NotifierShared>,
}

/// A destination's channel and payload.
type Key = (String, &'static str);

struct NotifierShared {
    // Every destination marked and not yet notified since, with a count of its marks:
    // written by every committing task, cleared by the notifier task.
    pending: Mutex<BTreeMap<Key, u64>>,
    // Every mark since the last flush, for a process about to exit.
    since_flush: Mutex<BTreeSet<Key>>,
    wake: Notify,
}

impl Notifier {
    /// Starts the notifier task for this process; it makes its own connection and
    /// reports losing it to `outage`.
    pub fn start(db: Database, outage: Outage) -> Notifier {
        let shared = Arc::new(NotifierShared {
            pending: Mutex::new(BTreeMap::new()),
            since_flush: Mutex::new(BTreeSet::new()),
            wake: Notify::new(),
        });
        tokio::spawn(run_notifier(db, Arc::downgrade(&shared), outage));
        Notifier { shared }
    }

    /// Marks `destination`'s queue as written to.
    pub fn mark(&self, destination: &EndpointName) {
        self.mark_with(destination, "");
    }

    /// Marks `destination`'s delayed table as written to.
    pub fn mark_delayed(&self, destination: &EndpointName) {
        self.mark_with(destination, DELAYED_PAYLOAD);
    }

    fn mark_with(&self, destination: &EndpointName, payload: &'static str) {
        let key = (channel(destination), payload);
        let mut pending = self.shared.pending.lock().expect("notifier lock poisoned");
        let first = match pending.get_mut(&key) {
            Some(marks) => {
                *marks += 1;
                false
            }
            None => {
                pending.insert(key.clone(), 0);
                true
            }
        };
        drop(pending);
        self.shared
            .since_flush
            .lock()
            .expect("notifier lock poisoned")
            .insert(key);
        // A destination already pending is in the notifier's schedule.
        if first {
            self.shared.wake.notify_one();
        }
    }

    /// Sends, on `client` and now, a notification for everything marked since the last
    /// flush, for a short-lived process about to exit before the background task would
    /// have sent them. A notification sent twice is harmless.
    pub async fn flush(&self, client: &tokio_postgres::Client) -> crate::Result<()> {
        let marked = std::mem::take(&mut *self.shared.since_flush.lock().expect("lock poisoned"));
        if marked.is_empty() {
            return Ok(());
        }
        let channels: Vec<&str> = marked.iter().map(|(c, _)| c.as_str()).collect();
        let payloads: Vec<&str> = marked.iter().map(|(_, p)| *p).collect();
        client
            .execute(NOTIFY_SQL, &[&channels, &payloads])
            .await
            .map_err(crate::error::Error::db("flush notifications"))?;
        Ok(())
    }
}

/// Sends pending notifications until every [`Notifier`] handle is dropped.
///
/// A destination stays in `pending` from its first mark until a notification sent after
/// its latest mark; marks on a destination already pending do not wake this task, so a
/// busy destination costs one wake-up and one notification per [`COALESCE_INTERVAL`],
/// however many commits mark it.
async fn run_notifier(db: Database, weak: std::sync::Weak<NotifierShared>, outage: Outage) {
    let mut client: Option<(tokio_postgres::Client, Statement)> = None;
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut last_sent: BTreeMap<Key, Instant> = BTreeMap::new();

    loop {
        let Some(shared) = weak.upgrade() else {
            return;
        };

        // What is due now, and when the next of the rest is.
        let now = Instant::now();
        let mut ready: Vec<(Key, u64)> = Vec::new();
        let mut next_due: Option<Instant> = None;
        for (key, generation) in shared
            .pending
            .lock()
            .expect("notifier lock poisoned")
            .iter()
        {
            match last_sent.get(key).map(|t| *t + COALESCE_INTERVAL) {
                Some(due) if due > now => next_due = Some(next_due.map_or(due, |d| d.min(due))),
                _ => ready.push((key.clone(), *generation)),
            }
        }

        // A connection the server closed (a restart, pg_terminate_backend) is noticed
        // here, within a second even when idle, so its outage is counted with the rest.
        if client.as_ref().is_some_and(|(c, _)| c.is_closed()) {
            outage.lost("notifier", "notifier connection closed");
            client = None;
        }
        if client.is_none() && (outage.is_down() || !ready.is_empty()) {
            client = connect_notifier(&db).await;
            match client {
                Some(_) => {
                    backoff.reset();
                    outage.restored("notifier");
                }
                None => {
                    outage.lost("notifier", "cannot connect");
                    drop(shared);
                    tokio::time::sleep(backoff.next_delay()).await;
                    continue;
                }
            }
        }

        if ready.is_empty() {
            // Until marked, or until the next held notification is due; without a due
            // time, now and then, to notice every handle is gone. A mark made since the
            // scan above left a permit, so it is not missed.
            let until = next_due.unwrap_or_else(|| now + Duration::from_secs(1));
            let _ = tokio::time::timeout_at(until, shared.wake.notified()).await;
            continue;
        }

        let channels: Vec<&str> = ready.iter().map(|((c, _), _)| c.as_str()).collect();
        let payloads: Vec<&str> = ready.iter().map(|((_, p), _)| *p).collect();
        let (connection, notify) = client.as_ref().expect("connected above");
        let sent = connection.execute(notify, &[&channels, &payloads]).await;
        match sent {
            Ok(_) => {
                let mut pending = shared.pending.lock().expect("notifier lock poisoned");
                for (key, generation) in ready {
                    // Marked again while this was sent: that commit may have come after
                    // the notification, so the destination stays pending for the next.
                    if pending.get(&key) == Some(&generation) {
                        pending.remove(&key);
                    }
                    last_sent.insert(key, now);
                }
                drop(pending);
                // What the task sent needs no flush at exit. (A mark made meanwhile may be
                // dropped here too; the receivers' poll covers it.)
                shared
                    .since_flush
                    .lock()
                    .expect("notifier lock poisoned")
                    .clear();
                // Forget destinations idle for a while, so the map stays small.
                last_sent.retain(|_, t| now.duration_since(*t) < Duration::from_secs(10));
            }
            Err(error) => {
                debug!(%error, "notify failed; will reconnect");
                outage.lost("notifier", &error.to_string());
                client = None;
            }
        }
    }
}

/// The notifier's connection, with its statement prepared once: sent as text, it would be
/// parsed and planned again for every notification.
async fn connect_notifier(db: &Database) -> Option<(tokio_postgres::Client, Statement)> {
    match db.connect("notifier").await {
        Ok(client) => {
            // A notification is a hint; losing one in a crash costs latency only, so its
            // tiny transactions need not wait for the WAL flush.
            let set_up = async {
                client.batch_execute("SET synchronous_commit = off").await?;
                client.prepare(NOTIFY_SQL).await
            };
            match set_up.await {
                Ok(notify) => Some((client, notify)),
                Err(error) => {
                    debug!(%error, "notifier set-up failed");
                    None
                }
            }
        }
        Err(error) => {
            debug!(error = %crate::error::chain(&error), "notifier cannot connect");
            None
        }
    }
}

/// What a listener tells the receivers and the mover of its endpoint.
#[derive(Clone)]
pub struct Wakeups {
    /// Bumped for each notification about the queue (and after each reconnect).
    pub queue: watch::Receiver<u64>,
    /// Bumped for each notification about the delayed table (and after each reconnect).
    pub delayed: watch::Receiver<u64>,
    /// True while the listener's LISTEN is in place: then a commit to the queue wakes a
    /// receiver within milliseconds, and the receivers' poll is only the fallback for a
    /// lost notification.
    pub listening: Arc<AtomicBool>,
}

/// Keeps one dedicated connection listening on the endpoint's channel and reconnects
/// when it is lost; after each (re)connect it wakes everyone for a full receive.
pub struct WakeupListener;

impl WakeupListener {
    /// Starts listening for `endpoint`; returns the receivers to wait on. The task ends
    /// when `stop` turns true.
    pub fn start(
        db: Database,
        endpoint: EndpointName,
        stop: watch::Receiver<bool>,
        outage: Outage,
    ) -> Wakeups {
        let (queue_tx, queue) = watch::channel(0u64);
        let (delayed_tx, delayed) = watch::channel(0u64);
        let listening = Arc::new(AtomicBool::new(false));
        let senders = Senders {
            queue: queue_tx,
            delayed: delayed_tx,
            listening: listening.clone(),
        };
        tokio::spawn(run_listener(db, endpoint, senders, stop, outage));
        Wakeups {
            queue,
            delayed,
            listening,
        }
    }
}

/// The listener's side of [`Wakeups`].
struct Senders {
    queue: watch::Sender<u64>,
    delayed: watch::Sender<u64>,
    listening: Arc<AtomicBool>,
}

async fn run_listener(
    db: Database,
    endpoint: EndpointName,
    senders: Senders,
    mut stop: watch::Receiver<bool>,
    outage: Outage,
) {
    let Senders {
        queue,
        delayed,
        listening,
    } = senders;
    let channel = channel(&endpoint);
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let bump = |tx: &watch::Sender<u64>| tx.send_modify(|n| *n = n.wrapping_add(1));

    while !*stop.borrow() {
        let connected = db.connect_with_stream("listener").await;
        let (client, mut messages) = match connected {
            Ok(pair) => pair,
            Err(error) => {
                let text = crate::error::chain(&error);
                outage.lost("listener", &text);
                debug!(endpoint = %endpoint, error = %text,
                    "listener cannot connect; receivers poll meanwhile");
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
        };

        // The channel is derived from a validated endpoint name, so it needs no quoting
        // beyond the double quotes.
        let listen = format!("LISTEN \"{channel}\"");
        if let Err(error) = client.batch_execute(&listen).await {
            outage.lost("listener", &error.to_string());
            debug!(endpoint = %endpoint, %error, "LISTEN failed");
            tokio::time::sleep(backoff.next_delay()).await;
            continue;
        }
        backoff.reset();
        outage.restored("listener");
        debug!(endpoint = %endpoint, channel, "listening for wake-ups");

        // Anything sent while we were not listening was missed: receive everything.
        listening.store(true, Ordering::Relaxed);
        bump(&queue);
        bump(&delayed);

        loop {
            tokio::select! {
                notification = messages.recv() => match notification {
                    Some(n) if n.payload() == DELAYED_PAYLOAD => bump(&delayed),
                    Some(_) => bump(&queue),
                    None => {
                        listening.store(false, Ordering::Relaxed);
                        outage.lost("listener", "listener connection lost");
                        debug!(endpoint = %endpoint, "listener connection lost; reconnecting");
                        break;
                    }
                },
                _ = stop.changed() => {
                    if *stop.borrow() {
                        return;
                    }
                }
            }
        }
        drop(client);
    }
}
