//! The cluster's own API: status (members, workers, shard maps) and Raft
//! membership changes.

use serde::{Deserialize, Serialize};

use engram_core::placement::ShardPlacement;
use engram_meta::{MembershipChange, SegmentRecord};
use std::collections::BTreeMap;

use crate::error::{ApiError, ErrorCode, Result};
use crate::service::Engram;

#[derive(Debug, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// `embedded` or `cluster`.
    pub mode: String,
    pub node_id: Option<u64>,
    pub leader: Option<u64>,
    pub coordinators: Vec<CoordinatorInfo>,
    pub applied_index: u64,
    pub workers: Vec<WorkerStatus>,
    pub collections: Vec<ShardMap>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct CoordinatorInfo {
    pub id: u64,
    pub addr: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub id: u64,
    pub addr: String,
    /// Not declared dead by the Raft leader.
    pub alive: bool,
    /// Heard from by this coordinator recently.
    pub healthy: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ShardMap {
    pub name: String,
    /// The key of its current layout in the shard map (the name until the
    /// collection is first resharded).
    #[serde(default)]
    pub layout: String,
    /// The shard count of a resharding under way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resharding_to: Option<u32>,
    pub shards: Vec<ShardView>,
}

/// A shard's placement and, per hosting worker, the sealed segments of
/// its copy (as the worker last reported them).
#[derive(Debug, Serialize, Deserialize)]
pub struct ShardView {
    #[serde(flatten)]
    pub placement: ShardPlacement,
    pub segments: BTreeMap<u64, Vec<SegmentRecord>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddCoordinator {
    pub id: u64,
    /// Its internal (Raft) address.
    pub addr: String,
}

impl Engram {
    pub fn cluster_status(&self) -> ClusterStatus {
        let Some(cluster) = self.cluster() else {
            return ClusterStatus {
                mode: "embedded".into(),
                node_id: None,
                leader: None,
                coordinators: Vec::new(),
                applied_index: 0,
                workers: Vec::new(),
                collections: Vec::new(),
            };
        };
        let meta = cluster.meta();
        let state = cluster.state();
        ClusterStatus {
            mode: "cluster".into(),
            node_id: Some(meta.id()),
            leader: meta.leader().map(|(id, _)| id),
            coordinators: meta
                .members()
                .into_iter()
                .map(|(id, addr)| CoordinatorInfo { id, addr })
                .collect(),
            applied_index: meta.applied_index(),
            workers: state
                .workers
                .values()
                .map(|w| WorkerStatus {
                    id: w.id,
                    addr: w.addr.clone(),
                    alive: w.alive,
                    healthy: cluster.healthy(w.id),
                })
                .collect(),
            collections: state
                .public_names()
                .iter()
                .filter_map(|name| Some((name, state.collection(name)?)))
                .map(|(name, c)| ShardMap {
                    name: name.clone(),
                    layout: c.spec.name.clone(),
                    resharding_to: state.reshard_target(name).map(|(_, t)| t.spec.shards),
                    shards: c
                        .shards
                        .iter()
                        .enumerate()
                        .map(|(i, p)| ShardView {
                            placement: p.clone(),
                            segments: c.segments.get(&(i as u32)).cloned().unwrap_or_default(),
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    /// Ready when this coordinator knows a Raft leader (always, embedded).
    pub fn ready(&self) -> Result<()> {
        match self.cluster() {
            Some(cluster) if cluster.meta().leader().is_none() => Err(ApiError::new(
                ErrorCode::Unavailable,
                "no metadata leader known yet",
            )),
            _ => Ok(()),
        }
    }

    pub async fn add_coordinator(&self, request: AddCoordinator) -> Result<ClusterStatus> {
        let cluster = self.require_cluster()?;
        if request.id == 0 || request.addr.is_empty() {
            return Err(ApiError::invalid(
                "`id` must be at least 1 and `addr` non-empty",
            ));
        }
        cluster
            .meta()
            .change_members(MembershipChange::Add {
                id: request.id,
                addr: request.addr,
            })
            .await?;
        Ok(self.cluster_status())
    }

    pub async fn remove_coordinator(&self, id: u64) -> Result<ClusterStatus> {
        let cluster = self.require_cluster()?;
        if !cluster.meta().members().contains_key(&id) {
            return Err(ApiError::not_found(format!(
                "coordinator {id} is not a member"
            )));
        }
        cluster
            .meta()
            .change_members(MembershipChange::Remove { id })
            .await?;
        Ok(self.cluster_status())
    }

    pub(crate) fn require_cluster(&self) -> Result<&crate::cluster::ClusterBackend> {
        self.cluster().ok_or_else(|| {
            ApiError::invalid("this is an embedded node; it has no cluster membership")
        })
    }
}
