//! Publish/subscribe: subscribing at start-up, the publisher's subscriber cache, and the
//! operator's unsubscribe and decommission.
//!
//! The rule a subscriber can rely on: once its start-up has reported ready, every event
//! whose publishing transaction begins afterwards reaches it, and nothing published
//! before its first subscription committed does. Publishers cache each type's subscriber
//! list for at most [`SUBSCRIPTION_CACHE_TTL`]; a subscriber's start-up waits that long
//! after its subscriptions commit before it reports ready, so any cache entry a later
//! publishing transaction uses was read after the subscription was visible.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{debug, info};

use crate::error::{Error, Result};
use crate::executor::Executor;
use crate::name::EndpointName;
use crate::send::{Delivery, Outgoing};
use crate::sql::subscription::{
    SUBSCRIPTION_DELETE, SUBSCRIPTION_LIST_FOR_TYPE, SUBSCRIPTION_UPSERT,
};

/// How long a publisher may reuse a subscriber list.
pub const SUBSCRIPTION_CACHE_TTL: Duration = Duration::from_secs(1);

/// An event waiting to be copied to every subscriber of its type.
#[derive(Debug, Clone)]
pub(crate) struct Publication {
    pub message_type: String,
    /// The copy every subscriber gets; its destination is replaced per subscriber.
    pub template: Outgoing,
}

/// A subscriber list and when it was read.
type CachedList = (Instant, Arc<Vec<EndpointName>>);

/// Subscriber lists by event type, each at most [`SUBSCRIPTION_CACHE_TTL`] old.
#[derive(Debug, Default)]
pub(crate) struct SubscriberCache {
    entries: Mutex<HashMap<String, CachedList>>,
}

impl SubscriberCache {
    /// The subscribers of `message_type`, from the cache or, when stale, from the table
    /// inside the caller's transaction.
    pub async fn subscribers(
        &self,
        exec: &impl Executor,
        message_type: &str,
    ) -> Result<Arc<Vec<EndpointName>>> {
        if let Some((at, list)) = self.entries.lock().expect("cache lock").get(message_type) {
            if at.elapsed() < SUBSCRIPTION_CACHE_TTL {
                return Ok(list.clone());
            }
        }

        // Take the time before the read: the entry is then never older than it claims.
        let read_at = Instant::now();
        let statement = exec
            .prepare_statement(SUBSCRIPTION_LIST_FOR_TYPE)
            .await
            .map_err(Error::db("prepare subscriber list"))?;
        let rows = exec
            .query_statement(&statement, &[&message_type])
            .await
            .map_err(Error::db(format!("list subscribers of {message_type}")))?;
        let mut list = Vec::with_capacity(rows.len());
        for row in rows {
            let name: String = row.get(0);
            list.push(EndpointName::new(&name)?);
        }
        let list = Arc::new(list);
        self.entries
            .lock()
            .expect("cache lock")
            .insert(message_type.to_owned(), (read_at, list.clone()));
        Ok(list)
    }

    /// One copy of each publication per subscriber. A type nobody subscribes to is
    /// published to no one, which is not an error.
    pub async fn expand(
        &self,
        exec: &impl Executor,
        publications: Vec<Publication>,
    ) -> Result<Vec<Outgoing>> {
        let mut copies = Vec::new();
        for publication in publications {
            let subscribers = self.subscribers(exec, &publication.message_type).await?;
            if subscribers.is_empty() {
                debug!(message_type = %publication.message_type, "published to no subscriber");
            }
            for subscriber in subscribers.iter() {
                let mut copy = publication.template.clone();
                copy.destination = subscriber.clone();
                copy.delivery = Delivery::Now;
                copies.push(copy);
            }
        }
        Ok(copies)
    }
}

/// Subscribes `endpoint` to each of `message_types`; idempotent.
pub async fn subscribe(
    client: &tokio_postgres::Client,
    endpoint: &EndpointName,
    message_types: &[&str],
) -> Result<()> {
    for message_type in message_types {
        client
            .execute(SUBSCRIPTION_UPSERT, &[message_type, &endpoint.as_str()])
            .await
            .map_err(Error::db(format!("subscribe {endpoint} to {message_type}")))?;
    }
    if !message_types.is_empty() {
        info!(endpoint = %endpoint, types = ?message_types, "subscribed");
    }
    Ok(())
}

/// Removes `endpoint`'s subscription to `message_type`, or all of them when `None`;
/// returns how many were removed. Publishers stop sending it copies within
/// [`SUBSCRIPTION_CACHE_TTL`].
pub async fn unsubscribe(
    client: &tokio_postgres::Client,
    endpoint: &EndpointName,
    message_type: Option<&str>,
) -> Result<u64> {
    client
        .execute(SUBSCRIPTION_DELETE, &[&endpoint.as_str(), &message_type])
        .await
        .map_err(Error::db(format!("unsubscribe {endpoint}")))
}

/// Removes an endpoint for good: its registry row and subscriptions first, then, once
/// every publisher's cache has had time to forget it, its queue and delayed tables with
/// whatever they still hold. Returns whether it was installed.
pub async fn decommission(
    client: &tokio_postgres::Client,
    endpoint: &EndpointName,
) -> Result<bool> {
    let removed = client
        .execute(
            "DELETE FROM bus.endpoints WHERE name = $1",
            &[&endpoint.as_str()],
        )
        .await
        .map_err(Error::db(format!("remove {endpoint} from the registry")))?;
    tokio::time::sleep(SUBSCRIPTION_CACHE_TTL + Duration::from_millis(100)).await;

    let tables = endpoint.tables();
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {}; DROP TABLE IF EXISTS {}",
            tables.queue, tables.delayed
        ))
        .await
        .map_err(Error::db(format!("drop the tables of {endpoint}")))?;
    info!(endpoint = %endpoint, "decommissioned");
    Ok(removed > 0)
}
