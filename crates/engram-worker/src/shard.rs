//! One shard: its growing segment (exact index + item table) and its WAL.
//!
//! Writes are ordered by the WAL mutex: append and fsync, then apply to the
//! in-memory state, then acknowledge. Searches only take the state's read
//! lock, so they continue while a write waits for its fsync, and a delete is
//! visible to every search that starts after it is acknowledged.

use parking_lot::{Mutex, RwLock};
use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use engram_core::{Metric, Neighbor, ScoredId};
use engram_index::{FlatIndex, MutableSegmentIndex, SegmentIndex};
use engram_store::{ItemTable, Wal, WalOp, WalRecord};

use crate::error::Result;

struct ShardState {
    index: FlatIndex,
    items: ItemTable,
}

impl ShardState {
    fn apply(&mut self, record: &WalRecord) -> Result<()> {
        for op in record {
            match op {
                WalOp::Upsert {
                    id,
                    label,
                    weight,
                    source,
                    vector,
                } => {
                    self.index.upsert(*id, vector)?;
                    self.items.upsert(*id, label, *weight, source.clone());
                }
                WalOp::Delete { id } => {
                    self.index.remove(*id);
                    self.items.remove(*id);
                }
            }
        }
        Ok(())
    }
}

/// An item as a reader sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemView {
    pub id: u64,
    pub label: Arc<str>,
    pub weight: f32,
    pub source: Option<Arc<str>>,
}

pub struct Shard {
    number: u32,
    wal: Mutex<Wal>,
    state: RwLock<ShardState>,
}

impl Shard {
    /// Opens the shard stored in `dir`, replaying its WAL.
    pub fn open(dir: &Path, number: u32, dim: usize, metric: Metric) -> Result<Shard> {
        fs_err::create_dir_all(dir)?;
        let (wal, records) = Wal::open(&dir.join("wal.log"))?;
        let mut state = ShardState {
            index: FlatIndex::new(dim, metric),
            items: ItemTable::default(),
        };
        for record in &records {
            state.apply(record)?;
        }
        tracing::debug!(
            shard = number,
            records = records.len(),
            items = state.items.len(),
            "shard opened"
        );
        Ok(Shard {
            number,
            wal: Mutex::new(wal),
            state: RwLock::new(state),
        })
    }

    pub fn number(&self) -> u32 {
        self.number
    }

    /// Makes `ops` durable, then visible. All or nothing.
    pub fn write(&self, ops: WalRecord) -> Result<()> {
        if ops.is_empty() {
            return Ok(());
        }
        // Refuse before logging what could not be applied: a logged record
        // that fails to apply would also fail on every replay.
        let dim = self.state.read().index.dim();
        for op in &ops {
            if let WalOp::Upsert { vector, .. } = op
                && vector.len() != dim
            {
                return Err(engram_index::IndexError::DimensionMismatch {
                    expected: dim,
                    actual: vector.len(),
                }
                .into());
            }
        }
        let mut wal = self.wal.lock();
        wal.append(&ops)?;
        self.state.write().apply(&ops)
    }

    /// Deletes the live items among `ids` chosen by `select` (which sees the
    /// item table); returns how many were deleted. Selection and logging
    /// happen under the WAL lock, so no concurrent write slips in between.
    pub fn delete_where(&self, select: impl FnOnce(&ItemTable) -> Vec<u64>) -> Result<usize> {
        let mut wal = self.wal.lock();
        let ids = select(&self.state.read().items);
        if ids.is_empty() {
            return Ok(0);
        }
        let ops: WalRecord = ids.iter().map(|id| WalOp::Delete { id: *id }).collect();
        wal.append(&ops)?;
        self.state.write().apply(&ops)?;
        Ok(ids.len())
    }

    /// Deletes those of `ids` that are live here.
    pub fn delete_ids(&self, ids: &[u64]) -> Result<usize> {
        self.delete_where(|items| {
            ids.iter()
                .copied()
                .filter(|id| items.contains(*id))
                .collect::<HashSet<_>>()
                .into_iter()
                .collect()
        })
    }

    /// The `k` nearest items to each query, skipping `exclude`.
    pub fn search_batch(
        &self,
        queries: &[&[f32]],
        k: usize,
        exclude: &HashSet<u64>,
    ) -> Vec<Vec<Neighbor>> {
        let state = self.state.read();
        let filter = |id: u64| !exclude.contains(&id);
        let hits = state.index.search_batch(queries, k, &filter);
        hits.into_iter()
            .map(|list| {
                list.into_iter()
                    .filter_map(|hit| neighbor(&state.items, hit))
                    .collect()
            })
            .collect()
    }

    pub fn get(&self, id: u64) -> Option<ItemView> {
        let state = self.state.read();
        let record = state.items.get(id)?;
        Some(ItemView {
            id,
            label: state.items.label_of(record).clone(),
            weight: record.weight,
            source: record.source.clone(),
        })
    }

    pub fn get_vector(&self, id: u64) -> Option<Vec<f32>> {
        self.state.read().index.get(id).map(<[f32]>::to_vec)
    }

    pub fn len(&self) -> usize {
        self.state.read().items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `(label, live items)` pairs.
    pub fn label_counts(&self) -> Vec<(Arc<str>, u64)> {
        self.state
            .read()
            .items
            .vocabulary()
            .counts()
            .map(|(l, c)| (l.clone(), c))
            .collect()
    }

    pub fn wal_bytes(&self) -> u64 {
        self.wal.lock().len_bytes()
    }
}

fn neighbor(items: &ItemTable, hit: ScoredId) -> Option<Neighbor> {
    let record = items.get(hit.id)?;
    Some(Neighbor {
        id: hit.id,
        label: items.label_of(record).to_string(),
        distance: hit.distance,
        weight: record.weight,
        source: record.source.as_deref().map(str::to_string),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upsert(id: u64, label: &str, v: [f32; 2]) -> WalOp {
        WalOp::Upsert {
            id,
            label: label.into(),
            weight: 1.0,
            source: None,
            vector: v.to_vec(),
        }
    }

    #[test]
    fn writes_survive_reopen_and_deletes_are_never_returned() {
        let dir = tempfile::tempdir().unwrap();
        let shard = Shard::open(dir.path(), 0, 2, Metric::L2).unwrap();
        shard
            .write(vec![
                upsert(1, "a", [0.0, 0.0]),
                upsert(2, "b", [1.0, 0.0]),
                upsert(3, "a", [2.0, 0.0]),
            ])
            .unwrap();
        assert_eq!(shard.delete_ids(&[2, 99]).unwrap(), 1);
        shard.write(vec![upsert(3, "c", [0.5, 0.0])]).unwrap();
        drop(shard);

        let shard = Shard::open(dir.path(), 0, 2, Metric::L2).unwrap();
        assert_eq!(shard.len(), 2);
        let q = [0.9f32, 0.0];
        let hits = shard.search_batch(&[&q], 10, &HashSet::new());
        let ids: Vec<u64> = hits[0].iter().map(|n| n.id).collect();
        assert_eq!(ids, vec![3, 1]);
        assert_eq!(hits[0][0].label, "c");
        let mut counts = shard.label_counts();
        counts.sort();
        assert_eq!(counts, vec![(Arc::from("a"), 1), (Arc::from("c"), 1)]);
        let excluded = shard.search_batch(&[&q], 10, &HashSet::from([3]));
        assert_eq!(excluded[0].len(), 1);
        assert_eq!(shard.delete_where(|t| t.ids_with_label("a")).unwrap(), 1);
        assert!(shard.get(1).is_none());
    }
}
