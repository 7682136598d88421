//! Segment indexes: the per-segment nearest-neighbour structures a shard
//! searches. All of them speak [`SegmentIndex`], so the growing segment's
//! exact index and the sealed DiskANN segments are interchangeable to the
//! shard that holds them.

pub mod activity;
pub mod disk;
pub mod error;
pub mod flat;
pub mod segment_index;

pub use disk::cache::{CacheUsage, SegmentCache};
pub use disk::growing::GrowingSegment;
pub use disk::manifest::ArrivedFiles;
pub use disk::sealed::{SealedSegment, SearchSettings};
pub use error::{IndexError, Result};
pub use flat::FlatIndex;
pub use segment_index::{IdFilter, MutableSegmentIndex, SearchTuning, SegmentIndex};
