//! The Raft RPC server, mounted on a coordinator's internal port under
//! `/raft`: openraft's three messages, plus `write` (a follower forwarding
//! a metadata command to the leader) and `membership` changes.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, post};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::network::BINCODE;
use crate::node::{MembershipChange, MetaNode};
use crate::types::Command;

/// Largest Raft message accepted.
pub const MAX_RAFT_BODY: usize = 1 << 30;

/// Every Raft route, the one list both [`router`] and [`paths`] read.
fn routes() -> Vec<(&'static str, MethodRouter<MetaNode>)> {
    vec![
        ("/raft/append", post(append)),
        ("/raft/vote", post(vote)),
        ("/raft/snapshot", post(snapshot)),
        ("/raft/write", post(write)),
        ("/raft/membership", post(membership)),
    ]
}

/// The path of every route [`router`] serves.
pub fn paths() -> Vec<&'static str> {
    routes().into_iter().map(|(path, _)| path).collect()
}

/// The Raft routes, unguarded: the coordinator mounts them with its other
/// internal routes behind [`crate::ClusterAccess::guard`].
pub fn router(node: MetaNode) -> Router {
    routes()
        .into_iter()
        .fold(Router::new(), |router, (path, handler)| {
            router.route(path, handler)
        })
        // Log batches and snapshot chunks exceed axum's 2 MiB default once
        // curation (pruning weights, receipts) is in the state.
        .layer(DefaultBodyLimit::max(MAX_RAFT_BODY))
        .with_state(node)
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, Response> {
    bincode::deserialize(body).map_err(|e| {
        (
            StatusCode::BAD_REQUEST,
            format!("undecodable raft message: {e}"),
        )
            .into_response()
    })
}

fn encode<T: Serialize>(value: &T) -> Response {
    match bincode::serialize(value) {
        Ok(bytes) => ([(header::CONTENT_TYPE, BINCODE)], bytes).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn append(State(node): State<MetaNode>, body: Bytes) -> Response {
    match decode(&body) {
        Ok(rpc) => encode(&node.raft().append_entries(rpc).await),
        Err(r) => r,
    }
}

async fn vote(State(node): State<MetaNode>, body: Bytes) -> Response {
    match decode(&body) {
        Ok(rpc) => encode(&node.raft().vote(rpc).await),
        Err(r) => r,
    }
}

async fn snapshot(State(node): State<MetaNode>, body: Bytes) -> Response {
    match decode(&body) {
        Ok(rpc) => encode(&node.raft().install_snapshot(rpc).await),
        Err(r) => r,
    }
}

/// Applies a forwarded command if this node leads; otherwise the caller is
/// told to try again (`Err`), with whatever leader this node knows.
async fn write(State(node): State<MetaNode>, body: Bytes) -> Response {
    match decode::<Command>(&body) {
        Ok(command) => encode(&node.write_local(command).await),
        Err(r) => r,
    }
}

/// Applies a forwarded membership change if this node leads.
async fn membership(State(node): State<MetaNode>, body: Bytes) -> Response {
    match decode::<MembershipChange>(&body) {
        Ok(change) => {
            let result: Result<(), String> = node
                .change_members_local(change)
                .await
                .map_err(|e| e.to_string());
            encode(&result)
        }
        Err(r) => r,
    }
}
