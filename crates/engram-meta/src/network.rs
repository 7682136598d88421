//! Raft RPC client: each call is an HTTP POST of a bincode body to the
//! target coordinator's internal port (see [`crate::rpc`] for the server).

use openraft::BasicNode;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Duration;

use crate::access::ClusterAccess;
use crate::types::{NodeId, TypeConfig};

/// Content type of every internal RPC body.
pub const BINCODE: &str = "application/x-bincode";

/// Makes one [`Connection`] per peer; they share one HTTP client pool.
#[derive(Clone)]
pub struct HttpNetwork {
    client: reqwest::Client,
    access: ClusterAccess,
}

impl HttpNetwork {
    /// Every call carries the secret of `access` (when set), over its TLS
    /// (when set).
    pub fn new(access: &ClusterAccess) -> HttpNetwork {
        HttpNetwork {
            client: access
                .client_builder()
                .connect_timeout(Duration::from_millis(500))
                .build()
                .expect("the internal client's TLS configuration was loaded at start"),
            access: access.clone(),
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for HttpNetwork {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Connection {
        Connection {
            client: self.client.clone(),
            target,
            base: self.access.url(&node.addr, "/raft"),
        }
    }
}

pub struct Connection {
    client: reqwest::Client,
    target: NodeId,
    base: String,
}

/// Why a call failed before the peer's Raft answered.
#[derive(Debug, thiserror::Error)]
enum TransportError {
    #[error("{0}")]
    Http(#[from] reqwest::Error),
    #[error("encoding: {0}")]
    Codec(#[from] bincode::Error),
    #[error("peer answered HTTP {0}")]
    Status(u16),
}

impl Connection {
    async fn call<Req, Resp, E>(
        &self,
        path: &str,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let body = bincode::serialize(request)
            .map_err(|e| RPCError::Network(NetworkError::new(&TransportError::from(e))))?;
        let response = self
            .client
            .post(format!("{}/{path}", self.base))
            .header(reqwest::header::CONTENT_TYPE, BINCODE)
            .timeout(option.hard_ttl())
            .body(body)
            .send()
            .await
            .map_err(|e| {
                let e = TransportError::from(e);
                RPCError::Unreachable(Unreachable::new(&e))
            })?;
        if !response.status().is_success() {
            let e = TransportError::Status(response.status().as_u16());
            return Err(RPCError::Network(NetworkError::new(&e)));
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|e| RPCError::Network(NetworkError::new(&TransportError::from(e))))?;
        let result: Result<Resp, RaftError<NodeId, E>> = bincode::deserialize(&bytes)
            .map_err(|e| RPCError::Network(NetworkError::new(&TransportError::from(e))))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call("append", &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call("snapshot", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call("vote", &rpc, &option).await
    }
}
