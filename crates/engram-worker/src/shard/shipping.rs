//! Segment shipping: a copy rebuilt from its primary receives the primary's
//! sealed segment files as they are, instead of their rows, so no graph is
//! rebuilt on the receiving side.
//!
//! The primary takes a [`ShippingSnapshot`] holding the shard's WAL lock:
//! every sealed segment's immutable files hard-linked under `outgoing/`
//! (a merge or compaction that removes a segment meanwhile leaves the links
//! readable), its delete bitmap as it stands in memory, the growing
//! segment's live rows, and the position all of that stands at. The files
//! then travel without any lock; the growing rows follow as ordinary
//! upserts and the writes made since the position as a delta.
//!
//! The copy stages each segment's files outside its shard directory (so a
//! transfer started again after a kill resumes them), and
//! [`Shard::attach_shipped`] adds the staged segments to its freshly reset
//! shard in the primary's order, each with the primary's delete bitmap.

use fs_err as fs;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use engram_index::{ArrivedFiles, SealedSegment};
use engram_store::{WalOp, WritePosition};

use super::Shard;
use super::files::{OUTGOING_DIR, SEGMENTS_DIR, move_dir};
use crate::error::{Result, WorkerError};

/// One sealed segment of a [`ShippingSnapshot`].
#[derive(Debug)]
pub struct ShippedSegment {
    /// Names the segment's content: its name in the primary's shard and
    /// a CRC32 of its manifest (which holds every file's CRC32), so a
    /// staged copy is resumed only by the same segment.
    pub key: String,
    /// Where its files are linked for the transfer.
    pub dir: PathBuf,
    /// Its immutable files and their sizes.
    pub files: Vec<(String, u64)>,
    /// Its delete bitmap at the snapshot's position.
    pub deleted: Vec<u64>,
    pub rows: usize,
    /// The CRC32s its manifest records (every file but the manifest, the
    /// item table and the thumbnails, which carry their own checksums).
    pub crc32s: std::collections::HashMap<String, u32>,
}

/// What a copy rebuilt by segments receives: see the module comment. The
/// linked files are removed when it is dropped.
#[derive(Debug)]
pub struct ShippingSnapshot {
    root: PathBuf,
    pub segments: Vec<ShippedSegment>,
    /// The growing segment's live rows, as upserts.
    pub growing: Vec<WalOp>,
    pub position: Option<WritePosition>,
}

impl Drop for ShippingSnapshot {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.root) {
            tracing::warn!(dir = %self.root.display(), error = %e, "could not remove a shipping snapshot");
        }
    }
}

impl ShippingSnapshot {
    /// Bytes of every segment file it ships.
    pub fn file_bytes(&self) -> u64 {
        self.segments
            .iter()
            .flat_map(|s| s.files.iter().map(|(_, bytes)| bytes))
            .sum()
    }
}

impl Shard {
    /// Takes a [`ShippingSnapshot`] for `transfer` (a name unique among
    /// this shard's transfers in progress).
    pub fn snapshot_for_shipping(&self, transfer: u64) -> Result<ShippingSnapshot> {
        self.link_segments(&transfer.to_string(), true, &|_| true)
    }

    /// The sealed segments whose key `wanted` accepts, linked under
    /// `outgoing/<tag>` as a snapshot without growing rows (what an upload
    /// to object storage reads while merges go on).
    pub fn link_segments_for_upload(
        &self,
        tag: &str,
        wanted: &dyn Fn(&str) -> bool,
    ) -> Result<ShippingSnapshot> {
        self.link_segments(tag, false, wanted)
    }

    /// The keys (see [`ShippedSegment::key`]) of the sealed segments, in
    /// the shard's order.
    pub fn segment_keys(&self) -> Result<Vec<String>> {
        // The list changes under the state's write lock: no need to stop
        // writes (the WAL's lock) to read it.
        let state = self.state.read();
        state.sealed.iter().map(|s| segment_key(s)).collect()
    }

    fn link_segments(
        &self,
        tag: &str,
        growing: bool,
        wanted: &dyn Fn(&str) -> bool,
    ) -> Result<ShippingSnapshot> {
        let root = self.dir.join(OUTGOING_DIR).join(tag);
        if root.exists() {
            fs::remove_dir_all(&root)?;
        }
        fs::create_dir_all(&root)?;
        let mut snapshot = ShippingSnapshot {
            root,
            segments: Vec::new(),
            growing: Vec::new(),
            position: None,
        };
        let wal = self.wal.lock();
        let state = self.state.read();
        for segment in &state.sealed {
            let key = segment_key(segment)?;
            if wanted(&key) {
                snapshot
                    .segments
                    .push(link_segment(segment, key, &snapshot.root)?);
            }
        }
        if growing {
            snapshot.growing = state.growing_rows_except(&HashSet::new(), self.dim);
        }
        snapshot.position = wal.position;
        Ok(snapshot)
    }

    /// Adds the segments staged in `staged` (each a shipped segment's
    /// files and its delete bitmap), in their order, to this copy, which
    /// must hold nothing yet (it was just reset for the transfer): the
    /// directories move into the shard, and `shard.bin` naming them all is
    /// the commit point. Every file is verified against its checksum when
    /// the segment opens (files whose CRC32 was taken as they arrived, the
    /// [`ArrivedFiles`] beside each directory, by that record instead of a
    /// second read); a damaged one fails the whole attach and the shard
    /// stays empty. The copy's position is unknown afterwards (the
    /// transfer's last chunk gives it). Returns the rows attached.
    pub fn attach_shipped(&self, staged: &[(PathBuf, ArrivedFiles)]) -> Result<usize> {
        let mut wal = self.wal.lock();
        {
            let state = self.state.read();
            if !state.sealed.is_empty() || !state.items.is_empty() {
                return Err(WorkerError::Invalid(format!(
                    "shard {}: shipped segments go to an empty copy; this one holds {} items",
                    self.number,
                    state.items.len()
                )));
            }
        }
        let mut manifest = wal.manifest.clone();
        let mut opened = Vec::with_capacity(staged.len());
        for (dir, arrived) in staged {
            let name = format!("{:08}", manifest.next_segment);
            let segment_dir = self.dir.join(SEGMENTS_DIR).join(&name);
            if segment_dir.exists() {
                fs::remove_dir_all(&segment_dir)?;
            }
            // Copied across filesystems, the files are not the ones whose
            // CRC32 was taken on arrival: all of them are read again.
            let renamed = move_dir(dir, &segment_dir)?;
            let none = ArrivedFiles::new();
            match self.open_attachable(&segment_dir, if renamed { arrived } else { &none }) {
                Ok(segment) => opened.push(segment),
                Err(e) => {
                    let _ = fs::remove_dir_all(&segment_dir);
                    for (segment, _) in &opened {
                        let _ = fs::remove_dir_all(segment.dir());
                    }
                    return Err(e);
                }
            }
            manifest.segments.push(name);
            manifest.next_segment += 1;
        }
        self.commit_manifest(&mut wal, manifest)?;
        // The copy holds part of a history now, not the start of one: its
        // position is unknown until the transfer's last chunk sets it.
        wal.wal.append(None, &Vec::new())?;
        wal.position = None;
        let mut rows = 0;
        let adding = std::time::Instant::now();
        let mut state = self.state.write();
        // The copy is empty: room for every shipped item at once.
        state
            .items
            .reserve(opened.iter().map(|(_, items)| items.len()).sum());
        for (segment, items) in opened {
            let segment = Arc::new(segment);
            // Served from disk at once; its share of the cache budget is
            // loaded behind the attach (below), not inside the transfer.
            self.cache.add(&segment);
            let (live, superseded) = state.add_sealed(segment, items);
            rows += live;
            if superseded {
                // Each bitmap was written as shipped; only a superseded
                // row changes the older ones.
                for older in &state.sealed {
                    older.persist_deletes()?;
                }
            }
        }
        drop(state);
        drop(wal);
        tracing::info!(
            shard = self.number,
            segments = staged.len(),
            rows,
            add_seconds = adding.elapsed().as_secs_f64(),
            "attached shipped segments"
        );
        // Loading a large segment's sectors into memory takes seconds; the
        // copy answers from disk meanwhile and its transfer goes on.
        let cache = self.cache.clone();
        std::thread::spawn(move || cache.rebalance());
        Ok(rows)
    }
}

/// Names a sealed segment's content: its name and the CRC32 of its
/// manifest as held in memory (every file's size and CRC32, the build's
/// parameters), so no file is read under the shard's lock.
pub(super) fn segment_key(segment: &SealedSegment) -> Result<String> {
    let manifest = serde_json::to_vec(segment.manifest())
        .map_err(|e| WorkerError::Invalid(format!("segment manifest: {e}")))?;
    Ok(format!(
        "{}-{:08x}",
        segment.name(),
        crc32fast::hash(&manifest)
    ))
}

/// Hard-links `segment`'s immutable files into `root/<name>`.
fn link_segment(segment: &SealedSegment, key: String, root: &Path) -> Result<ShippedSegment> {
    let dir = root.join(segment.name());
    fs::create_dir_all(&dir)?;
    let mut files = Vec::new();
    for file in segment.immutable_files()? {
        let from = segment.dir().join(&file);
        let to = dir.join(&file);
        if fs::hard_link(&from, &to).is_err() {
            fs::copy(&from, &to)?;
        }
        files.push((file.clone(), fs::metadata(&to)?.len()));
    }
    Ok(ShippedSegment {
        key,
        dir,
        files,
        deleted: segment.deleted_words(),
        rows: segment.rows(),
        crc32s: segment
            .manifest()
            .files
            .iter()
            .map(|f| (f.name.clone(), f.crc32))
            .collect(),
    })
}
