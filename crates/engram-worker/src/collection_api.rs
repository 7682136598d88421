//! What a coordinator needs from the shards of one collection, wherever
//! they are: in this process (the embedded node's [`HostedCollection`]) or
//! on cluster workers behind RPC (the coordinator's remote collection).
//! The calls block; coordinators make them from blocking threads.

use engram_core::CollectionSpec;
use engram_core::merge_policy::CompactOptions;
use engram_index::SearchTuning;
use engram_store::WalOp;

use crate::error::Result;
use crate::hosted_collection::{
    CollectionStats, HostedCollection, ReshardHooks, ReshardReport, SearchResults,
};
use crate::wire::SegmentObject;
use std::path::Path;

use crate::presence::PresenceReport;
use crate::shard::{
    AttachedSegment, Compaction, ItemView, ScannedItem, SearchFilter, ShardDeletion,
};

pub trait ShardedCollection: Send + Sync {
    /// The collection as it is served now (its shard count changes when a
    /// resharding finishes).
    fn spec(&self) -> CollectionSpec;
    /// Upserts and deletes; acknowledged once durable on every in-sync copy.
    fn write(&self, ops: Vec<WalOp>) -> Result<()>;
    fn delete_ids_traced(&self, ids: &[u64]) -> Result<Vec<ShardDeletion>>;
    fn delete_label_traced(&self, label: &str) -> Result<Vec<ShardDeletion>>;
    fn delete_source_traced(&self, source: &str) -> Result<Vec<ShardDeletion>>;
    /// Where deleted items may still be physically present: every copy of
    /// the shards their ids route to, each judged from its own files.
    fn presence(&self, deletions: &[ShardDeletion]) -> Result<PresenceReport>;
    /// Rewrites, in every copy, exactly the files that hold deleted rows of
    /// `deletions` (`Shard::erase`), and removes quarantined copies of
    /// their shards: what an unlearning deadline asks.
    fn erase(&self, deletions: &[ShardDeletion]) -> Result<Compaction>;
    /// One shard's live items with their vectors at one instant (writes to
    /// it wait meanwhile): every write acknowledged before is included.
    fn snapshot_shard(&self, shard: u32) -> Result<Vec<ScannedItem>>;
    /// Every live item with its vector, in batches.
    fn scan(&self, f: &mut dyn FnMut(Vec<ScannedItem>) -> Result<()>) -> Result<()>;
    /// The `k` nearest items per query, merged over all shards; shards
    /// that could not answer completely are listed in the result.
    fn search_batch(
        &self,
        queries: &[&[f32]],
        k: usize,
        filter: &SearchFilter,
        tuning: SearchTuning,
    ) -> SearchResults;
    fn get(&self, id: u64) -> Result<Option<ItemView>>;
    fn get_vector(&self, id: u64) -> Result<Option<Vec<f32>>>;
    /// The thumbnail of a live item added as an image.
    fn thumbnail(&self, id: u64) -> Result<Option<std::sync::Arc<[u8]>>>;
    fn stats(&self) -> Result<CollectionStats>;
    /// Merges sealed segments by the merge policy and rewrites those (and
    /// WALs) past `options.min_deleted_fraction`; growing segments are
    /// sealed first as `options.seal` says for their sizes;
    /// `options.retrain_codebook`: each shard's next segment build trains a
    /// new PQ codebook.
    fn compact(&self, options: CompactOptions) -> Result<Compaction>;
    /// Attaches a sealed segment built by bulk ingestion to `shard` (its
    /// rows supersede older versions of their ids). `routed_by` is the shard
    /// count its rows were routed by: refused if the collection has been
    /// resharded since. `local` is the builder's directory, moved in where
    /// the shard lives in this process; remote copies download `object`
    /// instead.
    fn attach_segment(
        &self,
        shard: u32,
        routed_by: u32,
        local: &Path,
        object: Option<&SegmentObject>,
    ) -> Result<AttachedSegment>;
    /// Changes the number of shards online (see `hosted_collection/reshard.rs`
    /// and the cluster's resharding); finishes one under way to `shards`.
    fn reshard(&self, shards: u32, hooks: &dyn ReshardHooks) -> Result<ReshardReport>;
    /// The shard count of a resharding under way.
    fn reshard_target(&self) -> Option<u32>;
    /// Drops a resharding under way (its target's files are deleted).
    fn abandon_reshard(&self) -> Result<()>;
}

impl ShardedCollection for HostedCollection {
    fn spec(&self) -> CollectionSpec {
        HostedCollection::spec(self)
    }

    fn write(&self, ops: Vec<WalOp>) -> Result<()> {
        HostedCollection::write(self, ops)
    }

    fn delete_ids_traced(&self, ids: &[u64]) -> Result<Vec<ShardDeletion>> {
        HostedCollection::delete_ids_traced(self, ids)
    }

    fn delete_label_traced(&self, label: &str) -> Result<Vec<ShardDeletion>> {
        HostedCollection::delete_label_traced(self, label)
    }

    fn delete_source_traced(&self, source: &str) -> Result<Vec<ShardDeletion>> {
        HostedCollection::delete_source_traced(self, source)
    }

    fn presence(&self, deletions: &[ShardDeletion]) -> Result<PresenceReport> {
        HostedCollection::presence(self, deletions)
    }

    fn erase(&self, deletions: &[ShardDeletion]) -> Result<Compaction> {
        HostedCollection::erase(self, deletions)
    }

    fn scan(&self, f: &mut dyn FnMut(Vec<ScannedItem>) -> Result<()>) -> Result<()> {
        HostedCollection::scan(self, f)
    }

    fn snapshot_shard(&self, shard: u32) -> Result<Vec<ScannedItem>> {
        HostedCollection::snapshot_shard(self, shard)
    }

    fn search_batch(
        &self,
        queries: &[&[f32]],
        k: usize,
        filter: &SearchFilter,
        tuning: SearchTuning,
    ) -> SearchResults {
        HostedCollection::search_batch(self, queries, k, filter, tuning)
    }

    fn get(&self, id: u64) -> Result<Option<ItemView>> {
        Ok(HostedCollection::get(self, id))
    }

    fn get_vector(&self, id: u64) -> Result<Option<Vec<f32>>> {
        HostedCollection::get_vector(self, id)
    }

    fn thumbnail(&self, id: u64) -> Result<Option<std::sync::Arc<[u8]>>> {
        HostedCollection::thumbnail(self, id)
    }

    fn stats(&self) -> Result<CollectionStats> {
        Ok(HostedCollection::stats(self))
    }

    fn compact(&self, options: CompactOptions) -> Result<Compaction> {
        HostedCollection::compact(self, options)
    }

    fn attach_segment(
        &self,
        shard: u32,
        routed_by: u32,
        local: &Path,
        _object: Option<&SegmentObject>,
    ) -> Result<AttachedSegment> {
        HostedCollection::attach(self, shard, routed_by, local)
    }

    fn reshard(&self, shards: u32, hooks: &dyn ReshardHooks) -> Result<ReshardReport> {
        HostedCollection::reshard(self, shards, hooks)
    }

    fn reshard_target(&self) -> Option<u32> {
        HostedCollection::reshard_target(self)
    }

    fn abandon_reshard(&self) -> Result<()> {
        HostedCollection::abandon(self)
    }
}
