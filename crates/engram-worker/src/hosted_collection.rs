//! All shards of one collection hosted by this worker.

use rayon::prelude::*;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use engram_core::shard::shard_of;
use engram_core::topk::merge_sorted;
use engram_core::{CollectionSpec, Neighbor};
use engram_store::{WalOp, WalRecord};

use crate::error::Result;
use crate::shard::{ItemView, Shard};

/// Live items and items per label.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CollectionStats {
    pub items: u64,
    pub labels: BTreeMap<String, u64>,
}

pub struct HostedCollection {
    spec: CollectionSpec,
    dir: PathBuf,
    shards: Vec<Shard>,
}

impl HostedCollection {
    /// Opens (creating where missing) every shard of `spec` under `dir`.
    pub fn open(dir: &Path, spec: CollectionSpec) -> Result<HostedCollection> {
        let shards = (0..spec.shards)
            .into_par_iter()
            .map(|n| {
                Shard::open(
                    &dir.join("shards").join(format!("{n:04}")),
                    n,
                    spec.dim,
                    spec.metric,
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
        self.shards
            .par_iter()
            .zip(per_shard)
            .filter(|(_, ops)| !ops.is_empty())
            .try_for_each(|(shard, ops)| shard.write(ops))
    }

    pub fn delete_ids(&self, ids: &[u64]) -> Result<usize> {
        let mut per_shard: Vec<Vec<u64>> = vec![Vec::new(); self.shards.len()];
        for id in ids {
            per_shard[shard_of(*id, self.spec.shards) as usize].push(*id);
        }
        self.shards
            .par_iter()
            .zip(per_shard)
            .filter(|(_, ids)| !ids.is_empty())
            .map(|(shard, ids)| shard.delete_ids(&ids))
            .try_reduce(|| 0, |a, b| Ok(a + b))
    }

    pub fn delete_label(&self, label: &str) -> Result<usize> {
        self.shards
            .par_iter()
            .map(|s| s.delete_where(|t| t.ids_with_label(label)))
            .try_reduce(|| 0, |a, b| Ok(a + b))
    }

    pub fn delete_source(&self, source: &str) -> Result<usize> {
        self.shards
            .par_iter()
            .map(|s| s.delete_where(|t| t.ids_with_source(source)))
            .try_reduce(|| 0, |a, b| Ok(a + b))
    }

    /// The `k` nearest items to each query over all shards, best first.
    pub fn search_batch(
        &self,
        queries: &[&[f32]],
        k: usize,
        exclude: &HashSet<u64>,
    ) -> Vec<Vec<Neighbor>> {
        let per_shard: Vec<Vec<Vec<Neighbor>>> = self
            .shards
            .par_iter()
            .map(|s| s.search_batch(queries, k, exclude))
            .collect();
        let mut per_query: Vec<Vec<Vec<Neighbor>>> = (0..queries.len())
            .map(|_| Vec::with_capacity(self.shards.len()))
            .collect();
        for shard_lists in per_shard {
            for (q, list) in shard_lists.into_iter().enumerate() {
                per_query[q].push(list);
            }
        }
        per_query
            .into_iter()
            .map(|lists| merge_sorted(lists, k))
            .collect()
    }

    pub fn get(&self, id: u64) -> Option<ItemView> {
        self.shard_for(id).get(id)
    }

    pub fn get_vector(&self, id: u64) -> Option<Vec<f32>> {
        self.shard_for(id).get_vector(id)
    }

    pub fn stats(&self) -> CollectionStats {
        let mut stats = CollectionStats::default();
        for shard in &self.shards {
            stats.items += shard.len() as u64;
            for (label, count) in shard.label_counts() {
                *stats.labels.entry(label.to_string()).or_default() += count;
            }
        }
        stats
    }

    pub fn wal_bytes(&self) -> u64 {
        self.shards.iter().map(Shard::wal_bytes).sum()
    }
}
