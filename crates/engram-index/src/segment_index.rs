//! The trait every segment index implements.

use engram_core::{Metric, ScoredId};

use crate::error::Result;

/// Decides whether an id may be returned (e.g. not tombstoned, not in the
/// request's `exclude_ids`). Applied inside the search so that `k` results
/// are still returned after filtering.
pub type IdFilter<'a> = &'a (dyn Fn(u64) -> bool + Sync);

/// Per-query search settings for approximate segments; exact ones ignore them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SearchTuning {
    /// Candidate list size L (at least k is used); `None` = the configured one.
    pub list_size: Option<u32>,
}

/// A searchable set of vectors addressed by external `u64` ids.
///
/// Vectors handed to an index are already prepared for its metric
/// (unit length for cosine, see `engram_core::vector::prepare`).
pub trait SegmentIndex: Send + Sync {
    fn dim(&self) -> usize;
    fn metric(&self) -> Metric;
    /// Number of live vectors.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn contains(&self, id: u64) -> bool;
    /// The `k` nearest live vectors accepted by `filter`, best first.
    fn search(&self, query: &[f32], k: usize, filter: IdFilter<'_>) -> Vec<ScoredId> {
        self.search_tuned(query, k, filter, SearchTuning::default())
    }
    /// [`Self::search`] with per-query settings; exact indexes ignore them.
    fn search_tuned(
        &self,
        query: &[f32],
        k: usize,
        filter: IdFilter<'_>,
        tuning: SearchTuning,
    ) -> Vec<ScoredId>;
    /// Many queries at once; implementations may share memory traffic
    /// across queries. One result list per query, in order.
    fn search_batch(
        &self,
        queries: &[&[f32]],
        k: usize,
        filter: IdFilter<'_>,
    ) -> Vec<Vec<ScoredId>> {
        queries.iter().map(|q| self.search(q, k, filter)).collect()
    }
}

/// An index that takes writes in place (the growing segment).
pub trait MutableSegmentIndex: SegmentIndex {
    /// Inserts `id` or replaces its vector.
    fn upsert(&mut self, id: u64, vector: &[f32]) -> Result<()>;
    /// Removes `id`; returns whether it was present. The vector's memory is
    /// overwritten so that a removed item leaves nothing behind.
    fn remove(&mut self, id: u64) -> bool;
    fn get(&self, id: u64) -> Option<&[f32]>;
}
