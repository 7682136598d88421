//! A collection of the cluster by its public name: its current layout
//! ([`RemoteLayout`]) and, while it is resharded, the target layout that
//! every write reaches too.
//!
//! Each operation works on the layouts of one snapshot of the shard map.
//! When a resharding's flip lands in between, the old layout's key leaves
//! the map and its copies go: an operation that failed for that reason is
//! run again on the new layout (upserts and deletes are idempotent).

use std::path::Path;
use std::sync::Arc;

use engram_core::CollectionSpec;
use engram_core::merge_policy::CompactOptions;
use engram_index::SearchTuning;
use engram_meta::ClusterState;
use engram_store::WalOp;
use engram_worker::wire::SegmentObject;
use engram_worker::{
    AttachedSegment, CollectionStats, Compaction, ItemView, PresenceReport, ReshardHooks,
    ReshardReport, Result, ScannedItem, SearchFilter, SearchResults, ShardDeletion,
    ShardedCollection, WorkerError,
};

use super::ClusterBackend;
use super::remote::{LayoutView, RemoteLayout};

/// How often an operation is run again when the layout changed under it.
const LAYOUT_RETRIES: usize = 4;

pub struct RemoteCollection {
    pub(super) cluster: ClusterBackend,
    /// The public name.
    pub(super) name: String,
    pub(super) runtime: tokio::runtime::Handle,
}

/// The layouts of a collection in one snapshot of the shard map.
pub(super) struct Layouts {
    pub(super) current: RemoteLayout,
    pub(super) target: Option<RemoteLayout>,
}

impl RemoteCollection {
    pub(crate) fn new(
        cluster: ClusterBackend,
        name: String,
        runtime: tokio::runtime::Handle,
    ) -> RemoteCollection {
        RemoteCollection {
            cluster,
            name,
            runtime,
        }
    }

    pub(super) fn layouts_in(&self, state: &ClusterState) -> Result<Layouts> {
        let current = state
            .collection(&self.name)
            .ok_or_else(|| WorkerError::UnknownCollection(self.name.clone()))?;
        let view = LayoutView::of(state, &self.name)
            .ok_or_else(|| WorkerError::UnknownCollection(self.name.clone()))?;
        let layout = |spec: &CollectionSpec| {
            RemoteLayout::new(self.cluster.clone(), spec.clone(), self.runtime.clone())
                .in_view(view.clone())
        };
        Ok(Layouts {
            current: layout(&current.spec),
            target: state
                .reshard_target(&self.name)
                .map(|(_, target)| layout(&target.spec)),
        })
    }

    pub(super) fn layouts(&self) -> Result<Layouts> {
        self.layouts_in(&self.cluster.state())
    }

    /// The key of the current layout now.
    fn current_key(&self) -> Option<String> {
        let state = self.cluster.state();
        state.collection(&self.name).map(|c| c.spec.name.clone())
    }

    /// Runs `op` on the layouts of the newest shard map, again when it
    /// fails while the layouts changed under it (a flip, or a resharding
    /// begun or abandoned: a write must reach every layout of the map it
    /// is acknowledged under).
    fn on_layouts<T>(&self, op: impl Fn(&Layouts) -> Result<T>) -> Result<T> {
        let mut attempt = 0;
        loop {
            let state = self.cluster.state();
            let layouts = self.layouts_in(&state)?;
            let view = LayoutView::of(&state, &self.name);
            drop(state);
            match op(&layouts) {
                Ok(value) => return Ok(value),
                Err(error) => {
                    attempt += 1;
                    let now = LayoutView::of(&self.cluster.state(), &self.name);
                    let moved = now.is_some() && now != view;
                    if !moved || attempt >= LAYOUT_RETRIES {
                        return Err(error);
                    }
                    tracing::info!(collection = %self.name, %error, "the collection's layout changed under a request; running it on the new one");
                }
            }
        }
    }
}

impl ShardedCollection for RemoteCollection {
    fn spec(&self) -> CollectionSpec {
        let state = self.cluster.state();
        match state.collection(&self.name) {
            Some(meta) => CollectionSpec {
                name: self.name.clone(),
                ..meta.spec.clone()
            },
            None => CollectionSpec {
                name: self.name.clone(),
                dim: 0,
                metric: engram_core::Metric::Cosine,
                embedder: None,
                shards: 1,
                replication: 1,
                default_k: 1,
                default_rule: engram_core::VotingRule::Rank,
            },
        }
    }

    fn write(&self, ops: Vec<WalOp>) -> Result<()> {
        self.on_layouts(|layouts| {
            layouts.current.write(ops.clone())?;
            if let Some(target) = &layouts.target {
                target.write(ops.clone())?;
            }
            Ok(())
        })
    }

    fn delete_ids_traced(&self, ids: &[u64]) -> Result<Vec<ShardDeletion>> {
        self.on_layouts(|layouts| {
            let deletions = layouts.current.delete_ids_traced(ids)?;
            if let Some(target) = &layouts.target {
                target.delete_receiving(ids)?;
            }
            Ok(deletions)
        })
    }

    fn delete_label_traced(&self, label: &str) -> Result<Vec<ShardDeletion>> {
        self.on_layouts(|layouts| {
            let deletions = layouts.current.delete_label_traced(label)?;
            if let Some(target) = &layouts.target {
                // What the current layout deleted must never be copied in,
                // and what was copied already goes by its label.
                target.delete_receiving(&deleted_ids(&deletions))?;
                target.delete_label_traced(label)?;
            }
            Ok(deletions)
        })
    }

    fn delete_source_traced(&self, source: &str) -> Result<Vec<ShardDeletion>> {
        self.on_layouts(|layouts| {
            let deletions = layouts.current.delete_source_traced(source)?;
            if let Some(target) = &layouts.target {
                target.delete_receiving(&deleted_ids(&deletions))?;
                target.delete_source_traced(source)?;
            }
            Ok(deletions)
        })
    }

    fn presence(&self, deletions: &[ShardDeletion]) -> Result<PresenceReport> {
        self.on_layouts(|layouts| {
            let mut found = layouts.current.presence(deletions)?;
            if let Some(target) = &layouts.target {
                found.extend(target.presence(deletions)?);
            }
            Ok(found)
        })
    }

    fn erase(&self, deletions: &[ShardDeletion]) -> Result<Compaction> {
        self.on_layouts(|layouts| {
            let mut done = layouts.current.erase(deletions)?;
            if let Some(target) = &layouts.target {
                done = done + target.erase(deletions)?;
            }
            Ok(done)
        })
    }

    fn snapshot_shard(&self, shard: u32) -> Result<Vec<ScannedItem>> {
        self.layouts()?.current.snapshot_shard(shard)
    }

    fn scan(&self, f: &mut dyn FnMut(Vec<ScannedItem>) -> Result<()>) -> Result<()> {
        self.layouts()?.current.scan(f)
    }

    fn search_batch(
        &self,
        queries: &[&[f32]],
        k: usize,
        filter: &SearchFilter,
        tuning: SearchTuning,
    ) -> SearchResults {
        let Ok(layouts) = self.layouts() else {
            return SearchResults {
                lists: vec![Vec::new(); queries.len()],
                incomplete_shards: vec![0],
            };
        };
        let key = layouts.current.spec().name.clone();
        let results = layouts.current.search_batch(queries, k, filter, tuning);
        // Shards missing because the layout flipped meanwhile are found in
        // the new one.
        match self.current_key() {
            Some(now) if !results.incomplete_shards.is_empty() && now != key => {
                match self.layouts() {
                    Ok(fresh) => fresh.current.search_batch(queries, k, filter, tuning),
                    Err(_) => results,
                }
            }
            _ => results,
        }
    }

    fn get(&self, id: u64) -> Result<Option<ItemView>> {
        self.on_layouts(|layouts| layouts.current.get(id))
    }

    fn get_vector(&self, id: u64) -> Result<Option<Vec<f32>>> {
        self.on_layouts(|layouts| layouts.current.get_vector(id))
    }

    fn thumbnail(&self, id: u64) -> Result<Option<Arc<[u8]>>> {
        self.on_layouts(|layouts| layouts.current.thumbnail(id))
    }

    fn stats(&self) -> Result<CollectionStats> {
        self.on_layouts(|layouts| layouts.current.stats())
    }

    fn compact(&self, options: CompactOptions) -> Result<Compaction> {
        self.on_layouts(|layouts| layouts.current.compact(options))
    }

    fn attach_segment(
        &self,
        shard: u32,
        routed_by: u32,
        local: &Path,
        object: Option<&SegmentObject>,
    ) -> Result<AttachedSegment> {
        let layouts = self.layouts()?;
        if layouts.target.is_some() || layouts.current.spec().shards != routed_by {
            return Err(WorkerError::Invalid(format!(
                "collection `{}` was resharded (or is being resharded) since this segment was routed for {routed_by} shards; run the bulk job again once the resharding is done",
                self.name
            )));
        }
        layouts.current.attach_segment(shard, local, object)
    }

    fn reshard(&self, shards: u32, hooks: &dyn ReshardHooks) -> Result<ReshardReport> {
        super::reshard::run(self, shards, hooks)
    }

    fn reshard_target(&self) -> Option<u32> {
        let state = self.cluster.state();
        state
            .reshard_target(&self.name)
            .map(|(_, target)| target.spec.shards)
    }

    fn abandon_reshard(&self) -> Result<()> {
        super::reshard::abandon(self)
    }
}

fn deleted_ids(deletions: &[ShardDeletion]) -> Vec<u64> {
    deletions
        .iter()
        .flat_map(|d| d.ids.iter().copied())
        .collect()
}
