//! The cluster metadata itself and how commands change it (pure).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use engram_core::placement::{self, ShardPlacement, WorkerId};
use engram_core::{CollectionSpec, Curation, DeletionLog, PruningWeights, Receipt, TrainedHead};

use crate::shared::Shared;
use crate::types::{Command, CommandResult, NodeId};

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
    pub curation: CollectionCuration,
    /// Per shard, per hosting worker: the sealed segments of that copy as
    /// the worker last reported them (each copy seals and compacts its
    /// own files).
    pub segments: BTreeMap<u32, BTreeMap<WorkerId, Vec<SegmentRecord>>>,
    /// Set on the target layout of a resharding under way: the public name
    /// of the collection it will become. Its shards are filled (receiving)
    /// and take every write the collection takes, and are never read.
    pub reshard_of: Option<String>,
    /// The newest layout generation of this collection (each resharding,
    /// finished or abandoned, makes the next, keyed `<name>@<generation>`):
    /// keys are never reused, so no worker can mistake an old layout's
    /// files for a new one's.
    pub generation: u64,
}

/// One sealed segment of one shard copy: its manifest's files with their
/// sizes and CRC32s, and how many of its rows are deleted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentRecord {
    pub name: String,
    pub rows: u64,
    pub deleted: u64,
    pub files: Vec<SegmentFile>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentFile {
    pub name: String,
    pub bytes: u64,
    pub crc32: u32,
}

/// What curators changed about how a collection votes, and its unlearning
/// receipts: the same state the embedded node keeps in files.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CollectionCuration {
    pub curation: Shared<Curation>,
    pub pruning: Option<Shared<PruningWeights>>,
    pub receipts: BTreeMap<u64, Shared<Receipt>>,
}

/// A long-running job (ingestion, pruning) as every coordinator sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: u64,
    pub collection: String,
    pub kind: String,
    /// The coordinator that runs it (and resumes it after a restart).
    pub owner: NodeId,
    /// Some coordinator asked it to stop; its owner stops it.
    pub cancel_requested: bool,
    /// The job's status as the API shows it (opaque here), as its owner
    /// last published it.
    pub status: Shared<serde_json::Value>,
    /// Counts the owner's publications: a running job whose beat stops
    /// moving has lost its owner (see `Command::TakeOverJob`).
    pub beat: u64,
    /// What another coordinator needs to run the job on from where it was
    /// (an ingest job's spec and checkpoint, opaque here), as its owner last
    /// published it; `None` for jobs that cannot resume.
    pub resume: Option<Shared<serde_json::Value>>,
    /// Coordinators that ran the job before its owner, oldest first.
    pub previous_owners: Vec<NodeId>,
}

/// Everything Raft replicates: members, collections, shard maps and each
/// collection's curation. Vectors never pass through it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterState {
    pub workers: BTreeMap<WorkerId, WorkerInfo>,
    /// Shard layouts by key: a collection's public name until it is first
    /// resharded, `<name>@<generation>` after (see `aliases`). Workers,
    /// their copies and the internal RPC all speak these keys.
    pub collections: BTreeMap<String, CollectionMeta>,
    pub jobs: BTreeMap<u64, JobRecord>,
    /// Public name -> key of its layout, for resharded collections.
    pub aliases: BTreeMap<String, String>,
    /// The snapshots the deployment wrote and the deletions since each
    /// (`engram_core::deletion_log`). Last: states encoded before it
    /// existed decode through [`ClusterState::decode`].
    pub deletion_log: Shared<DeletionLog>,
    /// Trained head re-rankers: collection (public name) -> re-ranker name
    /// -> head. Last, like `deletion_log`: older states decode through
    /// [`ClusterState::decode`].
    pub heads: BTreeMap<String, BTreeMap<String, Shared<TrainedHead>>>,
}

/// [`ClusterState`] as encoded before trained heads.
#[derive(Deserialize)]
struct ClusterStateBeforeHeads {
    workers: BTreeMap<WorkerId, WorkerInfo>,
    collections: BTreeMap<String, CollectionMeta>,
    jobs: BTreeMap<u64, JobRecord>,
    aliases: BTreeMap<String, String>,
    deletion_log: Shared<DeletionLog>,
}

/// [`ClusterState`] as encoded before the deletion log.
#[derive(Deserialize)]
struct ClusterStateBeforeDeletionLog {
    workers: BTreeMap<WorkerId, WorkerInfo>,
    collections: BTreeMap<String, CollectionMeta>,
    jobs: BTreeMap<u64, JobRecord>,
    aliases: BTreeMap<String, String>,
}

impl ClusterState {
    /// Decodes a state from a Raft snapshot, also one written before the
    /// deletion log was added (bincode has no optional trailing fields).
    pub fn decode(bytes: &[u8]) -> Result<ClusterState, bincode::Error> {
        if let Ok(state) = bincode::deserialize::<ClusterState>(bytes) {
            return Ok(state);
        }
        match bincode::deserialize::<ClusterStateBeforeHeads>(bytes) {
            Ok(old) => Ok(ClusterState {
                workers: old.workers,
                collections: old.collections,
                jobs: old.jobs,
                aliases: old.aliases,
                deletion_log: old.deletion_log,
                heads: BTreeMap::new(),
            }),
            Err(error) => match bincode::deserialize::<ClusterStateBeforeDeletionLog>(bytes) {
                Ok(old) => Ok(ClusterState {
                    workers: old.workers,
                    collections: old.collections,
                    jobs: old.jobs,
                    aliases: old.aliases,
                    deletion_log: Shared::default(),
                    heads: BTreeMap::new(),
                }),
                Err(_) => Err(error),
            },
        }
    }

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
                if self.collections.contains_key(&spec.name)
                    || self.aliases.contains_key(&spec.name)
                {
                    return CommandResult::Refused(format!(
                        "collection `{}` already exists",
                        spec.name
                    ));
                }
                match placement::assign(spec.shards, spec.replication, &self.live_workers()) {
                    Ok(shards) => {
                        self.collections.insert(
                            spec.name.clone(),
                            CollectionMeta {
                                spec: spec.clone(),
                                shards,
                                curation: CollectionCuration::default(),
                                segments: BTreeMap::new(),
                                reshard_of: None,
                                generation: 0,
                            },
                        );
                        CommandResult::Done
                    }
                    Err(e) => CommandResult::Refused(e.to_string()),
                }
            }
            Command::DropCollection { name } => {
                let key = self.key_of(name).to_string();
                match self.collections.remove(&key) {
                    Some(_) => {
                        self.aliases.remove(name);
                        self.collections
                            .retain(|_, c| c.reshard_of.as_deref() != Some(name.as_str()));
                        self.jobs.retain(|_, j| j.collection != *name);
                        self.heads.remove(name);
                        CommandResult::Done
                    }
                    None => CommandResult::Refused(format!("collection `{name}` does not exist")),
                }
            }
            Command::BeginReshard { collection, shards } => self.begin_reshard(collection, *shards),
            Command::FinishReshard { collection } => self.finish_reshard(collection),
            Command::AbortReshard { collection } => {
                let before = self.collections.len();
                self.collections
                    .retain(|_, c| c.reshard_of.as_deref() != Some(collection.as_str()));
                if self.collections.len() == before {
                    CommandResult::Refused(format!("`{collection}` is not being resharded"))
                } else {
                    CommandResult::Done
                }
            }
            Command::ReportSegments {
                collection,
                shard,
                worker,
                segments,
            } => {
                let Some(meta) = self.collections.get_mut(collection) else {
                    return CommandResult::Refused(format!(
                        "collection `{collection}` does not exist"
                    ));
                };
                if *shard >= meta.spec.shards {
                    return CommandResult::Refused(format!(
                        "no shard {shard} in collection `{collection}`"
                    ));
                }
                meta.segments
                    .entry(*shard)
                    .or_default()
                    .insert(*worker, segments.clone());
                CommandResult::Done
            }
            Command::CreateJob {
                collection,
                kind,
                owner,
                status,
            } => {
                if self.collection(collection).is_none() {
                    return CommandResult::Refused(format!(
                        "collection `{collection}` does not exist"
                    ));
                }
                let id = self.jobs.keys().next_back().map_or(1, |n| n + 1);
                let mut status = (**status).clone();
                if let Some(object) = status.as_object_mut() {
                    object.insert("id".into(), id.into());
                }
                self.jobs.insert(
                    id,
                    JobRecord {
                        id,
                        collection: collection.clone(),
                        kind: kind.clone(),
                        owner: *owner,
                        cancel_requested: false,
                        status: Shared::new(status),
                        beat: 0,
                        resume: None,
                        previous_owners: Vec::new(),
                    },
                );
                CommandResult::Job(id)
            }
            Command::UpdateJob {
                id,
                owner,
                status,
                resume,
            } => match self.jobs.get_mut(id) {
                Some(job) if job.owner == *owner => {
                    job.status = status.clone();
                    job.beat += 1;
                    if resume.is_some() {
                        job.resume = resume.clone();
                    }
                    CommandResult::Done
                }
                Some(job) => CommandResult::Refused(format!(
                    "job {id} is run by coordinator {}, not {owner}",
                    job.owner
                )),
                None => CommandResult::Refused(format!("job {id} does not exist")),
            },
            Command::TakeOverJob { id, from, to, beat } => match self.jobs.get_mut(id) {
                Some(job) if job.owner == *from && job.beat == *beat => {
                    if job.status.get("state").and_then(|s| s.as_str()) != Some("running") {
                        return CommandResult::Refused(format!("job {id} has ended"));
                    }
                    job.previous_owners.push(*from);
                    job.owner = *to;
                    job.beat += 1;
                    CommandResult::Done
                }
                Some(job) => CommandResult::Refused(format!(
                    "job {id} is run by coordinator {} at beat {}, not {from} at beat {beat}",
                    job.owner, job.beat
                )),
                None => CommandResult::Refused(format!("job {id} does not exist")),
            },
            Command::CancelJob { id } => match self.jobs.get_mut(id) {
                Some(job) => {
                    job.cancel_requested = true;
                    CommandResult::Done
                }
                None => CommandResult::Refused(format!("job {id} does not exist")),
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
            Command::CopyLost {
                collection,
                shard,
                worker,
                epoch,
            } => self.change_shard(collection, *shard, |p| {
                placement::lose_copy(p, *worker, *epoch)
            }),
            Command::AddHost {
                collection,
                shard,
                worker,
                epoch,
            } => {
                if !self.workers.get(worker).is_some_and(|w| w.alive) {
                    return CommandResult::Refused(format!("worker {worker} is not alive"));
                }
                self.change_shard(collection, *shard, |p| {
                    placement::add_host(p, *worker, *epoch)
                })
            }
            Command::RemoveHost {
                collection,
                shard,
                worker,
                epoch,
            } => {
                let result = self.change_shard(collection, *shard, |p| {
                    placement::remove_host(p, *worker, *epoch)
                });
                if matches!(result, CommandResult::Placement(_))
                    && let Some(copies) = self
                        .collections
                        .get_mut(collection)
                        .and_then(|c| c.segments.get_mut(shard))
                {
                    copies.remove(worker);
                }
                result
            }
            Command::Intervene {
                collection,
                intervention,
                reason,
                at,
            } => self.curate(collection, |c| {
                let mut next = (*c.curation).clone();
                let entry = next
                    .apply((**intervention).clone(), reason, at.clone())
                    .map_err(|e| e.to_string())?;
                c.curation = Shared::new(next);
                Ok(CommandResult::Audit(Shared::new(entry)))
            }),
            Command::RestoreCuration {
                collection,
                curation,
                pruning,
            } => {
                // A restored memory is another memory: its heads are gone.
                self.heads.remove(collection);
                self.curate(collection, |c| {
                    c.curation = curation.clone();
                    c.pruning = pruning.clone();
                    Ok(CommandResult::Done)
                })
            }
            Command::SetPruning {
                collection,
                weights,
            } => self.curate(collection, |c| {
                c.pruning = weights.clone();
                Ok(CommandResult::Done)
            }),
            Command::RecordDeletion {
                collection,
                selector,
                log,
                at,
            } => self.record_unlearning(collection, selector, log, at, None),
            Command::RecordUnlearning {
                collection,
                selector,
                log,
                at,
                erase_by,
            } => self.record_unlearning(collection, selector, log, at, erase_by.clone()),
            Command::RecordSnapshot { snapshot } => {
                let mut next = (*self.deletion_log).clone();
                next.record_snapshot((**snapshot).clone());
                self.deletion_log = Shared::new(next);
                CommandResult::Done
            }
            Command::ForgetSnapshot { uri, id } => {
                let mut next = (*self.deletion_log).clone();
                next.forget_snapshot(uri, id);
                self.deletion_log = Shared::new(next);
                CommandResult::Done
            }
            Command::SetHead {
                collection,
                reranker,
                head,
            } => {
                if !self.collections.contains_key(self.key_of(collection)) {
                    return CommandResult::Refused(format!("no collection `{collection}`"));
                }
                let heads = self.heads.entry(collection.clone()).or_default();
                match head {
                    Some(head) => {
                        heads.insert(reranker.clone(), head.clone());
                    }
                    None => {
                        heads.remove(reranker);
                    }
                }
                if heads.is_empty() {
                    self.heads.remove(collection);
                }
                CommandResult::Done
            }
        }
    }

    /// Records an unlearning receipt (see [`Command::RecordUnlearning`]).
    fn record_unlearning(
        &mut self,
        collection: &str,
        selector: &Shared<engram_core::Selector>,
        log: &[engram_core::ShardDeletion],
        at: &str,
        erase_by: Option<String>,
    ) -> CommandResult {
        let ids: Vec<u64> = log.iter().flat_map(|d| d.ids.iter().copied()).collect();
        if self.collection(collection).is_some()
            && self
                .deletion_log
                .snapshots_before(collection, at)
                .next()
                .is_some()
        {
            let mut next = (*self.deletion_log).clone();
            next.record_deletion(collection, at, ids);
            self.deletion_log = Shared::new(next);
        }
        self.curate(collection, |c| {
            let mut receipt = Receipt {
                receipt: c.receipts.keys().next_back().map_or(1, |n| n + 1),
                at: at.to_string(),
                selector: (**selector).clone(),
                deleted: log.iter().map(|d| d.ids.len()).sum(),
                log: log.to_vec(),
                stale_pruning_weights: 0,
                erase_by,
            };
            if let Some(current) = &c.pruning {
                let mut next = (**current).clone();
                receipt.stale_pruning_weights = next.forget(&receipt.ids().collect::<Vec<_>>());
                if next != **current {
                    c.pruning = Some(Shared::new(next));
                }
            }
            let receipt = Shared::new(receipt);
            c.receipts.insert(receipt.receipt, receipt.clone());
            Ok(CommandResult::Receipt(receipt))
        })
    }

    fn live_workers(&self) -> Vec<WorkerId> {
        self.workers
            .values()
            .filter(|w| w.alive)
            .map(|w| w.id)
            .collect()
    }

    /// The key of `name`'s current layout (its public name until it is
    /// first resharded).
    pub fn key_of<'a>(&'a self, name: &'a str) -> &'a str {
        self.aliases.get(name).map_or(name, String::as_str)
    }

    /// A collection's current layout by public name.
    pub fn collection(&self, name: &str) -> Option<&CollectionMeta> {
        self.collections
            .get(self.key_of(name))
            .filter(|c| c.reshard_of.is_none())
    }

    /// The public name of the layout keyed `key`, and whether it is a
    /// resharding's target.
    pub fn public_name<'a>(&'a self, key: &'a str) -> Option<(&'a str, bool)> {
        let meta = self.collections.get(key)?;
        if let Some(of) = &meta.reshard_of {
            return Some((of.as_str(), true));
        }
        let aliased = self
            .aliases
            .iter()
            .find(|(_, k)| k.as_str() == key)
            .map(|(name, _)| name.as_str());
        Some((aliased.unwrap_or(key), false))
    }

    /// Public names of the collections (targets of reshardings left out).
    pub fn public_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .collections
            .keys()
            .filter_map(|key| match self.public_name(key) {
                Some((name, false)) => Some(name.to_string()),
                _ => None,
            })
            .collect();
        names.sort();
        names
    }

    /// The key and layout of `name`'s resharding target, if one is under way.
    pub fn reshard_target(&self, name: &str) -> Option<(&str, &CollectionMeta)> {
        self.collections
            .iter()
            .find(|(_, c)| c.reshard_of.as_deref() == Some(name))
            .map(|(key, c)| (key.as_str(), c))
    }

    /// A target layout of `shards` shards for `name`, placed over the live
    /// workers; every shard of the current layout moves to a new epoch, so
    /// that a primary that has seen it refuses writes from coordinators
    /// that do not know the resharding yet (they would not write the
    /// target).
    fn begin_reshard(&mut self, name: &str, shards: u32) -> CommandResult {
        let Some(current) = self.collection(name).cloned() else {
            return CommandResult::Refused(format!("collection `{name}` does not exist"));
        };
        if let Some((key, target)) = self.reshard_target(name) {
            return CommandResult::Refused(format!(
                "`{name}` is already being resharded to {} shards (layout `{key}`)",
                target.spec.shards
            ));
        }
        if shards == 0 || shards > engram_core::collection::MAX_SHARDS {
            return CommandResult::Refused(format!("{shards} is not a valid shard count"));
        }
        if shards == current.spec.shards {
            return CommandResult::Refused(format!("`{name}` already has {shards} shards"));
        }
        let generation = current.generation + 1;
        let key = format!("{name}@{generation}");
        let placements =
            match placement::assign(shards, current.spec.replication, &self.live_workers()) {
                Ok(p) => p,
                Err(e) => return CommandResult::Refused(e.to_string()),
            };
        let current_key = self.key_of(name).to_string();
        if let Some(meta) = self.collections.get_mut(&current_key) {
            for placement in meta.shards.iter_mut() {
                placement.epoch += 1;
            }
            // Keys are never reused, an abandoned target's included.
            meta.generation = generation;
        }
        self.collections.insert(
            key.clone(),
            CollectionMeta {
                spec: CollectionSpec {
                    name: key,
                    shards,
                    ..current.spec.clone()
                },
                shards: placements,
                curation: CollectionCuration::default(),
                segments: BTreeMap::new(),
                reshard_of: Some(name.to_string()),
                generation,
            },
        );
        CommandResult::Done
    }

    /// The target becomes `name`'s layout (every shard at a new epoch): it
    /// takes the curation, the
    /// public name now points at it, and the old layout leaves the state
    /// (workers drop its copies when they see this).
    fn finish_reshard(&mut self, name: &str) -> CommandResult {
        let Some((target_key, _)) = self.reshard_target(name) else {
            return CommandResult::Refused(format!("`{name}` is not being resharded"));
        };
        let target_key = target_key.to_string();
        let current_key = self.key_of(name).to_string();
        let Some(old) = self.collections.remove(&current_key) else {
            return CommandResult::Refused(format!("collection `{name}` does not exist"));
        };
        let Some(target) = self.collections.get_mut(&target_key) else {
            return CommandResult::Refused(format!("`{name}` is not being resharded"));
        };
        target.reshard_of = None;
        target.curation = old.curation;
        // Every copy of the new layout learns of the flip through a new
        // epoch: its primary then holds acknowledgements for one read lease
        // (see `Replica::adopt` in the worker), so that copies of the old
        // layout still answering reads on a stale view cannot miss a write
        // acknowledged after the flip.
        for placement in target.shards.iter_mut() {
            placement.epoch += 1;
        }
        self.aliases.insert(name.to_string(), target_key);
        CommandResult::Done
    }

    fn curate(
        &mut self,
        collection: &str,
        change: impl FnOnce(&mut CollectionCuration) -> Result<CommandResult, String>,
    ) -> CommandResult {
        let key = self.key_of(collection).to_string();
        let Some(meta) = self.collections.get_mut(&key) else {
            return CommandResult::Refused(format!("collection `{collection}` does not exist"));
        };
        change(&mut meta.curation).unwrap_or_else(CommandResult::Refused)
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

    #[test]
    fn a_resharding_places_a_target_fences_the_old_epochs_and_flips_under_the_public_name() {
        use engram_core::Intervention;
        let mut state = ClusterState::default();
        for id in 1..=3 {
            state.apply(&Command::RegisterWorker {
                id,
                addr: format!("127.0.0.1:{}", 9000 + id),
            });
        }
        state.apply(&Command::CreateCollection { spec: spec("c", 2) });
        state.apply(&Command::Intervene {
            collection: "c".into(),
            intervention: Shared::new(Intervention::BlockClass { label: "x".into() }),
            reason: "r".into(),
            at: "t".into(),
        });
        let epochs: Vec<u64> = state.collections["c"]
            .shards
            .iter()
            .map(|p| p.epoch)
            .collect();
        let begin = |shards| Command::BeginReshard {
            collection: "c".into(),
            shards,
        };
        assert!(
            matches!(state.apply(&begin(4)), CommandResult::Refused(_)),
            "same count"
        );
        assert_eq!(state.apply(&begin(9)), CommandResult::Done);
        assert!(
            matches!(state.apply(&begin(7)), CommandResult::Refused(_)),
            "one at a time"
        );
        let (key, target) = state.reshard_target("c").unwrap();
        assert_eq!((key, target.spec.shards), ("c@1", 9));
        assert_eq!(target.spec.name, "c@1");
        assert!(target.shards.iter().all(|p| p.replicas.len() == 1));
        for (placement, before) in state.collections["c"].shards.iter().zip(epochs) {
            assert_eq!(placement.epoch, before + 1);
        }
        // The target is no collection of its own to the public.
        assert_eq!(state.public_names(), vec!["c".to_string()]);
        assert!(state.collection("c@1").is_none());
        assert_eq!(state.public_name("c@1"), Some(("c", true)));

        assert_eq!(
            state.apply(&Command::FinishReshard {
                collection: "c".into()
            }),
            CommandResult::Done
        );
        assert!(state.reshard_target("c").is_none());
        assert_eq!(state.key_of("c"), "c@1");
        let c = state.collection("c").unwrap();
        assert_eq!(c.spec.shards, 9);
        assert_eq!(
            c.curation.curation.audit.len(),
            1,
            "the curation moved along"
        );
        assert!(!state.collections.contains_key("c"));
        assert_eq!(state.public_names(), vec!["c".to_string()]);
        assert_eq!(state.public_name("c@1"), Some(("c", false)));
        // The name is taken; the next resharding gets a new key; aborting
        // drops only the target; dropping the collection drops both.
        assert!(matches!(
            state.apply(&Command::CreateCollection { spec: spec("c", 1) }),
            CommandResult::Refused(_)
        ));
        state.apply(&begin(3));
        assert_eq!(state.reshard_target("c").unwrap().0, "c@2");
        assert_eq!(
            state.apply(&Command::AbortReshard {
                collection: "c".into()
            }),
            CommandResult::Done
        );
        assert_eq!(state.collections.len(), 1);
        state.apply(&begin(3));
        assert_eq!(
            state.reshard_target("c").unwrap().0,
            "c@3",
            "not the abandoned key"
        );
        assert_eq!(
            state.apply(&Command::DropCollection { name: "c".into() }),
            CommandResult::Done
        );
        assert!(state.collections.is_empty() && state.aliases.is_empty());
        let bytes = bincode::serialize(&state).unwrap();
        assert_eq!(bincode::deserialize::<ClusterState>(&bytes).unwrap(), state);
    }

    #[test]
    fn curation_commands_change_only_their_collection_and_number_receipts() {
        use engram_core::{Intervention, PruningScores, Selector, ShardDeletion};
        let mut state = ClusterState::default();
        state.apply(&Command::RegisterWorker {
            id: 1,
            addr: "127.0.0.1:9001".into(),
        });
        for name in ["c", "d"] {
            state.apply(&Command::CreateCollection {
                spec: spec(name, 1),
            });
        }
        let intervene = |collection: &str, label: &str, reason: &str| Command::Intervene {
            collection: collection.into(),
            intervention: Shared::new(Intervention::BlockClass {
                label: label.into(),
            }),
            reason: reason.into(),
            at: "2026-11-29T00:00:00Z".into(),
        };
        assert!(matches!(
            state.apply(&intervene("c", "cat", "bad batch")),
            CommandResult::Audit(e) if e.seq == 1
        ));
        // The curation rules still refuse what they refuse (empty reason).
        assert!(matches!(
            state.apply(&intervene("c", "dog", " ")),
            CommandResult::Refused(_)
        ));
        assert!(matches!(
            state.apply(&intervene("x", "cat", "r")),
            CommandResult::Refused(_)
        ));
        assert_eq!(state.collections["c"].curation.curation.audit.len(), 1);
        assert!(state.collections["d"].curation.curation.audit.is_empty());

        let mut scores = PruningScores::default();
        scores.add_query(3, "a", &[(7, "b")]);
        let weights = engram_core::PruningWeights::new(1, "t".into(), 10, scores);
        state.apply(&Command::SetPruning {
            collection: "c".into(),
            weights: Some(Shared::new(weights)),
        });
        let delete = |ids: Vec<u64>| Command::RecordDeletion {
            collection: "c".into(),
            selector: Shared::new(Selector {
                ids: Some(ids.len()),
                ..Selector::default()
            }),
            log: vec![ShardDeletion {
                shard: 0,
                ids,
                wal_generation: 1,
                wal_offset: 10,
                vectors_in_wal: true,
                segments: vec![],
            }],
            at: "2026-11-29T00:00:01Z".into(),
        };
        let CommandResult::Receipt(first) = state.apply(&delete(vec![3])) else {
            panic!("no receipt");
        };
        assert_eq!((first.receipt, first.deleted), (1, 1));
        assert_eq!(first.stale_pruning_weights, 1);
        let CommandResult::Receipt(second) = state.apply(&delete(vec![4, 5])) else {
            panic!("no receipt");
        };
        assert_eq!((second.receipt, second.deleted), (2, 2));
        // The whole state, curation included, round-trips through bincode
        // (snapshots and log entries).
        let bytes = bincode::serialize(&state).unwrap();
        assert_eq!(bincode::deserialize::<ClusterState>(&bytes).unwrap(), state);
        let bytes = bincode::serialize(&delete(vec![9])).unwrap();
        assert_eq!(
            bincode::deserialize::<Command>(&bytes).unwrap(),
            delete(vec![9])
        );

        // With a snapshot of `c` recorded, later deletions are logged for
        // its restore, and the deadline goes into the receipt.
        state.apply(&Command::RecordSnapshot {
            snapshot: Shared::new(engram_core::SnapshotRecord {
                uri: "s3://b/s".into(),
                id: "one".into(),
                created_at: "2026-11-29T00:00:02Z".into(),
                collections: vec!["c".into()],
            }),
        });
        let CommandResult::Receipt(third) = state.apply(&Command::RecordUnlearning {
            collection: "c".into(),
            selector: Shared::new(Selector::default()),
            log: vec![ShardDeletion {
                ids: vec![6, 7],
                ..ShardDeletion::default()
            }],
            at: "2026-11-29T00:00:03Z".into(),
            erase_by: Some("2026-11-30T00:00:03Z".into()),
        }) else {
            panic!("no receipt");
        };
        assert_eq!(third.erase_by.as_deref(), Some("2026-11-30T00:00:03Z"));
        assert_eq!(
            state
                .deletion_log
                .deleted_since("c", "2026-11-29T00:00:02Z"),
            vec![6, 7],
            "deletions before the snapshot are not logged"
        );
        let bytes = bincode::serialize(&state).unwrap();
        assert_eq!(ClusterState::decode(&bytes).unwrap(), state);
        state.apply(&Command::ForgetSnapshot {
            uri: "s3://b/s".into(),
            id: "one".into(),
        });
        assert_eq!(*state.deletion_log, DeletionLog::default());
    }

    /// A Raft snapshot written before the deletion log still opens.
    #[test]
    fn states_from_before_the_deletion_log_decode() {
        #[derive(Serialize)]
        struct Before {
            workers: BTreeMap<WorkerId, WorkerInfo>,
            collections: BTreeMap<String, CollectionMeta>,
            jobs: BTreeMap<u64, JobRecord>,
            aliases: BTreeMap<String, String>,
        }
        let mut state = ClusterState::default();
        state.apply(&Command::RegisterWorker {
            id: 4,
            addr: "127.0.0.1:1".into(),
        });
        state.aliases.insert("a".into(), "a@2".into());
        let old = Before {
            workers: state.workers.clone(),
            collections: state.collections.clone(),
            jobs: state.jobs.clone(),
            aliases: state.aliases.clone(),
        };
        let bytes = bincode::serialize(&old).unwrap();
        assert_eq!(ClusterState::decode(&bytes).unwrap(), state);
        assert!(ClusterState::decode(&bytes[..bytes.len() - 1]).is_err());
    }

    /// A Raft snapshot written before heads, with a deletion log, opens.
    #[test]
    fn states_from_before_heads_decode() {
        #[derive(Serialize)]
        struct Before {
            workers: BTreeMap<WorkerId, WorkerInfo>,
            collections: BTreeMap<String, CollectionMeta>,
            jobs: BTreeMap<u64, JobRecord>,
            aliases: BTreeMap<String, String>,
            deletion_log: Shared<DeletionLog>,
        }
        let mut state = ClusterState::default();
        state.apply(&Command::RegisterWorker {
            id: 1,
            addr: "127.0.0.1:1".into(),
        });
        state.apply(&Command::RecordSnapshot {
            snapshot: Shared::new(engram_core::SnapshotRecord {
                uri: "s3://b/s".into(),
                id: "one".into(),
                created_at: "2026-11-29T00:00:00Z".into(),
                collections: vec!["c".into()],
            }),
        });
        let old = Before {
            workers: state.workers.clone(),
            collections: state.collections.clone(),
            jobs: state.jobs.clone(),
            aliases: state.aliases.clone(),
            deletion_log: state.deletion_log.clone(),
        };
        let bytes = bincode::serialize(&old).unwrap();
        assert_eq!(ClusterState::decode(&bytes).unwrap(), state);
    }

    #[test]
    fn heads_are_kept_replaced_and_go_with_their_collection() {
        use engram_core::{HeadTraining, LinearHead, MemoryVersion};
        let head = |job| {
            Some(Shared::new(TrainedHead {
                reranker: "head".into(),
                job,
                trained_at: "t".into(),
                version: MemoryVersion::default(),
                rows: 1,
                train_accuracy: 1.0,
                training: HeadTraining::default(),
                head: LinearHead {
                    labels: vec!["a".into()],
                    dim: 1,
                    weights: vec![0.5],
                    bias: vec![0.0],
                },
            }))
        };
        let mut state = ClusterState::default();
        let set = |collection: &str, job| Command::SetHead {
            collection: collection.into(),
            reranker: "head".into(),
            head: head(job),
        };
        assert!(matches!(
            state.apply(&set("c", 1)),
            CommandResult::Refused(_)
        ));
        for id in 1..=2 {
            state.apply(&Command::RegisterWorker {
                id,
                addr: format!("127.0.0.1:{}", 9000 + id),
            });
        }
        state.apply(&Command::CreateCollection { spec: spec("c", 2) });
        assert_eq!(state.apply(&set("c", 1)), CommandResult::Done);
        state.apply(&set("c", 2));
        assert_eq!(state.heads["c"]["head"].job, 2, "replaced, not kept beside");
        let bytes = bincode::serialize(&state).unwrap();
        assert_eq!(ClusterState::decode(&bytes).unwrap(), state);
        state.apply(&Command::DropCollection { name: "c".into() });
        assert!(state.heads.is_empty());
    }

    #[test]
    fn jobs_get_cluster_wide_ids_one_writer_and_go_with_their_collection() {
        let mut state = ClusterState::default();
        state.apply(&Command::RegisterWorker {
            id: 1,
            addr: "127.0.0.1:9001".into(),
        });
        state.apply(&Command::CreateCollection { spec: spec("c", 1) });
        let create = |owner| Command::CreateJob {
            collection: "c".into(),
            kind: "ingest".into(),
            owner,
            status: Shared::new(serde_json::json!({ "id": 0, "state": "running" })),
        };
        assert_eq!(state.apply(&create(1)), CommandResult::Job(1));
        assert_eq!(state.apply(&create(2)), CommandResult::Job(2));
        assert_eq!(state.jobs[&2].status["id"], 2);
        let update = |owner| Command::UpdateJob {
            id: 1,
            owner,
            status: Shared::new(serde_json::json!({ "id": 1, "state": "succeeded" })),
            resume: None,
        };
        assert!(matches!(state.apply(&update(2)), CommandResult::Refused(_)));
        assert_eq!(state.apply(&update(1)), CommandResult::Done);
        assert_eq!(state.jobs[&1].status["state"], "succeeded");
        assert_eq!(
            state.apply(&Command::CancelJob { id: 2 }),
            CommandResult::Done
        );
        assert!(state.jobs[&2].cancel_requested);
        let bytes = bincode::serialize(&state).unwrap();
        assert_eq!(bincode::deserialize::<ClusterState>(&bytes).unwrap(), state);
        state.apply(&Command::DropCollection { name: "c".into() });
        assert!(state.jobs.is_empty());
        assert!(matches!(
            state.apply(&Command::CreateJob {
                collection: "c".into(),
                kind: "ingest".into(),
                owner: 1,
                status: Shared::new(serde_json::json!({})),
            }),
            CommandResult::Refused(_)
        ));
    }

    #[test]
    fn a_job_is_taken_over_only_from_its_owner_at_the_beat_seen_and_only_while_running() {
        let mut state = ClusterState::default();
        state.apply(&Command::RegisterWorker {
            id: 1,
            addr: "127.0.0.1:9001".into(),
        });
        state.apply(&Command::CreateCollection { spec: spec("c", 1) });
        state.apply(&Command::CreateJob {
            collection: "c".into(),
            kind: "ingest".into(),
            owner: 1,
            status: Shared::new(serde_json::json!({ "id": 0, "state": "running" })),
        });
        let publish = |owner, state: &str, resume: Option<serde_json::Value>| Command::UpdateJob {
            id: 1,
            owner,
            status: Shared::new(serde_json::json!({ "id": 1, "state": state })),
            resume: resume.map(Shared::new),
        };
        let cp = serde_json::json!({ "checkpoint": { "file": 3 } });
        assert_eq!(
            state.apply(&publish(1, "running", Some(cp.clone()))),
            CommandResult::Done
        );
        // A publication without a resume point keeps the last one.
        assert_eq!(
            state.apply(&publish(1, "running", None)),
            CommandResult::Done
        );
        assert_eq!(state.jobs[&1].beat, 2);
        assert_eq!(**state.jobs[&1].resume.as_ref().unwrap(), cp);
        let take = |from, to, beat| Command::TakeOverJob {
            id: 1,
            from,
            to,
            beat,
        };
        // The owner published after the beat the taker saw: refused.
        assert!(matches!(
            state.apply(&take(1, 2, 1)),
            CommandResult::Refused(_)
        ));
        // Not from the owner: refused.
        assert!(matches!(
            state.apply(&take(3, 2, 2)),
            CommandResult::Refused(_)
        ));
        assert_eq!(state.apply(&take(1, 2, 2)), CommandResult::Done);
        assert_eq!(state.jobs[&1].owner, 2);
        assert_eq!(state.jobs[&1].previous_owners, vec![1]);
        // The former owner is refused from now on; the new one publishes.
        assert!(matches!(
            state.apply(&publish(1, "running", None)),
            CommandResult::Refused(_)
        ));
        assert_eq!(
            state.apply(&publish(2, "succeeded", None)),
            CommandResult::Done
        );
        // An ended job is not taken over.
        let beat = state.jobs[&1].beat;
        assert!(matches!(
            state.apply(&take(2, 3, beat)),
            CommandResult::Refused(_)
        ));
        let bytes = bincode::serialize(&state).unwrap();
        assert_eq!(bincode::deserialize::<ClusterState>(&bytes).unwrap(), state);
    }
}
