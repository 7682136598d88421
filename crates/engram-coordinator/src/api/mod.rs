//! The HTTP layer: routes, JSON extraction with JSON errors, metrics.
//! Handlers parse, call the service, and map errors; nothing else.

mod auth;
mod handlers;
mod json;
mod routes;

pub use routes::{Access, PublicRoute, public_routes};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use std::time::Instant;

use crate::admission::{Admission, AdmissionLimits, Refusal};
use crate::error::{ApiError, ErrorCode};
use crate::service::Engram;
use axum::extract::ConnectInfo;
use engram_meta::serve::{BodyError, ServeStats, collect_body};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// The decision page: one self-contained HTML file built into the binary.
pub const DECISION_PAGE: &str = include_str!("../ui/index.html");

/// The OpenAPI document of the public API.
pub const OPENAPI_JSON: &str = include_str!("../../../../docs/openapi.json");

/// All routes of the public API over `engram`.
pub fn router(engram: Engram) -> Router {
    let limits = &engram.config().limits;
    let body_limit = limits.max_body_bytes;
    let admission = Admission::new(AdmissionLimits {
        max_queries: limits.max_concurrent_queries,
        max_queries_per_client: limits.max_concurrent_queries_per_client,
        max_body_bytes_in_flight: limits.max_body_bytes_in_flight,
    });
    let (public_routes, handlers): (Vec<PublicRoute>, Vec<_>) = routes::table().into_iter().unzip();
    let router = public_routes
        .iter()
        .zip(handlers)
        .fold(Router::new(), |router, (route, handler)| {
            router.route(route.path, handler)
        });
    let keys = auth::Keys::from_config(&engram.config().security, public_routes);
    let router = router
        .fallback(handlers::not_found)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(
            AdmitState {
                admission,
                body_limit,
                body_timeout: Duration::from_millis(limits.body_timeout_ms),
                stats: engram.metrics().public_listener(),
            },
            admit,
        ))
        .layer(middleware::from_fn_with_state(
            body_limit,
            refuse_declared_oversize,
        ));
    // Keys are checked after routing (the layer needs the matched route)
    // and before admission and body limits: nothing of an unauthenticated
    // request is read. Refusals still pass through the metrics layer.
    let router = match keys {
        Some(keys) => router.layer(middleware::from_fn_with_state(
            (keys, engram.clone()),
            auth::authenticate,
        )),
        None => router,
    };
    router
        .layer(middleware::from_fn_with_state(
            engram.clone(),
            record_metrics,
        ))
        // Outermost: every line logged for a request carries its id
        // (engram_meta::request_id).
        .layer(middleware::from_fn(engram_meta::request_id::public))
        .with_state(engram)
}

/// The route pattern a request matched (`/v1/collections/{collection}`),
/// or `None` for one that matched no route.
fn matched_route(request: &Request) -> Option<&str> {
    request
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str)
}

async fn record_metrics(State(engram): State<Engram>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().to_string();
    let route = matched_route(&request).unwrap_or("unmatched").to_string();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    engram
        .metrics()
        .observe_request(&method, &route, status, started.elapsed().as_secs_f64());
    tracing::debug!(%method, %route, status, elapsed_ms = started.elapsed().as_secs_f64() * 1e3, "request");
    response
}

/// The body length the request declares in `Content-Length`, if any.
fn declared_length(request: &Request) -> Option<u64> {
    request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Answers 413 from the `Content-Length` header alone, before any of the
/// body is read. `DefaultBodyLimit` only notices once it has read past the
/// limit, so a client still sending a large body could see the connection
/// closed under it instead of the JSON error; this way it always gets the
/// answer first, and the server never buffers what it will refuse.
async fn refuse_declared_oversize(
    State(limit): State<usize>,
    request: Request,
    next: Next,
) -> Response {
    let declared = declared_length(&request);
    match declared {
        Some(len) if len > limit as u64 => {
            axum::response::IntoResponse::into_response(ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "request body of {len} bytes is larger than the configured limit of {limit} bytes (limits.max_body_bytes)"
                ),
            ))
        }
        _ => next.run(request).await,
    }
}

/// Routes whose requests count as queries for back-pressure.
const QUERY_ROUTES: [&str; 4] = [
    "/v1/collections/{collection}/search",
    "/v1/collections/{collection}/classify",
    "/v1/collections/{collection}/classify/batch",
    "/v1/collections/{collection}/embed",
];

/// What [`admit`] needs: the shared counters, the body limit and deadline,
/// and where to count bodies cut off.
#[derive(Clone)]
struct AdmitState {
    admission: Admission,
    body_limit: usize,
    body_timeout: Duration,
    stats: Arc<ServeStats>,
}

/// Back-pressure (see [`crate::admission`]) and the body deadline: the
/// body is read here, within `limits.body_timeout_ms` (408
/// `request_timeout` otherwise, counted), each chunk counted against the
/// bytes in flight as it arrives (429 `Retry-After` when it would pass
/// them); then a query past the query limits is answered 429 before it
/// runs. The handler gets the whole body; the permits are held until its
/// answer is built.
async fn admit(State(state): State<AdmitState>, request: Request, next: Next) -> Response {
    let query = matched_route(&request).is_some_and(|route| QUERY_ROUTES.contains(&route));
    // Without a socket address (a router driven in-process) every caller
    // is one client.
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
    // The body's bytes are counted as they arrive; the query counts only
    // once the body is in (the work starts then), so that slow senders
    // cannot hold the query slots of their address.
    let mut body_permit = match state.admission.try_admit(client, false, 0) {
        Ok(permit) => permit,
        Err(refusal) => return overloaded(client, query, refusal),
    };
    let (parts, body) = request.into_parts();
    let deadline = tokio::time::Instant::now() + state.body_timeout;
    let collected = collect_body(body, state.body_limit, deadline, |bytes| {
        body_permit.grow(bytes)
    })
    .await;
    match collected {
        Ok(bytes) => {
            let query_permit = match query.then(|| state.admission.try_admit(client, true, 0)) {
                Some(Err(refusal)) => return overloaded(client, query, refusal),
                Some(Ok(permit)) => Some(permit),
                None => None,
            };
            let response = next
                .run(Request::from_parts(parts, axum::body::Body::from(bytes)))
                .await;
            drop((body_permit, query_permit));
            response
        }
        Err(BodyError::Refused(refusal)) => overloaded(client, query, refusal),
        Err(BodyError::TimedOut { read }) => {
            state.stats.body_timed_out();
            tracing::warn!(%client, read, "request body not received in time");
            axum::response::IntoResponse::into_response(ApiError::new(
                ErrorCode::RequestTimeout,
                format!(
                    "the request body did not arrive within {} ms (limits.body_timeout_ms); {read} bytes were read",
                    state.body_timeout.as_millis()
                ),
            ))
        }
        Err(BodyError::TooLarge { limit }) => {
            axum::response::IntoResponse::into_response(ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "request body is larger than the configured limit of {limit} bytes (limits.max_body_bytes)"
                ),
            ))
        }
        Err(BodyError::Broken(reason)) => axum::response::IntoResponse::into_response(
            ApiError::invalid(format!("the request body could not be read: {reason}")),
        ),
    }
}

/// 429 with `Retry-After`: nothing was done.
fn overloaded(client: IpAddr, query: bool, refusal: Refusal) -> Response {
    tracing::warn!(%client, query, %refusal, "request refused: overloaded");
    let mut response = axum::response::IntoResponse::into_response(ApiError::new(
        ErrorCode::ResourceExhausted,
        refusal.to_string(),
    ));
    response.headers_mut().insert(
        axum::http::header::RETRY_AFTER,
        axum::http::HeaderValue::from_static("1"),
    );
    response
}

impl ApiError {
    fn from_status(status: axum::http::StatusCode, message: String) -> ApiError {
        let code = match status.as_u16() {
            413 => ErrorCode::PayloadTooLarge,
            415 => ErrorCode::UnsupportedMediaType,
            404 => ErrorCode::NotFound,
            405 => ErrorCode::MethodNotAllowed,
            500..=599 => ErrorCode::Internal,
            _ => ErrorCode::InvalidArgument,
        };
        ApiError::new(code, message)
    }
}

/// Serves the API on `listener` (HTTPS with `tls`, see
/// `engram_meta::tls::public_server_config`) until `shutdown` completes,
/// then lets requests in flight finish.
pub async fn serve(
    engram: Engram,
    listener: tokio::net::TcpListener,
    tls: Option<engram_meta::tls::ServerTls>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let compaction = engram.spawn_compaction();
    let receipt_watch = engram.spawn_receipt_watch();
    if let Err(error) = engram.resume_jobs() {
        tracing::error!(%error, "could not resume the ingest jobs of the data directory");
    }
    engram.resume_reshards();
    let job_takeover = engram.spawn_job_takeover();
    let head_timeout = Duration::from_millis(engram.config().limits.head_timeout_ms);
    let stats = engram.metrics().public_listener();
    let served =
        engram_meta::serve::serve(listener, router(engram), head_timeout, stats, tls, shutdown)
            .await;
    for task in [compaction, receipt_watch, job_takeover]
        .into_iter()
        .flatten()
    {
        task.abort();
    }
    served
}
