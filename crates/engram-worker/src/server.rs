//! The worker's internal HTTP routes: bincode in, bincode [`RpcResult`] out.

use axum::Router;
use axum::body::{Body, BodyDataStream, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use engram_meta::serve::{InternalLimits, ServeStats, internal_limits};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::future::Future;
use std::sync::Arc;

use crate::node::WorkerNode;
use crate::rpc_client::BINCODE;
use crate::wire::{MAX_INTERNAL_BODY, RpcResult, ShipFileRequest, path};

/// One internal route: its path and handler.
type Route = (&'static str, MethodRouter<WorkerNode>);

/// Every internal route, the one list both [`router`] and [`paths`] read
/// (tests walk [`paths`], so a route added here cannot escape them).
fn routes() -> Vec<Route> {
    vec![
        (path::WRITE, post(|s, b| handle(s, b, WorkerNode::write))),
        (
            path::REPLICATE,
            post(|s, b| handle(s, b, WorkerNode::apply_replicated)),
        ),
        (path::SEARCH, post(|s, b| handle(s, b, WorkerNode::search))),
        (path::GET, post(|s, b| handle(s, b, WorkerNode::get))),
        (path::STATS, post(|s, b| handle(s, b, WorkerNode::stats))),
        (
            path::PRESENCE,
            post(|s, b| handle(s, b, WorkerNode::presence)),
        ),
        (path::ERASE, post(|s, b| handle(s, b, WorkerNode::erase))),
        (
            path::CATCH_UP,
            post(|s, b| handle(s, b, WorkerNode::catch_up)),
        ),
        (
            path::INSTALL,
            post(|s, b| handle(s, b, WorkerNode::install)),
        ),
        (
            path::DELTA,
            post(|s, b| handle(s, b, WorkerNode::apply_delta)),
        ),
        (
            path::POSITION,
            post(|s, b| handle(s, b, WorkerNode::position)),
        ),
        (
            path::SHIP_PLAN,
            post(|s, b| handle(s, b, WorkerNode::ship_plan)),
        ),
        (
            path::SHIP_FILE,
            post(|s, b| streamed(s, b, WorkerNode::ship_file)),
        ),
        (
            path::SHIP_ATTACH,
            post(|s, b| handle(s, b, WorkerNode::ship_attach)),
        ),
        (
            path::COMPACT,
            post(|s, b| handle(s, b, WorkerNode::compact)),
        ),
        (path::SCAN, post(|s, b| handle(s, b, WorkerNode::scan))),
        (
            path::SNAPSHOT,
            post(|s, b| handle(s, b, WorkerNode::snapshot)),
        ),
        (path::HOST, post(|s, b| handle(s, b, WorkerNode::host_now))),
        (path::DROP, post(|s, b| handle(s, b, WorkerNode::drop_now))),
        (path::ATTACH, post(|s, b| handle(s, b, WorkerNode::attach))),
        (
            path::ATTACH_REPLICA,
            post(|s, b| handle(s, b, WorkerNode::apply_attach)),
        ),
        (HEALTHZ, get(|| async { "ok" })),
        (METRICS, get(crate::metrics::serve)),
    ]
}

/// Prometheus metrics (behind the cluster secret, like every route but
/// [`HEALTHZ`]).
pub const METRICS: &str = "/metrics";

/// The liveness probe: the one route open without the cluster secret.
pub const HEALTHZ: &str = "/healthz";

/// The path of every route [`router`] serves.
pub fn paths() -> Vec<&'static str> {
    routes().into_iter().map(|(path, _)| path).collect()
}

/// Every route but `/healthz` behind the node's cluster secret, then the
/// port's own limits (concurrency, body deadline; counted in `stats`).
pub fn router(node: WorkerNode, limits: InternalLimits, stats: Arc<ServeStats>) -> Router {
    let access = node.access().clone();
    let routes = routes()
        .into_iter()
        .fold(Router::new(), |router, (path, handler)| {
            router.route(path, handler)
        })
        // Writes, replication and transfers carry vectors: axum's 2 MiB
        // default would refuse a batch of high-dimensional items.
        .layer(DefaultBodyLimit::max(MAX_INTERNAL_BODY))
        .with_state(node);
    let metrics = Arc::new(crate::metrics::WorkerMetrics::new(stats.clone()));
    let routes = routes
        .layer(axum::middleware::from_fn(engram_meta::request_id::internal))
        .layer(axum::middleware::from_fn_with_state(
            metrics.clone(),
            crate::metrics::observe,
        ))
        .layer(axum::Extension(metrics));
    access.guard(internal_limits(routes, limits.streaming(STREAMED), stats))
}

async fn handle<Req, Resp, F, Fut>(State(node): State<WorkerNode>, body: Bytes, f: F) -> Response
where
    Req: DeserializeOwned,
    Resp: Serialize,
    F: FnOnce(WorkerNode, Req) -> Fut,
    Fut: Future<Output = RpcResult<Resp>>,
{
    let request: Req = match bincode::deserialize(&body) {
        Ok(r) => r,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("undecodable internal request: {e}"),
            )
                .into_response();
        }
    };
    answer(f(node, request).await)
}

/// A streamed route (see [`STREAMED`]): the body's head is decoded here
/// (an undecodable one is a 400, as for every route), the rest handed to
/// the handler as it arrives.
async fn streamed<Resp, F, Fut>(State(node): State<WorkerNode>, body: Body, f: F) -> Response
where
    Resp: Serialize,
    F: FnOnce(WorkerNode, ShipFileRequest, Bytes, BodyDataStream) -> Fut,
    Fut: Future<Output = RpcResult<Resp>>,
{
    let mut body = body.into_data_stream();
    match crate::ship_stream::read_head(&mut body).await {
        Ok((head, first)) => answer(f(node, head, first, body).await),
        Err(e) => (
            StatusCode::BAD_REQUEST,
            format!("undecodable internal request: {e}"),
        )
            .into_response(),
    }
}

/// Routes whose body is streamed to the handler as it arrives (a shipped
/// segment file, `ship_stream.rs`), not collected first: the port's body
/// deadline and size limit do not apply; the handler bounds both.
pub const STREAMED: &[&str] = &[path::SHIP_FILE];

/// A handler's result as the bincode answer every internal call reads.
fn answer<Resp: Serialize>(result: RpcResult<Resp>) -> Response {
    match bincode::serialize(&result) {
        Ok(bytes) => ([(header::CONTENT_TYPE, BINCODE)], bytes).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
