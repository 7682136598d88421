//! The worker's internal HTTP routes: bincode in, bincode [`RpcResult`] out.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::future::Future;

use crate::node::WorkerNode;
use crate::rpc_client::BINCODE;
use crate::wire::{MAX_INTERNAL_BODY, RpcResult, path};

pub fn router(node: WorkerNode) -> Router {
    Router::new()
        .route(path::WRITE, post(|s, b| handle(s, b, WorkerNode::write)))
        .route(
            path::REPLICATE,
            post(|s, b| handle(s, b, WorkerNode::apply_replicated)),
        )
        .route(path::SEARCH, post(|s, b| handle(s, b, WorkerNode::search)))
        .route(path::GET, post(|s, b| handle(s, b, WorkerNode::get)))
        .route(path::STATS, post(|s, b| handle(s, b, WorkerNode::stats)))
        .route(
            path::PRESENCE,
            post(|s, b| handle(s, b, WorkerNode::presence)),
        )
        .route(
            path::CATCH_UP,
            post(|s, b| handle(s, b, WorkerNode::catch_up)),
        )
        .route(
            path::INSTALL,
            post(|s, b| handle(s, b, WorkerNode::install)),
        )
        .route(
            path::COMPACT,
            post(|s, b| handle(s, b, WorkerNode::compact)),
        )
        .route(path::SCAN, post(|s, b| handle(s, b, WorkerNode::scan)))
        .route(
            path::SNAPSHOT,
            post(|s, b| handle(s, b, WorkerNode::snapshot)),
        )
        .route(path::HOST, post(|s, b| handle(s, b, WorkerNode::host_now)))
        .route(path::DROP, post(|s, b| handle(s, b, WorkerNode::drop_now)))
        .route(path::ATTACH, post(|s, b| handle(s, b, WorkerNode::attach)))
        .route(
            path::ATTACH_REPLICA,
            post(|s, b| handle(s, b, WorkerNode::apply_attach)),
        )
        .route("/healthz", get(|| async { "ok" }))
        // Writes, replication and transfers carry vectors: axum's 2 MiB
        // default would refuse a batch of high-dimensional items.
        .layer(DefaultBodyLimit::max(MAX_INTERNAL_BODY))
        .with_state(node)
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
    let result = f(node, request).await;
    match bincode::serialize(&result) {
        Ok(bytes) => ([(header::CONTENT_TYPE, BINCODE)], bytes).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
