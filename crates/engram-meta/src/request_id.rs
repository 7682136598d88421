//! The request id: one per public request, taken from its `x-request-id`
//! header or made, answered in the same header, carried on every internal
//! call made for it and present on every log line written for it (a
//! `request` span with a `request_id` field), on the coordinator and on
//! each worker that served it. So one slow query can be followed from the
//! coordinator's log into the workers'.
//!
//! The id travels with the work: a task-local while async code runs, a
//! thread-local around blocking work ([`in_blocking`]), where the
//! coordinator's services wait on the cluster with `block_on`. Worker RPCs
//! and Raft writes forwarded to the leader carry it; Raft's own replication
//! does not (one append carries many requests' entries).
//!
//! When spans are exported (`[telemetry] otlp_endpoint`, which installs the
//! W3C trace-context propagator), internal calls also carry `traceparent`,
//! and the callee's `request` span continues the caller's trace: one
//! request is one trace across the coordinator and its workers. Without an
//! exporter the propagator is the no-op one and nothing more is sent.

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use opentelemetry::propagation::{Extractor, Injector};
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Writes trace-context headers into a request's headers.
struct HeaderInjector<'a>(&'a mut axum::http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            axum::http::HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// Reads trace-context headers of a request.
struct HeaderExtractor<'a>(&'a axum::http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The header that carries the id, in and out.
pub const HEADER: &str = "x-request-id";

/// The longest id taken from a client; a longer or odd one is replaced.
const MAX_LEN: usize = 128;

tokio::task_local! {
    static TASK: String;
}

thread_local! {
    static THREAD: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// The id of the request this code runs for, if any.
pub fn current() -> Option<String> {
    TASK.try_with(Clone::clone)
        .ok()
        .or_else(|| THREAD.with(|id| id.borrow().clone()))
}

/// The header to send on an internal call made for the current request
/// (empty outside one).
pub fn headers() -> axum::http::HeaderMap {
    let mut headers = axum::http::HeaderMap::new();
    if let Some(value) = current().and_then(|id| HeaderValue::from_str(&id).ok()) {
        headers.insert(HEADER, value);
    }
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut HeaderInjector(&mut headers));
    });
    headers
}

/// `presented` if it is a usable id (1-128 of `A-Za-z0-9._:-`), else a new one.
pub fn accept_or_make(presented: Option<&HeaderValue>) -> String {
    presented
        .and_then(|value| value.to_str().ok())
        .filter(|id| {
            !id.is_empty()
                && id.len() <= MAX_LEN
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
        })
        .map_or_else(make, str::to_string)
}

/// A new id: 16 hex digits, unique within the process and unlikely to
/// repeat across processes.
pub fn make() -> String {
    use std::hash::{BuildHasher, RandomState};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static SEED: std::sync::OnceLock<RandomState> = std::sync::OnceLock::new();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{:016x}", SEED.get_or_init(RandomState::new).hash_one(n))
}

/// Runs `future` as the work of request `id`: [`current`] answers `id`
/// inside it and its log lines carry it.
pub async fn scope<F: Future>(id: String, future: F) -> F::Output {
    scope_continuing(id, None, future).await
}

/// [`scope`] whose span continues the trace of `parent` (the caller's
/// `traceparent`), when there is one.
async fn scope_continuing<F: Future>(
    id: String,
    parent: Option<opentelemetry::Context>,
    future: F,
) -> F::Output {
    let span = tracing::info_span!("request", request_id = %id);
    if let Some(parent) = parent {
        let _ = span.set_parent(parent);
    }
    TASK.scope(id, future.instrument(span)).await
}

/// `f`, to run on a blocking thread, carrying the caller's request id and
/// span with it.
pub fn in_blocking<R>(f: impl FnOnce() -> R) -> impl FnOnce() -> R {
    let id = current();
    let span = tracing::Span::current();
    move || {
        let _entered = span.enter();
        let previous = THREAD.with(|slot| slot.replace(id));
        let result = f();
        THREAD.with(|slot| *slot.borrow_mut() = previous);
        result
    }
}

/// Middleware for the public router: every request runs under its
/// `x-request-id` (when usable) or a new one, answered in the same header.
pub async fn public(request: Request, next: Next) -> Response {
    let id = accept_or_make(request.headers().get(HEADER));
    let answered = HeaderValue::from_str(&id).ok();
    let mut response = serve_logged(id, None, request, next, "request served").await;
    if let Some(value) = answered {
        response.headers_mut().insert(HEADER, value);
    }
    response
}

/// Middleware for internal routers: serves the request under the id its
/// caller sent (none for calls not made for a request).
pub async fn internal(request: Request, next: Next) -> Response {
    match request.headers().get(HEADER) {
        None => next.run(request).await,
        Some(value) => {
            let id = accept_or_make(Some(value));
            let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
                propagator.extract(&HeaderExtractor(request.headers()))
            });
            serve_logged(id, Some(parent), request, next, "internal call served").await
        }
    }
}

/// Runs the rest of the stack under `id` (continuing `parent`'s trace) and
/// logs the request at debug (method, path, status, milliseconds) as `what`.
async fn serve_logged(
    id: String,
    parent: Option<opentelemetry::Context>,
    request: Request,
    next: Next,
    what: &'static str,
) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    scope_continuing(id, parent, async move {
        let started = std::time::Instant::now();
        let response = next.run(request).await;
        tracing::debug!(
            %method,
            path,
            status = response.status().as_u16(),
            ms = started.elapsed().as_millis() as u64,
            "{what}"
        );
        response
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_ids_are_replaced_and_good_ones_kept() {
        let kept = HeaderValue::from_static("trace-1.2:3_A");
        assert_eq!(accept_or_make(Some(&kept)), "trace-1.2:3_A");
        for odd in ["", "a b", "a/b", &"x".repeat(129)] {
            let made = accept_or_make(Some(&HeaderValue::from_str(odd).unwrap()));
            assert_eq!(made.len(), 16, "{odd:?} -> {made}");
        }
        assert_ne!(make(), make());
    }

    #[tokio::test]
    async fn the_id_follows_the_work_into_blocking_threads_and_out_again() {
        assert_eq!(current(), None);
        let seen = scope("r-1".into(), async {
            let inner = tokio::task::spawn_blocking(in_blocking(current))
                .await
                .unwrap();
            (current(), inner)
        })
        .await;
        assert_eq!(seen, (Some("r-1".into()), Some("r-1".into())));
        assert_eq!(current(), None);
        // A blocking thread reused later carries no stale id.
        let after = tokio::task::spawn_blocking(current).await.unwrap();
        assert_eq!(after, None);
    }
}
