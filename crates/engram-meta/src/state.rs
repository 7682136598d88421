//! The cluster metadata itself and how commands change it (pure).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use engram_core::CollectionSpec;
use engram_core::placement::{self, ShardPlacement, WorkerId};

use crate::types::{Command, CommandResult};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerInfo {
    pub id: WorkerId,
    /// Internal RPC address, `host:port`.
    pub addr: String,
    /// False once the leader found it dead, until it registers again.
    pub alive: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectionMeta {
    pub spec: CollectionSpec,
    /// Indexed by virtual shard.
    pub shards: Vec<ShardPlacement>,
}

/// Everything Raft replicates. Small: members, collections, shard maps.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterState {
    pub workers: BTreeMap<WorkerId, WorkerInfo>,
    pub collections: BTreeMap<String, CollectionMeta>,
}

impl ClusterState {
    pub fn apply(&mut self, command: &Command) -> CommandResult {
        match command {
            Command::RegisterWorker { id, addr } => {
                self.workers.insert(
                    *id,
                    WorkerInfo {
                        id: *id,
                        addr: addr.clone(),
                        alive: true,
                    },
                );
                CommandResult::Done
            }
            Command::WorkerFailed { id } => {
                if let Some(worker) = self.workers.get_mut(id) {
                    worker.alive = false;
                }
                for collection in self.collections.values_mut() {
                    for shard in collection.shards.iter_mut() {
                        if let Some(next) = placement::fail_worker(shard, *id) {
                            *shard = next;
                        }
                    }
                }
                CommandResult::Done
            }
            Command::CreateCollection { spec } => {
                if self.collections.contains_key(&spec.name) {
                    return CommandResult::Refused(format!(
                        "collection `{}` already exists",
                        spec.name
                    ));
                }
                let live: Vec<WorkerId> = self
                    .workers
                    .values()
                    .filter(|w| w.alive)
                    .map(|w| w.id)
                    .collect();
                match placement::assign(spec.shards, spec.replication, &live) {
                    Ok(shards) => {
                        self.collections.insert(
                            spec.name.clone(),
                            CollectionMeta {
                                spec: spec.clone(),
                                shards,
                            },
                        );
                        CommandResult::Done
                    }
                    Err(e) => CommandResult::Refused(e.to_string()),
                }
            }
            Command::DropCollection { name } => match self.collections.remove(name) {
                Some(_) => CommandResult::Done,
                None => CommandResult::Refused(format!("collection `{name}` does not exist")),
            },
            Command::ReplicaOutOfSync {
                collection,
                shard,
                worker,
                epoch,
            } => self.change_shard(collection, *shard, |p| {
                placement::mark_out_of_sync(p, *worker, *epoch)
            }),
            Command::ReplicaInSync {
                collection,
                shard,
                worker,
                epoch,
            } => self.change_shard(collection, *shard, |p| {
                placement::mark_in_sync(p, *worker, *epoch)
            }),
        }
    }

    fn change_shard(
        &mut self,
        collection: &str,
        shard: u32,
        change: impl FnOnce(&ShardPlacement) -> Result<ShardPlacement, placement::PlacementError>,
    ) -> CommandResult {
        let Some(placement) = self
            .collections
            .get_mut(collection)
            .and_then(|c| c.shards.get_mut(shard as usize))
        else {
            return CommandResult::Refused(format!(
                "no shard {shard} in collection `{collection}`"
            ));
        };
        match change(placement) {
            Ok(next) => {
                *placement = next.clone();
                CommandResult::Placement(next)
            }
            Err(e) => CommandResult::Refused(e.to_string()),
        }
    }

    pub fn placement(&self, collection: &str, shard: u32) -> Option<&ShardPlacement> {
        self.collections
            .get(collection)
            .and_then(|c| c.shards.get(shard as usize))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use engram_core::{Metric, VotingRule};

    fn spec(name: &str, replication: u32) -> CollectionSpec {
        CollectionSpec {
            name: name.into(),
            dim: 4,
            metric: Metric::L2,
            embedder: None,
            shards: 4,
            replication,
            default_k: 10,
            default_rule: VotingRule::Rank,
        }
    }

    #[test]
    fn collections_are_placed_on_live_workers_and_fail_over() {
        let mut state = ClusterState::default();
        assert!(matches!(
            state.apply(&Command::CreateCollection { spec: spec("c", 2) }),
            CommandResult::Refused(_)
        ));
        for id in 1..=3 {
            state.apply(&Command::RegisterWorker {
                id,
                addr: format!("127.0.0.1:{}", 9000 + id),
            });
        }
        assert_eq!(
            state.apply(&Command::CreateCollection { spec: spec("c", 2) }),
            CommandResult::Done
        );
        let led_by_1: Vec<u32> = (0..4)
            .filter(|s| state.placement("c", *s).unwrap().primary == 1)
            .collect();
        assert!(!led_by_1.is_empty());
        state.apply(&Command::WorkerFailed { id: 1 });
        assert!(!state.workers[&1].alive);
        for s in 0..4 {
            let p = state.placement("c", s).unwrap();
            assert!(!p.is_in_sync(1));
            assert!(p.hosts(1) == p.out_of_sync.contains(&1));
        }
        // Catching up with a stale epoch is refused; with the current one it lands.
        let s = led_by_1[0];
        let epoch = state.placement("c", s).unwrap().epoch;
        let stale = Command::ReplicaInSync {
            collection: "c".into(),
            shard: s,
            worker: 1,
            epoch: epoch - 1,
        };
        assert!(matches!(state.apply(&stale), CommandResult::Refused(_)));
        let current = Command::ReplicaInSync {
            collection: "c".into(),
            shard: s,
            worker: 1,
            epoch,
        };
        assert!(
            matches!(state.apply(&current), CommandResult::Placement(p) if p.replicas == vec![1])
        );
        // New collections avoid the dead worker.
        state.apply(&Command::CreateCollection { spec: spec("d", 2) });
        assert!(state.collections["d"].shards.iter().all(|p| !p.hosts(1)));
        assert_eq!(
            state.apply(&Command::DropCollection { name: "d".into() }),
            CommandResult::Done
        );
    }
}
