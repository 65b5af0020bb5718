//! The saga runtime: the transport handlers a saga is plugged in as, and the step each
//! runs inside the receive transaction.
//!
//! A step locks the instance (or creates it, for a message that may start it), runs the
//! saga's handler with its data, saves the data with the version raised, and on
//! completion closes the row and deletes its pending timeouts. The host runs every
//! handler in a savepoint, so a failing step rolls all of that back with the business
//! writes and sends. Now and then a step also purges closed records past their retention.

use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use message::Message;
use tracing::{debug, info, warn};
use transport_pg::{Context, Handler, HandlerError, header};
use uuid::Uuid;

use crate::context::{PendingTimeout, SagaContext};
use crate::error::SagaError;
use crate::saga::{NotFound, Saga, SagaHandles, SagaTimeout};
use crate::store::{self, Instance, NewSaga};

/// Closed records deleted by one purge at most, so a purge stays a short statement
/// inside the receive transaction it rides on.
const PURGE_BATCH: i64 = 200;

/// The log target of per-step events, so they can be switched on alone.
const STEP_TARGET: &str = "pgbus::saga";

/// How often the lock-or-create step may lose the insert and still find no row to lock.
const LOCK_OR_CREATE_ATTEMPTS: u32 = 3;

/// One registered saga: the saga value, what it declared, and its purge settings.
/// Shared by its handlers (one per message type); read-only but for the purge clock.
pub(crate) struct Runtime<S: Saga> {
    pub saga: S,
    /// The type names of the timeouts the saga declared.
    pub timeouts: Vec<&'static str>,
    pub retention: Duration,
    pub purge_interval: Duration,
    /// When a handler of this saga last purged, in this process. Locked only briefly,
    /// never across an await.
    pub last_purge: Mutex<Option<Instant>>,
}

/// The handler for message `M` of saga `S`.
pub(crate) struct StepHandler<S: Saga, M> {
    runtime: Arc<Runtime<S>>,
    _message: PhantomData<fn() -> M>,
}

impl<S: Saga, M> StepHandler<S, M> {
    pub fn new(runtime: Arc<Runtime<S>>) -> Self {
        StepHandler {
            runtime,
            _message: PhantomData,
        }
    }
}

/// The handler for timeout `T` of saga `S`.
pub(crate) struct TimeoutHandler<S: Saga, T> {
    runtime: Arc<Runtime<S>>,
    _timeout: PhantomData<fn() -> T>,
}

impl<S: Saga, T> TimeoutHandler<S, T> {
    pub fn new(runtime: Arc<Runtime<S>>) -> Self {
        TimeoutHandler {
            runtime,
            _timeout: PhantomData,
        }
    }
}

/// The host orders each batch by this key, so batches lock saga rows in one order. The
/// type comes first: two saga types with the same business ids on one endpoint would
/// otherwise tie, and ties keep receive order, which differs between batches. Type names
/// have no `:`, so the key is unambiguous.
fn lock_key<S: Saga>(correlation: &str) -> String {
    format!("{}:{correlation}", S::NAME)
}

impl<S, M> Handler<M> for StepHandler<S, M>
where
    S: SagaHandles<M>,
    M: Message,
{
    async fn handle(&self, message: M, ctx: &mut Context<'_>) -> Result<(), HandlerError> {
        self.runtime.step(message, ctx).await
    }

    fn lock_key(&self, message: &M) -> Option<String> {
        Some(lock_key::<S>(&<S as SagaHandles<M>>::correlate(message)))
    }
}

impl<S, T> Handler<T> for TimeoutHandler<S, T>
where
    S: SagaTimeout<T>,
    T: Message,
{
    async fn handle(&self, timeout: T, ctx: &mut Context<'_>) -> Result<(), HandlerError> {
        self.runtime.timeout(timeout, ctx).await
    }

    fn lock_key(&self, timeout: &T) -> Option<String> {
        Some(lock_key::<S>(&<S as SagaTimeout<T>>::correlate(timeout)))
    }
}

/// What the lookup found for a message.
enum Found {
    /// An open instance; `true` when this message just created it.
    Open(Instance, bool),
    /// A closed record.
    Closed(Instance),
    /// Nothing, and the message may not start a saga.
    Missing,
}

impl<S: Saga> Runtime<S> {
    /// Handles message `M`: lock or create the instance, run the handler, save.
    async fn step<M: Message>(&self, message: M, ctx: &mut Context<'_>) -> Result<(), HandlerError>
    where
        S: SagaHandles<M>,
    {
        let correlation = <S as SagaHandles<M>>::correlate(&message);
        if correlation.is_empty() {
            return Err(SagaError::EmptyCorrelation {
                saga_type: S::NAME.to_owned(),
                message_type: M::NAME.to_owned(),
            }
            .into_handler_error());
        }

        let found = self
            .lock_or_create::<M>(ctx, &correlation)
            .await
            .map_err(SagaError::into_handler_error)?;
        let (instance, started) = match found {
            Found::Open(instance, started) => (instance, started),
            Found::Closed(instance) => {
                return self
                    .not_found(ctx, M::NAME, &correlation, Some(instance.id))
                    .await;
            }
            Found::Missing => return self.not_found(ctx, M::NAME, &correlation, None).await,
        };

        let mut data = self.decode(&instance)?;
        let mut saga_ctx = SagaContext::new(ctx, &instance, started, &self.timeouts);
        <S as SagaHandles<M>>::handle(&self.saga, &mut data, message, &mut saga_ctx).await?;
        let outcome = saga_ctx.finish();

        self.save(ctx, &instance, &data, outcome, M::NAME, started)
            .await
            .map_err(SagaError::into_handler_error)?;
        self.maybe_purge(ctx)
            .await
            .map_err(SagaError::into_handler_error)
    }

    /// Handles timeout `T`: find the instance by the saga id it carries, run the
    /// handler, save. A timeout whose instance is closed or gone is consumed.
    async fn timeout<T: Message>(
        &self,
        timeout: T,
        ctx: &mut Context<'_>,
    ) -> Result<(), HandlerError>
    where
        S: SagaTimeout<T>,
    {
        let headers = ctx.headers();
        let saga_id = headers.get(header::SAGA_ID).map(Uuid::parse_str);
        let Some(Ok(saga_id)) = saga_id else {
            warn!(
                saga_type = S::NAME,
                message_type = T::NAME,
                message_id = %ctx.message_id(),
                saga_id = headers.get(header::SAGA_ID),
                "timeout without a valid saga_id header; consumed"
            );
            return Ok(());
        };
        if headers.get(header::SAGA_TYPE) != Some(S::NAME) {
            warn!(
                saga_type = S::NAME,
                message_type = T::NAME,
                %saga_id,
                header_saga_type = headers.get(header::SAGA_TYPE),
                "timeout for another saga type; consumed"
            );
            return Ok(());
        }

        let instance = store::lock_by_id(ctx.tx(), S::NAME, saga_id)
            .await
            .map_err(SagaError::into_handler_error)?;
        let instance = match instance {
            Some(instance) if instance.open => instance,
            found => {
                let state = if found.is_some() { "completed" } else { "gone" };
                info!(
                    saga_type = S::NAME,
                    message_type = T::NAME,
                    %saga_id,
                    state,
                    "timeout for a saga that is no longer open; consumed"
                );
                return self
                    .maybe_purge(ctx)
                    .await
                    .map_err(SagaError::into_handler_error);
            }
        };
        let correlation = <S as SagaTimeout<T>>::correlate(&timeout);
        if correlation != instance.correlation {
            warn!(
                saga_type = S::NAME,
                message_type = T::NAME,
                %saga_id,
                correlation = %instance.correlation,
                timeout_correlation = %correlation,
                "timeout carries another correlation value than its saga; delivered by saga id"
            );
        }

        let mut data = self.decode(&instance)?;
        let mut saga_ctx = SagaContext::new(ctx, &instance, false, &self.timeouts);
        <S as SagaTimeout<T>>::timeout(&self.saga, &mut data, timeout, &mut saga_ctx).await?;
        let outcome = saga_ctx.finish();

        self.save(ctx, &instance, &data, outcome, T::NAME, false)
            .await
            .map_err(SagaError::into_handler_error)?;
        self.maybe_purge(ctx)
            .await
            .map_err(SagaError::into_handler_error)
    }

    /// Locks the instance of `correlation`; creates it when there is none and `M` may
    /// start one.
    ///
    /// Two start messages racing on two connections both find nothing, both insert; the
    /// second insert waits for the first transaction, then (on commit) inserts nothing,
    /// and the same statement run again locks the winner's row. Neither fails, so no
    /// retry is spent.
    async fn lock_or_create<M: Message>(
        &self,
        ctx: &Context<'_>,
        correlation: &str,
    ) -> Result<Found, SagaError>
    where
        S: SagaHandles<M>,
    {
        let tx = ctx.tx();
        if !<S as SagaHandles<M>>::STARTS {
            let found = store::lock_by_correlation(tx, S::NAME, correlation).await?;
            return Ok(found.map_or(Found::Missing, classify));
        }

        let data =
            serde_json::to_value(S::Data::default()).map_err(|source| SagaError::EncodeData {
                saga_type: S::NAME.to_owned(),
                correlation: correlation.to_owned(),
                source,
            })?;
        let message_id = ctx.message_id().to_string();
        let headers = ctx.headers();
        let new = NewSaga {
            saga_type: S::NAME,
            correlation,
            data,
            started_by: M::NAME,
            originator: headers.get(header::REPLY_TO),
            originator_correlation_id: Some(
                headers.get(header::CORRELATION_ID).unwrap_or(&message_id),
            ),
        };
        for _ in 0..LOCK_OR_CREATE_ATTEMPTS {
            match store::lock_or_create(tx, &new).await? {
                Some((instance, true)) => {
                    debug!(
                        target: STEP_TARGET,
                        saga_type = S::NAME,
                        saga_id = %instance.id,
                        correlation,
                        message_type = M::NAME,
                        "saga started"
                    );
                    return Ok(Found::Open(instance, true));
                }
                Some((instance, false)) => return Ok(classify(instance)),
                // Another transaction made the row after this statement's snapshot was
                // taken, or purged it meanwhile; the next statement sees which.
                None => continue,
            }
        }
        Err(SagaError::LockOrCreate {
            saga_type: S::NAME.to_owned(),
            correlation: correlation.to_owned(),
            attempts: LOCK_OR_CREATE_ATTEMPTS,
        })
    }

    fn decode(&self, instance: &Instance) -> Result<S::Data, HandlerError> {
        serde_json::from_value(instance.data.clone()).map_err(|source| {
            SagaError::DecodeData {
                saga_type: S::NAME.to_owned(),
                saga_id: instance.id,
                source,
            }
            .into_handler_error()
        })
    }

    /// Saves the step: the data with the version raised; on completion the closed
    /// record and the deletion of its pending timeouts, otherwise the timeouts the step
    /// requested.
    async fn save(
        &self,
        ctx: &mut Context<'_>,
        instance: &Instance,
        data: &S::Data,
        (completed, timeouts): (bool, Vec<PendingTimeout>),
        message_type: &str,
        started: bool,
    ) -> Result<(), SagaError> {
        let value = serde_json::to_value(data).map_err(|source| SagaError::EncodeData {
            saga_type: S::NAME.to_owned(),
            correlation: instance.correlation.clone(),
            source,
        })?;
        store::save(ctx.tx(), S::NAME, instance, value, completed).await?;

        if completed {
            ctx.cancel_timeouts_unawaited(instance.id)
                .await
                .map_err(|source| SagaError::CancelTimeouts {
                    saga_type: S::NAME.to_owned(),
                    saga_id: instance.id,
                    source: Box::new(source),
                })?;
            debug!(
                target: STEP_TARGET,
                saga_type = S::NAME,
                saga_id = %instance.id,
                correlation = %instance.correlation,
                message_type,
                version = instance.version + 1,
                dropped_timeouts = timeouts.len(),
                "saga completed"
            );
            return Ok(());
        }

        for timeout in timeouts {
            (timeout.write)(ctx).map_err(|source| SagaError::Outgoing {
                saga_type: S::NAME.to_owned(),
                saga_id: instance.id,
                action: "request timeout",
                message_type: timeout.message_type.to_owned(),
                source: Box::new(source),
            })?;
        }
        debug!(
            target: STEP_TARGET,
            saga_type = S::NAME,
            saga_id = %instance.id,
            correlation = %instance.correlation,
            message_type,
            version = instance.version + 1,
            started,
            "saga step saved"
        );
        Ok(())
    }

    /// The saga's not-found rule, for a message whose instance is closed (`closed` is
    /// its id) or was never started.
    async fn not_found(
        &self,
        ctx: &Context<'_>,
        message_type: &str,
        correlation: &str,
        closed: Option<Uuid>,
    ) -> Result<(), HandlerError> {
        let state = if closed.is_some() {
            "completed"
        } else {
            "not started"
        };
        match S::NOT_FOUND {
            NotFound::LogAndConsume => {
                info!(
                    saga_type = S::NAME,
                    message_type,
                    message_id = %ctx.message_id(),
                    correlation,
                    saga_id = closed.map(tracing::field::display),
                    state,
                    "no open saga for this message; consumed"
                );
                self.maybe_purge(ctx)
                    .await
                    .map_err(SagaError::into_handler_error)
            }
            NotFound::ErrorQueue => Err(HandlerError::with_kind(
                "saga_not_found",
                format!(
                    "no open saga {} for correlation value {correlation:?} (saga {state})",
                    S::NAME
                ),
            )
            .permanent()),
        }
    }

    /// Purges closed records past their retention, at most once per purge interval in
    /// this process. It runs in a savepoint of its own, so that a failed purge is logged
    /// and undone without failing the message it rides on.
    async fn maybe_purge(&self, ctx: &Context<'_>) -> Result<(), SagaError> {
        if !self.purge_due() {
            return Ok(());
        }
        let tx = ctx.tx();
        let savepoint = |sql: &'static str| async move {
            tx.execute(sql, &[])
                .await
                .map_err(|source| SagaError::Database {
                    op: "purge savepoint",
                    saga_type: S::NAME.to_owned(),
                    key: "(closed)".to_owned(),
                    source,
                })
        };

        savepoint("SAVEPOINT saga_purge").await?;
        match store::purge_closed(tx, S::NAME, self.retention, PURGE_BATCH).await {
            Ok(purged) => {
                if purged > 0 {
                    debug!(
                        saga_type = S::NAME,
                        purged,
                        retention_s = self.retention.as_secs(),
                        "purged closed sagas"
                    );
                }
            }
            Err(error) => {
                warn!(
                    saga_type = S::NAME,
                    error = %transport_pg::error_chain(&error),
                    "purging closed sagas failed; will try again later"
                );
                savepoint("ROLLBACK TO SAVEPOINT saga_purge").await?;
            }
        }
        savepoint("RELEASE SAVEPOINT saga_purge").await?;
        Ok(())
    }

    fn purge_due(&self) -> bool {
        let mut last = self
            .last_purge
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let due = last.is_none_or(|at| at.elapsed() >= self.purge_interval);
        if due {
            *last = Some(Instant::now());
        }
        due
    }
}

fn classify(instance: Instance) -> Found {
    if instance.open {
        Found::Open(instance, false)
    } else {
        Found::Closed(instance)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registration::SagaMessages;

    struct A;
    impl Saga for A {
        const NAME: &'static str = "t.A";
        type Data = ();
        fn messages(_: &mut SagaMessages<Self>) {}
    }

    #[test]
    fn lock_keys_order_by_saga_type_first() {
        // Type names have no ':', so a correlation value cannot move a key across types.
        let mut keys = vec![lock_key::<A>("b"), "t.B:a".to_owned(), lock_key::<A>("a:z")];
        keys.sort();
        assert_eq!(keys, ["t.A:a:z", "t.A:b", "t.B:a"]);
    }
}
