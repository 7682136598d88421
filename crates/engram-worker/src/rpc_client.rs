//! Calling an internal RPC: POST a bincode body, get a bincode
//! [`RpcResult`] back. Used by workers (replication, transfers, heartbeats)
//! and by coordinators (fan-out).

use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Duration;

use engram_meta::ClusterSecret;

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

/// One HTTP client for internal calls (connection pool, short connect);
/// every call carries the cluster secret (when set).
pub fn internal_client(secret: &ClusterSecret) -> reqwest::Client {
    secret
        .client_builder()
        .connect_timeout(Duration::from_millis(500))
        .pool_idle_timeout(Duration::from_secs(30))
        .build()
        .expect("reqwest client without TLS")
}

pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
    client: &reqwest::Client,
    addr: &str,
    path: &str,
    request: &Req,
    timeout: Duration,
) -> Result<Resp, CallError> {
    let protocol = |reason: String| CallError::Protocol {
        addr: addr.to_string(),
        reason,
    };
    let body = bincode::serialize(request).map_err(|e| protocol(e.to_string()))?;
    let response = client
        .post(format!("http://{addr}{path}"))
        .header(reqwest::header::CONTENT_TYPE, BINCODE)
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
