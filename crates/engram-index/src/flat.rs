//! Exact search over vectors in one contiguous buffer.
//!
//! This is the growing segment's index and the recall reference for every
//! approximate index. Vectors live in fixed slots of one `Vec<f32>`; removed
//! slots are zeroed and reused. Large scans are split across threads.

use rayon::prelude::*;
use std::collections::HashMap;

use engram_core::topk::TopK;
use engram_core::{Metric, ScoredId};

use crate::error::{IndexError, Result};
use crate::segment_index::{IdFilter, MutableSegmentIndex, SearchTuning, SegmentIndex};

/// Slot ids are `u32`; this is the largest number of slots.
const MAX_SLOTS: usize = u32::MAX as usize;
/// Below this many scanned floats a search stays on the calling thread.
const PARALLEL_SCAN_FLOATS: usize = 1 << 21;
/// Stored vectors scanned per block in batched search; sized to stay in L2.
const BATCH_BLOCK_BYTES: usize = 512 << 10;
const FREE: u64 = u64::MAX;

pub struct FlatIndex {
    dim: usize,
    metric: Metric,
    vectors: Vec<f32>,
    /// `slot -> id`, `FREE` for an empty slot. `u64::MAX` is therefore not a
    /// storable id; the shard layer rejects it.
    ids: Vec<u64>,
    slot_of: HashMap<u64, u32>,
    free_slots: Vec<u32>,
}

impl FlatIndex {
    pub fn new(dim: usize, metric: Metric) -> Self {
        FlatIndex {
            dim,
            metric,
            vectors: Vec::new(),
            ids: Vec::new(),
            slot_of: HashMap::new(),
            free_slots: Vec::new(),
        }
    }

    /// The id reserved to mark empty slots.
    pub const RESERVED_ID: u64 = FREE;

    fn vector_at(&self, slot: usize) -> &[f32] {
        &self.vectors[slot * self.dim..(slot + 1) * self.dim]
    }

    fn scan(
        &self,
        query: &[f32],
        slots: std::ops::Range<usize>,
        top: &mut TopK,
        filter: IdFilter<'_>,
    ) {
        for slot in slots {
            let id = self.ids[slot];
            if id == FREE {
                continue;
            }
            let distance = self.metric.distance(query, self.vector_at(slot));
            if distance <= top.threshold() && filter(id) {
                top.push(ScoredId { id, distance });
            }
        }
    }

    /// Iterates over live `(id, vector)` pairs in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &[f32])> {
        self.ids
            .iter()
            .enumerate()
            .filter(|(_, id)| **id != FREE)
            .map(|(slot, id)| (*id, self.vector_at(slot)))
    }

    fn check_dim(&self, len: usize) -> Result<()> {
        if len == self.dim {
            Ok(())
        } else {
            Err(IndexError::DimensionMismatch {
                expected: self.dim,
                actual: len,
            })
        }
    }
}

impl SegmentIndex for FlatIndex {
    fn dim(&self) -> usize {
        self.dim
    }

    fn metric(&self) -> Metric {
        self.metric
    }

    fn len(&self) -> usize {
        self.slot_of.len()
    }

    fn contains(&self, id: u64) -> bool {
        self.slot_of.contains_key(&id)
    }

    fn search_tuned(
        &self,
        query: &[f32],
        k: usize,
        filter: IdFilter<'_>,
        _tuning: SearchTuning,
    ) -> Vec<ScoredId> {
        debug_assert_eq!(query.len(), self.dim);
        let slots = self.ids.len();
        if k == 0 || slots == 0 {
            return Vec::new();
        }
        if slots * self.dim < PARALLEL_SCAN_FLOATS {
            let mut top = TopK::new(k);
            self.scan(query, 0..slots, &mut top, filter);
            return top.into_sorted_vec();
        }
        let chunk = (PARALLEL_SCAN_FLOATS / 4 / self.dim).max(64);
        (0..slots.div_ceil(chunk))
            .into_par_iter()
            .map(|c| {
                let mut top = TopK::new(k);
                self.scan(
                    query,
                    c * chunk..((c + 1) * chunk).min(slots),
                    &mut top,
                    filter,
                );
                top
            })
            .reduce(
                || TopK::new(k),
                |mut a, b| {
                    a.extend(b);
                    a
                },
            )
            .into_sorted_vec()
    }

    /// Scans stored vectors block by block and compares each block with
    /// every query while it is in cache; queries are split across threads.
    fn search_batch(
        &self,
        queries: &[&[f32]],
        k: usize,
        filter: IdFilter<'_>,
    ) -> Vec<Vec<ScoredId>> {
        let slots = self.ids.len();
        if k == 0 || slots == 0 {
            return vec![Vec::new(); queries.len()];
        }
        let block = (BATCH_BLOCK_BYTES / 4 / self.dim).max(16);
        let per_thread = queries.len().div_ceil(rayon::current_num_threads()).max(1);
        queries
            .par_chunks(per_thread)
            .flat_map_iter(|group| {
                let mut tops: Vec<TopK> = group.iter().map(|_| TopK::new(k)).collect();
                let mut start = 0;
                while start < slots {
                    let end = (start + block).min(slots);
                    for (query, top) in group.iter().zip(tops.iter_mut()) {
                        self.scan(query, start..end, top, filter);
                    }
                    start = end;
                }
                tops.into_iter().map(TopK::into_sorted_vec)
            })
            .collect()
    }
}

impl MutableSegmentIndex for FlatIndex {
    fn upsert(&mut self, id: u64, vector: &[f32]) -> Result<()> {
        self.check_dim(vector.len())?;
        debug_assert_ne!(id, FREE, "u64::MAX marks free slots");
        let slot = match self.slot_of.get(&id) {
            Some(slot) => *slot as usize,
            None => {
                let slot = match self.free_slots.pop() {
                    Some(slot) => slot as usize,
                    None => {
                        let slot = self.ids.len();
                        if slot >= MAX_SLOTS {
                            return Err(IndexError::Full {
                                capacity: MAX_SLOTS,
                            });
                        }
                        self.ids.push(FREE);
                        self.vectors.resize(self.vectors.len() + self.dim, 0.0);
                        slot
                    }
                };
                self.ids[slot] = id;
                self.slot_of.insert(id, slot as u32);
                slot
            }
        };
        self.vectors[slot * self.dim..(slot + 1) * self.dim].copy_from_slice(vector);
        Ok(())
    }

    fn remove(&mut self, id: u64) -> bool {
        let Some(slot) = self.slot_of.remove(&id) else {
            return false;
        };
        let slot = slot as usize;
        self.ids[slot] = FREE;
        self.vectors[slot * self.dim..(slot + 1) * self.dim].fill(0.0);
        self.free_slots.push(slot as u32);
        true
    }

    fn get(&self, id: u64) -> Option<&[f32]> {
        self.slot_of
            .get(&id)
            .map(|slot| self.vector_at(*slot as usize))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn brute_force(
        items: &HashMap<u64, Vec<f32>>,
        q: &[f32],
        k: usize,
        metric: Metric,
    ) -> Vec<ScoredId> {
        let mut all: Vec<ScoredId> = items
            .iter()
            .map(|(id, v)| ScoredId {
                id: *id,
                distance: metric.distance(q, v),
            })
            .collect();
        all.sort_by(ScoredId::rank_cmp);
        all.truncate(k);
        all
    }

    #[derive(Debug, Clone)]
    enum Op {
        Upsert(u64, Vec<f32>),
        Remove(u64),
    }

    fn arb_ops(dim: usize) -> impl Strategy<Value = Vec<Op>> {
        prop::collection::vec(
            prop_oneof![
                3 => (0u64..40, prop::collection::vec(-1f32..1.0, dim)).prop_map(|(id, v)| Op::Upsert(id, v)),
                1 => (0u64..40).prop_map(Op::Remove),
            ],
            0..120,
        )
    }

    proptest! {
        #[test]
        fn matches_a_model_under_upserts_and_removes(ops in arb_ops(5), q in prop::collection::vec(-1f32..1.0, 5), k in 1usize..20) {
            let mut index = FlatIndex::new(5, Metric::L2);
            let mut model: HashMap<u64, Vec<f32>> = HashMap::new();
            for op in ops {
                match op {
                    Op::Upsert(id, v) => { index.upsert(id, &v).unwrap(); model.insert(id, v); }
                    Op::Remove(id) => { prop_assert_eq!(index.remove(id), model.remove(&id).is_some()); }
                }
            }
            prop_assert_eq!(index.len(), model.len());
            let expected = brute_force(&model, &q, k, Metric::L2);
            prop_assert_eq!(index.search(&q, k, &|_| true), expected.clone());
            prop_assert_eq!(index.search_batch(&[&q, &q], k, &|_| true), vec![expected.clone(), expected]);
            // Removed ids never come back; filtered ids are skipped but k is still filled.
            let odd_only = index.search(&q, k, &|id| id % 2 == 1);
            let model_odd: HashMap<u64, Vec<f32>> = model.iter().filter(|(id, _)| *id % 2 == 1).map(|(a, b)| (*a, b.clone())).collect();
            prop_assert_eq!(odd_only, brute_force(&model_odd, &q, k, Metric::L2));
        }
    }

    #[test]
    fn parallel_scan_equals_sequential() {
        let dim = 64;
        let mut index = FlatIndex::new(dim, Metric::Cosine);
        let mut state = 7u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        let n = PARALLEL_SCAN_FLOATS / dim + 500;
        for id in 0..n as u64 {
            let mut v: Vec<f32> = (0..dim).map(|_| next()).collect();
            engram_core::vector::normalize_in_place(&mut v).unwrap();
            index.upsert(id, &v).unwrap();
        }
        let q: Vec<f32> = index.get(123).unwrap().to_vec();
        let hits = index.search(&q, 10, &|_| true);
        assert_eq!(hits[0].id, 123);
        assert!(hits[0].distance < 1e-5);
        let mut sequential = TopK::new(10);
        index.scan(&q, 0..n, &mut sequential, &|_| true);
        assert_eq!(hits, sequential.into_sorted_vec());
    }

    #[test]
    fn remove_zeroes_memory_and_reuses_slot() {
        let mut index = FlatIndex::new(2, Metric::L2);
        index.upsert(1, &[1.0, 2.0]).unwrap();
        index.upsert(2, &[3.0, 4.0]).unwrap();
        assert!(index.remove(1));
        assert!(!index.remove(1));
        assert_eq!(&index.vectors[0..2], &[0.0, 0.0]);
        index.upsert(3, &[5.0, 6.0]).unwrap();
        assert_eq!(index.ids.len(), 2, "slot reused");
        assert_eq!(index.get(3), Some(&[5.0f32, 6.0][..]));
        assert!(matches!(
            index.upsert(4, &[1.0]),
            Err(IndexError::DimensionMismatch { .. })
        ));
    }
}
