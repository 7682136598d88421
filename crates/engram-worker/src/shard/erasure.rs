//! Unlearning in one copy of a shard: where deleted rows' bytes still are
//! (judged from this copy's own files, never from another copy's record),
//! and erasing them by rewriting only what holds them.

use fs_err as fs;
use std::collections::HashSet;

use super::files::{OUTGOING_DIR, STAGING_DIR};
use super::shipping::segment_key;
use super::{Compaction, Presence, Shard, ShardDeletion};
use crate::error::Result;
use engram_index::SegmentIndex;

impl Shard {
    /// Where deleted rows of `ids` may still be physically present, judged
    /// from what this shard holds now, not from what was recorded at the
    /// delete: the current WAL, if it still carries a dropped vector of
    /// theirs (a row the growing segment deleted or replaced since the WAL
    /// began), every sealed segment whose files hold a deleted row of
    /// theirs (a merge that read a row just before its delete writes it
    /// into a new segment, marked deleted there: that one counts too), and
    /// the transfer directories that exist (linked or staged segment files
    /// of a copy in the making). A version of an id added again after its
    /// delete is not the deleted bytes and does not count.
    pub fn presence_of(&self, ids: &[u64]) -> Result<Presence> {
        let (wal, segments) = {
            let state = self.state.read();
            let wal = ids.iter().any(|id| state.wal_dead.contains(id));
            let segments: Vec<_> = state
                .sealed
                .iter()
                .filter(|s| ids.iter().any(|id| s.holds_row(*id) && !s.contains(*id)))
                .cloned()
                .collect();
            (wal, segments)
        };
        let wal_generation = if wal {
            self.wal.lock().manifest.wal_generation
        } else {
            0
        };
        Ok(Presence {
            wal,
            wal_generation,
            segments: segments.iter().map(|s| s.name()).collect(),
            segment_keys: segments
                .iter()
                .map(|s| segment_key(s))
                .collect::<Result<_>>()?,
            staged: self.transfer_dirs()?,
        })
    }

    /// [`Self::presence_of`] the ids of `deletion`.
    pub fn presence(&self, deletion: &ShardDeletion) -> Result<Presence> {
        self.presence_of(&deletion.ids)
    }

    /// The transfer directories below this shard that hold something,
    /// relative to the shard's directory.
    fn transfer_dirs(&self) -> Result<Vec<String>> {
        let mut found = Vec::new();
        for root in [OUTGOING_DIR, STAGING_DIR] {
            let dir = self.dir.join(root);
            if !dir.exists() {
                continue;
            }
            for entry in fs::read_dir(&dir)? {
                let entry = entry?;
                if holds_files(&entry.path()) {
                    let name = entry.file_name().to_string_lossy().to_string();
                    found.push(format!("{root}/{name}"));
                }
            }
        }
        found.sort();
        Ok(found)
    }

    /// Rewrites exactly what holds deleted rows of `ids` in this copy: each
    /// sealed segment holding one is rewritten alone without its deleted
    /// rows (other segments, and other segments' deletions, are left to the
    /// merge policy), and the WAL is rewritten without dead vectors if it
    /// carries one of theirs. What an unlearning deadline asks of a copy:
    /// the work is proportional to the segments that hold the rows, not to
    /// the shard. The WAL waits while a transfer pins its history (the next
    /// call rewrites it).
    pub fn erase(&self, ids: &[u64]) -> Result<Compaction> {
        let wanted: HashSet<u64> = ids.iter().copied().collect();
        let _one = self.rewriting.lock();
        let mut done = Compaction::default();
        let holding: Vec<_> = self
            .sealed()
            .into_iter()
            .filter(|s| wanted.iter().any(|id| s.holds_row(*id) && !s.contains(*id)))
            .collect();
        for segment in holding {
            tracing::info!(shard = self.number, segment = %segment.name(), "rewriting a segment that holds unlearned rows");
            done = done + self.merge(std::slice::from_ref(&segment))?;
        }
        done = done
            + self.rewrite_wal_if(|state| wanted.iter().any(|id| state.wal_dead.contains(id)))?;
        if done != Compaction::default() {
            self.cache.rebalance();
        }
        Ok(done)
    }
}

/// Whether `path` is a file, or a directory with a file somewhere below
/// (empty directories left by a finished transfer hold no bytes).
pub fn holds_files(path: &std::path::Path) -> bool {
    if !path.is_dir() {
        return path.exists();
    }
    std::fs::read_dir(path)
        .map(|entries| entries.flatten().any(|e| holds_files(&e.path())))
        .unwrap_or(true)
}
