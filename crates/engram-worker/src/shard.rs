//! One shard: a growing segment (DiskANN's in-memory index) behind a WAL,
//! plus the sealed DiskANN segments it has produced.
//!
//! Writes are ordered by the WAL mutex: append and fsync, then apply to the
//! in-memory state, then acknowledge. Searches only take the state's read
//! lock, so they continue while a write waits for its fsync, and a delete is
//! visible to every search that starts after it is acknowledged.
//!
//! Sealing: when the growing segment reaches the seal threshold its live
//! rows are built into a sealed segment (with its item table), the delete
//! bitmaps are flushed, a new empty WAL is started and `shard.bin` (the
//! list of segments and the current WAL) is rewritten; that rewrite is the
//! commit point. Files not named by `shard.bin` are leftovers of an
//! interrupted seal or compaction and are removed when the shard opens.

use fs_err as fs;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use engram_core::config::IndexParams;
use engram_core::topk::merge_sorted;
use engram_core::{Admission, Metric, Neighbor, ScoredId};
use engram_index::{
    GrowingSegment, MutableSegmentIndex, SealedSegment, SearchTuning, SegmentIndex,
};
use engram_store::{ItemTable, StoredItem, Wal, WalOp, WalRecord, checksummed};

use crate::error::{Result, WorkerError};

const SHARD_FILE: &str = "shard.bin";
const SEGMENTS_DIR: &str = "segments";
const ITEMS_FILE: &str = engram_store::SEGMENT_ITEMS_FILE;
const STAGING_DIR: &str = "incoming";

/// What `shard.bin` records: the commit point of seals and compactions.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct ShardManifest {
    wal_generation: u64,
    segments: Vec<String>,
    next_segment: u64,
}

struct ShardState {
    growing: GrowingSegment,
    sealed: Vec<Arc<SealedSegment>>,
    items: ItemTable,
}

impl ShardState {
    fn apply(&mut self, record: &WalRecord) -> Result<()> {
        for op in record {
            match op {
                WalOp::Upsert {
                    id,
                    label,
                    weight,
                    source,
                    vector,
                } => {
                    for segment in &self.sealed {
                        segment.delete(*id);
                    }
                    self.growing.upsert(*id, vector)?;
                    self.items.upsert(*id, label, *weight, source.clone());
                }
                WalOp::Delete { id } => {
                    if !self.growing.remove(*id) {
                        for segment in &self.sealed {
                            segment.delete(*id);
                        }
                    }
                    self.items.remove(*id);
                }
            }
        }
        Ok(())
    }

    fn stored_items(&self, ids: &[u64]) -> Vec<StoredItem> {
        ids.iter()
            .filter_map(|id| {
                let record = self.items.get(*id)?;
                Some(StoredItem {
                    id: *id,
                    label: self.items.label_of(record).clone(),
                    weight: record.weight,
                    source: record.source.clone(),
                })
            })
            .collect()
    }
}

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

pub use engram_core::ShardDeletion;

/// What a compaction did: segments rewritten without their deleted rows,
/// and the bytes that left the disk (old files minus their replacements).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compaction {
    pub segments_rewritten: usize,
    pub bytes_reclaimed: u64,
}

impl std::ops::Add for Compaction {
    type Output = Compaction;
    fn add(self, other: Compaction) -> Compaction {
        Compaction {
            segments_rewritten: self.segments_rewritten + other.segments_rewritten,
            bytes_reclaimed: self.bytes_reclaimed + other.bytes_reclaimed,
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

/// Moves a directory: a rename, or a copy and removal when `from` is on
/// another filesystem.
fn move_dir(from: &Path, to: &Path) -> Result<()> {
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent)?;
    }
    if fs::rename(from, to).is_ok() {
        return Ok(());
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
    Ok(())
}

/// Bytes of a sealed segment's files.
fn segment_bytes(segment: &SealedSegment) -> u64 {
    segment.manifest().files.iter().map(|f| f.bytes).sum()
}

/// Where deleted items may still be physically present in one shard.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Presence {
    /// The WAL that holds their vectors has not been retired yet.
    pub wal: bool,
    /// Sealed segments not yet compacted away.
    pub segments: Vec<String>,
}

/// One live item and its vector, as a full scan sees it.
#[derive(Debug, Clone)]
pub struct ScannedItem {
    pub id: u64,
    pub label: Arc<str>,
    pub weight: f32,
    pub source: Option<Arc<str>>,
    pub vector: Vec<f32>,
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

struct WalState {
    wal: Wal,
    manifest: ShardManifest,
}

pub struct Shard {
    number: u32,
    dir: PathBuf,
    dim: usize,
    metric: Metric,
    params: IndexParams,
    wal: Mutex<WalState>,
    state: RwLock<ShardState>,
}

fn wal_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("wal-{generation:08}.log"))
}

impl Shard {
    /// Whether `dir` holds a shard's files (it was opened before).
    pub fn exists(dir: &Path) -> bool {
        dir.join(SHARD_FILE).exists()
    }

    /// Opens the shard stored in `dir`: verifies and opens its sealed
    /// segments, loads their item tables, replays the WAL.
    pub fn open(
        dir: &Path,
        number: u32,
        dim: usize,
        metric: Metric,
        params: &IndexParams,
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
            let manifest = ShardManifest::default();
            checksummed::write_atomic(
                &manifest_path,
                &serde_json::to_vec(&manifest).expect("serialisable"),
            )?;
            manifest
        };
        remove_leftovers(dir, &manifest)?;
        let staging = dir.join(STAGING_DIR);
        if staging.exists() {
            fs::remove_dir_all(&staging)?;
        }

        let mut state = ShardState {
            growing: GrowingSegment::new(dim, metric, params)?,
            sealed: Vec::new(),
            items: ItemTable::default(),
        };
        // A later segment's rows supersede earlier versions of their ids
        // (attached segments; see `attach`), whether or not the earlier
        // segments' delete bitmaps were written before a crash.
        for name in &manifest.segments {
            let segment_dir = dir.join(SEGMENTS_DIR).join(name);
            let segment = SealedSegment::open(&segment_dir, params, false)?;
            for item in engram_store::read_items(&segment_dir.join(ITEMS_FILE))? {
                if segment.contains(item.id) {
                    if state.items.contains(item.id) {
                        for older in &state.sealed {
                            older.delete(item.id);
                        }
                    }
                    state
                        .items
                        .upsert(item.id, &item.label, item.weight, item.source);
                }
            }
            state.sealed.push(Arc::new(segment));
        }
        let (wal, records) = Wal::open(&wal_path(dir, manifest.wal_generation))?;
        for record in &records {
            state.apply(record)?;
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
            wal: Mutex::new(WalState { wal, manifest }),
            state: RwLock::new(state),
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
        if self.write_unsealed(ops)?
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
        if ops.is_empty() {
            return Ok(false);
        }
        // Refuse before logging what could not be applied: a logged record
        // that fails to apply would also fail on every replay.
        for op in &ops {
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
        let mut wal = self.wal.lock();
        wal.wal.append(&ops)?;
        let mut state = self.state.write();
        state.apply(&ops)?;
        Ok(state.growing.len() >= self.params.seal_threshold)
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
        wal.wal.append(&ops)?;
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

    /// Where the items of `deletion` may still be physically present.
    pub fn presence(&self, deletion: &ShardDeletion) -> Presence {
        let wal = self.wal.lock();
        let current: HashSet<&str> = wal.manifest.segments.iter().map(String::as_str).collect();
        Presence {
            wal: deletion.vectors_in_wal && wal.manifest.wal_generation == deletion.wal_generation,
            segments: deletion
                .segments
                .iter()
                .filter(|s| current.contains(s.as_str()))
                .cloned()
                .collect(),
        }
    }

    /// Every live item with its vector, one segment at a time (sealed rows
    /// are read back from their sectors). `f` is called once per segment.
    pub fn scan(&self, f: &mut dyn FnMut(Vec<ScannedItem>) -> Result<()>) -> Result<()> {
        let (growing, sealed) = {
            let state = self.state.read();
            (state.growing.live_rows(), state.sealed.clone())
        };
        self.scan_rows(growing, f)?;
        for segment in sealed {
            self.scan_rows(segment.live_rows()?, f)?;
        }
        Ok(())
    }

    /// Every live item with its vector at one instant: writes to this shard
    /// wait meanwhile (a snapshot's copy of it).
    pub fn snapshot(&self) -> Result<Vec<ScannedItem>> {
        let _writes = self.wal.lock();
        let mut all = Vec::with_capacity(self.len());
        self.scan(&mut |items| {
            all.extend(items);
            Ok(())
        })?;
        Ok(all)
    }

    /// One page of live items with their vectors: the `limit` smallest ids
    /// above `after`, and the cursor of the next page (`None` after the
    /// last). Items written or deleted between pages may be missed or
    /// included; each id is returned at most once over a whole scan.
    pub fn scan_page(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<(Vec<ScannedItem>, Option<u64>)> {
        let ids = self.state.read().items.ids_after(after, limit);
        let next = if ids.len() == limit {
            ids.last().copied()
        } else {
            None
        };
        let mut items = Vec::with_capacity(ids.len());
        for id in ids {
            let (Some(item), Some(vector)) = (self.get(id), self.get_vector(id)?) else {
                continue; // deleted meanwhile
            };
            items.push(ScannedItem {
                id,
                label: item.label,
                weight: item.weight,
                source: item.source,
                vector,
            });
        }
        Ok((items, next))
    }

    fn scan_rows(
        &self,
        (ids, vectors): (Vec<u64>, Vec<f32>),
        f: &mut dyn FnMut(Vec<ScannedItem>) -> Result<()>,
    ) -> Result<()> {
        let items: Vec<ScannedItem> = {
            let state = self.state.read();
            ids.iter()
                .zip(vectors.chunks_exact(self.dim.max(1)))
                .filter_map(|(id, v)| {
                    let record = state.items.get(*id)?;
                    Some(ScannedItem {
                        id: *id,
                        label: state.items.label_of(record).clone(),
                        weight: record.weight,
                        source: record.source.clone(),
                        vector: v.to_vec(),
                    })
                })
                .collect()
        };
        if items.is_empty() {
            return Ok(());
        }
        f(items)
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

    /// Seals the growing segment now, whatever its size (no-op when empty).
    pub fn seal(&self) -> Result<()> {
        let mut wal = self.wal.lock();
        self.seal_locked(&mut wal)
    }

    fn seal_locked(&self, wal: &mut WalState) -> Result<()> {
        let (ids, vectors, items) = {
            let state = self.state.read();
            let (ids, vectors) = state.growing.live_rows();
            let items = state.stored_items(&ids);
            (ids, vectors, items)
        };
        if ids.is_empty() {
            return Ok(());
        }
        let name = format!("{:08}", wal.manifest.next_segment);
        let segment_dir = self.unused_segment_dir(&name)?;
        tracing::info!(shard = self.number, segment = %name, rows = ids.len(), "sealing growing segment");
        SealedSegment::build(
            &segment_dir,
            &ids,
            &vectors,
            self.dim,
            self.metric,
            &self.params,
        )?;
        engram_store::write_items(&segment_dir.join(ITEMS_FILE), &items)?;
        let segment = Arc::new(SealedSegment::open(&segment_dir, &self.params, false)?);
        let mut manifest = wal.manifest.clone();
        manifest.segments.push(name);
        manifest.next_segment += 1;
        self.rotate_wal(wal, manifest, |state| {
            state.growing = GrowingSegment::new(self.dim, self.metric, &self.params)?;
            state.sealed.push(segment);
            Ok(())
        })
    }

    /// The directory for a new segment `name` (one the manifest does not
    /// name yet), emptied of what an earlier attempt that failed before
    /// the commit point (a full disk, a crash) left there.
    fn unused_segment_dir(&self, name: &str) -> Result<PathBuf> {
        let dir = self.dir.join(SEGMENTS_DIR).join(name);
        if dir.exists() {
            tracing::warn!(shard = self.number, segment = %name, "removing what a failed seal or compaction left behind");
            fs::remove_dir_all(&dir)?;
        }
        Ok(dir)
    }

    /// Where segments to be attached are staged: a directory on the shard's
    /// own filesystem (attaching is then a rename), emptied when the shard
    /// opens, outside `segments/` (which seals and compactions sweep).
    pub fn staging_dir(&self) -> PathBuf {
        self.dir.join(STAGING_DIR)
    }

    /// Adds a sealed segment built elsewhere (bulk ingestion): `staged`
    /// holds a complete segment with its item table. Its rows supersede
    /// every older version of their ids, as an upsert would: those are
    /// removed from older sealed segments and from the growing segment.
    ///
    /// The growing segment is not sealed: its surviving rows are carried
    /// into the new WAL, written before `shard.bin` names the segment (the
    /// commit point). A crash before it leaves the shard as it was (the
    /// staged copy is a leftover); after it, opening the shard derives the
    /// superseding from the manifest order again, so the older segments'
    /// delete bitmaps may be written after the commit.
    pub fn attach(&self, staged: &Path) -> Result<AttachedSegment> {
        let mut wal = self.wal.lock();
        let name = format!("{:08}", wal.manifest.next_segment);
        let segment_dir = self.dir.join(SEGMENTS_DIR).join(&name);
        if segment_dir.exists() {
            fs::remove_dir_all(&segment_dir)?;
        }
        move_dir(staged, &segment_dir)?;
        let opened = self.open_attachable(&segment_dir);
        let (segment, items) = match opened {
            Ok(opened) => opened,
            Err(e) => {
                let _ = fs::remove_dir_all(&segment_dir);
                return Err(e);
            }
        };
        let superseded: HashSet<u64> = items.iter().map(|i| i.id).collect();
        let carried: WalRecord = {
            let state = self.state.read();
            let (ids, vectors) = state.growing.live_rows();
            ids.iter()
                .zip(vectors.chunks_exact(self.dim.max(1)))
                .filter(|(id, _)| !superseded.contains(id))
                .filter_map(|(id, vector)| {
                    let record = state.items.get(*id)?;
                    Some(WalOp::Upsert {
                        id: *id,
                        label: state.items.label_of(record).clone(),
                        weight: record.weight,
                        source: record.source.clone(),
                        vector: vector.to_vec(),
                    })
                })
                .collect()
        };
        let mut manifest = wal.manifest.clone();
        manifest.segments.push(name.clone());
        manifest.next_segment += 1;
        let rows = items.len();
        let segment = Arc::new(segment);
        let mut replaced = 0usize;
        self.rotate_wal_carrying(&mut wal, manifest, &carried, |state| {
            for item in &items {
                let mut was_live = state.growing.remove(item.id);
                for older in &state.sealed {
                    was_live |= older.delete(item.id);
                }
                replaced += usize::from(was_live);
                state
                    .items
                    .upsert(item.id, &item.label, item.weight, item.source.clone());
            }
            state.sealed.push(segment.clone());
            Ok(())
        })?;
        for older in &self.state.read().sealed {
            older.persist_deletes()?;
        }
        tracing::info!(shard = self.number, segment = %name, rows, replaced, "attached a sealed segment");
        Ok(AttachedSegment {
            name,
            rows,
            replaced,
        })
    }

    /// Opens a segment about to be attached and checks that it fits this
    /// shard: dimension, metric, and an item for every row.
    fn open_attachable(&self, dir: &Path) -> Result<(SealedSegment, Vec<StoredItem>)> {
        let segment = SealedSegment::open(dir, &self.params, false)?;
        let manifest = segment.manifest();
        if manifest.dim != self.dim || manifest.metric != self.metric {
            return Err(WorkerError::Invalid(format!(
                "segment {} holds {}-d {:?} vectors; shard {} holds {}-d {:?}",
                dir.display(),
                manifest.dim,
                manifest.metric,
                self.number,
                self.dim,
                self.metric
            )));
        }
        let items = engram_store::read_items(&dir.join(ITEMS_FILE))?;
        if items.len() != segment.rows() || items.iter().any(|i| !segment.holds_row(i.id)) {
            return Err(WorkerError::Invalid(format!(
                "segment {}: its item table does not match its {} rows",
                dir.display(),
                segment.rows()
            )));
        }
        Ok((segment, items))
    }

    /// Rewrites every sealed segment with deleted rows without them, and
    /// seals the growing segment, so that deleted vectors are physically
    /// gone from every file of the shard (the WAL included). Returns how
    /// many sealed segments were rewritten.
    pub fn compact(&self, min_deleted_fraction: f64) -> Result<Compaction> {
        let mut wal = self.wal.lock();
        self.seal_locked(&mut wal)?;
        let sealed: Vec<Arc<SealedSegment>> = self.state.read().sealed.clone();
        let mut manifest = wal.manifest.clone();
        let mut replacements: Vec<(usize, Option<Arc<SealedSegment>>)> = Vec::new();
        let (mut reclaimed, mut added) = (0u64, 0u64);
        for (position, segment) in sealed.iter().enumerate() {
            if segment.deleted_fraction() <= min_deleted_fraction
                || segment.deleted_fraction() == 0.0
            {
                continue;
            }
            let name = format!("{:08}", manifest.next_segment);
            manifest.next_segment += 1;
            let new_dir = self.unused_segment_dir(&name)?;
            reclaimed += segment_bytes(segment);
            let replacement = match segment.compact_into(&new_dir, &self.params)? {
                Some(()) => {
                    let compacted = SealedSegment::open(&new_dir, &self.params, false)?;
                    let old_items = engram_store::read_items(&segment.dir().join(ITEMS_FILE))?;
                    let ids: Vec<u64> = old_items
                        .iter()
                        .map(|i| i.id)
                        .filter(|id| compacted.contains(*id))
                        .collect();
                    let items = self.state.read().stored_items(&ids);
                    engram_store::write_items(&new_dir.join(ITEMS_FILE), &items)?;
                    added += segment_bytes(&compacted);
                    manifest.segments[position] = name;
                    Some(Arc::new(compacted))
                }
                None => {
                    manifest.segments[position] = String::new();
                    None
                }
            };
            replacements.push((position, replacement));
        }
        manifest.segments.retain(|n| !n.is_empty());
        let rewritten = replacements.len();
        self.rotate_wal(&mut wal, manifest, |state| {
            for (position, replacement) in replacements.iter().rev() {
                match replacement {
                    Some(segment) => state.sealed[*position] = segment.clone(),
                    None => {
                        state.sealed.remove(*position);
                    }
                }
            }
            Ok(())
        })?;
        Ok(Compaction {
            segments_rewritten: rewritten,
            bytes_reclaimed: reclaimed.saturating_sub(added),
        })
    }

    /// Commits `manifest` with a fresh, empty WAL: flushes delete bitmaps
    /// (the deletes they hold leave with the old WAL), writes the new WAL,
    /// rewrites `shard.bin` (the commit point), then swaps the in-memory
    /// state with `swap` and removes files no longer named.
    fn rotate_wal(
        &self,
        wal: &mut WalState,
        manifest: ShardManifest,
        swap: impl FnOnce(&mut ShardState) -> Result<()>,
    ) -> Result<()> {
        self.rotate_wal_carrying(wal, manifest, &Vec::new(), swap)
    }

    /// [`Self::rotate_wal`] whose new WAL starts with `carried` (rows of the
    /// growing segment that must outlive the old WAL), durable before the
    /// commit point.
    fn rotate_wal_carrying(
        &self,
        wal: &mut WalState,
        mut manifest: ShardManifest,
        carried: &WalRecord,
        swap: impl FnOnce(&mut ShardState) -> Result<()>,
    ) -> Result<()> {
        for segment in &self.state.read().sealed {
            segment.persist_deletes()?;
        }
        manifest.wal_generation = wal.manifest.wal_generation + 1;
        let (mut new_wal, records) = Wal::open(&wal_path(&self.dir, manifest.wal_generation))?;
        debug_assert!(records.is_empty());
        if !carried.is_empty() {
            new_wal.append(carried)?;
        }
        checksummed::write_atomic(
            &self.dir.join(SHARD_FILE),
            &serde_json::to_vec(&manifest).expect("serialisable"),
        )?;
        // Committed: from here on writes must go to the WAL the manifest
        // names, even if what follows fails (a write logged in the old one
        // would be forgotten at the next open).
        let old_wal = wal_path(&self.dir, wal.manifest.wal_generation);
        wal.wal = new_wal;
        wal.manifest = manifest;
        swap(&mut self.state.write())?;
        fs::remove_file(&old_wal)?;
        remove_leftovers(&self.dir, &wal.manifest)?;
        Ok(())
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

    /// Number of sealed segments.
    /// Counts of this shard: items, labels, sealed segments and their rows,
    /// tombstones and bytes.
    pub fn stats(&self) -> crate::wire::ShardStats {
        let (tombstones, sealed_rows) = self.tombstones();
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
            sealed_segments: self.sealed_segments(),
            sealed_bytes: self.sealed().iter().map(|s| segment_bytes(s)).sum(),
        }
    }

    /// The sealed segments served now, oldest first.
    pub fn sealed(&self) -> Vec<Arc<SealedSegment>> {
        self.state.read().sealed.clone()
    }

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

/// Removes segment directories and WAL files that `manifest` does not name.
fn remove_leftovers(dir: &Path, manifest: &ShardManifest) -> Result<()> {
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

fn neighbor(items: &ItemTable, hit: ScoredId) -> Option<Neighbor> {
    let record = items.get(hit.id)?;
    Some(Neighbor {
        id: hit.id,
        label: items.label_of(record).to_string(),
        distance: hit.distance,
        weight: record.weight,
        source: record.source.as_deref().map(str::to_string),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use engram_index::FlatIndex;
    use std::collections::HashMap;

    fn rows(n: usize, dim: usize) -> Vec<Vec<f32>> {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let centres: Vec<Vec<f32>> = (0..8)
            .map(|_| {
                (0..dim)
                    .map(|_| {
                        state = state
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
                    })
                    .collect()
            })
            .collect();
        (0..n)
            .map(|i| {
                let mut v: Vec<f32> = centres[i % 8]
                    .iter()
                    .map(|c| {
                        state = state
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        c + ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
                    })
                    .collect();
                engram_core::vector::normalize_in_place(&mut v).unwrap();
                v
            })
            .collect()
    }

    fn upsert(id: u64, label: &str, vector: &[f32]) -> WalOp {
        WalOp::Upsert {
            id,
            label: label.into(),
            weight: 1.0,
            source: Some(format!("src{}", id % 3).into()),
            vector: vector.to_vec(),
        }
    }

    fn files_contain(dir: &Path, needle: &[u8]) -> bool {
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else if std::fs::read(&path)
                    .unwrap()
                    .windows(needle.len())
                    .any(|w| w == needle)
                {
                    return true;
                }
            }
        }
        false
    }

    /// Small-graph settings that seal every 200 rows.
    /// Small graphs for small test shards, sealing at `seal_threshold` rows.
    fn small_params(seal_threshold: usize) -> IndexParams {
        IndexParams {
            seal_threshold,
            max_degree: 16,
            build_list_size: 32,
            pq_bytes: 4,
            ..IndexParams::default()
        }
    }

    fn sealing_at_200() -> IndexParams {
        IndexParams {
            seal_threshold: 200,
            max_degree: 32,
            build_list_size: 64,
            pq_bytes: 8,
            search_list_size: 64,
            ..IndexParams::default()
        }
    }

    fn bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn seals_survives_reopen_compacts_and_forgets_deleted_vectors() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("shard");
        let dim = 16;
        let params = sealing_at_200();
        let data = rows(500, dim);
        let shard = Shard::open(&dir, 0, dim, Metric::Cosine, &params).unwrap();
        for chunk in (0..500u64).collect::<Vec<_>>().chunks(50) {
            let ops = chunk
                .iter()
                .map(|id| upsert(*id, &format!("c{}", id % 5), &data[*id as usize]))
                .collect();
            shard.write(ops).unwrap();
        }
        assert_eq!(shard.sealed_segments(), 2, "sealed at 200 and 400 rows");
        assert_eq!(shard.len(), 500);

        // Deletes in sealed and growing segments, by id and by label; an
        // upsert moves a sealed row into the growing segment.
        assert_eq!(
            shard
                .delete_ids(&(0..30).chain(450..460).collect::<Vec<_>>())
                .unwrap(),
            40
        );
        let label_c4 = shard.delete_where(|t| t.ids_with_label("c4")).unwrap();
        assert_eq!(label_c4, 100 - 6 - 2);
        shard.write(vec![upsert(31, "moved", &data[31])]).unwrap();
        let mut live: HashMap<u64, String> =
            (0..500u64).map(|id| (id, format!("c{}", id % 5))).collect();
        live.retain(|id, label| !(*id < 30 || (450..460).contains(id) || label == "c4"));
        live.insert(31, "moved".into());
        let deleted: Vec<u64> = (0..500u64).filter(|id| !live.contains_key(id)).collect();

        let check = |shard: &Shard| {
            assert_eq!(shard.len(), live.len());
            assert_eq!(shard.get(31).unwrap().label.as_ref(), "moved");
            assert_eq!(shard.get(100).unwrap().label.as_ref(), "c0");
            assert_eq!(shard.get(100).unwrap().source.as_deref(), Some("src1"));
            assert!(shard.get(3).is_none());
            // Sealed rows are read back from their sectors, exactly.
            assert_eq!(shard.get_vector(100).unwrap().unwrap(), data[100]);
            assert_eq!(shard.get_vector(31).unwrap().unwrap(), data[31]);
            assert!(shard.get_vector(3).unwrap().is_none());
            let mut exact = FlatIndex::new(dim, Metric::Cosine);
            for id in live.keys() {
                exact.upsert(*id, &data[*id as usize]).unwrap();
            }
            let queries: Vec<&[f32]> = data.iter().step_by(7).map(Vec::as_slice).collect();
            let hits = shard.search_batch(
                &queries,
                10,
                &SearchFilter::default(),
                SearchTuning::default(),
            );
            assert_eq!(hits.failed_segments, 0);
            let results = hits.lists;
            let mut hits = 0;
            for (q, result) in queries.iter().zip(&results) {
                assert!(
                    result.iter().all(|n| live.contains_key(&n.id)),
                    "a deleted item was returned"
                );
                assert!(result.iter().all(|n| n.label == live[&n.id]));
                let truth: Vec<u64> = exact
                    .search(q, 10, &|_| true)
                    .iter()
                    .map(|h| h.id)
                    .collect();
                hits += result.iter().filter(|n| truth.contains(&n.id)).count();
            }
            let recall = hits as f64 / (queries.len() * 10) as f64;
            assert!(
                recall >= 0.9,
                "recall@10 over growing + sealed segments: {recall}"
            );
        };
        check(&shard);
        drop(shard);
        let shard = Shard::open(&dir, 0, dim, Metric::Cosine, &params).unwrap();
        check(&shard);

        // Before compaction the deleted vectors are still in some file.
        assert!(
            deleted
                .iter()
                .any(|id| files_contain(&dir, &bytes(&data[*id as usize])))
        );
        let rewritten = shard.compact(0.0).unwrap().segments_rewritten;
        assert_eq!(rewritten, 2, "both sealed segments had deletions");
        check(&shard);
        for id in &deleted {
            assert!(
                !files_contain(&dir, &bytes(&data[*id as usize])),
                "deleted row {id} still on disk after compaction"
            );
        }
        assert!(
            files_contain(&dir, &bytes(&data[100])),
            "live rows are still on disk"
        );
        drop(shard);
        let shard = Shard::open(&dir, 0, dim, Metric::Cosine, &params).unwrap();
        check(&shard);
        assert_eq!(
            shard.sealed_segments(),
            3,
            "two compacted plus the sealed growing segment"
        );
    }

    /// Builds a segment of `ids` with label `label` as bulk ingestion does.
    fn bulk_segment(
        dir: &Path,
        ids: &[u64],
        data: &[Vec<f32>],
        dim: usize,
        label: &str,
        params: &IndexParams,
    ) {
        let vectors: Vec<f32> = ids
            .iter()
            .flat_map(|id| data[*id as usize].clone())
            .collect();
        SealedSegment::build(dir, ids, &vectors, dim, Metric::L2, params).unwrap();
        let items: Vec<StoredItem> = ids
            .iter()
            .map(|id| StoredItem {
                id: *id,
                label: label.into(),
                weight: 2.0,
                source: None,
            })
            .collect();
        engram_store::write_items(&dir.join(ITEMS_FILE), &items).unwrap();
    }

    #[test]
    fn attached_segments_supersede_older_rows_and_survive_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("shard");
        let dim = 16;
        let params = sealing_at_200();
        let old = rows(300, dim);
        let new: Vec<Vec<f32>> = rows(301, dim).into_iter().skip(1).collect();
        let shard = Shard::open(&dir, 0, dim, Metric::L2, &params).unwrap();
        for chunk in (0..250u64).collect::<Vec<_>>().chunks(50) {
            let ops = chunk
                .iter()
                .map(|id| upsert(*id, "old", &old[*id as usize]))
                .collect();
            shard.write(ops).unwrap();
        }
        assert_eq!(
            shard.sealed_segments(),
            1,
            "ids 0..200 sealed, 200..250 growing"
        );

        // Ids 150..230 and 300..320 supersede sealed and growing rows.
        let ids: Vec<u64> = (150..230).chain(250..300).collect();
        let built = tmp.path().join("built");
        bulk_segment(&built, &ids, &new, dim, "new", &params);
        let attached = shard.attach(&built).unwrap();
        assert_eq!((attached.rows, attached.replaced), (130, 80));
        assert!(!built.exists(), "moved into the shard");

        let check = |shard: &Shard| {
            assert_eq!(shard.len(), 300);
            assert_eq!(&*shard.get(100).unwrap().label, "old");
            assert_eq!(&*shard.get(160).unwrap().label, "new");
            assert_eq!(&*shard.get(220).unwrap().label, "new");
            assert_eq!(
                &*shard.get(240).unwrap().label,
                "old",
                "growing rows carried over"
            );
            assert_eq!(shard.get_vector(220).unwrap().unwrap(), new[220]);
            assert_eq!(shard.get_vector(240).unwrap().unwrap(), old[240]);
            let hits = shard.search_batch(
                &[new[170].as_slice()],
                1,
                &SearchFilter::default(),
                SearchTuning::default(),
            );
            assert_eq!(hits.lists[0][0].id, 170);
            let mut seen = HashMap::new();
            shard
                .scan(&mut |items| {
                    for item in items {
                        *seen.entry(item.id).or_insert(0) += 1;
                    }
                    Ok(())
                })
                .unwrap();
            assert_eq!(seen.len(), 300);
            assert!(seen.values().all(|n| *n == 1), "every id once");
        };
        check(&shard);
        drop(shard);
        let shard = Shard::open(&dir, 0, dim, Metric::L2, &params).unwrap();
        check(&shard);
        assert_eq!(shard.sealed_segments(), 2);

        // A segment of the wrong dimension is refused and changes nothing.
        let wrong = tmp.path().join("wrong");
        let narrow: Vec<Vec<f32>> = rows(10, 8);
        bulk_segment(
            &wrong,
            &(0..10).collect::<Vec<_>>(),
            &narrow,
            8,
            "x",
            &params,
        );
        assert!(shard.attach(&wrong).is_err());
        check(&shard);
        // Writes after an attach go on as usual.
        shard.delete_ids(&[160, 240]).unwrap();
        drop(shard);
        let shard = Shard::open(&dir, 0, dim, Metric::L2, &params).unwrap();
        assert!(shard.get(160).is_none() && shard.get(240).is_none());
        assert_eq!(shard.len(), 298);
    }

    #[test]
    fn a_crash_mid_seal_leaves_the_previous_state() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("shard");
        let dim = 8;
        let params = small_params(1_000);
        let data = rows(60, dim);
        let shard = Shard::open(&dir, 0, dim, Metric::Cosine, &params).unwrap();
        shard
            .write(
                (0..60u64)
                    .map(|id| upsert(id, "x", &data[id as usize]))
                    .collect(),
            )
            .unwrap();
        drop(shard);
        // An interrupted seal: a built segment and a new WAL that shard.bin
        // does not name yet.
        let stray = dir.join(SEGMENTS_DIR).join("00000000");
        SealedSegment::build(
            &stray,
            &[1, 2, 3],
            &data[..3].concat(),
            dim,
            Metric::Cosine,
            &params,
        )
        .unwrap();
        std::fs::write(wal_path(&dir, 1), b"ENGRWAL1").unwrap();
        let shard = Shard::open(&dir, 0, dim, Metric::Cosine, &params).unwrap();
        assert_eq!(shard.len(), 60);
        assert_eq!(shard.sealed_segments(), 0);
        assert!(
            !stray.exists() && !wal_path(&dir, 1).exists(),
            "leftovers removed"
        );
    }

    /// What the chaos run's full disks left: a seal that failed after
    /// creating its segment directory. Every later seal of the shard then
    /// failed on "already exists", and so did every write that reached the
    /// threshold, after it was logged.
    #[test]
    fn a_seal_that_failed_midway_neither_blocks_later_seals_nor_fails_writes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("shard");
        let dim = 8;
        let params = small_params(50);
        let data = rows(120, dim);
        let shard = Shard::open(&dir, 0, dim, Metric::Cosine, &params).unwrap();
        let leftover = dir.join(SEGMENTS_DIR).join("00000000");
        std::fs::create_dir_all(&leftover).unwrap();
        std::fs::write(leftover.join("half-written"), b"x").unwrap();
        let upserts = |ids: std::ops::Range<u64>| -> WalRecord {
            ids.map(|id| upsert(id, "x", &data[id as usize])).collect()
        };
        shard.write(upserts(0..60)).unwrap();
        assert_eq!(shard.sealed_segments(), 1);
        assert!(!leftover.join("half-written").exists());
        // A seal that cannot happen (its directory cannot be created) does
        // not fail the logged write; the rows stay served and durable.
        std::fs::remove_dir_all(dir.join(SEGMENTS_DIR)).unwrap();
        std::fs::write(dir.join(SEGMENTS_DIR), b"not a directory").unwrap();
        shard.write(upserts(60..120)).unwrap();
        assert_eq!(shard.sealed_segments(), 1);
        assert!(shard.get(119).is_some());
        drop(shard);
        let (_, records) = Wal::open(&wal_path(&dir, 1)).unwrap();
        let logged: usize = records.iter().map(Vec::len).sum();
        assert_eq!(logged, 60, "the rows of the failed seal stay in the WAL");
    }

    #[test]
    fn an_unreadable_sealed_segment_makes_the_answer_partial_not_silent() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("shard");
        let dim = 8;
        let params = small_params(100);
        let data = rows(150, dim);
        let shard = Shard::open(&dir, 0, dim, Metric::Cosine, &params).unwrap();
        for chunk in (0..150u64).collect::<Vec<_>>().chunks(50) {
            shard
                .write(
                    chunk
                        .iter()
                        .map(|id| upsert(*id, "x", &data[*id as usize]))
                        .collect(),
                )
                .unwrap();
        }
        assert_eq!(shard.sealed_segments(), 1);
        let query = [data[120].as_slice()];
        let healthy =
            shard.search_batch(&query, 5, &SearchFilter::default(), SearchTuning::default());
        assert_eq!(healthy.failed_segments, 0);

        // The disk index loses everything past its header sector while open.
        let segment = dir.join(SEGMENTS_DIR).join("00000000");
        let index_file = std::fs::read_dir(&segment)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.to_string_lossy().ends_with("_disk.index"))
            .unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&index_file)
            .unwrap()
            .set_len(4096)
            .unwrap();
        let hurt = shard.search_batch(&query, 5, &SearchFilter::default(), SearchTuning::default());
        assert_eq!(hurt.failed_segments, 1, "the failure is reported");
        assert_eq!(hurt.lists[0].len(), 5, "the growing segment still answers");
        assert!(hurt.lists[0].iter().all(|n| n.id >= 100));
    }
}
