//! A small HTTP/1 client for the gateways, for Billing, Shipping and the tests: one call
//! per operation, each with the idempotency key and a bounded timeout, and an answer
//! sorted into what the caller may do next.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::http::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;

use crate::api::{self, ChargeRequest, RefundRequest, Reply, ShipmentRequest};

/// A definite answer from the gateways.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 200: done.
    Succeeded(Reply),
    /// 402: definitely refused.
    Declined(Reply),
    /// 409: the key's first request is still in flight; ask again later.
    Pending(Reply),
    /// 400 or 422: the request itself is wrong; asking again will not help.
    Rejected {
        /// The HTTP status.
        status: u16,
        /// The reply, with the reason.
        reply: Reply,
    },
}

/// A call that did not get a definite answer; see [`ClientError::is_retryable`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The base URL does not make a valid request URI.
    #[error("invalid gateway URL {url:?}")]
    InvalidUrl {
        /// The URL as built.
        url: String,
    },

    /// No answer within the timeout; the request may or may not have taken effect.
    #[error("no answer from {path} within {after:?}")]
    Timeout {
        /// The path called.
        path: &'static str,
        /// The timeout.
        after: Duration,
    },

    /// The connection failed or broke.
    #[error("request to {path} failed")]
    Connection {
        /// The path called.
        path: &'static str,
        /// hyper's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// A 5xx answer: transient on the gateways' side.
    #[error("{path} answered {status}: {reason}")]
    Unavailable {
        /// The path called.
        path: &'static str,
        /// The HTTP status.
        status: u16,
        /// The reason in the reply.
        reason: String,
    },

    /// An answer that is not a gateway reply.
    #[error("{path} answered {status} with a body that is not a reply: {reason}")]
    BadReply {
        /// The path called.
        path: &'static str,
        /// The HTTP status.
        status: u16,
        /// Why it could not be read.
        reason: String,
    },
}

impl ClientError {
    /// Whether the same call, with the same key, may succeed later: everything but a bad
    /// URL. Thanks to the key, a retry never takes effect twice.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, ClientError::InvalidUrl { .. })
    }
}

/// A client for one gateways process. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct GatewayClient {
    base: String,
    timeout: Duration,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl GatewayClient {
    /// A client for `base_url` (e.g. `http://127.0.0.1:7480`) whose calls give up after
    /// `timeout`, connecting included.
    pub fn new(base_url: &str, timeout: Duration) -> GatewayClient {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        GatewayClient {
            base: base_url.trim_end_matches('/').to_owned(),
            timeout,
            http: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// Charges a card under `key`.
    pub async fn charge(&self, key: &str, request: &ChargeRequest) -> Result<Outcome, ClientError> {
        self.post(api::CHARGE_PATH, key, request).await
    }

    /// Refunds an order's charge under `key`.
    pub async fn refund(&self, key: &str, request: &RefundRequest) -> Result<Outcome, ClientError> {
        self.post(api::REFUND_PATH, key, request).await
    }

    /// Books the courier under `key`.
    pub async fn book_shipment(
        &self,
        key: &str,
        request: &ShipmentRequest,
    ) -> Result<Outcome, ClientError> {
        self.post(api::SHIPMENT_PATH, key, request).await
    }

    /// Whether the gateways answer their health check with 200.
    pub async fn healthy(&self) -> bool {
        let request = Request::builder()
            .method(Method::GET)
            .uri(format!("{}{}", self.base, api::HEALTH_PATH))
            .body(Full::new(Bytes::new()));
        let Ok(request) = request else {
            return false;
        };
        let call = self.http.request(request);
        matches!(
            tokio::time::timeout(self.timeout, call).await,
            Ok(Ok(response)) if response.status() == StatusCode::OK
        )
    }

    async fn post<T: Serialize>(
        &self,
        path: &'static str,
        key: &str,
        body: &T,
    ) -> Result<Outcome, ClientError> {
        let url = format!("{}{path}", self.base);
        let body = serde_json::to_vec(body).expect("request types always encode");
        let request = Request::builder()
            .method(Method::POST)
            .uri(&url)
            .header(hyper::http::header::CONTENT_TYPE, "application/json")
            .header(api::IDEMPOTENCY_KEY_HEADER, key)
            .body(Full::new(Bytes::from(body)))
            .map_err(|_| ClientError::InvalidUrl { url })?;

        let call = async {
            let response =
                self.http
                    .request(request)
                    .await
                    .map_err(|e| ClientError::Connection {
                        path,
                        source: Box::new(e),
                    })?;
            let status = response.status().as_u16();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|e| ClientError::Connection {
                    path,
                    source: Box::new(e),
                })?
                .to_bytes();
            Ok::<_, ClientError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| ClientError::Timeout {
                path,
                after: self.timeout,
            })??;

        let reply: Reply = serde_json::from_slice(&bytes).map_err(|e| ClientError::BadReply {
            path,
            status,
            reason: e.to_string(),
        })?;
        match status {
            200 => Ok(Outcome::Succeeded(reply)),
            402 => Ok(Outcome::Declined(reply)),
            409 => Ok(Outcome::Pending(reply)),
            400..=499 => Ok(Outcome::Rejected { status, reply }),
            _ => Err(ClientError::Unavailable {
                path,
                status,
                reason: reply.reason.unwrap_or_default(),
            }),
        }
    }
}
