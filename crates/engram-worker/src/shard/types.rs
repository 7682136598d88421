//! What a shard's callers see: filters, answers and reports.

use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::sync::Arc;

use engram_core::residency::Residency;
use engram_core::{Admission, Neighbor};

pub use engram_core::ShardDeletion;

/// Which items a search may return; applied inside the index search, so
/// `k` admitted items come back however many are filtered out.
#[derive(Default, Clone)]
pub struct SearchFilter {
    pub exclude: HashSet<u64>,
    /// Who may vote (curators' blocks); `None` admits everyone.
    pub admit: Option<Arc<Admission>>,
}

impl SearchFilter {
    pub fn excluding(exclude: HashSet<u64>) -> SearchFilter {
        SearchFilter {
            exclude,
            admit: None,
        }
    }
}

/// What a compaction or merge run did: sealed segments rewritten (merged,
/// or rewritten alone without their deleted rows), whether the WAL was
/// rewritten without the vectors of deleted rows, and the bytes that left
/// the disk (old files minus their replacements).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compaction {
    pub segments_rewritten: usize,
    pub bytes_reclaimed: u64,
    /// Segments written by the rewrites (one per merge group with live rows).
    #[serde(default)]
    pub segments_written: usize,
    /// WALs rewritten to carry only live rows.
    #[serde(default)]
    pub wals_rewritten: usize,
}

impl std::ops::Add for Compaction {
    type Output = Compaction;
    fn add(self, other: Compaction) -> Compaction {
        Compaction {
            segments_rewritten: self.segments_rewritten + other.segments_rewritten,
            bytes_reclaimed: self.bytes_reclaimed + other.bytes_reclaimed,
            segments_written: self.segments_written + other.segments_written,
            wals_rewritten: self.wals_rewritten + other.wals_rewritten,
        }
    }
}

impl std::iter::Sum for Compaction {
    fn sum<I: Iterator<Item = Compaction>>(iter: I) -> Compaction {
        iter.fold(Compaction::default(), |a, b| a + b)
    }
}

/// What attaching a segment did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachedSegment {
    /// The segment's name in this shard.
    pub name: String,
    pub rows: usize,
    /// Rows that replaced a live older version of their id.
    pub replaced: usize,
}

/// Where deleted items may still be physically present in one copy of a
/// shard, judged from the copy's own files.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Presence {
    /// The WAL that holds their vectors has not been retired yet.
    pub wal: bool,
    /// That WAL's generation (when `wal`).
    pub wal_generation: u64,
    /// Sealed segments whose files still hold a row of theirs.
    pub segments: Vec<String>,
    /// The content keys of `segments`, in the same order: their objects in
    /// `storage.segments_uri` are named by them.
    pub segment_keys: Vec<String>,
    /// Transfer directories of this copy that exist (segment files linked
    /// for a copy being built elsewhere, or staged for an attach): they may
    /// hold the rows' bytes until the transfer ends.
    pub staged: Vec<String>,
}

impl Presence {
    /// Whether anything of the rows is left in this copy.
    pub fn holds_any(&self) -> bool {
        self.wal || !self.segments.is_empty() || !self.staged.is_empty()
    }
}

/// One live item and its vector, as a full scan sees it.
#[derive(Debug, Clone)]
pub struct ScannedItem {
    pub id: u64,
    pub label: Arc<str>,
    pub weight: f32,
    pub source: Option<Arc<str>>,
    pub vector: Vec<f32>,
    /// The row's thumbnail, when it was added as an image: copies of a
    /// row (moves, resharding, snapshots) keep its picture.
    pub thumbnail: Option<Arc<[u8]>>,
}

/// One shard's answer to a batch of queries.
#[derive(Debug, Clone, Default)]
pub struct ShardHits {
    /// Best first, one list per query.
    pub lists: Vec<Vec<Neighbor>>,
    /// Sealed segments that could not be searched (left out of `lists`).
    pub failed_segments: usize,
}

/// An item as a reader sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemView {
    pub id: u64,
    pub label: Arc<str>,
    pub weight: f32,
    pub source: Option<Arc<str>>,
}

/// One sealed segment as `GET /v1/collections/{c}` and engramctl show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentStats {
    pub name: String,
    pub rows: u64,
    pub deleted: u64,
    pub bytes: u64,
    /// Where the node's cache budget serves it from.
    pub served_from: Residency,
}
