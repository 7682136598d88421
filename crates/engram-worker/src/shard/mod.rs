//! One shard: a growing segment (DiskANN's in-memory index) behind a WAL,
//! plus the sealed DiskANN segments it has produced or been given.
//!
//! Writes are ordered by the WAL mutex: append and fsync, then apply to the
//! in-memory state, then acknowledge. Searches only take the state's read
//! lock, so they continue while a write waits for its fsync, and a delete is
//! visible to every search that starts after it is acknowledged.
//!
//! Rewrites (`rewrite.rs`) change which files hold the rows: sealing the
//! growing segment at its threshold, attaching a bulk-built segment,
//! merging sealed segments (the tiered merge policy; dropping deleted rows
//! is the same rewrite) and rewriting the WAL without dead vectors. Each
//! ends by rewriting `shard.bin` (the list of segments and the current
//! WAL), which is the commit point; files it does not name are leftovers of
//! an interrupted rewrite and are removed when the shard opens.
//!
//! A shard opened as a resharding target (`receiving.rs`) remembers the
//! ids deleted while rows are copied in, so a copy can never bring back a
//! row deleted after it was read.

mod erasure;
#[cfg(test)]
mod erasure_tests;
mod files;
mod history;
#[cfg(test)]
mod history_tests;
mod receiving;
mod rewrite;
mod scan;
mod shipping;
#[cfg(test)]
mod shipping_tests;
mod state;
#[cfg(test)]
mod tests;
mod types;

use fs_err as fs;
use parking_lot::{Mutex, RwLock};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use engram_core::Metric;
use engram_core::ScoredId;
use engram_core::config::IndexParams;
use engram_core::topk::merge_sorted;
use engram_index::disk::codebook::CodebookStore;
use engram_index::{
    GrowingSegment, MutableSegmentIndex, SealedSegment, SearchTuning, SegmentCache, SegmentIndex,
};
use engram_store::{ItemTable, Wal, WalOp, WalRecord, WritePosition, checksummed};

pub use self::erasure::holds_files;
use self::files::{
    CODEBOOKS_DIR, ITEMS_FILE, OUTGOING_DIR, SEGMENTS_DIR, SHARD_FILE, STAGING_DIR, ShardManifest,
    remove_leftovers, segment_bytes, wal_path,
};
pub use self::history::{HistoryDelta, HistoryPin, Stamp};
pub use self::shipping::{ShippedSegment, ShippingSnapshot};
use self::state::{ShardState, neighbor};
pub use self::types::{
    AttachedSegment, Compaction, ItemView, Presence, ScannedItem, SearchFilter, SegmentStats,
    ShardDeletion, ShardHits,
};
use crate::error::{Result, WorkerError};

struct WalState {
    wal: Wal,
    manifest: ShardManifest,
    /// The position of the last write applied (see `history.rs`); `None`
    /// while unknown.
    position: Option<WritePosition>,
}

pub struct Shard {
    number: u32,
    dir: PathBuf,
    dim: usize,
    metric: Metric,
    params: IndexParams,
    /// Where this node's cache budget serves sealed segments from.
    cache: Arc<SegmentCache>,
    wal: Mutex<WalState>,
    state: RwLock<ShardState>,
    /// One merge or compaction at a time; writes and seals go on meanwhile.
    rewriting: Mutex<()>,
    /// Full transfers reading on from a position (see
    /// [`Shard::pin_history`]): the WAL is not rotated meanwhile.
    history_pins: Arc<std::sync::atomic::AtomicUsize>,
    /// The PQ codebook every seal and merge of this shard encodes with
    /// (trained at the first seal, retrained on growth or drift).
    codebooks: CodebookStore,
}

impl Shard {
    /// Whether `dir` holds a shard's files (it was opened before).
    pub fn exists(dir: &Path) -> bool {
        dir.join(SHARD_FILE).exists()
    }

    /// [`Self::open_cached`] with every sealed segment served from disk.
    pub fn open(
        dir: &Path,
        number: u32,
        dim: usize,
        metric: Metric,
        params: &IndexParams,
    ) -> Result<Shard> {
        Self::open_cached(dir, number, dim, metric, params, SegmentCache::disk_only())
    }

    /// Opens the shard stored in `dir` (creating it if new): verifies and
    /// opens its sealed segments (adding them to `cache`, whose budget the
    /// caller shares out with `SegmentCache::rebalance` once it has opened
    /// what it opens), loads their item tables, replays the WAL.
    pub fn open_cached(
        dir: &Path,
        number: u32,
        dim: usize,
        metric: Metric,
        params: &IndexParams,
        cache: Arc<SegmentCache>,
    ) -> Result<Shard> {
        fs::create_dir_all(dir.join(SEGMENTS_DIR))?;
        let manifest_path = dir.join(SHARD_FILE);
        let manifest: ShardManifest = if manifest_path.exists() {
            let bytes = checksummed::read_verified(&manifest_path)?;
            serde_json::from_slice(&bytes).map_err(|e| {
                WorkerError::Store(engram_store::StoreError::Corrupted {
                    path: manifest_path.clone(),
                    offset: 0,
                    reason: e.to_string(),
                })
            })?
        } else {
            // Every copy of a shard starts empty at the same place.
            let manifest = ShardManifest {
                position: Some(WritePosition::default()),
                ..ShardManifest::default()
            };
            checksummed::write_atomic(
                &manifest_path,
                &serde_json::to_vec(&manifest).expect("serialisable"),
            )?;
            manifest
        };
        remove_leftovers(dir, &manifest)?;
        for leftover in [STAGING_DIR, OUTGOING_DIR] {
            let leftover = dir.join(leftover);
            if leftover.exists() {
                fs::remove_dir_all(&leftover)?;
            }
        }

        let mut state = ShardState {
            growing: GrowingSegment::new(dim, metric, params)?,
            sealed: Vec::new(),
            items: ItemTable::default(),
            thumbnails: std::collections::HashMap::new(),
            wal_dead: HashSet::new(),
            receiving: manifest
                .receiving
                .then(|| manifest.tombstones.iter().copied().collect()),
        };
        // A later segment's rows supersede earlier versions of their ids
        // (attached segments; see `attach`), whether or not the earlier
        // segments' delete bitmaps were written before a crash.
        for name in &manifest.segments {
            let segment_dir = dir.join(SEGMENTS_DIR).join(name);
            let segment = SealedSegment::open(&segment_dir, params, false)?;
            let items = engram_store::read_items(&segment_dir.join(ITEMS_FILE))?;
            state.add_sealed(Arc::new(segment), items);
        }
        let (wal, records) = Wal::open(&wal_path(dir, manifest.wal_generation))?;
        let mut position = manifest.position;
        for record in &records {
            state.apply(&record.ops)?;
            position = record.position;
        }
        // Shared out by the caller once every shard it opens is open.
        for segment in &state.sealed {
            cache.add(segment);
        }
        tracing::debug!(
            shard = number,
            sealed = state.sealed.len(),
            records = records.len(),
            items = state.items.len(),
            "shard opened"
        );
        Ok(Shard {
            number,
            dir: dir.to_path_buf(),
            dim,
            metric,
            params: params.clone(),
            cache,
            wal: Mutex::new(WalState {
                wal,
                manifest,
                position,
            }),
            state: RwLock::new(state),
            rewriting: Mutex::new(()),
            history_pins: Arc::default(),
            codebooks: CodebookStore::open(&dir.join(CODEBOOKS_DIR))?,
        })
    }

    pub fn number(&self) -> u32 {
        self.number
    }

    /// Makes `ops` durable, then visible. All or nothing. Seals the growing
    /// segment afterwards if it reached the threshold.
    ///
    /// A failed seal does not fail the write: the rows are durable in the
    /// WAL and served from the growing segment, and the next write tries
    /// the seal again. (Failing it would tell a primary not to replicate,
    /// or a replica to give up its copy, over a write that happened.)
    pub fn write(&self, ops: WalRecord) -> Result<()> {
        self.write_at(ops, Stamp::Next)
    }

    /// [`Self::write`] at the history position `stamp` gives.
    pub fn write_at(&self, ops: WalRecord, stamp: Stamp) -> Result<()> {
        if self.write_unsealed_at(ops, stamp)?
            && let Err(error) = self.seal()
        {
            tracing::error!(shard = self.number, %error, "sealing the growing segment failed; its rows stay in the WAL, and the next write tries again");
        }
        Ok(())
    }

    /// [`Self::write`] without the seal; returns whether the growing segment
    /// has reached the seal threshold. For callers on rayon threads: DiskANN's
    /// builder blocks on a runtime and uses rayon inside, so a seal started
    /// from a rayon task could be re-entered by work stealing.
    pub fn write_unsealed(&self, ops: WalRecord) -> Result<bool> {
        self.write_unsealed_at(ops, Stamp::Next)
    }

    /// [`Self::write_unsealed`] at the history position `stamp` gives.
    pub fn write_unsealed_at(&self, ops: WalRecord, stamp: Stamp) -> Result<bool> {
        if ops.is_empty() {
            return Ok(false);
        }
        self.check_dimensions(&ops)?;
        let mut wal = self.wal.lock();
        self.append_locked(&mut wal, stamp, &ops)?;
        let mut state = self.state.write();
        state.apply(&ops)?;
        Ok(state.growing.len() >= self.params.seal_threshold)
    }

    /// Refuses before logging what could not be applied: a logged record
    /// that fails to apply would also fail on every replay.
    fn check_dimensions(&self, ops: &WalRecord) -> Result<()> {
        for op in ops {
            if let WalOp::Upsert { vector, .. } = op
                && vector.len() != self.dim
            {
                return Err(engram_index::IndexError::DimensionMismatch {
                    expected: self.dim,
                    actual: vector.len(),
                }
                .into());
            }
        }
        Ok(())
    }

    /// Deletes the live items chosen by `select` (which sees the item
    /// table); returns how many were deleted. Selection and logging happen
    /// under the WAL lock, so no concurrent write slips in between.
    pub fn delete_where(&self, select: impl FnOnce(&ItemTable) -> Vec<u64>) -> Result<usize> {
        Ok(self.delete_traced(select)?.map_or(0, |d| d.ids.len()))
    }

    /// [`Self::delete_where`] that also reports where the deleted items were
    /// physically and where the delete sits in the log (`None`: nothing
    /// matched).
    pub fn delete_traced(
        &self,
        select: impl FnOnce(&ItemTable) -> Vec<u64>,
    ) -> Result<Option<ShardDeletion>> {
        self.delete_traced_at(select, Stamp::Next)
    }

    /// [`Self::delete_traced`] at the history position `stamp` gives.
    pub fn delete_traced_at(
        &self,
        select: impl FnOnce(&ItemTable) -> Vec<u64>,
        stamp: Stamp,
    ) -> Result<Option<ShardDeletion>> {
        let mut wal = self.wal.lock();
        let (ids, vectors_in_wal, segments) = {
            let state = self.state.read();
            let ids = select(&state.items);
            let in_growing = ids.iter().any(|id| state.growing.contains(*id));
            let segments: Vec<String> = state
                .sealed
                .iter()
                .filter(|s| ids.iter().any(|id| s.holds_row(*id)))
                .map(|s| s.name())
                .collect();
            (ids, in_growing, segments)
        };
        if ids.is_empty() {
            return Ok(None);
        }
        let ops: WalRecord = ids.iter().map(|id| WalOp::Delete { id: *id }).collect();
        self.append_locked(&mut wal, stamp, &ops)?;
        self.state.write().apply(&ops)?;
        Ok(Some(ShardDeletion {
            shard: self.number,
            ids,
            wal_generation: wal.manifest.wal_generation,
            wal_offset: wal.wal.len_bytes(),
            vectors_in_wal,
            segments,
        }))
    }

    /// Deletes those of `ids` that are live here.
    pub fn delete_ids(&self, ids: &[u64]) -> Result<usize> {
        self.delete_where(|items| {
            ids.iter()
                .copied()
                .filter(|id| items.contains(*id))
                .collect::<HashSet<_>>()
                .into_iter()
                .collect()
        })
    }

    /// The `k` nearest items to each query over all segments, skipping
    /// `exclude`. A sealed segment whose search fails (an I/O error on its
    /// disk index) is left out and counted in [`ShardHits::failed_segments`]
    /// so that callers can mark the answer partial instead of silently
    /// serving fewer neighbours.
    pub fn search_batch(
        &self,
        queries: &[&[f32]],
        k: usize,
        filter: &SearchFilter,
        tuning: SearchTuning,
    ) -> ShardHits {
        let state = self.state.read();
        let items = &state.items;
        let filter = |id: u64| {
            !filter.exclude.contains(&id)
                && filter.admit.as_ref().is_none_or(|admit| {
                    items
                        .get(id)
                        .is_some_and(|r| admit.admits(id, items.label_of(r), r.source.as_deref()))
                })
        };
        let mut failed = vec![false; state.sealed.len()];
        let lists = queries
            .iter()
            .map(|query| {
                let mut lists: Vec<Vec<ScoredId>> = Vec::with_capacity(1 + state.sealed.len());
                lists.push(state.growing.search_tuned(query, k, &filter, tuning));
                for (n, segment) in state.sealed.iter().enumerate() {
                    if failed[n] {
                        continue;
                    }
                    match segment.try_search_tuned(query, k, &filter, tuning) {
                        Ok(hits) => lists.push(hits),
                        Err(error) => {
                            tracing::error!(shard = self.number, segment = %segment.dir().display(), %error, "sealed segment search failed; the answer is partial");
                            failed[n] = true;
                        }
                    }
                }
                merge_sorted(lists, k)
                    .into_iter()
                    .filter_map(|hit| neighbor(&state.items, hit))
                    .collect()
            })
            .collect();
        ShardHits {
            lists,
            failed_segments: failed.iter().filter(|f| **f).count(),
        }
    }

    pub fn get(&self, id: u64) -> Option<ItemView> {
        let state = self.state.read();
        let record = state.items.get(id)?;
        Some(ItemView {
            id,
            label: state.items.label_of(record).clone(),
            weight: record.weight,
            source: record.source.clone(),
        })
    }

    /// The thumbnail of a live `id`, if it was added as an image: from the
    /// growing segment's rows, or read from the `thumbnails.bin` of the
    /// sealed segment that holds its live row.
    pub fn thumbnail(&self, id: u64) -> Result<Option<Arc<[u8]>>> {
        let segment = {
            let state = self.state.read();
            if state.growing.contains(id) {
                return Ok(state.thumbnails.get(&id).cloned());
            }
            match state.sealed.iter().rev().find(|s| s.contains(id)) {
                Some(segment) => segment.clone(),
                None => return Ok(None),
            }
        };
        let path = segment.dir().join(engram_store::THUMBNAILS_FILE);
        match engram_store::ThumbnailFile::open(&path)? {
            Some(file) => Ok(file.get(id)?),
            None => Ok(None),
        }
    }

    /// The stored vector of a live `id` (growing segment, or read back
    /// from its sealed segment's sectors).
    pub fn get_vector(&self, id: u64) -> Result<Option<Vec<f32>>> {
        let state = self.state.read();
        if let Some(v) = state.growing.get(id) {
            return Ok(Some(v.to_vec()));
        }
        for segment in &state.sealed {
            if let Some(v) = segment.vector(id)? {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }

    /// `(deleted, total)` rows of the sealed segments: the tombstones that
    /// compaction would reclaim.
    pub fn tombstones(&self) -> (u64, u64) {
        self.state.read().sealed.iter().fold((0, 0), |(d, t), s| {
            let rows = s.rows() as u64;
            let live = s.len() as u64;
            (d + rows - live, t + rows)
        })
    }

    pub fn len(&self) -> usize {
        self.state.read().items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The largest deleted fraction among the sealed segments (0 if none).
    pub fn max_deleted_fraction(&self) -> f64 {
        self.state
            .read()
            .sealed
            .iter()
            .map(|s| s.deleted_fraction())
            .fold(0.0, f64::max)
    }

    /// Counts of this shard: items, labels, sealed segments and their rows,
    /// tombstones and bytes, and each segment with where it is served from.
    pub fn stats(&self) -> crate::wire::ShardStats {
        let (tombstones, sealed_rows) = self.tombstones();
        let segments: Vec<SegmentStats> = self
            .sealed()
            .iter()
            .map(|s| SegmentStats {
                name: s.name(),
                rows: s.rows() as u64,
                deleted: s.deleted_rows() as u64,
                bytes: segment_bytes(s),
                served_from: s.residency(),
            })
            .collect();
        crate::wire::ShardStats {
            shard: self.number(),
            items: self.len() as u64,
            labels: self
                .label_counts()
                .into_iter()
                .map(|(l, n)| (l.to_string(), n))
                .collect(),
            tombstones,
            sealed_rows,
            sealed_segments: segments.len(),
            sealed_bytes: segments.iter().map(|s| s.bytes).sum(),
            growing_rows: self.state.read().growing.len() as u64,
            segments,
        }
    }

    /// The sealed segments served now, oldest first.
    pub fn sealed(&self) -> Vec<Arc<SealedSegment>> {
        self.state.read().sealed.clone()
    }

    /// Number of sealed segments.
    pub fn sealed_segments(&self) -> usize {
        self.state.read().sealed.len()
    }

    /// `(label, live items)` pairs.
    pub fn label_counts(&self) -> Vec<(Arc<str>, u64)> {
        self.state
            .read()
            .items
            .vocabulary()
            .counts()
            .map(|(l, c)| (l.clone(), c))
            .collect()
    }

    pub fn wal_bytes(&self) -> u64 {
        self.wal.lock().wal.len_bytes()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
