//! Where each sealed segment of a node is served from, given the node's
//! cache budget: the pure planner behind `[cache] budget_mb`.
//!
//! A sealed segment keeps its PQ codes in RAM whatever happens; its graph
//! and full vectors live in 4 KiB sectors on disk. Every beam step of a
//! search reads sectors, so a query's cost is mostly I/O, and a node with
//! many segments pays it per segment. RAM buys that back in two ways:
//! - **memory**: the whole sector file is loaded, searches read nothing
//!   from disk (costs the file's size);
//! - **node cache**: DiskANN's static cache of the nodes nearest the entry
//!   point in graph hops (breadth-first), which every query visits first
//!   (costs a node's vector and neighbour list per node).
//!
//! The plan loads whole segments smallest first (many small segments are
//! where the per-segment cost hurts most, and each costs little), then
//! spreads what is left over the other segments' node caches in proportion
//! to their rows. It depends only on its input, so every node that hosts
//! the same segments with the same budget serves them the same way.

use serde::{Deserialize, Serialize};

/// Node caches smaller than this are not worth their setup: the segment is
/// served from disk instead.
pub const MIN_CACHED_NODES: u64 = 64;

/// What planning needs to know about one sealed segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footprint {
    /// The caller's key for the segment (unique within one plan).
    pub key: u64,
    /// Bytes of the sector file (graph and full vectors): the cost of
    /// serving the segment from memory.
    pub file_bytes: u64,
    /// Rows in the graph (deleted ones included: they stay in the graph).
    pub rows: u64,
    /// RAM one cached node takes (vector, neighbour list, bookkeeping).
    pub node_bytes: u64,
}

/// Where a segment is served from. (Externally tagged, the serde default:
/// the worker RPC carries it in bincode, which cannot read tagged forms.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Residency {
    /// Every read goes to the sector file (O_DIRECT where available).
    #[default]
    Disk,
    /// The `nodes` nodes nearest the entry point are held in RAM; the rest
    /// is read from disk.
    NodeCache { nodes: u64 },
    /// The whole sector file is held in RAM.
    Memory,
}

impl Residency {
    /// RAM this residency costs for `segment`.
    pub fn cost(&self, segment: &Footprint) -> u64 {
        match self {
            Residency::Disk => 0,
            Residency::NodeCache { nodes } => nodes.saturating_mul(segment.node_bytes),
            Residency::Memory => segment.file_bytes,
        }
    }

    /// A short human form (`memory`, `node_cache(1024)`, `disk`).
    pub fn describe(&self) -> String {
        match self {
            Residency::Disk => "disk".into(),
            Residency::NodeCache { nodes } => format!("node_cache({nodes})"),
            Residency::Memory => "memory".into(),
        }
    }
}

/// The residency of every segment under `budget_bytes`, in the order of
/// `segments`. The total cost never exceeds the budget.
pub fn plan(segments: &[Footprint], budget_bytes: u64) -> Vec<Residency> {
    let mut order: Vec<usize> = (0..segments.len()).collect();
    order.sort_by_key(|i| (segments[*i].file_bytes, segments[*i].key));
    let mut plan = vec![Residency::Disk; segments.len()];
    let mut left = budget_bytes;
    let mut rest = Vec::new();
    for (position, i) in order.iter().enumerate() {
        let segment = &segments[*i];
        if segment.file_bytes <= left {
            plan[*i] = Residency::Memory;
            left -= segment.file_bytes;
        } else {
            // Smallest first: nothing after this one fits whole either.
            rest.extend_from_slice(&order[position..]);
            break;
        }
    }
    let rows: u128 = rest.iter().map(|i| u128::from(segments[*i].rows)).sum();
    if rows == 0 {
        return plan;
    }
    let spread = u128::from(left);
    for i in rest {
        let segment = &segments[i];
        let share = spread * u128::from(segment.rows) / rows;
        let nodes = (share / u128::from(segment.node_bytes.max(1))) as u64;
        let nodes = nodes.min(segment.rows);
        if nodes >= MIN_CACHED_NODES.min(segment.rows.max(1)) && nodes > 0 {
            plan[i] = Residency::NodeCache { nodes };
        }
    }
    plan
}

/// RAM a cached node takes: its full vector, its neighbour list (`u32`s,
/// up to the graph degree plus the count) and about 48 bytes of map entry
/// and allocation overhead.
pub fn node_bytes(dim: usize, max_degree: u32) -> u64 {
    (dim as u64) * 4 + (u64::from(max_degree) + 1) * 4 + 48
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn segment(key: u64, file_bytes: u64, rows: u64) -> Footprint {
        Footprint {
            key,
            file_bytes,
            rows,
            node_bytes: 100,
        }
    }

    #[test]
    fn small_segments_load_whole_and_the_rest_get_node_caches() {
        let segments = [
            segment(1, 10_000, 100),
            segment(2, 1_000_000, 10_000),
            segment(3, 5_000, 50),
        ];
        // Both small ones fit (15,000); 100,000 left caches 1,000 nodes.
        let plan = plan(&segments, 115_000);
        assert_eq!(plan[0], Residency::Memory);
        assert_eq!(plan[2], Residency::Memory);
        assert_eq!(plan[1], Residency::NodeCache { nodes: 1_000 });
        // No budget: everything on disk; a huge one: everything in memory.
        assert!(
            super::plan(&segments, 0)
                .iter()
                .all(|r| *r == Residency::Disk)
        );
        assert!(
            super::plan(&segments, u64::MAX)
                .iter()
                .all(|r| *r == Residency::Memory)
        );
        // A cache too small to matter is not set up.
        assert_eq!(
            super::plan(&segments[1..2], 100 * (MIN_CACHED_NODES - 1))[0],
            Residency::Disk
        );
    }

    proptest! {
        #[test]
        fn plans_fit_the_budget_and_load_a_smallest_first_prefix(
            sizes in prop::collection::vec((1u64..5_000_000, 1u64..100_000, 16u64..6_000), 0..40),
            budget in 0u64..50_000_000,
        ) {
            let segments: Vec<Footprint> = sizes.iter().enumerate().map(|(i, (file, rows, node))| Footprint {
                key: i as u64, file_bytes: *file, rows: *rows, node_bytes: *node,
            }).collect();
            let plan = plan(&segments, budget);
            prop_assert_eq!(plan.len(), segments.len());
            let cost: u64 = plan.iter().zip(&segments).map(|(r, s)| r.cost(s)).sum();
            prop_assert!(cost <= budget, "cost {} over budget {}", cost, budget);
            // Whatever is in memory is no larger than whatever is not.
            let largest_loaded = plan.iter().zip(&segments).filter(|(r, _)| **r == Residency::Memory).map(|(_, s)| s.file_bytes).max();
            let smallest_not = plan.iter().zip(&segments).filter(|(r, _)| **r != Residency::Memory).map(|(_, s)| s.file_bytes).min();
            if let (Some(a), Some(b)) = (largest_loaded, smallest_not) {
                prop_assert!(a <= b);
            }
            for (r, s) in plan.iter().zip(&segments) {
                if let Residency::NodeCache { nodes } = r {
                    prop_assert!(*nodes <= s.rows && *nodes > 0);
                }
            }
            // The same input plans the same way, whatever the order.
            let mut reversed = segments.clone();
            reversed.reverse();
            let mut again = super::plan(&reversed, budget);
            again.reverse();
            prop_assert_eq!(again, plan);
        }
    }
}
