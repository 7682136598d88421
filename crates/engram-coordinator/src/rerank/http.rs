//! `kind = "http"`: one POST per classify call to the configured
//! endpoint, within the timeout (waiting for a free slot included), behind
//! a bounded number of calls in flight and a circuit breaker. Never
//! retried: a retry would wait past the query's budget, and the votes are
//! a good answer already.

use parking_lot::Mutex;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

use engram_core::config::HttpRerankerConfig;

use super::breaker::{Admit, Breaker};
use super::contract::{RerankRequest, RerankResponse};
use super::metrics;

/// Largest answer read from a re-ranker.
const MAX_RESPONSE_BYTES: usize = 16 << 20;

/// Why a call left the decision to the votes: a short class (the metric's
/// `reason`) and the detail the answer shows.
#[derive(Debug, Clone, PartialEq)]
pub struct CallFailure {
    pub class: &'static str,
    pub detail: String,
}

fn failure(class: &'static str, detail: impl Into<String>) -> CallFailure {
    CallFailure {
        class,
        detail: detail.into(),
    }
}

pub struct HttpReranker {
    name: String,
    config: HttpRerankerConfig,
    client: reqwest::Client,
    slots: Semaphore,
    breaker: Mutex<Breaker>,
    token: Option<String>,
    started: Instant,
}

impl HttpReranker {
    pub fn new(name: &str, config: &HttpRerankerConfig) -> Result<Arc<HttpReranker>, String> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.timeout_ms))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| format!("re-ranker `{name}`: {e}"))?;
        let token = match &config.token_env {
            Some(var) => Some(std::env::var(var).map_err(|_| {
                format!("re-ranker `{name}`: token_env names {var}, which is not set")
            })?),
            None => None,
        };
        Ok(Arc::new(HttpReranker {
            name: name.to_string(),
            client,
            slots: Semaphore::new(config.max_concurrency),
            breaker: Mutex::new(Breaker::new(
                config.breaker_failures,
                config.breaker_open_s * 1_000,
            )),
            token,
            config: config.clone(),
            started: Instant::now(),
        }))
    }

    pub fn wants_image(&self) -> bool {
        self.config.send_image
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Calls the endpoint once for every query of `request`.
    pub async fn call(&self, request: &RerankRequest) -> Result<RerankResponse, CallFailure> {
        let admitted = self.breaker.lock().admit(self.now_ms());
        if admitted == Admit::Reject {
            return Err(failure(
                "breaker_open",
                format!(
                    "circuit breaker open after {} consecutive failures",
                    self.config.breaker_failures
                ),
            ));
        }
        let budget = Duration::from_millis(self.config.timeout_ms);
        let outcome = tokio::time::timeout(budget, self.call_within(request)).await;
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(_) => Err(failure(
                "timeout",
                format!("no answer within {} ms", self.config.timeout_ms),
            )),
        };
        let mut breaker = self.breaker.lock();
        match &outcome {
            Ok(_) => breaker.succeeded(),
            // Busy is this node's own limit, not the endpoint's failure.
            Err(f) if f.class == "busy" => {
                if admitted == Admit::Probe {
                    breaker.failed(self.now_ms());
                }
            }
            Err(_) => breaker.failed(self.now_ms()),
        }
        metrics::BREAKER_OPEN
            .with_label_values(&[&self.name])
            .set(i64::from(breaker.is_open()));
        outcome
    }

    async fn call_within(&self, request: &RerankRequest) -> Result<RerankResponse, CallFailure> {
        let _slot = self.slots.try_acquire().map_err(|_| {
            failure(
                "busy",
                format!(
                    "{} calls already in flight (max_concurrency)",
                    self.config.max_concurrency
                ),
            )
        })?;
        let mut post = self.client.post(&self.config.url).json(request);
        if let Some(token) = &self.token {
            post = post.bearer_auth(token);
        }
        let mut response = post.send().await.map_err(|e| {
            if e.is_timeout() {
                failure(
                    "timeout",
                    format!("no answer within {} ms", self.config.timeout_ms),
                )
            } else {
                failure("connect", format!("request failed: {e}"))
            }
        })?;
        let status = response.status();
        if !status.is_success() {
            return Err(failure(
                "http_status",
                format!("the re-ranker answered HTTP {}", status.as_u16()),
            ));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| failure("connect", format!("reading the answer failed: {e}")))?
        {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_RESPONSE_BYTES {
                return Err(failure(
                    "malformed",
                    format!("answer larger than {MAX_RESPONSE_BYTES} bytes"),
                ));
            }
        }
        let parsed: RerankResponse = serde_json::from_slice(&body)
            .map_err(|e| failure("malformed", format!("malformed answer: {e}")))?;
        parsed
            .check(request.queries.len())
            .map_err(|e| failure("malformed", format!("malformed answer: {e}")))?;
        Ok(parsed)
    }
}
