//! The growing segment: DiskANN's in-memory dynamic index over the
//! shard's fresh writes.
//!
//! What the crate lacks and this adds: external u64 ids over its u32 slots,
//! a copy of each live vector (for sealing and for growing the capacity,
//! which DiskANN fixes at creation), consolidation of deleted slots and their
//! reuse, and a blocking API: DiskANN's async calls are driven by a private
//! current-thread runtime, so callers must not be on an async runtime thread.

use std::collections::HashMap;

use diskann::graph::ext::labeled::{Filtered, QueryLabelProvider};
use diskann::graph::search::{InlineFilterSearch, Knn};
use diskann::graph::search_output_buffer::IdDistance;
use diskann::provider::{DefaultContext, Delete};
use diskann_providers::index::diskann_async::{MemoryIndex, new_index};
use diskann_providers::model::graph::provider::async_::TableDeleteProviderAsync;
use diskann_providers::model::graph::provider::async_::common::{FullPrecision, TableBasedDeletes};
use diskann_providers::model::graph::provider::async_::inmem::SetStartPoints;

use engram_core::config::IndexParams;
use engram_core::distance::l2_squared;
use engram_core::{Metric, ScoredId};

use crate::error::{IndexError, Result};
use crate::segment_index::{IdFilter, MutableSegmentIndex, SearchTuning, SegmentIndex};

/// Slots a fresh growing segment starts with; doubled when full.
const INITIAL_CAPACITY: usize = 256;
/// Deleted slots are consolidated once they are this share of all slots.
const CONSOLIDATE_SHARE: f64 = 0.2;

/// The segment's private runtime for DiskANN's async calls. Dropping a
/// tokio runtime blocks, which panics on an async thread; the last owner of
/// a segment can be anywhere (a task holding a copy that a transfer just
/// replaced), so this one is shut down in the background instead.
struct OwnRuntime(Option<tokio::runtime::Runtime>);

impl std::ops::Deref for OwnRuntime {
    type Target = tokio::runtime::Runtime;

    fn deref(&self) -> &tokio::runtime::Runtime {
        self.0.as_ref().expect("present until dropped")
    }
}

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// The caller's filter over DiskANN's slots, for its inline filtered
/// search: free, deleted and start-point slots are never admitted.
struct AdmittedSlots<'a> {
    ids: &'a [Option<u64>],
    filter: IdFilter<'a>,
}

impl std::fmt::Debug for AdmittedSlots<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdmittedSlots").finish_non_exhaustive()
    }
}

impl QueryLabelProvider<u32> for AdmittedSlots<'_> {
    fn is_match(&self, slot: u32) -> bool {
        self.ids
            .get(slot as usize)
            .copied()
            .flatten()
            .is_some_and(|id| (self.filter)(id))
    }
}

/// A distance ordered totally, for the exact scan's heap.
#[derive(Debug, Clone, Copy, PartialEq)]
struct OrderedDistance(f32);

impl Eq for OrderedDistance {}

impl PartialOrd for OrderedDistance {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for OrderedDistance {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

pub struct GrowingSegment {
    dim: usize,
    metric: Metric,
    params: IndexParams,
    runtime: OwnRuntime,
    index: MemoryIndex<f32, TableDeleteProviderAsync>,
    capacity: usize,
    /// Full vectors by slot (zeroed when the slot is deleted).
    vectors: Vec<f32>,
    /// `slot -> id`; `None` for free or deleted slots.
    ids: Vec<Option<u64>>,
    slot_of: HashMap<u64, u32>,
    /// Tombstoned in DiskANN, not yet consolidated and released.
    deleted_slots: Vec<u32>,
    /// Released slots ready for reuse.
    free_slots: Vec<u32>,
    has_start_point: bool,
}

impl GrowingSegment {
    pub fn new(dim: usize, metric: Metric, params: &IndexParams) -> Result<Self> {
        Self::with_capacity(dim, metric, params, INITIAL_CAPACITY)
    }

    fn with_capacity(
        dim: usize,
        metric: Metric,
        params: &IndexParams,
        capacity: usize,
    ) -> Result<Self> {
        let config = super::graph_config(params)?;
        let provider = super::provider_parameters(&config, dim, capacity);
        let index = new_index::<f32, _>(config, provider, TableBasedDeletes)?;
        let runtime = OwnRuntime(Some(tokio::runtime::Builder::new_current_thread().build()?));
        Ok(GrowingSegment {
            dim,
            metric,
            params: params.clone(),
            runtime,
            index,
            capacity,
            vectors: Vec::new(),
            ids: Vec::new(),
            slot_of: HashMap::new(),
            deleted_slots: Vec::new(),
            free_slots: Vec::new(),
            has_start_point: false,
        })
    }

    fn vector_at(&self, slot: u32) -> &[f32] {
        &self.vectors[slot as usize * self.dim..(slot as usize + 1) * self.dim]
    }

    fn insert_slot(&mut self, slot: u32) -> Result<()> {
        if !self.has_start_point {
            // DiskANN searches from a start point; the first vector serves.
            let start = self.vector_at(slot).to_vec();
            self.index
                .provider()
                .set_start_points(std::iter::once(start.as_slice()))?;
            self.has_start_point = true;
        }
        let vector = self.vector_at(slot).to_vec();
        let index = self.index.clone();
        self.runtime.block_on(async move {
            index
                .insert(&FullPrecision, &DefaultContext, &slot, vector.as_slice())
                .await
        })?;
        Ok(())
    }

    /// A slot for a new row: a released one, a never used one, or after
    /// consolidating deleted slots, or after doubling the capacity.
    fn allocate_slot(&mut self) -> Result<u32> {
        if let Some(slot) = self.free_slots.pop() {
            return Ok(slot);
        }
        if self.ids.len() < self.capacity {
            self.ids.push(None);
            self.vectors.resize(self.vectors.len() + self.dim, 0.0);
            return Ok((self.ids.len() - 1) as u32);
        }
        if !self.deleted_slots.is_empty() {
            self.consolidate()?;
            if let Some(slot) = self.free_slots.pop() {
                return Ok(slot);
            }
        }
        self.grow(self.capacity * 2)?;
        self.allocate_slot()
    }

    /// Rebuilds the graph with room for `capacity` slots, keeping slot numbers.
    fn grow(&mut self, capacity: usize) -> Result<()> {
        tracing::debug!(
            from = self.capacity,
            to = capacity,
            "growing segment capacity doubles"
        );
        // Built beside the current graph, which stays intact if this fails.
        let mut bigger = Self::with_capacity(self.dim, self.metric, &self.params, capacity)?;
        bigger.vectors = self.vectors.clone();
        bigger.ids = self.ids.clone();
        bigger.slot_of = self.slot_of.clone();
        // Deleted slots hold zeroed vectors and no id: nothing to consolidate.
        bigger.free_slots = self.free_slots.clone();
        bigger.free_slots.extend_from_slice(&self.deleted_slots);
        for slot in 0..bigger.ids.len() as u32 {
            if bigger.ids[slot as usize].is_some() {
                bigger.insert_slot(slot)?;
            }
        }
        *self = bigger;
        Ok(())
    }

    /// Repairs the graph around deleted slots, then releases them for reuse.
    pub fn consolidate(&mut self) -> Result<()> {
        if self.deleted_slots.is_empty() {
            return Ok(());
        }
        let index = self.index.clone();
        let slots = self.ids.len() as u32;
        let frozen = self.capacity as u32;
        let deleted = std::mem::take(&mut self.deleted_slots);
        let to_release = deleted.clone();
        self.runtime.block_on(async move {
            // Every slot plus the frozen start point, stored after max_points.
            for slot in (0..slots).chain(std::iter::once(frozen)) {
                index
                    .consolidate_vector(&FullPrecision, &DefaultContext, slot)
                    .await?;
            }
            for slot in to_release {
                index.provider().release(&DefaultContext, slot).await?;
            }
            diskann::ANNResult::Ok(())
        })?;
        self.free_slots.extend(deleted);
        Ok(())
    }

    /// Live `(ids, row-major vectors)`, what sealing builds from.
    pub fn live_rows(&self) -> (Vec<u64>, Vec<f32>) {
        let mut ids = Vec::with_capacity(self.slot_of.len());
        let mut vectors = Vec::with_capacity(self.slot_of.len() * self.dim);
        for (slot, id) in self.ids.iter().enumerate() {
            if let Some(id) = id {
                ids.push(*id);
                vectors.extend_from_slice(self.vector_at(slot as u32));
            }
        }
        (ids, vectors)
    }

    /// Searches with an explicit candidate list size.
    ///
    /// Deletes are excluded by DiskANN itself; the caller's filter (a
    /// query's `exclude_ids`, curators' blocks) in three steps whose cost
    /// is bounded whatever it admits:
    /// 1. one graph search, filtered afterwards: enough when the filter
    ///    removes little (the common case, and the cheapest);
    /// 2. DiskANN's inline filtered search, which walks the graph counting
    ///    only admitted nodes;
    /// 3. when even that meets fewer than `k` admitted rows, the admitted
    ///    rows are few: they are scanned exactly.
    pub fn search_with(
        &self,
        query: &[f32],
        k: usize,
        filter: IdFilter<'_>,
        list_size: usize,
    ) -> Result<Vec<ScoredId>> {
        let live = self.slot_of.len();
        if k == 0 || live == 0 {
            return Ok(Vec::new());
        }
        let want = k.min(live);
        let mut kept: Vec<ScoredId> = self
            .graph_search(query, want, list_size.max(want))?
            .into_iter()
            .filter(|h| filter(h.id))
            .collect();
        if kept.len() >= want {
            kept.truncate(want);
            return Ok(kept);
        }
        let inline = self.inline_filtered_search(query, want, list_size.max(want), filter)?;
        if inline.len() >= want {
            return Ok(inline);
        }
        Ok(self.scan_admitted(query, want, filter))
    }

    /// DiskANN's inline filtered graph search over this segment's slots.
    fn inline_filtered_search(
        &self,
        query: &[f32],
        k: usize,
        list_size: usize,
        filter: IdFilter<'_>,
    ) -> Result<Vec<ScoredId>> {
        let admitted = AdmittedSlots {
            ids: &self.ids,
            filter,
        };
        let strategy = Filtered::new(FullPrecision, &admitted);
        let knn = Knn::new(list_size, Some(self.params.beam_width))
            .map_err(|e| IndexError::DiskAnn(e.to_string()))?;
        let mut slots = vec![0u32; k];
        let mut distances = vec![0f32; k];
        let stats = {
            let mut output = IdDistance::new(&mut slots, &mut distances);
            self.runtime.block_on(self.index.search(
                InlineFilterSearch::new(knn, None),
                &strategy,
                &DefaultContext,
                query,
                &mut output,
            ))?
        };
        Ok(self.hits(&slots, &distances, stats.result_count as usize, filter))
    }

    /// The exact `k` nearest admitted rows: every live slot's id is checked
    /// against the filter and only admitted rows are compared.
    fn scan_admitted(&self, query: &[f32], k: usize, filter: IdFilter<'_>) -> Vec<ScoredId> {
        let cosine = self.metric == Metric::Cosine;
        let mut best: std::collections::BinaryHeap<(OrderedDistance, u64)> =
            std::collections::BinaryHeap::with_capacity(k + 1);
        for (slot, id) in self.ids.iter().enumerate() {
            let Some(id) = id else { continue };
            if !filter(*id) {
                continue;
            }
            let mut distance = l2_squared(query, self.vector_at(slot as u32));
            if cosine {
                distance /= 2.0;
            }
            best.push((OrderedDistance(distance), *id));
            if best.len() > k {
                best.pop();
            }
        }
        let mut hits: Vec<ScoredId> = best
            .into_iter()
            .map(|(d, id)| ScoredId { id, distance: d.0 })
            .collect();
        hits.sort_by(ScoredId::rank_cmp);
        hits
    }

    fn graph_search(&self, query: &[f32], k: usize, list_size: usize) -> Result<Vec<ScoredId>> {
        let mut slots = vec![0u32; k];
        let mut distances = vec![0f32; k];
        let params = Knn::new(list_size, Some(self.params.beam_width))
            .map_err(|e| IndexError::DiskAnn(e.to_string()))?;
        let stats = {
            let mut output = IdDistance::new(&mut slots, &mut distances);
            self.runtime.block_on(self.index.search(
                params,
                &FullPrecision,
                &DefaultContext,
                query,
                &mut output,
            ))?
        };
        Ok(self.hits(&slots, &distances, stats.result_count as usize, &|_| true))
    }

    /// The live, admitted rows of a DiskANN result, best first, with
    /// distances in the collection's metric.
    fn hits(
        &self,
        slots: &[u32],
        distances: &[f32],
        count: usize,
        filter: IdFilter<'_>,
    ) -> Vec<ScoredId> {
        let cosine = self.metric == Metric::Cosine;
        let mut hits: Vec<ScoredId> = slots
            .iter()
            .zip(distances)
            .take(count)
            .filter_map(|(slot, distance)| {
                let id = (*self.ids.get(*slot as usize)?)?;
                Some(ScoredId {
                    id,
                    distance: if cosine { distance / 2.0 } else { *distance },
                })
            })
            .filter(|hit| filter(hit.id))
            .collect();
        hits.sort_by(ScoredId::rank_cmp);
        hits
    }
}

impl SegmentIndex for GrowingSegment {
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
        tuning: SearchTuning,
    ) -> Vec<ScoredId> {
        let list_size = tuning.list_size.unwrap_or(self.params.search_list_size) as usize;
        match self.search_with(query, k, filter, list_size) {
            Ok(hits) => hits,
            Err(e) => {
                tracing::error!(error = %e, "growing segment search failed");
                Vec::new()
            }
        }
    }
}

impl MutableSegmentIndex for GrowingSegment {
    fn upsert(&mut self, id: u64, vector: &[f32]) -> Result<()> {
        if vector.len() != self.dim {
            return Err(IndexError::DimensionMismatch {
                expected: self.dim,
                actual: vector.len(),
            });
        }
        // DiskANN has no in-place update: replace = delete + insert.
        self.remove(id);
        let slot = self.allocate_slot()?;
        self.vectors[slot as usize * self.dim..(slot as usize + 1) * self.dim]
            .copy_from_slice(vector);
        self.ids[slot as usize] = Some(id);
        self.slot_of.insert(id, slot);
        if let Err(e) = self.insert_slot(slot) {
            self.ids[slot as usize] = None;
            self.slot_of.remove(&id);
            self.free_slots.push(slot);
            return Err(e);
        }
        Ok(())
    }

    fn remove(&mut self, id: u64) -> bool {
        let Some(slot) = self.slot_of.remove(&id) else {
            return false;
        };
        let index = self.index.clone();
        if let Err(e) = self
            .runtime
            .block_on(async move { index.provider().delete(&DefaultContext, &slot).await })
        {
            tracing::error!(error = %e, slot, "DiskANN tombstone failed");
        }
        self.ids[slot as usize] = None;
        self.vectors[slot as usize * self.dim..(slot as usize + 1) * self.dim].fill(0.0);
        self.deleted_slots.push(slot);
        if self.deleted_slots.len() as f64 > CONSOLIDATE_SHARE * self.ids.len().max(64) as f64
            && let Err(e) = self.consolidate()
        {
            tracing::error!(error = %e, "consolidation failed");
        }
        true
    }

    fn get(&self, id: u64) -> Option<&[f32]> {
        self.slot_of.get(&id).map(|slot| self.vector_at(*slot))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::sealed::tests::clustered;
    use crate::flat::FlatIndex;
    use proptest::prelude::*;

    fn params() -> IndexParams {
        IndexParams {
            max_degree: 32,
            build_list_size: 64,
            search_list_size: 64,
            ..IndexParams::default()
        }
    }

    fn recall(growing: &GrowingSegment, exact: &FlatIndex, queries: &[f32], dim: usize) -> f64 {
        let (mut hits, mut total) = (0, 0);
        for q in queries.chunks_exact(dim) {
            let truth: Vec<u64> = exact
                .search(q, 10, &|_| true)
                .iter()
                .map(|h| h.id)
                .collect();
            hits += growing
                .search(q, 10, &|_| true)
                .iter()
                .filter(|h| truth.contains(&h.id))
                .count();
            total += truth.len();
        }
        hits as f64 / total as f64
    }

    #[test]
    fn grows_past_its_capacity_deletes_consolidates_and_reuses_slots() {
        let dim = 16;
        let n = 2500;
        let rows = clustered(n, dim, 5, true);
        let mut growing = GrowingSegment::new(dim, Metric::Cosine, &params()).unwrap();
        let mut exact = FlatIndex::new(dim, Metric::Cosine);
        for (i, row) in rows.chunks_exact(dim).enumerate() {
            growing.upsert(i as u64 * 10, row).unwrap();
            exact.upsert(i as u64 * 10, row).unwrap();
        }
        assert_eq!(growing.len(), n);
        assert!(
            growing.capacity >= n,
            "capacity doubled from {INITIAL_CAPACITY}"
        );
        let queries = clustered(100, dim, 77, true);
        let r = recall(&growing, &exact, &queries, dim);
        assert!(r >= 0.95, "recall@10 {r}");
        let q = &rows[3 * dim..4 * dim];
        let top = growing.search(q, 1, &|_| true);
        assert_eq!(top[0].id, 30);
        assert!(
            top[0].distance.abs() < 1e-4,
            "cosine distance of a row to itself"
        );

        // Delete 30%: never returned; consolidation releases the slots.
        let doomed: Vec<u64> = (0..n as u64)
            .filter(|i| i % 10 < 3)
            .map(|i| i * 10)
            .collect();
        for id in &doomed {
            assert!(growing.remove(*id));
            exact.remove(*id);
        }
        growing.consolidate().unwrap();
        assert!(growing.deleted_slots.is_empty());
        let slots_before = growing.ids.len();
        for q in queries.chunks_exact(dim) {
            assert!(
                growing
                    .search(q, 50, &|_| true)
                    .iter()
                    .all(|h| !doomed.contains(&h.id))
            );
        }
        let r = recall(&growing, &exact, &queries, dim);
        assert!(
            r >= 0.9,
            "recall@10 after deleting 30% and consolidating: {r}"
        );
        // Re-inserting reuses released slots instead of growing.
        for (i, id) in doomed.iter().enumerate().take(500) {
            let row = &rows[(*id / 10) as usize * dim..(*id / 10 + 1) as usize * dim];
            growing.upsert(*id, row).unwrap();
            exact.upsert(*id, row).unwrap();
            assert_eq!(growing.ids.len(), slots_before, "slot reused at insert {i}");
        }
        assert!(recall(&growing, &exact, &queries, dim) >= 0.9);
        // The caller's filter still yields k results.
        let odd = growing.search(q, 10, &|id| id % 20 == 10);
        assert_eq!(odd.len(), 10);
        assert!(odd.iter().all(|h| h.id % 20 == 10));
        let (ids, vectors) = growing.live_rows();
        assert_eq!(ids.len(), growing.len());
        assert_eq!(vectors.len(), ids.len() * dim);
    }

    /// A filter that admits almost nothing must neither return rows it
    /// refuses nor miss the few it admits (the old widening loop searched
    /// the whole graph again and again to find them).
    #[test]
    fn a_restrictive_filter_returns_exactly_the_nearest_admitted_rows() {
        let dim = 16;
        let n = 3000;
        let rows = clustered(n, dim, 21, false);
        let mut growing = GrowingSegment::new(dim, Metric::L2, &params()).unwrap();
        let mut exact = FlatIndex::new(dim, Metric::L2);
        for (i, row) in rows.chunks_exact(dim).enumerate() {
            growing.upsert(i as u64, row).unwrap();
            exact.upsert(i as u64, row).unwrap();
        }
        for (admitted, k) in [(3usize, 10usize), (40, 10), (300, 50), (2900, 10)] {
            // Every id admitted is far from the query's cluster but one.
            let allowed: std::collections::HashSet<u64> = (0..admitted as u64)
                .map(|i| (i * 7919) % n as u64)
                .collect();
            let filter = |id: u64| allowed.contains(&id);
            for q in rows.chunks_exact(dim).step_by(301) {
                let got = growing.search(q, k, &filter);
                let want = exact.search(q, k, &filter);
                assert_eq!(got.len(), want.len(), "admitted {admitted}, k {k}");
                assert!(got.iter().all(|h| allowed.contains(&h.id)));
                let want_ids: Vec<u64> = want.iter().map(|h| h.id).collect();
                let found = got.iter().filter(|h| want_ids.contains(&h.id)).count();
                assert!(
                    found as f64 >= 0.9 * want.len() as f64,
                    "admitted {admitted}: {found} of {} exact neighbours",
                    want.len()
                );
            }
        }
        // Nothing admitted: nothing returned, and no endless search.
        assert!(growing.search(&rows[..dim], 10, &|_| false).is_empty());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        #[test]
        fn a_removed_id_is_never_returned(ops in prop::collection::vec((0u64..80, any::<bool>()), 1..200)) {
            let dim = 8;
            let rows = clustered(80, dim, 9, false);
            let mut growing = GrowingSegment::new(dim, Metric::L2, &params()).unwrap();
            let mut live = std::collections::HashSet::new();
            for (id, insert) in ops {
                if insert {
                    growing.upsert(id, &rows[id as usize * dim..(id as usize + 1) * dim]).unwrap();
                    live.insert(id);
                } else {
                    prop_assert_eq!(growing.remove(id), live.remove(&id));
                }
            }
            prop_assert_eq!(growing.len(), live.len());
            for q in rows.chunks_exact(dim).step_by(9) {
                let hits = growing.search(q, 100, &|_| true);
                prop_assert!(hits.iter().all(|h| live.contains(&h.id)));
                prop_assert!(hits.len() <= live.len());
            }
        }
    }
}
