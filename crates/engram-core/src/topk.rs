//! Bounded top-k selection and the merge of per-shard top-k lists.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use crate::neighbor::{Neighbor, ScoredId};

/// Anything ranked by (distance, id), ascending.
pub trait Ranked {
    fn rank_cmp(&self, other: &Self) -> Ordering;
}

impl Ranked for ScoredId {
    fn rank_cmp(&self, other: &Self) -> Ordering {
        ScoredId::rank_cmp(self, other)
    }
}

impl Ranked for Neighbor {
    fn rank_cmp(&self, other: &Self) -> Ordering {
        self.scored().rank_cmp(&other.scored())
    }
}

struct Worst(ScoredId);

impl PartialEq for Worst {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Worst {}
impl PartialOrd for Worst {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Worst {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.rank_cmp(&other.0)
    }
}

/// Keeps the `k` best (smallest distance) hits seen so far.
pub struct TopK {
    k: usize,
    heap: BinaryHeap<Worst>,
}

impl TopK {
    pub fn new(k: usize) -> Self {
        TopK {
            k,
            heap: BinaryHeap::with_capacity(k.saturating_add(1).min(1 << 16)),
        }
    }

    /// The distance a new hit must beat to enter, once the list is full.
    #[inline]
    pub fn threshold(&self) -> f32 {
        if self.heap.len() < self.k {
            f32::INFINITY
        } else {
            self.heap.peek().map_or(f32::INFINITY, |w| w.0.distance)
        }
    }

    #[inline]
    pub fn push(&mut self, hit: ScoredId) {
        if self.k == 0 {
            return;
        }
        if self.heap.len() < self.k {
            self.heap.push(Worst(hit));
        } else if let Some(mut worst) = self.heap.peek_mut()
            && hit.rank_cmp(&worst.0) == Ordering::Less
        {
            *worst = Worst(hit);
        }
    }

    pub fn extend(&mut self, other: TopK) {
        for w in other.heap {
            self.push(w.0);
        }
    }

    /// The kept hits, best first.
    pub fn into_sorted_vec(self) -> Vec<ScoredId> {
        let mut hits: Vec<ScoredId> = self.heap.into_iter().map(|w| w.0).collect();
        hits.sort_by(ScoredId::rank_cmp);
        hits
    }
}

/// Merges lists that are each sorted best first into the global best `k`.
/// Equal keys keep a deterministic order because ids break ties.
pub fn merge_sorted<T: Ranked>(lists: Vec<Vec<T>>, k: usize) -> Vec<T> {
    let mut all: Vec<T> = lists.into_iter().flatten().collect();
    all.sort_by(|a, b| a.rank_cmp(b));
    all.truncate(k);
    all
}

/// Merges, for each of `queries` queries, the lists several sources (shards,
/// workers) returned for it: `per_source[s][q]` is source `s`'s list for
/// query `q`. A source answering fewer lists contributes nothing to the rest.
pub fn merge_per_query<T: Ranked>(
    per_source: impl IntoIterator<Item = Vec<Vec<T>>>,
    queries: usize,
    k: usize,
) -> Vec<Vec<T>> {
    let mut per_query: Vec<Vec<Vec<T>>> = (0..queries).map(|_| Vec::new()).collect();
    for lists in per_source {
        for (q, list) in lists.into_iter().enumerate().take(queries) {
            per_query[q].push(list);
        }
    }
    per_query
        .into_iter()
        .map(|lists| merge_sorted(lists, k))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hits(distances: &[f32]) -> Vec<ScoredId> {
        distances
            .iter()
            .enumerate()
            .map(|(i, d)| ScoredId {
                id: i as u64,
                distance: *d,
            })
            .collect()
    }

    proptest! {
        #[test]
        fn topk_equals_sort_and_truncate(distances in prop::collection::vec(0f32..4.0, 0..200), k in 0usize..50) {
            let all = hits(&distances);
            let mut top = TopK::new(k);
            all.iter().for_each(|h| top.push(*h));
            let mut expected = all.clone();
            expected.sort_by(ScoredId::rank_cmp);
            expected.truncate(k);
            prop_assert_eq!(top.into_sorted_vec(), expected);
        }

        #[test]
        fn merge_of_partitions_equals_global_topk(distances in prop::collection::vec(0f32..4.0, 0..200), parts in 1usize..8, k in 0usize..50) {
            let all = hits(&distances);
            let mut lists = vec![Vec::new(); parts];
            for h in &all {
                lists[(h.id as usize) % parts].push(*h);
            }
            let per_shard: Vec<Vec<ScoredId>> = lists.into_iter().map(|l| {
                let mut t = TopK::new(k);
                l.into_iter().for_each(|h| t.push(h));
                t.into_sorted_vec()
            }).collect();
            let mut expected = all;
            expected.sort_by(ScoredId::rank_cmp);
            expected.truncate(k);
            prop_assert_eq!(merge_sorted(per_shard, k), expected);
        }
    }

    #[test]
    fn per_query_merge_keeps_queries_apart() {
        let a = vec![hits(&[0.1, 0.5]), hits(&[0.9])];
        let b = vec![
            vec![ScoredId {
                id: 7,
                distance: 0.2,
            }],
            Vec::new(),
        ];
        let merged = merge_per_query([a, b], 2, 2);
        assert_eq!(
            merged[0].iter().map(|h| h.id).collect::<Vec<_>>(),
            vec![0, 7]
        );
        assert_eq!(merged[1].iter().map(|h| h.id).collect::<Vec<_>>(), vec![0]);
    }

    #[test]
    fn threshold_tracks_worst_kept() {
        let mut top = TopK::new(2);
        assert_eq!(top.threshold(), f32::INFINITY);
        for h in hits(&[0.5, 0.1, 0.3]) {
            top.push(h);
        }
        assert_eq!(top.threshold(), 0.3);
    }
}
