//! Plugging a saga into an endpoint: [`SagaMessages`] collects what [`Saga::messages`]
//! declares, and [`SagaRegistration`] installs one transport handler per message type on
//! an [`EndpointBuilder`], with the saga's retention settings.
//!
//! The transport knows these handlers only as handlers; nothing in it knows sagas.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use message::Message;
use transport_pg::EndpointBuilder;

use crate::runtime::{Runtime, StepHandler, TimeoutHandler};
use crate::saga::{Saga, SagaHandles, SagaTimeout};

/// How long a completed saga's closed record is kept by default: seven days, longer than
/// any retry schedule, so a late or replayed start message still finds it closed.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// How often, at most, each process purges a saga type's expired closed records by
/// default.
pub const DEFAULT_PURGE_INTERVAL: Duration = Duration::from_secs(60);

type Installer<S> = Box<dyn FnOnce(EndpointBuilder, Arc<Runtime<S>>) -> EndpointBuilder>;

/// The messages and timeouts a saga declares in [`Saga::messages`].
pub struct SagaMessages<S: Saga> {
    installers: Vec<Installer<S>>,
    timeouts: Vec<&'static str>,
    starters: usize,
}

impl<S: Saga> SagaMessages<S> {
    fn new() -> Self {
        SagaMessages {
            installers: Vec::new(),
            timeouts: Vec::new(),
            starters: 0,
        }
    }

    /// Declares that the saga handles message `M`, as its [`SagaHandles<M>`] impl says.
    pub fn handles<M: Message>(&mut self) -> &mut Self
    where
        S: SagaHandles<M>,
    {
        if <S as SagaHandles<M>>::STARTS {
            self.starters += 1;
        }
        self.installers.push(Box::new(|builder, runtime| {
            builder.handler::<M, _>(StepHandler::<S, M>::new(runtime))
        }));
        self
    }

    /// Declares timeout `T`, handled as its [`SagaTimeout<T>`] impl says. Only declared
    /// timeouts may be requested.
    pub fn timeout<T: Message>(&mut self) -> &mut Self
    where
        S: SagaTimeout<T>,
    {
        self.timeouts.push(T::NAME);
        self.installers.push(Box::new(|builder, runtime| {
            builder.handler::<T, _>(TimeoutHandler::<S, T>::new(runtime))
        }));
        self
    }
}

/// A saga with its settings, ready to be installed on an endpoint.
///
/// ```
/// # use persistence_pg::{Saga, SagaMessages};
/// # struct Fulfilment;
/// # impl Saga for Fulfilment {
/// #     const NAME: &'static str = "shipping.Fulfilment";
/// #     type Data = ();
/// #     fn messages(_: &mut SagaMessages<Self>) {}
/// # }
/// use std::time::Duration;
///
/// use persistence_pg::{SagaEndpointExt, SagaRegistration};
/// use transport_pg::{Database, EndpointBuilder};
///
/// fn shipping(db: Database) -> EndpointBuilder {
///     EndpointBuilder::new("shipping", db).saga(
///         SagaRegistration::new(Fulfilment)
///             .retention(Duration::from_secs(24 * 60 * 60))
///             .purge_interval(Duration::from_secs(300)),
///     )
/// }
/// ```
pub struct SagaRegistration<S: Saga> {
    saga: S,
    retention: Duration,
    purge_interval: Duration,
}

impl<S: Saga> SagaRegistration<S> {
    /// `saga` with the default retention and purge interval.
    pub fn new(saga: S) -> Self {
        SagaRegistration {
            saga,
            retention: DEFAULT_RETENTION,
            purge_interval: DEFAULT_PURGE_INTERVAL,
        }
    }

    /// How long a completed saga's closed record is kept (default
    /// [`DEFAULT_RETENTION`]). A start message arriving later than this starts a new saga.
    pub fn retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// How often, at most, a process purges expired closed records of this saga type
    /// (default [`DEFAULT_PURGE_INTERVAL`]); zero purges on every step.
    pub fn purge_interval(mut self, interval: Duration) -> Self {
        self.purge_interval = interval;
        self
    }

    /// Installs one handler per declared message type and timeout on `builder`. A
    /// message type that already has a handler there makes `start` fail, naming it.
    ///
    /// # Panics
    ///
    /// When [`Saga::NAME`] is not `<contract>.<Type>`, or when no declared message may
    /// start the saga: both are mistakes in the saga's code, found at start-up.
    pub fn install(self, builder: EndpointBuilder) -> EndpointBuilder {
        assert!(
            message::is_valid_type_name(S::NAME),
            "saga type name {:?} is not <contract>.<Type>",
            S::NAME
        );
        let mut messages = SagaMessages::new();
        S::messages(&mut messages);
        assert!(
            messages.starters > 0,
            "saga {} declares no message that may start it (SagaHandles::STARTS)",
            S::NAME
        );

        let runtime = Arc::new(Runtime {
            saga: self.saga,
            timeouts: messages.timeouts,
            retention: self.retention,
            purge_interval: self.purge_interval,
            last_purge: Mutex::new(None),
        });
        messages
            .installers
            .into_iter()
            .fold(builder, |builder, install| {
                install(builder, runtime.clone())
            })
    }
}

impl<S: Saga> From<S> for SagaRegistration<S> {
    fn from(saga: S) -> Self {
        SagaRegistration::new(saga)
    }
}

/// Adds [`saga`](SagaEndpointExt::saga) to [`EndpointBuilder`].
pub trait SagaEndpointExt {
    /// Installs `saga` (a saga value, or a [`SagaRegistration`] with settings) as one
    /// handler per message type it declares.
    fn saga<S: Saga>(self, saga: impl Into<SagaRegistration<S>>) -> Self;
}

impl SagaEndpointExt for EndpointBuilder {
    fn saga<S: Saga>(self, saga: impl Into<SagaRegistration<S>>) -> Self {
        saga.into().install(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NeverStarts;
    impl Saga for NeverStarts {
        const NAME: &'static str = "t.NeverStarts";
        type Data = ();
        fn messages(_: &mut SagaMessages<Self>) {}
    }

    struct BadName;
    impl Saga for BadName {
        const NAME: &'static str = "NoContract";
        type Data = ();
        fn messages(_: &mut SagaMessages<Self>) {}
    }

    fn builder() -> EndpointBuilder {
        let db = transport_pg::Database::from_url("postgres://nobody@127.0.0.1/none")
            .expect("a URL that parses; nothing connects");
        EndpointBuilder::new("sagas", db)
    }

    #[test]
    #[should_panic(expected = "declares no message that may start it")]
    fn a_saga_nothing_can_start_is_refused() {
        let _ = SagaRegistration::new(NeverStarts).install(builder());
    }

    #[test]
    #[should_panic(expected = "is not <contract>.<Type>")]
    fn a_saga_type_name_without_a_contract_is_refused() {
        let _ = SagaRegistration::new(BadName).install(builder());
    }
}
