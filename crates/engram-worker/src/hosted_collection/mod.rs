//! All shards of one collection hosted by this worker (the embedded node).
//!
//! Requests go to the collection's current [`Layout`]; while it is
//! resharded (`reshard.rs`) writes also reach the target layout, and the
//! flip to the target happens between two writes.

mod layout;
mod reshard;
#[cfg(test)]
mod tests;

use parking_lot::{Mutex, RwLock};
use rayon::prelude::*;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use engram_core::config::IndexParams;
use engram_core::merge_policy::CompactOptions;
use engram_core::topk::merge_per_query;
use engram_core::{CollectionSpec, Neighbor};
use engram_index::{SearchTuning, SegmentCache};
use engram_store::WalOp;

use self::layout::Layout;
pub use self::reshard::{ReshardHooks, ReshardReport};
use crate::error::{Result, WorkerError};
use crate::presence::{CopyPresence, PresenceReport};
use crate::shard::{
    Compaction, ItemView, ScannedItem, SearchFilter, Shard, ShardDeletion, ShardHits,
};
use crate::wire::ShardStats;

/// Live items and items per label, and the state of sealed segments.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CollectionStats {
    pub items: u64,
    pub labels: BTreeMap<String, u64>,
    /// Deleted rows still in sealed segments, and all their rows.
    pub tombstones: u64,
    pub sealed_rows: u64,
    pub sealed_segments: usize,
    pub sealed_bytes: u64,
    /// Per shard, in shard order.
    pub shards: Vec<ShardStats>,
}

impl CollectionStats {
    /// Totals over `shards` (one copy of each).
    pub fn from_shards(mut shards: Vec<ShardStats>) -> CollectionStats {
        shards.sort_by_key(|s| s.shard);
        let mut stats = CollectionStats::default();
        for s in &shards {
            stats.items += s.items;
            for (label, n) in &s.labels {
                *stats.labels.entry(label.clone()).or_default() += n;
            }
            stats.tombstones += s.tombstones;
            stats.sealed_rows += s.sealed_rows;
            stats.sealed_segments += s.sealed_segments;
            stats.sealed_bytes += s.sealed_bytes;
        }
        stats.shards = shards;
        stats
    }
}

/// Merged answers to a batch of queries.
#[derive(Debug, Clone, Default)]
pub struct SearchResults {
    /// Best first, one list per query.
    pub lists: Vec<Vec<Neighbor>>,
    /// Shards that answered without some of their segments: the lists may
    /// miss neighbours stored there (the API's `partial: true`).
    pub incomplete_shards: Vec<u32>,
}

fn deleted_count(deletions: &[ShardDeletion]) -> usize {
    deletions.iter().map(|d| d.ids.len()).sum()
}

pub struct HostedCollection {
    dir: PathBuf,
    params: IndexParams,
    cache: Arc<SegmentCache>,
    /// The layout requests are served from.
    current: RwLock<Arc<Layout>>,
    /// A resharding's target layout, which every write reaches too.
    target: RwLock<Option<Arc<Layout>>>,
    /// Writes hold it shared; turning dual writes on and flipping layouts
    /// hold it exclusively, so that each write lands in both layouts or is
    /// ordered entirely before or after the change.
    gate: RwLock<()>,
    /// One resharding at a time.
    resharding: Mutex<()>,
}

impl HostedCollection {
    /// Opens (creating where missing) every shard of `spec` under `dir`.
    pub fn open(
        dir: &Path,
        spec: CollectionSpec,
        params: &IndexParams,
    ) -> Result<HostedCollection> {
        Self::open_cached(dir, spec, params, SegmentCache::disk_only())
    }

    /// [`Self::open`] serving sealed segments within `cache`'s budget. A
    /// resharding that was under way when the process stopped is picked up
    /// where its files say (see `reshard.rs`): its target layout is opened
    /// and takes writes again before this returns.
    pub fn open_cached(
        dir: &Path,
        spec: CollectionSpec,
        params: &IndexParams,
        cache: Arc<SegmentCache>,
    ) -> Result<HostedCollection> {
        let (current, target) = reshard::open_layouts(dir, spec, params, &cache)?;
        cache.rebalance();
        Ok(HostedCollection {
            dir: dir.to_path_buf(),
            params: params.clone(),
            cache,
            current: RwLock::new(Arc::new(current)),
            target: RwLock::new(target.map(Arc::new)),
            gate: RwLock::new(()),
            resharding: Mutex::new(()),
        })
    }

    /// The collection as it is served now (the shard count changes when a
    /// resharding finishes).
    pub fn spec(&self) -> CollectionSpec {
        self.layout().spec.clone()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn layout(&self) -> Arc<Layout> {
        self.current.read().clone()
    }

    fn target(&self) -> Option<Arc<Layout>> {
        self.target.read().clone()
    }

    /// Routes each operation to its shard and writes the shards in
    /// parallel (while resharding, the target layout's too).
    pub fn write(&self, ops: Vec<WalOp>) -> Result<()> {
        let _gate = self.gate.read();
        match self.target() {
            None => self.layout().write(ops),
            Some(target) => {
                self.layout().write(ops.clone())?;
                target.write(ops)
            }
        }
    }

    pub fn delete_ids(&self, ids: &[u64]) -> Result<usize> {
        Ok(deleted_count(&self.delete_ids_traced(ids)?))
    }

    pub fn delete_label(&self, label: &str) -> Result<usize> {
        Ok(deleted_count(&self.delete_label_traced(label)?))
    }

    pub fn delete_source(&self, source: &str) -> Result<usize> {
        Ok(deleted_count(&self.delete_source_traced(source)?))
    }

    /// Deletes those of `ids` that are live; one record per shard that
    /// deleted something (see [`ShardDeletion`]).
    pub fn delete_ids_traced(&self, ids: &[u64]) -> Result<Vec<ShardDeletion>> {
        let _gate = self.gate.read();
        let layout = self.layout();
        let mut per_shard: Vec<HashSet<u64>> = vec![HashSet::new(); layout.shards.len()];
        for id in ids {
            per_shard[engram_core::shard::shard_of(*id, layout.spec.shards) as usize].insert(*id);
        }
        let deletions = collect_deletions(&layout, |n, shard| {
            let ids = &per_shard[n];
            if ids.is_empty() {
                return Ok(None);
            }
            shard.delete_traced(|t| ids.iter().copied().filter(|id| t.contains(*id)).collect())
        })?;
        if let Some(target) = self.target() {
            reshard::delete_in_target(&target, ids)?;
        }
        Ok(deletions)
    }

    pub fn delete_label_traced(&self, label: &str) -> Result<Vec<ShardDeletion>> {
        self.delete_selected(
            |s| s.delete_traced(|t| t.ids_with_label(label)),
            |s| s.delete_where(|t| t.ids_with_label(label)),
        )
    }

    pub fn delete_source_traced(&self, source: &str) -> Result<Vec<ShardDeletion>> {
        self.delete_selected(
            |s| s.delete_traced(|t| t.ids_with_source(source)),
            |s| s.delete_where(|t| t.ids_with_source(source)),
        )
    }

    /// A delete by selector: in the current layout, and while resharding in
    /// the target too, both the rows it already holds that match and every
    /// id deleted in the current layout (which a later copy must not bring
    /// back). A retried delete finds nothing left in the current layout
    /// but still finds the copies.
    fn delete_selected(
        &self,
        in_current: impl Fn(&Shard) -> Result<Option<ShardDeletion>> + Sync,
        in_target: impl Fn(&Shard) -> Result<usize> + Sync,
    ) -> Result<Vec<ShardDeletion>> {
        let _gate = self.gate.read();
        let deletions = collect_deletions(&self.layout(), |_, s| in_current(s))?;
        if let Some(target) = self.target() {
            let ids: Vec<u64> = deletions
                .iter()
                .flat_map(|d| d.ids.iter().copied())
                .collect();
            reshard::delete_in_target(&target, &ids)?;
            target
                .shards
                .par_iter()
                .map(&in_target)
                .collect::<Result<Vec<_>>>()?;
        }
        Ok(deletions)
    }

    /// Where the deleted rows of `deletions` may still be physically
    /// present: one entry per shard of the current layout (and of a
    /// resharding's target) that their ids route to, judged by ids from
    /// what each shard holds now (see [`Shard::presence_of`]).
    pub fn presence(&self, deletions: &[ShardDeletion]) -> Result<PresenceReport> {
        let mut report = PresenceReport::default();
        for (layout, number, ids) in self.ids_per_shard(deletions, true) {
            let shard = &layout.shards[number];
            report.copies.push(CopyPresence {
                worker: None,
                layout: layout.spec.name.clone(),
                shard: shard.number(),
                presence: Some(shard.presence_of(&ids)?),
                unchecked: None,
                held_keys: shard.segment_keys()?,
            });
        }
        Ok(report)
    }

    /// Rewrites what holds the deleted rows of `deletions` in every shard
    /// their ids route to (see [`Shard::erase`]).
    pub fn erase(&self, deletions: &[ShardDeletion]) -> Result<Compaction> {
        let mut done = Compaction::default();
        for (layout, number, ids) in self.ids_per_shard(deletions, false) {
            done = done + layout.shards[number].erase(&ids)?;
        }
        Ok(done)
    }

    /// The ids of `deletions` grouped by the shard of each layout (current
    /// and a resharding's target) they route to now: deletions recorded
    /// before a resharding name the old layout's shards. `every`: with an
    /// empty entry for each shard none of them routes to.
    fn ids_per_shard(
        &self,
        deletions: &[ShardDeletion],
        every: bool,
    ) -> Vec<(Arc<Layout>, usize, Vec<u64>)> {
        let ids: Vec<u64> = deletions
            .iter()
            .flat_map(|d| d.ids.iter().copied())
            .collect();
        let mut found = Vec::new();
        for layout in std::iter::once(self.layout()).chain(self.target()) {
            let mut per_shard: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
            if every {
                per_shard.extend((0..layout.spec.shards).map(|s| (s, Vec::new())));
            }
            for id in &ids {
                per_shard
                    .entry(engram_core::shard::shard_of(*id, layout.spec.shards))
                    .or_default()
                    .push(*id);
            }
            for (shard, ids) in per_shard {
                found.push((layout.clone(), shard as usize, ids));
            }
        }
        found
    }

    /// Every live item with its vector, shard by shard and segment by
    /// segment; memory is bounded by the largest segment.
    pub fn scan(&self, f: &mut dyn FnMut(Vec<ScannedItem>) -> Result<()>) -> Result<()> {
        for shard in &self.layout().shards {
            shard.scan(f)?;
        }
        Ok(())
    }

    /// The `k` nearest items to each query over all shards, best first,
    /// and the shards whose answer is incomplete.
    pub fn search_batch(
        &self,
        queries: &[&[f32]],
        k: usize,
        filter: &SearchFilter,
        tuning: SearchTuning,
    ) -> SearchResults {
        let layout = self.layout();
        let parent = tracing::Span::current();
        let per_shard: Vec<ShardHits> = layout
            .shards
            .par_iter()
            .map(|s| {
                let _span =
                    tracing::debug_span!(parent: &parent, "shard_search", shard = s.number())
                        .entered();
                s.search_batch(queries, k, filter, tuning)
            })
            .collect();
        let incomplete_shards = layout
            .shards
            .iter()
            .zip(&per_shard)
            .filter(|(_, hits)| hits.failed_segments > 0)
            .map(|(shard, _)| shard.number())
            .collect();
        let _merge = tracing::debug_span!("merge", shards = per_shard.len()).entered();
        SearchResults {
            lists: merge_per_query(per_shard.into_iter().map(|h| h.lists), queries.len(), k),
            incomplete_shards,
        }
    }

    pub fn get(&self, id: u64) -> Option<ItemView> {
        self.layout().shard_for(id).get(id)
    }

    pub fn get_vector(&self, id: u64) -> Result<Option<Vec<f32>>> {
        self.layout().shard_for(id).get_vector(id)
    }

    pub fn thumbnail(&self, id: u64) -> Result<Option<Arc<[u8]>>> {
        self.layout().shard_for(id).thumbnail(id)
    }

    /// `(deleted, total)` rows over every sealed segment.
    pub fn tombstones(&self) -> (u64, u64) {
        self.layout()
            .shards
            .iter()
            .map(Shard::tombstones)
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    }

    pub fn stats(&self) -> CollectionStats {
        CollectionStats::from_shards(self.layout().shards.iter().map(Shard::stats).collect())
    }

    pub fn wal_bytes(&self) -> u64 {
        self.layout().shards.iter().map(Shard::wal_bytes).sum()
    }

    /// Seals every shard's growing segment (no-op for empty ones), one
    /// shard at a time: each build already uses every core.
    pub fn seal(&self) -> Result<()> {
        self.layout().shards.iter().try_for_each(Shard::seal)
    }

    /// Attaches the sealed segment built in `dir` to `shard` (see
    /// [`Shard::attach`]); `routed_by` is the shard count its rows were
    /// routed by, which must still be the collection's (no resharding
    /// since, nor under way).
    pub fn attach(
        &self,
        shard: u32,
        routed_by: u32,
        dir: &Path,
    ) -> Result<crate::shard::AttachedSegment> {
        let _gate = self.gate.read();
        let layout = self.layout();
        if self.target().is_some() || layout.spec.shards != routed_by {
            return Err(WorkerError::Invalid(format!(
                "collection `{}` was resharded (or is being resharded) since this segment was routed for {routed_by} shards; run the bulk job again once the resharding is done",
                layout.spec.name
            )));
        }
        let target = layout.shards.get(shard as usize).ok_or_else(|| {
            WorkerError::Invalid(format!(
                "collection `{}` has no shard {shard}",
                layout.spec.name
            ))
        })?;
        target.attach(dir)
    }

    /// Compacts every shard (see [`Shard::compact`]), one at a time; returns
    /// the segments rewritten and bytes reclaimed.
    pub fn compact(&self, options: CompactOptions) -> Result<Compaction> {
        self.layout()
            .shards
            .iter()
            .map(|s| s.compact(options))
            .sum()
    }

    /// Automatic maintenance of every shard: merges by the merge policy,
    /// and rewrites of segments and WALs whose deleted share passes
    /// `min_deleted_fraction` (see [`Shard::compact`]).
    pub fn compact_due(&self, min_deleted_fraction: f64) -> Result<Compaction> {
        self.compact(CompactOptions::maintenance(min_deleted_fraction))
    }

    /// Shard `shard`'s live items at one instant (see [`Shard::snapshot`]).
    pub fn snapshot_shard(&self, shard: u32) -> Result<Vec<ScannedItem>> {
        match self.layout().shards.get(shard as usize) {
            Some(s) => s.snapshot(),
            None => Err(WorkerError::Invalid(format!("no shard {shard}"))),
        }
    }

    /// Sealed segments over all shards.
    pub fn sealed_segments(&self) -> usize {
        self.layout()
            .shards
            .iter()
            .map(Shard::sealed_segments)
            .sum()
    }
}

fn collect_deletions(
    layout: &Layout,
    delete: impl Fn(usize, &Shard) -> Result<Option<ShardDeletion>> + Sync,
) -> Result<Vec<ShardDeletion>> {
    let per_shard: Vec<Option<ShardDeletion>> = layout
        .shards
        .par_iter()
        .enumerate()
        .map(|(n, shard)| delete(n, shard))
        .collect::<Result<_>>()?;
    Ok(per_shard.into_iter().flatten().collect())
}
