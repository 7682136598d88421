//! Process-wide counts of what the segment indexes did: sealed-segment
//! searches and the sector reads they issued, by where the segment is
//! served from, segment builds by kind with their rows and seconds, and PQ
//! codebooks trained by reason.
//!
//! Counted here, where the work happens, as plain atomics (this crate knows
//! nothing of Prometheus); the metrics endpoints of the worker and the
//! embedded node read them at each scrape. One process, one set of counts:
//! every shard and collection of the process adds into them.

use std::sync::atomic::{AtomicU64, Ordering};

use engram_core::residency::Residency;

/// Where a searched segment's sectors came from.
const SERVED_FROM: [&str; 3] = ["disk", "node_cache", "memory"];

/// What kind of build made a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildKind {
    /// The growing segment sealed into a DiskANN segment.
    Seal,
    /// Sealed segments merged (or one rewritten without its deleted rows).
    Merge,
    /// A segment built by a bulk ingestion job, outside any shard.
    Bulk,
}

impl BuildKind {
    pub const ALL: [BuildKind; 3] = [BuildKind::Seal, BuildKind::Merge, BuildKind::Bulk];

    pub fn as_str(self) -> &'static str {
        match self {
            BuildKind::Seal => "seal",
            BuildKind::Merge => "merge",
            BuildKind::Bulk => "bulk",
        }
    }
}

struct Searches {
    searches: [AtomicU64; 3],
    sector_reads: [AtomicU64; 3],
}

struct Builds {
    builds: [AtomicU64; 3],
    rows: [AtomicU64; 3],
    micros: [AtomicU64; 3],
}

static SEARCHES: Searches = Searches {
    searches: [const { AtomicU64::new(0) }; 3],
    sector_reads: [const { AtomicU64::new(0) }; 3],
};

static BUILDS: Builds = Builds {
    builds: [const { AtomicU64::new(0) }; 3],
    rows: [const { AtomicU64::new(0) }; 3],
    micros: [const { AtomicU64::new(0) }; 3],
};

fn served_from(residency: Residency) -> usize {
    match residency {
        Residency::Disk => 0,
        Residency::NodeCache { .. } => 1,
        Residency::Memory => 2,
    }
}

/// One sealed-segment search served under `residency` that read
/// `sector_reads` sectors (DiskANN's count of I/O operations; a node-cache
/// or in-memory hit reads none from the SSD).
pub fn record_search(residency: Residency, sector_reads: u64) {
    let at = served_from(residency);
    SEARCHES.searches[at].fetch_add(1, Ordering::Relaxed);
    SEARCHES.sector_reads[at].fetch_add(sector_reads, Ordering::Relaxed);
}

/// One segment build of `kind` over `rows` rows that took `seconds`.
pub fn record_build(kind: BuildKind, rows: usize, seconds: f64) {
    let at = kind as usize;
    BUILDS.builds[at].fetch_add(1, Ordering::Relaxed);
    BUILDS.rows[at].fetch_add(rows as u64, Ordering::Relaxed);
    BUILDS.micros[at].fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
}

/// Runs `build` (a segment build of `kind` over `rows` rows) and, if it
/// succeeds, counts it with the seconds it took.
pub fn timed<T, E>(
    kind: BuildKind,
    rows: usize,
    build: impl FnOnce() -> Result<T, E>,
) -> Result<T, E> {
    let started = std::time::Instant::now();
    let built = build()?;
    record_build(kind, rows, started.elapsed().as_secs_f64());
    Ok(built)
}

/// Why codebooks were trained, in [`codebooks`]' order.
const TRAIN_REASONS: [&str; 4] = ["first", "grown", "drift", "requested"];

static CODEBOOKS: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];

/// One PQ codebook trained (a shard's or a bulk job's), for `reason`.
pub fn codebook_trained(reason: crate::disk::codebook::TrainReason) {
    use crate::disk::codebook::TrainReason;
    let at = match reason {
        TrainReason::First => 0,
        TrainReason::Grown => 1,
        TrainReason::Drift => 2,
        TrainReason::Requested => 3,
    };
    CODEBOOKS[at].fetch_add(1, Ordering::Relaxed);
}

/// `(reason, codebooks trained)` so far.
pub fn codebooks() -> Vec<(&'static str, u64)> {
    TRAIN_REASONS
        .iter()
        .zip(&CODEBOOKS)
        .map(|(reason, n)| (*reason, n.load(Ordering::Relaxed)))
        .collect()
}

/// `(served_from, searches, sector_reads)` so far.
pub fn searches() -> Vec<(&'static str, u64, u64)> {
    (0..3)
        .map(|i| {
            (
                SERVED_FROM[i],
                SEARCHES.searches[i].load(Ordering::Relaxed),
                SEARCHES.sector_reads[i].load(Ordering::Relaxed),
            )
        })
        .collect()
}

/// `(kind, builds, rows, seconds)` so far.
pub fn builds() -> Vec<(&'static str, u64, u64, f64)> {
    BuildKind::ALL
        .iter()
        .map(|kind| {
            let at = *kind as usize;
            (
                kind.as_str(),
                BUILDS.builds[at].load(Ordering::Relaxed),
                BUILDS.rows[at].load(Ordering::Relaxed),
                BUILDS.micros[at].load(Ordering::Relaxed) as f64 / 1e6,
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_by_label() {
        let before = searches();
        record_search(Residency::NodeCache { nodes: 10 }, 7);
        record_search(Residency::Memory, 0);
        let after = searches();
        assert_eq!(after[1].1 - before[1].1, 1);
        assert_eq!(after[1].2 - before[1].2, 7);
        assert_eq!(after[2].1 - before[2].1, 1);
        let before = builds();
        record_build(BuildKind::Merge, 100, 1.5);
        let after = builds();
        assert_eq!(after[1].0, "merge");
        assert_eq!(after[1].1 - before[1].1, 1);
        assert_eq!(after[1].2 - before[1].2, 100);
        assert!((after[1].3 - before[1].3 - 1.5).abs() < 1e-3);
    }
}
