//! The HTTP server: routes, request checks, fault injection, and the settle tasks.
//!
//! A request's key is recorded first (`ledger::record`). When its outcome needs nothing
//! but the request (a charge that is not slow, a shipment), it is decided up front and
//! recorded with the key, settled in that one commit. Otherwise (a refund, which reads
//! the order's charges, or a slow charge) the request that inserted the key spawns a
//! settle task and waits for it; the task, not the HTTP handler, decides the outcome and
//! writes it, so a caller that hangs up (a dropped handler) cannot leave a key in flight
//! for ever: a slow charge settles after [`Config::settle`] whoever is still listening,
//! and the caller's retry with the same key finds the answer. A repeat of the key gets
//! the stored answer, or `409 pending` while the first is in flight.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State as Extract;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use messages::card;
use serde::de::DeserializeOwned;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};
use transport_pg::deadpool_postgres::Pool;

use crate::api::{self, Reply, ReplyStatus};
use crate::error::Result;
use crate::ledger::{self, Answer, Operation, Recorded, Request, State};

/// How the stand-ins behave.
#[derive(Debug, Clone)]
pub struct Config {
    /// How long a slow (`tok_slow`) charge takes to settle.
    pub settle: Duration,
    /// Added before every `POST` is handled.
    pub latency: Duration,
    /// Share of `POST`s answered `503` before they touch the ledger, 0 to 1.
    pub fail_rate: f64,
}

/// What every handler and settle task shares.
#[derive(Clone)]
pub struct App {
    pool: Pool,
    config: Arc<Config>,
    /// Every settle task, so shutdown can let them finish.
    tasks: TaskTracker,
}

/// How long a refund waits for the order's charge to leave flight before giving up.
const REFUND_WAIT_EXTRA: Duration = Duration::from_secs(10);

/// How long a settle task keeps retrying a database failure.
const SETTLE_RETRY_FOR: Duration = Duration::from_secs(30);

impl App {
    /// Shares `pool` and `config`.
    pub fn new(pool: Pool, config: Config) -> App {
        App {
            pool,
            config: Arc::new(config),
            tasks: TaskTracker::new(),
        }
    }

    /// The router with every route.
    pub fn router(&self) -> Router {
        Router::new()
            .route(api::CHARGE_PATH, post(charge))
            .route(api::REFUND_PATH, post(refund))
            .route(api::SHIPMENT_PATH, post(shipment))
            .route(api::HEALTH_PATH, get(health))
            .with_state(self.clone())
    }

    /// Starts settle tasks for every key a stopped process left in flight; returns how
    /// many.
    pub async fn resume_in_flight(&self) -> Result<usize> {
        let keys = ledger::in_flight(&self.pool).await?;
        let count = keys.len();
        for k in keys {
            let elapsed = Duration::from_millis(k.age_ms.max(0) as u64);
            info!(key = %k.key, operation = k.request.operation.as_str(),
                order_id = %k.request.order_id, "resuming key left in flight");
            // Detached: the task settles the key whether or not anyone awaits it.
            drop(self.spawn_settle(k.key, k.request, elapsed));
        }
        Ok(count)
    }

    /// Waits up to `grace` for running settle tasks; returns whether they all finished.
    pub async fn drain(&self, grace: Duration) -> bool {
        self.tasks.close();
        tokio::time::timeout(grace, self.tasks.wait()).await.is_ok()
    }

    /// Spawns the task that settles `key`; `elapsed` is how long ago it arrived.
    fn spawn_settle(
        &self,
        key: String,
        request: Request,
        elapsed: Duration,
    ) -> tokio::task::JoinHandle<Option<Answer>> {
        let app = self.clone();
        self.tasks.spawn(async move {
            let answer = app.settle_with_retries(&key, &request, elapsed).await;
            if let Some(answer) = &answer {
                debug!(key = %key, operation = request.operation.as_str(),
                    order_id = %request.order_id, status = answer.http_status, "settled");
            }
            answer
        })
    }

    async fn settle_with_retries(
        &self,
        key: &str,
        request: &Request,
        elapsed: Duration,
    ) -> Option<Answer> {
        if is_slow_charge(request) {
            tokio::time::sleep(self.config.settle.saturating_sub(elapsed)).await;
        }
        let started = tokio::time::Instant::now();
        let give_up_waiting = self.config.settle + REFUND_WAIT_EXTRA;
        let mut pause = Duration::from_millis(50);
        loop {
            let waited_long = started.elapsed() >= give_up_waiting;
            let outcome = ledger::settle(&self.pool, key, request, async |tx| {
                decide(tx, key, request, waited_long).await
            })
            .await;
            match outcome {
                Ok(Some(answer)) => return Some(answer),
                Ok(None) => debug!(key, "refund waits for its charge to settle"),
                Err(e) if started.elapsed() < SETTLE_RETRY_FOR => {
                    warn!(key, error = %transport_pg::error_chain(&e), "settle failed; retrying");
                }
                Err(e) => {
                    error!(key, error = %transport_pg::error_chain(&e),
                        "settle keeps failing; the key stays in flight until a restart");
                    return None;
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }

    async fn handle(&self, operation: Operation, headers: &HeaderMap, body: &[u8]) -> Response {
        if !self.config.latency.is_zero() {
            tokio::time::sleep(self.config.latency).await;
        }
        if self.config.fail_rate > 0.0 && rand::random::<f64>() < self.config.fail_rate {
            debug!(operation = operation.as_str(), "injected transient failure");
            return reply(
                StatusCode::SERVICE_UNAVAILABLE,
                Reply::error("injected transient failure; retry with the same key"),
            );
        }

        let (key, request) = match parse(operation, headers, body) {
            Ok(parsed) => parsed,
            Err(reason) => return reply(StatusCode::BAD_REQUEST, Reply::error(reason)),
        };
        let immediate = immediate_outcome(&request);
        let recorded = match ledger::record(&self.pool, &key, &request, immediate.as_ref()).await {
            Ok(recorded) => recorded,
            Err(e) => return internal(&key, &e),
        };

        match recorded {
            Recorded::Fresh if let Some((_, answer)) = immediate => {
                debug!(key = %key, operation = operation.as_str(),
                    order_id = %request.order_id, status = answer.http_status, "new key, settled");
                answered(answer)
            }
            Recorded::Fresh => {
                debug!(key = %key, operation = operation.as_str(),
                    order_id = %request.order_id, "new key");
                let order_id = request.order_id.clone();
                match self
                    .spawn_settle(key.clone(), request, Duration::ZERO)
                    .await
                {
                    Ok(Some(answer)) => answered(answer),
                    Ok(None) | Err(_) => pending(&order_id, self.config.settle),
                }
            }
            Recorded::Repeat {
                answer: Some(answer),
                ..
            } => answered(answer),
            Recorded::Repeat {
                answer: None,
                age_ms,
            } => {
                let left = if is_slow_charge(&request) {
                    self.config
                        .settle
                        .saturating_sub(Duration::from_millis(age_ms.max(0) as u64))
                } else {
                    Duration::ZERO
                };
                pending(&request.order_id, left.max(Duration::from_millis(100)))
            }
            Recorded::Conflict { first } => reply(
                StatusCode::UNPROCESSABLE_ENTITY,
                Reply::error(format!(
                    "idempotency key {key:?} was first used for a {}; use a new key for a \
                     different request",
                    first.describe()
                )),
            ),
        }
    }
}

fn is_slow_charge(request: &Request) -> bool {
    request.operation == Operation::Charge && request.card_token.as_deref() == Some(card::SLOW)
}

/// The outcome of a request that needs nothing but the request itself, to be recorded
/// with its key: a charge that is not slow, and a shipment. `None` for the rest.
fn immediate_outcome(request: &Request) -> Option<(State, Answer)> {
    match request.operation {
        Operation::Charge if !is_slow_charge(request) => Some(charge_outcome(request)),
        Operation::Shipment => Some(shipment_outcome(request)),
        Operation::Charge | Operation::Refund => None,
    }
}

fn charge_outcome(request: &Request) -> (State, Answer) {
    let order_id = Some(request.order_id.clone());
    match request.card_token.as_deref() {
        Some(card::APPROVE) | Some(card::SLOW) => succeeded(Reply {
            order_id,
            charge_id: Some(reference("ch")),
            amount_cents: request.amount_cents,
            ..Reply::new(ReplyStatus::Succeeded)
        }),
        Some(card::DECLINE) => declined(order_id, "card declined"),
        _ => declined(order_id, "unknown card token"),
    }
}

fn shipment_outcome(request: &Request) -> (State, Answer) {
    succeeded(Reply {
        order_id: Some(request.order_id.clone()),
        tracking_number: Some(reference("trk")),
        ..Reply::new(ReplyStatus::Succeeded)
    })
}

/// The outcome for a key, read and decided inside the settle transaction; `None` to try
/// again later. `waited_long`: a refund stops waiting for a charge still in flight.
async fn decide(
    tx: &transport_pg::tokio_postgres::Transaction<'_>,
    key: &str,
    request: &Request,
    waited_long: bool,
) -> Result<Option<(State, Answer)>> {
    let order_id = Some(request.order_id.clone());
    let decided = match request.operation {
        Operation::Charge => charge_outcome(request),
        Operation::Refund => {
            let basis = ledger::refund_basis(tx, key, &request.order_id).await?;
            let amount = request.amount_cents.unwrap_or(0);
            let names_other_charge = request
                .charge_id
                .as_ref()
                .is_some_and(|id| !basis.charge_ids.contains(id));
            if basis.charges_in_flight > 0 && !waited_long {
                return Ok(None);
            } else if basis.charge_ids.is_empty() {
                declined(order_id, "no charge to refund for this order")
            } else if names_other_charge {
                declined(order_id, "the charge named is not this order's")
            } else if amount > basis.refundable_cents {
                declined(order_id, "refund exceeds what is left of the charge")
            } else {
                succeeded(Reply {
                    order_id,
                    refund_id: Some(reference("re")),
                    amount_cents: Some(amount),
                    ..Reply::new(ReplyStatus::Succeeded)
                })
            }
        }
        Operation::Shipment => shipment_outcome(request),
    };
    Ok(Some(decided))
}

fn succeeded(reply: Reply) -> (State, Answer) {
    let answer = Answer {
        http_status: 200,
        reply,
    };
    (State::Succeeded, answer)
}

fn declined(order_id: Option<String>, reason: &str) -> (State, Answer) {
    let reply = Reply {
        order_id,
        reason: Some(reason.to_owned()),
        ..Reply::new(ReplyStatus::Declined)
    };
    let answer = Answer {
        http_status: 402,
        reply,
    };
    (State::Declined, answer)
}

/// A provider reference such as `ch_3f2a...`: a prefix and 20 hex digits.
fn reference(prefix: &str) -> String {
    let hex = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}_{}", &hex[..20])
}

/// The key and the request, or why the request is malformed.
fn parse(
    operation: Operation,
    headers: &HeaderMap,
    body: &[u8],
) -> std::result::Result<(String, Request), String> {
    let key = headers
        .get(api::IDEMPOTENCY_KEY_HEADER)
        .ok_or("missing Idempotency-Key header")?
        .to_str()
        .map_err(|_| "Idempotency-Key is not visible ASCII")?
        .trim()
        .to_owned();
    if key.is_empty() || key.len() > api::MAX_KEY_LEN {
        return Err(format!(
            "Idempotency-Key must be 1 to {} bytes",
            api::MAX_KEY_LEN
        ));
    }

    let request = match operation {
        Operation::Charge => {
            let c: api::ChargeRequest = json(body)?;
            Request {
                operation,
                order_id: c.order_id,
                amount_cents: Some(c.amount_cents),
                currency: Some(c.currency),
                card_token: Some(c.card_token),
                charge_id: None,
            }
        }
        Operation::Refund => {
            let r: api::RefundRequest = json(body)?;
            Request {
                operation,
                order_id: r.order_id,
                amount_cents: Some(r.amount_cents),
                currency: Some(r.currency),
                card_token: None,
                charge_id: r.charge_id,
            }
        }
        Operation::Shipment => {
            let s: api::ShipmentRequest = json(body)?;
            Request {
                operation,
                order_id: s.order_id,
                amount_cents: None,
                currency: None,
                card_token: None,
                charge_id: None,
            }
        }
    };
    if request.order_id.is_empty() {
        return Err("order_id is empty".to_owned());
    }
    if request.amount_cents.is_some_and(|a| a < 0) {
        return Err("amount_cents is negative".to_owned());
    }
    Ok((key, request))
}

fn json<T: DeserializeOwned>(body: &[u8]) -> std::result::Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("body is not a valid request: {e}"))
}

fn reply(status: StatusCode, body: Reply) -> Response {
    (status, axum::Json(body)).into_response()
}

fn answered(answer: Answer) -> Response {
    let status = StatusCode::from_u16(answer.http_status).unwrap_or(StatusCode::OK);
    reply(status, answer.reply)
}

fn pending(order_id: &str, retry_after: Duration) -> Response {
    let body = Reply {
        order_id: Some(order_id.to_owned()),
        retry_after_ms: Some(retry_after.as_millis() as u64),
        reason: Some("the first request with this key is still in flight".to_owned()),
        ..Reply::new(ReplyStatus::Pending)
    };
    let mut response = reply(StatusCode::CONFLICT, body);
    let seconds = retry_after.as_secs_f64().ceil().max(1.0) as u64;
    if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

fn internal(key: &str, e: &crate::error::Error) -> Response {
    let text = transport_pg::error_chain(e);
    warn!(key, error = %text, "request failed");
    reply(
        StatusCode::INTERNAL_SERVER_ERROR,
        Reply::error(format!("{text}; retry with the same key")),
    )
}

async fn charge(Extract(app): Extract<App>, headers: HeaderMap, body: Bytes) -> Response {
    app.handle(Operation::Charge, &headers, &body).await
}

async fn refund(Extract(app): Extract<App>, headers: HeaderMap, body: Bytes) -> Response {
    app.handle(Operation::Refund, &headers, &body).await
}

async fn shipment(Extract(app): Extract<App>, headers: HeaderMap, body: Bytes) -> Response {
    app.handle(Operation::Shipment, &headers, &body).await
}

async fn health(Extract(app): Extract<App>) -> Response {
    let probe = async {
        let client = app.pool.get().await.map_err(|e| e.to_string())?;
        client
            .execute("SELECT 1", &[])
            .await
            .map_err(|e| transport_pg::error_chain(&e))
    };
    match probe.await {
        Ok(_) => (
            StatusCode::OK,
            axum::Json(serde_json::json!({"status": "ok"})),
        )
            .into_response(),
        Err(reason) => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            Reply::error(format!("database unreachable: {reason}")),
        ),
    }
}
