//! All shards of one collection hosted by this worker.

use rayon::prelude::*;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use engram_core::config::IndexParams;
use engram_core::shard::shard_of;
use engram_core::topk::merge_per_query;
use engram_core::{CollectionSpec, Neighbor};
use engram_index::SearchTuning;
use engram_store::{WalOp, WalRecord};

use crate::error::Result;
use crate::shard::{
    Compaction, ItemView, Presence, ScannedItem, SearchFilter, Shard, ShardDeletion, ShardHits,
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
    spec: CollectionSpec,
    dir: PathBuf,
    shards: Vec<Shard>,
}

impl HostedCollection {
    /// Opens (creating where missing) every shard of `spec` under `dir`.
    pub fn open(
        dir: &Path,
        spec: CollectionSpec,
        params: &IndexParams,
    ) -> Result<HostedCollection> {
        let shards = (0..spec.shards)
            .into_par_iter()
            .map(|n| {
                Shard::open(
                    &dir.join("shards").join(format!("{n:04}")),
                    n,
                    spec.dim,
                    spec.metric,
                    params,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(HostedCollection {
            spec,
            dir: dir.to_path_buf(),
            shards,
        })
    }

    pub fn spec(&self) -> &CollectionSpec {
        &self.spec
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn shard_for(&self, id: u64) -> &Shard {
        &self.shards[shard_of(id, self.spec.shards) as usize]
    }

    /// Routes each operation to its shard and writes the shards in parallel.
    /// Each shard's part is atomic; if one shard fails the error is
    /// returned and the request was not acknowledged (other shards' parts
    /// may already be durable, as with any upsert retried by the client).
    pub fn write(&self, ops: Vec<WalOp>) -> Result<()> {
        let mut per_shard: Vec<WalRecord> = vec![Vec::new(); self.shards.len()];
        for op in ops {
            let id = match &op {
                WalOp::Upsert { id, .. } | WalOp::Delete { id } => *id,
            };
            per_shard[shard_of(id, self.spec.shards) as usize].push(op);
        }
        let full: Vec<bool> = self
            .shards
            .par_iter()
            .zip(per_shard)
            .map(|(shard, ops)| shard.write_unsealed(ops))
            .collect::<Result<_>>()?;
        // Seals run here, off rayon's threads (see `Shard::write_unsealed`).
        for (shard, full) in self.shards.iter().zip(full) {
            if full {
                shard.seal()?;
            }
        }
        Ok(())
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
        let mut per_shard: Vec<HashSet<u64>> = vec![HashSet::new(); self.shards.len()];
        for id in ids {
            per_shard[shard_of(*id, self.spec.shards) as usize].insert(*id);
        }
        self.collect_deletions(|n, shard| {
            let ids = &per_shard[n];
            if ids.is_empty() {
                return Ok(None);
            }
            shard.delete_traced(|t| ids.iter().copied().filter(|id| t.contains(*id)).collect())
        })
    }

    pub fn delete_label_traced(&self, label: &str) -> Result<Vec<ShardDeletion>> {
        self.collect_deletions(|_, s| s.delete_traced(|t| t.ids_with_label(label)))
    }

    pub fn delete_source_traced(&self, source: &str) -> Result<Vec<ShardDeletion>> {
        self.collect_deletions(|_, s| s.delete_traced(|t| t.ids_with_source(source)))
    }

    fn collect_deletions(
        &self,
        delete: impl Fn(usize, &Shard) -> Result<Option<ShardDeletion>> + Sync,
    ) -> Result<Vec<ShardDeletion>> {
        let per_shard: Vec<Option<ShardDeletion>> = self
            .shards
            .par_iter()
            .enumerate()
            .map(|(n, shard)| delete(n, shard))
            .collect::<Result<_>>()?;
        Ok(per_shard.into_iter().flatten().collect())
    }

    /// Where the items of `deletions` may still be physically present, per
    /// shard (shards where nothing is left are omitted).
    pub fn presence(&self, deletions: &[ShardDeletion]) -> Vec<(u32, Presence)> {
        deletions
            .iter()
            .filter_map(|d| {
                let presence = self.shards.get(d.shard as usize)?.presence(d);
                (presence.wal || !presence.segments.is_empty()).then_some((d.shard, presence))
            })
            .collect()
    }

    /// Every live item with its vector, shard by shard and segment by
    /// segment; memory is bounded by the largest segment.
    pub fn scan(&self, f: &mut dyn FnMut(Vec<ScannedItem>) -> Result<()>) -> Result<()> {
        for shard in &self.shards {
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
        let per_shard: Vec<ShardHits> = self
            .shards
            .par_iter()
            .map(|s| s.search_batch(queries, k, filter, tuning))
            .collect();
        let incomplete_shards = self
            .shards
            .iter()
            .zip(&per_shard)
            .filter(|(_, hits)| hits.failed_segments > 0)
            .map(|(shard, _)| shard.number())
            .collect();
        SearchResults {
            lists: merge_per_query(per_shard.into_iter().map(|h| h.lists), queries.len(), k),
            incomplete_shards,
        }
    }

    pub fn get(&self, id: u64) -> Option<ItemView> {
        self.shard_for(id).get(id)
    }

    pub fn get_vector(&self, id: u64) -> Result<Option<Vec<f32>>> {
        self.shard_for(id).get_vector(id)
    }

    /// `(deleted, total)` rows over every sealed segment.
    pub fn tombstones(&self) -> (u64, u64) {
        self.shards
            .iter()
            .map(Shard::tombstones)
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    }

    pub fn stats(&self) -> CollectionStats {
        CollectionStats::from_shards(self.shards.iter().map(Shard::stats).collect())
    }

    pub fn wal_bytes(&self) -> u64 {
        self.shards.iter().map(Shard::wal_bytes).sum()
    }

    /// Seals every shard's growing segment (no-op for empty ones), one
    /// shard at a time: each build already uses every core.
    pub fn seal(&self) -> Result<()> {
        self.shards.iter().try_for_each(Shard::seal)
    }

    /// Compacts every shard (see [`Shard::compact`]), one at a time; returns
    /// the segments rewritten and bytes reclaimed.
    /// Attaches the sealed segment built in `dir` to `shard` (see
    /// [`Shard::attach`]).
    pub fn attach(&self, shard: u32, dir: &Path) -> Result<crate::shard::AttachedSegment> {
        let target = self.shards.get(shard as usize).ok_or_else(|| {
            crate::WorkerError::Invalid(format!(
                "collection `{}` has no shard {shard}",
                self.spec.name
            ))
        })?;
        target.attach(dir)
    }

    pub fn compact(&self, min_deleted_fraction: f64) -> Result<Compaction> {
        self.shards
            .iter()
            .map(|s| s.compact(min_deleted_fraction))
            .sum()
    }

    /// Compacts only the shards holding a sealed segment whose deleted
    /// fraction exceeds `min_deleted_fraction` (automatic compaction: a
    /// shard without such a segment keeps its growing segment unsealed).
    pub fn compact_due(&self, min_deleted_fraction: f64) -> Result<Compaction> {
        self.shards
            .iter()
            .filter(|s| s.max_deleted_fraction() > min_deleted_fraction)
            .map(|s| s.compact(min_deleted_fraction))
            .sum()
    }

    /// Shard `shard`'s live items at one instant (see [`Shard::snapshot`]).
    pub fn snapshot_shard(&self, shard: u32) -> Result<Vec<ScannedItem>> {
        match self.shards.get(shard as usize) {
            Some(s) => s.snapshot(),
            None => Err(crate::error::WorkerError::Invalid(format!(
                "no shard {shard}"
            ))),
        }
    }

    /// Sealed segments over all shards.
    pub fn sealed_segments(&self) -> usize {
        self.shards.iter().map(Shard::sealed_segments).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use engram_core::{Metric, VotingRule};
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[derive(Debug, Clone)]
    enum Op {
        Upsert(u64, u8, [f32; 3]),
        DeleteIds(Vec<u64>),
        DeleteLabel(u8),
    }

    fn arb_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u64..60, 0u8..3, prop::array::uniform3(-1f32..1.0)).prop_map(|(id, l, v)| Op::Upsert(id, l, v)),
            2 => prop::collection::vec(0u64..60, 1..5).prop_map(Op::DeleteIds),
            1 => (0u8..3).prop_map(Op::DeleteLabel),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Across shards, seals (threshold 4), compactions and reopens:
        /// search equals brute force over the live items, and nothing
        /// deleted is ever returned.
        #[test]
        fn deleted_items_are_never_returned(ops in prop::collection::vec(arb_op(), 1..80), q in prop::array::uniform3(-1f32..1.0)) {
            let dir = tempfile::tempdir().unwrap();
            let spec = CollectionSpec { name: "p".into(), dim: 3, metric: Metric::L2, embedder: None, shards: 5, replication: 1, default_k: 10, default_rule: VotingRule::Rank };
            let params = IndexParams { seal_threshold: 4, max_degree: 16, build_list_size: 32, pq_bytes: 3, search_list_size: 64, ..IndexParams::default() };
            let mut hosted = HostedCollection::open(dir.path(), spec.clone(), &params).unwrap();
            let mut live: HashMap<u64, (String, [f32; 3])> = HashMap::new();
            let mut deleted: HashSet<u64> = HashSet::new();
            for (step, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Upsert(id, l, v) => {
                        hosted.write(vec![WalOp::Upsert { id, label: format!("l{l}").into(), weight: 1.0, source: None, vector: v.to_vec() }]).unwrap();
                        live.insert(id, (format!("l{l}"), v));
                        deleted.remove(&id);
                    }
                    Op::DeleteIds(ids) => {
                        let expected = ids.iter().collect::<HashSet<_>>().iter().filter(|id| live.contains_key(id)).count();
                        prop_assert_eq!(hosted.delete_ids(&ids).unwrap(), expected);
                        for id in ids { if live.remove(&id).is_some() { deleted.insert(id); } }
                    }
                    Op::DeleteLabel(l) => {
                        let label = format!("l{l}");
                        let ids: Vec<u64> = live.iter().filter(|(_, (x, _))| *x == label).map(|(id, _)| *id).collect();
                        prop_assert_eq!(hosted.delete_label(&label).unwrap(), ids.len());
                        for id in ids { live.remove(&id); deleted.insert(id); }
                    }
                }
                if step % 23 == 22 {
                    // Compaction rewrites sealed segments without deleted rows.
                    hosted.compact(0.0).unwrap();
                }
                if step % 17 == 16 {
                    drop(hosted);
                    hosted = HostedCollection::open(dir.path(), spec.clone(), &params).unwrap();
                }
            }
            let results = hosted.search_batch(&[&q], 100, &SearchFilter::default(), SearchTuning::default());
            prop_assert!(results.incomplete_shards.is_empty());
            let hits = &results.lists[0];
            prop_assert_eq!(hits.len(), live.len());
            prop_assert!(hits.iter().all(|n| !deleted.contains(&n.id)));
            let mut expected: Vec<(f32, u64)> = live.iter().map(|(id, (_, v))| (Metric::L2.distance(&q, v), *id)).collect();
            expected.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            let got: Vec<u64> = hits.iter().map(|n| n.id).collect();
            let want: Vec<u64> = expected.iter().map(|(_, id)| *id).collect();
            prop_assert_eq!(got, want);
            prop_assert_eq!(hosted.stats().items as usize, live.len());
        }
    }
}
