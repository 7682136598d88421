//! A node's cache budget for sealed segments (`[cache] budget_mb`): every
//! sealed segment the node opens registers here, and the budget is shared
//! out by the pure planner `engram_core::residency::plan` (whole segments
//! in memory smallest first, node caches around the entry points with the
//! rest). Registering a segment, or a segment leaving (compaction, merge,
//! a dropped copy), plans again; segments whose residency changes are
//! reloaded on the caller's thread, while searches go on.

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::{Arc, Weak};

use engram_core::residency::{Residency, plan};

use super::sealed::SealedSegment;

/// Share of the machine's memory the budget takes when none is configured.
const AUTO_SHARE: u64 = 4;

pub struct SegmentCache {
    budget_bytes: u64,
    inner: Mutex<Registry>,
}

#[derive(Default)]
struct Registry {
    next_key: u64,
    segments: BTreeMap<u64, Weak<SealedSegment>>,
}

/// What the cache holds now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheUsage {
    pub budget_bytes: u64,
    pub used_bytes: u64,
    pub segments: usize,
    pub in_memory: usize,
    pub node_cached: usize,
}

impl SegmentCache {
    pub fn new(budget_bytes: u64) -> Arc<SegmentCache> {
        Arc::new(SegmentCache {
            budget_bytes,
            inner: Mutex::new(Registry::default()),
        })
    }

    /// No budget: every segment is served from disk.
    pub fn disk_only() -> Arc<SegmentCache> {
        Self::new(0)
    }

    /// The budget for `budget_mb` (`None`: a quarter of this machine's
    /// memory, or of the cgroup limit when that is lower).
    pub fn budget_for(budget_mb: Option<u64>) -> u64 {
        match budget_mb {
            Some(mb) => mb.saturating_mul(1 << 20),
            None => machine_memory_bytes().map_or(0, |total| total / AUTO_SHARE),
        }
    }

    pub fn budget_bytes(&self) -> u64 {
        self.budget_bytes
    }

    /// Adds `segment` and shares the budget out again.
    pub fn register(&self, segment: &Arc<SealedSegment>) {
        let mut registry = self.inner.lock();
        Self::insert(&mut registry, segment);
        self.apply(&mut registry);
    }

    /// Adds `segment` without sharing the budget out yet: for opening many
    /// segments at once, followed by one [`Self::rebalance`] (no segment
    /// is loaded into memory only to be dropped again by the next one).
    pub fn add(&self, segment: &Arc<SealedSegment>) {
        Self::insert(&mut self.inner.lock(), segment);
    }

    fn insert(registry: &mut Registry, segment: &Arc<SealedSegment>) {
        let key = registry.next_key;
        registry.next_key += 1;
        registry.segments.insert(key, Arc::downgrade(segment));
    }

    /// Forgets segments no longer served and shares the budget out again
    /// (after a compaction or merge replaced some, or a copy was dropped).
    pub fn rebalance(&self) {
        let mut registry = self.inner.lock();
        self.apply(&mut registry);
    }

    fn apply(&self, registry: &mut Registry) {
        registry.segments.retain(|_, s| s.strong_count() > 0);
        let live: Vec<(u64, Arc<SealedSegment>)> = registry
            .segments
            .iter()
            .filter_map(|(key, s)| Some((*key, s.upgrade()?)))
            .collect();
        let footprints: Vec<_> = live.iter().map(|(key, s)| s.footprint(*key)).collect();
        let wanted = plan(&footprints, self.budget_bytes);
        // Demotions first, so that memory is given back before more is taken.
        let mut order: Vec<usize> = (0..live.len()).collect();
        order.sort_by_key(|i| {
            let now = live[*i].1.residency().cost(&footprints[*i]);
            std::cmp::Reverse(now.saturating_sub(wanted[*i].cost(&footprints[*i])))
        });
        for i in order {
            let (_, segment) = &live[i];
            if let Err(error) = segment.set_residency(wanted[i]) {
                tracing::warn!(segment = %segment.dir().display(), %error, residency = %wanted[i].describe(), "cannot change where a segment is served from; it stays as it was");
            }
        }
    }

    pub fn usage(&self) -> CacheUsage {
        let registry = self.inner.lock();
        let mut usage = CacheUsage {
            budget_bytes: self.budget_bytes,
            ..CacheUsage::default()
        };
        for (key, segment) in &registry.segments {
            let Some(segment) = segment.upgrade() else {
                continue;
            };
            let residency = segment.residency();
            usage.segments += 1;
            usage.used_bytes += residency.cost(&segment.footprint(*key));
            match residency {
                Residency::Memory => usage.in_memory += 1,
                Residency::NodeCache { .. } => usage.node_cached += 1,
                Residency::Disk => {}
            }
        }
        usage
    }
}

/// Physical memory, or the cgroup (v2) limit when lower.
fn machine_memory_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let total_kb: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let total = total_kb * 1024;
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    Some(cgroup.map_or(total, |limit| limit.min(total)))
}
