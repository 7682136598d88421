//! Calling an internal RPC: POST a bincode body, get a bincode
//! [`RpcResult`] back. Used by workers (replication, transfers, heartbeats)
//! and by coordinators (fan-out).

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Duration;

use engram_meta::ClusterAccess;

use crate::wire::{RpcError, RpcResult};

/// Content type of internal bodies.
pub const BINCODE: &str = "application/x-bincode";

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No answer (refused, reset, timed out): the peer may be dead.
    #[error("{addr} unreachable: {reason}")]
    Unreachable { addr: String, reason: String },
    /// The peer answered and refused.
    #[error(transparent)]
    Refused(#[from] RpcError),
    /// The peer answered something undecodable.
    #[error("{addr}: bad answer: {reason}")]
    Protocol { addr: String, reason: String },
}

/// The HTTP client for internal calls (one connection pool, short
/// connect): every call carries the cluster secret (when set) and goes to
/// `https://` under internal TLS. Cheap to clone.
#[derive(Clone)]
pub struct InternalClient {
    http: reqwest::Client,
    access: ClusterAccess,
}

impl InternalClient {
    pub fn new(access: &ClusterAccess) -> InternalClient {
        InternalClient {
            http: access
                .client_builder()
                .connect_timeout(Duration::from_millis(500))
                .build()
                .expect("the internal client's TLS configuration was loaded at start"),
            access: access.clone(),
        }
    }
}

pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
    client: &InternalClient,
    addr: &str,
    path: &str,
    request: &Req,
    timeout: Duration,
) -> Result<Resp, CallError> {
    let body = bincode::serialize(request).map_err(|e| CallError::Protocol {
        addr: addr.to_string(),
        reason: e.to_string(),
    })?;
    post(client, addr, path, body.into(), BINCODE, timeout).await
}

/// Like [`call`], with a body streamed as it is produced (a shipped
/// segment file, `ship_stream.rs`); the answer is a bincode
/// [`RpcResult`] as for every call.
pub async fn call_streamed<Resp: DeserializeOwned>(
    client: &InternalClient,
    addr: &str,
    path: &str,
    body: reqwest::Body,
    timeout: Duration,
) -> Result<Resp, CallError> {
    post(client, addr, path, body, OCTET_STREAM, timeout).await
}

/// Content type of streamed bodies (see [`call_streamed`]).
pub const OCTET_STREAM: &str = "application/octet-stream";

async fn post<Resp: DeserializeOwned>(
    client: &InternalClient,
    addr: &str,
    path: &str,
    body: reqwest::Body,
    content_type: &'static str,
    timeout: Duration,
) -> Result<Resp, CallError> {
    let protocol = |reason: String| CallError::Protocol {
        addr: addr.to_string(),
        reason,
    };
    let response = client
        .http
        .post(client.access.url(addr, path))
        .headers(engram_meta::request_id::headers())
        .header(reqwest::header::CONTENT_TYPE, content_type)
        .timeout(timeout)
        .body(body)
        .send()
        .await
        .map_err(|e| CallError::Unreachable {
            addr: addr.to_string(),
            reason: e.to_string(),
        })?;
    let status = response.status();
    let bytes = response.bytes().await.map_err(|e| CallError::Unreachable {
        addr: addr.to_string(),
        reason: e.to_string(),
    })?;
    if !status.is_success() {
        return Err(protocol(format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&bytes)
        )));
    }
    let result: RpcResult<Resp> =
        bincode::deserialize(&bytes).map_err(|e| protocol(e.to_string()))?;
    Ok(result?)
}
