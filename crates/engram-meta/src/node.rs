//! One coordinator's Raft node: starts openraft over the file stores and
//! the HTTP transport, bootstraps the group, and writes commands from any
//! member (followers forward to the leader).

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::access::ClusterAccess;
use crate::error::{MetaError, Result};
use crate::log_store::LogStore;
use crate::network::{BINCODE, HttpNetwork};
use crate::state::ClusterState;
use crate::state_machine::StateMachineStore;
use crate::types::{Command, CommandResult, NodeId, Raft};

/// How long [`MetaNode::write`] keeps trying while there is no leader
/// (an election takes about two election timeouts).
const WRITE_DEADLINE: Duration = Duration::from_secs(15);

/// Raft timing. Defaults suit loopback and a LAN: a dead leader is
/// replaced within about 2 s.
#[derive(Debug, Clone)]
pub struct RaftTiming {
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
}

impl Default for RaftTiming {
    fn default() -> Self {
        RaftTiming {
            heartbeat_ms: 150,
            election_min_ms: 700,
            election_max_ms: 1400,
        }
    }
}

/// A change of the voting coordinators.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MembershipChange {
    Add { id: NodeId, addr: String },
    Remove { id: NodeId },
}

/// The answer to a write sent to one node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum WriteOutcome {
    /// Applied at this log index.
    Applied(CommandResult, u64),
    /// This node does not lead; the leader it knows, if any.
    NotLeader(Option<(NodeId, String)>),
    Failed(String),
}

#[derive(Clone)]
pub struct MetaNode {
    inner: Arc<Inner>,
}

struct Inner {
    id: NodeId,
    raft: Raft,
    state_machine: StateMachineStore,
    client: reqwest::Client,
    access: ClusterAccess,
}

impl MetaNode {
    /// Opens the log and state machine under `dir` and starts the node. It
    /// serves nothing until [`crate::rpc::router`] is mounted. Its calls to
    /// peers carry the secret of `access` (when set).
    pub async fn start(
        id: NodeId,
        dir: &Path,
        timing: &RaftTiming,
        access: &ClusterAccess,
    ) -> Result<MetaNode> {
        let log = LogStore::open(&dir.join("log"))?;
        let state_machine = StateMachineStore::open(&dir.join("state"))?;
        let config = openraft::Config {
            cluster_name: "engram".into(),
            heartbeat_interval: timing.heartbeat_ms,
            election_timeout_min: timing.election_min_ms,
            election_timeout_max: timing.election_max_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(1000),
            max_in_snapshot_log_to_keep: 200,
            ..Default::default()
        }
        .validate()
        .map_err(|e| MetaError::Raft(e.to_string()))?;
        let raft = Raft::new(
            id,
            Arc::new(config),
            HttpNetwork::new(access),
            log,
            state_machine.clone(),
        )
        .await
        .map_err(|e| MetaError::Raft(e.to_string()))?;
        Ok(MetaNode {
            inner: Arc::new(Inner {
                id,
                raft,
                state_machine,
                client: access
                    .client_builder()
                    .connect_timeout(Duration::from_millis(500))
                    .timeout(Duration::from_secs(10))
                    .build()
                    .expect("the internal client's TLS configuration was loaded at start"),
                access: access.clone(),
            }),
        })
    }

    /// Resolves with the reason when the Raft core stops on a fatal error
    /// (a failed write to its log, such as a full disk): the node can no
    /// longer take part in the group, so the caller should exit and be
    /// restarted. Never resolves when the core ends normally.
    pub async fn fatal(&self) -> String {
        let mut metrics = self.inner.raft.metrics();
        loop {
            if let Err(fatal) = &metrics.borrow().running_state {
                return fatal.to_string();
            }
            if metrics.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Forms the group from `members` (id -> internal address) if this node
    /// has never been part of one. Run it on one member only (the lowest
    /// id, by convention); it is a no-op after the first time.
    pub async fn bootstrap(&self, members: &BTreeMap<NodeId, String>) -> Result<()> {
        if self
            .inner
            .raft
            .is_initialized()
            .await
            .map_err(|e| MetaError::Raft(e.to_string()))?
        {
            return Ok(());
        }
        let nodes: BTreeMap<NodeId, BasicNode> = members
            .iter()
            .map(|(id, addr)| (*id, BasicNode::new(addr)))
            .collect();
        match self.inner.raft.initialize(nodes).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(e)) => {
                tracing::info!(error = %e, "raft group already initialised");
                Ok(())
            }
            Err(e) => Err(MetaError::Raft(e.to_string())),
        }
    }

    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    /// The metadata as this node has applied it.
    pub fn state(&self) -> Arc<ClusterState> {
        self.inner.state_machine.state()
    }

    /// The index of the last entry this node applied.
    pub fn applied_index(&self) -> u64 {
        *self.inner.state_machine.applied().borrow()
    }

    /// The current leader and its internal address, as this node knows.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        let metrics = self.inner.raft.metrics().borrow().clone();
        let leader = metrics.current_leader?;
        let addr = metrics
            .membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.addr.clone())?;
        Some((leader, addr))
    }

    pub fn is_leader(&self) -> bool {
        self.leader().is_some_and(|(id, _)| id == self.inner.id)
    }

    /// Voting members and their internal addresses.
    pub fn members(&self) -> BTreeMap<NodeId, String> {
        let metrics = self.inner.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership().clone();
        membership
            .voter_ids()
            .filter_map(|id| membership.get_node(&id).map(|n| (id, n.addr.clone())))
            .collect()
    }

    /// Applies `command` through the leader, wherever it is, and returns
    /// once this node has applied it too (so its next read sees it).
    /// Refusals by the state machine are [`MetaError::Refused`].
    pub async fn write(&self, command: Command) -> Result<CommandResult> {
        let deadline = Instant::now() + WRITE_DEADLINE;
        let mut last_error = String::from("no leader elected yet");
        loop {
            let outcome = match self.write_local(command.clone()).await {
                WriteOutcome::NotLeader(Some((_, addr))) => self
                    .forward(&addr, &command)
                    .await
                    .unwrap_or_else(|e| WriteOutcome::Failed(format!("forwarding to {addr}: {e}"))),
                other => other,
            };
            match outcome {
                WriteOutcome::Applied(result, index) => {
                    self.wait_applied(index, deadline).await;
                    return match result {
                        CommandResult::Refused(reason) => Err(MetaError::Refused(reason)),
                        ok => Ok(ok),
                    };
                }
                WriteOutcome::NotLeader(_) => {}
                WriteOutcome::Failed(e) => last_error = e,
            }
            if Instant::now() >= deadline {
                return Err(MetaError::NoLeader(last_error));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Applies `command` if this node leads.
    pub async fn write_local(&self, command: Command) -> WriteOutcome {
        match self.inner.raft.client_write(command).await {
            Ok(response) => WriteOutcome::Applied(response.data, response.log_id.index),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                WriteOutcome::NotLeader(f.leader_id.zip(f.leader_node.map(|n| n.addr)))
            }
            Err(e) => WriteOutcome::Failed(e.to_string()),
        }
    }

    async fn forward(&self, addr: &str, command: &Command) -> Result<WriteOutcome> {
        let body = bincode::serialize(command).map_err(|e| MetaError::Raft(e.to_string()))?;
        let response = self
            .inner
            .client
            .post(self.inner.access.url(addr, "/raft/write"))
            .headers(crate::request_id::headers())
            .header(reqwest::header::CONTENT_TYPE, BINCODE)
            .body(body)
            .send()
            .await
            .map_err(|e| MetaError::NoLeader(e.to_string()))?
            .error_for_status()
            .map_err(|e| MetaError::NoLeader(e.to_string()))?;
        let bytes = response
            .bytes()
            .await
            .map_err(|e| MetaError::NoLeader(e.to_string()))?;
        bincode::deserialize(&bytes).map_err(|e| MetaError::Raft(e.to_string()))
    }

    /// Waits (until `deadline`) for this node to apply log index `index`.
    pub async fn wait_applied(&self, index: u64, deadline: Instant) {
        let mut applied = self.inner.state_machine.applied();
        let wait = applied.wait_for(|i| *i >= index);
        let _ = tokio::time::timeout_at(deadline.into(), wait).await;
    }

    /// Changes the voters through the leader, wherever it is.
    pub async fn change_members(&self, change: MembershipChange) -> Result<()> {
        let deadline = Instant::now() + WRITE_DEADLINE;
        loop {
            let outcome = if self.is_leader() {
                self.change_members_local(change.clone()).await
            } else if let Some((_, addr)) = self.leader() {
                self.forward_membership(&addr, &change).await
            } else {
                Err(MetaError::NoLeader("no leader elected yet".into()))
            };
            match outcome {
                Ok(()) => return Ok(()),
                Err(MetaError::NoLeader(e)) if Instant::now() < deadline => {
                    tracing::debug!(error = %e, "membership change waits for a leader");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Applies a membership change on this node, which must lead.
    pub async fn change_members_local(&self, change: MembershipChange) -> Result<()> {
        if !self.is_leader() {
            return Err(MetaError::NoLeader("this node does not lead".into()));
        }
        match change {
            MembershipChange::Add { id, addr } => self.add_member(id, &addr).await,
            MembershipChange::Remove { id } => self.remove_member(id).await,
        }
    }

    async fn forward_membership(&self, addr: &str, change: &MembershipChange) -> Result<()> {
        let body = bincode::serialize(change).map_err(|e| MetaError::Raft(e.to_string()))?;
        let response = self
            .inner
            .client
            .post(self.inner.access.url(addr, "/raft/membership"))
            .headers(crate::request_id::headers())
            .header(reqwest::header::CONTENT_TYPE, BINCODE)
            .timeout(Duration::from_secs(60))
            .body(body)
            .send()
            .await
            .map_err(|e| MetaError::NoLeader(e.to_string()))?;
        let bytes = response
            .bytes()
            .await
            .map_err(|e| MetaError::NoLeader(e.to_string()))?;
        let result: std::result::Result<(), String> =
            bincode::deserialize(&bytes).map_err(|e| MetaError::Raft(e.to_string()))?;
        result.map_err(MetaError::Raft)
    }

    /// Adds a coordinator as a voter (it catches up as a learner first).
    /// Only the leader may do this.
    async fn add_member(&self, id: NodeId, addr: &str) -> Result<()> {
        self.inner
            .raft
            .add_learner(id, BasicNode::new(addr), true)
            .await
            .map_err(|e| MetaError::Raft(e.to_string()))?;
        self.inner
            .raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(|e| MetaError::Raft(e.to_string()))?;
        Ok(())
    }

    /// Removes a coordinator from the voters. Only the leader may do this.
    async fn remove_member(&self, id: NodeId) -> Result<()> {
        self.inner
            .raft
            .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
            .await
            .map_err(|e| MetaError::Raft(e.to_string()))?;
        Ok(())
    }

    pub async fn shutdown(&self) {
        let _ = self.inner.raft.shutdown().await;
    }
}
