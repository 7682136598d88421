//! A shard's files: `shard.bin` (the commit point of seals, merges,
//! compactions and attaches), the WAL generations and the segment
//! directories, the PQ codebooks, and sweeping what an interrupted rewrite left behind.

use fs_err as fs;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

use engram_index::SealedSegment;
use engram_store::WritePosition;

use crate::error::Result;

pub(super) const SHARD_FILE: &str = "shard.bin";
pub(super) const SEGMENTS_DIR: &str = "segments";
pub(super) const ITEMS_FILE: &str = engram_store::SEGMENT_ITEMS_FILE;
pub(super) const STAGING_DIR: &str = "incoming";
/// Segment files linked for transfers to other copies (`shipping.rs`);
/// emptied when the shard opens (a transfer does not outlive its sender).
pub(super) const OUTGOING_DIR: &str = "outgoing";
/// The shard's PQ codebook versions (`engram_index::disk::codebook`).
pub(super) const CODEBOOKS_DIR: &str = "codebooks";

/// What `shard.bin` records.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct ShardManifest {
    pub(super) wal_generation: u64,
    /// Sealed segments, oldest first: a later segment's rows supersede
    /// older versions of their ids.
    pub(super) segments: Vec<String>,
    pub(super) next_segment: u64,
    /// A resharding target being filled: deletes are remembered as
    /// tombstones so that rows copied in later cannot bring them back.
    #[serde(default)]
    pub(super) receiving: bool,
    /// Ids deleted while receiving whose delete records left with a
    /// retired WAL (the current WAL's deletes add to them at replay).
    #[serde(default)]
    pub(super) tombstones: Vec<u64>,
    /// The shard's place in its history where the current WAL begins (the
    /// last write before it); the WAL's records carry the rest. `None`:
    /// unknown (a copy being rebuilt by a full transfer, or a shard written
    /// before positions existed), so no delta can be computed against it.
    #[serde(default)]
    pub(super) position: Option<WritePosition>,
}

pub(super) fn wal_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("wal-{generation:08}.log"))
}

/// Removes segment directories and WAL files that `manifest` does not name.
pub(super) fn remove_leftovers(dir: &Path, manifest: &ShardManifest) -> Result<()> {
    let keep: HashSet<&str> = manifest.segments.iter().map(String::as_str).collect();
    for entry in fs::read_dir(dir.join(SEGMENTS_DIR))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().to_string();
        if !keep.contains(name.as_str()) {
            tracing::info!(segment = %name, "removing a segment not in the shard manifest");
            fs::remove_dir_all(entry.path())?;
        }
    }
    let current = wal_path(dir, manifest.wal_generation);
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        if name.starts_with("wal-") && path != current {
            fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// Moves a directory: a rename, or a copy and removal when `from` is on
/// another filesystem. Returns whether it was renamed (the files are the
/// ones written there, not copies).
pub(super) fn move_dir(from: &Path, to: &Path) -> Result<bool> {
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent)?;
    }
    if fs::rename(from, to).is_ok() {
        return Ok(true);
    }
    let copying = to.with_extension("copying");
    fs::create_dir_all(&copying)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let file = copying.join(entry.file_name());
        fs::copy(entry.path(), &file)?;
        fs::File::open(&file)?.sync_all()?;
    }
    fs::rename(&copying, to)?;
    fs::remove_dir_all(from)?;
    Ok(false)
}

/// Bytes of a sealed segment's files.
pub(super) fn segment_bytes(segment: &SealedSegment) -> u64 {
    segment.manifest().files.iter().map(|f| f.bytes).sum()
}
