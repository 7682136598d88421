//! Rewrites of a shard's files: sealing the growing segment, attaching a
//! bulk-built segment, merging sealed segments (tombstone compaction is the
//! same rewrite, `engram_core::merge_policy`), and rewriting the WAL
//! without the vectors of rows it no longer serves. Each commits by
//! rewriting `shard.bin`.

use fs_err as fs;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use engram_core::merge_policy::{self, CompactOptions, SegmentSize};
use engram_index::activity::{self, BuildKind};
use engram_index::{GrowingSegment, MutableSegmentIndex, SealedSegment, SegmentIndex};
use engram_store::{StoredItem, Wal, WalRecord, WritePosition, checksummed};

use super::files::{ITEMS_FILE, SEGMENTS_DIR, SHARD_FILE, STAGING_DIR, ShardManifest};
use super::files::{move_dir, segment_bytes, wal_path};
use super::state::ShardState;
use super::{AttachedSegment, Compaction, Shard, Stamp, WalState};
use crate::error::{Result, WorkerError};

/// Most merge plans one maintenance run applies (each plan's merges make
/// the next plan smaller; deletes arriving meanwhile could otherwise keep
/// a run going).
const MAX_PLANS_PER_RUN: usize = 32;

impl Shard {
    /// Seals the growing segment now, whatever its size (no-op when empty).
    pub fn seal(&self) -> Result<()> {
        let mut wal = self.wal.lock();
        self.seal_locked(&mut wal)
    }

    pub(super) fn seal_locked(&self, wal: &mut WalState) -> Result<()> {
        if self.seal_deferred(self.state.read().growing.len()) {
            tracing::debug!(
                shard = self.number,
                "seal deferred: a transfer reads on from the WAL"
            );
            return Ok(());
        }
        let (ids, vectors, items, mut thumbnails) = {
            let state = self.state.read();
            let (ids, vectors) = state.growing.live_rows();
            let items = state.stored_items(&ids);
            let thumbnails: Vec<(u64, Arc<[u8]>)> = ids
                .iter()
                .filter_map(|id| Some((*id, state.thumbnails.get(id)?.clone())))
                .collect();
            (ids, vectors, items, thumbnails)
        };
        if ids.is_empty() {
            return Ok(());
        }
        let name = format!("{:08}", wal.manifest.next_segment);
        let segment_dir = self.unused_segment_dir(&name)?;
        tracing::info!(shard = self.number, segment = %name, rows = ids.len(), "sealing growing segment");
        self.build_segment(BuildKind::Seal, &segment_dir, &ids, &vectors)?;
        engram_store::write_row_tables(&segment_dir, &items, &mut thumbnails)?;
        let segment = Arc::new(SealedSegment::open(&segment_dir, &self.params, false)?);
        let mut manifest = wal.manifest.clone();
        manifest.segments.push(name);
        manifest.next_segment += 1;
        self.rotate_wal(wal, manifest, |state| {
            state.growing = GrowingSegment::new(self.dim, self.metric, &self.params)?;
            // Every growing row is now in the segment, its picture too.
            state.thumbnails.clear();
            state.sealed.push(segment.clone());
            Ok(())
        })?;
        self.cache.register(&segment);
        Ok(())
    }

    /// Builds a sealed segment of `ids` and their `vectors` into `dir`,
    /// encoded with the shard's codebook (trained or retrained first when
    /// [`CodebookStore::for_rows`] says so), and counts the build.
    fn build_segment(
        &self,
        kind: BuildKind,
        dir: &Path,
        ids: &[u64],
        vectors: &[f32],
    ) -> Result<()> {
        activity::timed(kind, ids.len(), || {
            let codebook = self.codebooks.for_rows(vectors, self.dim, &self.params)?;
            SealedSegment::build_with(
                dir,
                ids,
                vectors,
                self.dim,
                self.metric,
                &self.params,
                &codebook,
            )
        })?;
        Ok(())
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
        self.attach_at(staged, Stamp::Next)
    }

    /// [`Self::attach`] as the write at the history position `stamp` gives.
    /// Its rows reach no WAL record, so the new WAL starts at that position:
    /// a copy behind it cannot catch up by delta.
    pub fn attach_at(&self, staged: &Path, stamp: Stamp) -> Result<AttachedSegment> {
        let mut wal = self.wal.lock();
        let position = stamp.resolve(self.number, wal.position)?;
        let name = format!("{:08}", wal.manifest.next_segment);
        let segment_dir = self.dir.join(SEGMENTS_DIR).join(&name);
        if segment_dir.exists() {
            fs::remove_dir_all(&segment_dir)?;
        }
        move_dir(staged, &segment_dir)?;
        let opened = self.open_attachable(&segment_dir, &Default::default());
        let (segment, items) = match opened {
            Ok(opened) => opened,
            Err(e) => {
                let _ = fs::remove_dir_all(&segment_dir);
                return Err(e);
            }
        };
        let superseded: HashSet<u64> = items.iter().map(|i| i.id).collect();
        let carried = self.state.read().growing_rows_except(&superseded, self.dim);
        let mut manifest = wal.manifest.clone();
        manifest.segments.push(name.clone());
        manifest.next_segment += 1;
        let rows = items.len();
        let segment = Arc::new(segment);
        let mut replaced = 0usize;
        self.rotate_wal_carrying(&mut wal, manifest, position, &carried, |state| {
            for item in &items {
                state.thumbnails.remove(&item.id);
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
        drop(wal);
        self.cache.register(&segment);
        tracing::info!(shard = self.number, segment = %name, rows, replaced, "attached a sealed segment");
        Ok(AttachedSegment {
            name,
            rows,
            replaced,
        })
    }

    /// Opens a segment about to be attached and checks that it fits this
    /// shard: dimension, metric, and an item for every row.
    pub(super) fn open_attachable(
        &self,
        dir: &Path,
        arrived: &engram_index::ArrivedFiles,
    ) -> Result<(SealedSegment, Vec<StoredItem>)> {
        // The segment's files and its item table are read side by side
        // (each about a tenth of a second for 1M rows), on a thread of
        // its own: rayon's pool may be busy with a seal for seconds.
        let started = std::time::Instant::now();
        let (segment, items) = std::thread::scope(|scope| {
            let items = scope.spawn(|| engram_store::read_items(&dir.join(ITEMS_FILE)));
            let segment = SealedSegment::open_arrived(dir, &self.params, false, arrived);
            let items = items.join().expect("reading an item table does not panic");
            (segment, items)
        });
        let (segment, items) = (segment?, items?);
        tracing::debug!(
            segment = %dir.display(),
            rows = segment.rows(),
            seconds = started.elapsed().as_secs_f64(),
            "opened a segment to attach"
        );
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
        if items.len() != segment.rows() || !segment.holds_rows(items.iter().map(|i| i.id)) {
            return Err(WorkerError::Invalid(format!(
                "segment {}: its item table does not match its {} rows",
                dir.display(),
                segment.rows()
            )));
        }
        Ok((segment, items))
    }

    /// Brings the shard's files in line with the merge policy and drops
    /// deleted rows: merges full tiers of sealed segments, rewrites every
    /// segment with more than `min_deleted_fraction` of its rows deleted,
    /// and rewrites the WAL without the vectors of rows it no longer
    /// serves when their share passes the same bound. With 0 nothing
    /// deleted is left in any file of the shard. The growing segment is
    /// sealed first when `seal` says so for its size (see [`SealGrowing`]);
    /// a small one is left growing.
    ///
    /// Merges build outside the write lock (writes go on); what was deleted
    /// or replaced meanwhile is marked deleted in the result at commit.
    ///
    /// `retrain_codebook` makes the next segment build (this run's seal or
    /// merge, or a later one) train a new PQ codebook on its rows.
    pub fn compact(&self, options: CompactOptions) -> Result<Compaction> {
        let CompactOptions {
            min_deleted_fraction,
            seal,
            retrain_codebook,
        } = options;
        if retrain_codebook {
            self.codebooks.request_retraining();
        }
        let policy = self.params.merge_policy(self.dim, min_deleted_fraction);
        let growing = self.state.read().growing.len() as u64;
        if seal.seals(growing, &policy) {
            self.seal()?;
        }
        let _one = self.rewriting.lock();
        let mut done = Compaction::default();
        for _ in 0..MAX_PLANS_PER_RUN {
            let sealed = self.sealed();
            let sizes: Vec<SegmentSize> = sealed
                .iter()
                .map(|s| SegmentSize {
                    rows: s.rows() as u64,
                    live: s.len() as u64,
                })
                .collect();
            let groups = merge_policy::plan(&sizes, &policy);
            if groups.is_empty() {
                break;
            }
            for group in groups {
                let members: Vec<Arc<SealedSegment>> =
                    group.iter().map(|i| sealed[*i].clone()).collect();
                done = done + self.merge(&members)?;
            }
        }
        done = done + self.rewrite_wal(min_deleted_fraction)?;
        if done != Compaction::default() {
            self.cache.rebalance();
        }
        Ok(done)
    }

    /// Rewrites `group` (sealed segments of this shard) as one segment of
    /// their live rows, or drops them when none is live.
    pub(super) fn merge(&self, group: &[Arc<SealedSegment>]) -> Result<Compaction> {
        // Sealed files are immutable: reading them needs no lock. A row
        // deleted or replaced from here on is caught at the commit.
        let mut ids = Vec::new();
        let mut vectors = Vec::new();
        let mut thumbnails = Vec::new();
        for segment in group {
            let (more_ids, more_vectors) = segment.live_rows()?;
            ids.extend(more_ids);
            vectors.extend(more_vectors);
            // The live rows' pictures go with them; the deleted rows' stay
            // behind, to be removed with this segment.
            let path = segment.dir().join(engram_store::THUMBNAILS_FILE);
            if let Some(file) = engram_store::ThumbnailFile::open(&path)? {
                thumbnails.extend(file.read_where(|id| segment.contains(id))?);
            }
        }
        let items = self.state.read().stored_items(&ids);
        let reclaimed: u64 = group.iter().map(|s| segment_bytes(s)).sum();
        let built = if ids.is_empty() {
            None
        } else {
            let name = {
                let mut wal = self.wal.lock();
                let name = format!("{:08}", wal.manifest.next_segment);
                wal.manifest.next_segment += 1;
                name
            };
            let dir = self.unused_segment_dir(&name)?;
            tracing::info!(shard = self.number, segment = %name, merged = group.len(), rows = ids.len(), "merging sealed segments");
            self.build_segment(BuildKind::Merge, &dir, &ids, &vectors)?;
            drop(vectors);
            engram_store::write_row_tables(&dir, &items, &mut thumbnails)?;
            Some((
                name,
                Arc::new(SealedSegment::open(&dir, &self.params, false)?),
            ))
        };
        let names: HashSet<String> = group.iter().map(|s| s.name()).collect();
        let last = group.last().map(|s| s.name()).unwrap_or_default();
        let mut wal = self.wal.lock();
        if let Some((_, merged)) = &built {
            for id in &ids {
                if !group.iter().any(|s| s.contains(*id)) {
                    merged.delete(*id);
                }
            }
            merged.persist_deletes()?;
        }
        let mut manifest = wal.manifest.clone();
        manifest.segments = manifest
            .segments
            .iter()
            .filter_map(|name| {
                if *name == last {
                    built.as_ref().map(|(new, _)| new.clone())
                } else if names.contains(name) {
                    None
                } else {
                    Some(name.clone())
                }
            })
            .collect();
        self.commit_manifest(&mut wal, manifest)?;
        {
            let mut state = self.state.write();
            let sealed = std::mem::take(&mut state.sealed);
            state.sealed = sealed
                .into_iter()
                .filter_map(|segment| {
                    let name = segment.name();
                    if name == last {
                        built.as_ref().map(|(_, merged)| merged.clone())
                    } else if names.contains(&name) {
                        None
                    } else {
                        Some(segment)
                    }
                })
                .collect();
        }
        drop(wal);
        // Only the group's own directories: a seal may be building beside.
        for segment in group {
            fs::remove_dir_all(segment.dir())?;
        }
        let added = built.as_ref().map_or(0, |(_, s)| segment_bytes(s));
        if let Some((_, merged)) = &built {
            self.cache.register(merged);
        }
        Ok(Compaction {
            segments_rewritten: group.len(),
            bytes_reclaimed: reclaimed.saturating_sub(added),
            segments_written: usize::from(built.is_some()),
            wals_rewritten: 0,
        })
    }

    /// Starts a new WAL holding only the growing segment's live rows when
    /// the share of rows it holds for nothing (deleted or replaced since it
    /// began) passes `min_dead_fraction`: their vectors leave the disk
    /// without sealing a small growing segment.
    fn rewrite_wal(&self, min_dead_fraction: f64) -> Result<Compaction> {
        self.rewrite_wal_if(|state| {
            let dead = state.wal_dead.len();
            let held = dead + state.growing.len();
            dead > 0 && (dead as f64 / held as f64) > min_dead_fraction
        })
    }

    /// [`Self::rewrite_wal`] when `due` says so of the shard's state (read
    /// under the WAL's lock, so no write changes it meanwhile). Nothing is
    /// rewritten while a transfer pins the WAL's history.
    pub(super) fn rewrite_wal_if(
        &self,
        due: impl FnOnce(&ShardState) -> bool,
    ) -> Result<Compaction> {
        let mut wal = self.wal.lock();
        let carried = {
            let state = self.state.read();
            if self.history_pinned() || !due(&state) {
                return Ok(Compaction::default());
            }
            state.growing_rows_except(&HashSet::new(), self.dim)
        };
        let before = wal.wal.len_bytes();
        let manifest = wal.manifest.clone();
        let position = wal.position;
        self.rotate_wal_carrying(&mut wal, manifest, position, &carried, |_| Ok(()))?;
        let after = wal.wal.len_bytes();
        tracing::info!(
            shard = self.number,
            rows = carried.len(),
            "rewrote the WAL without dead vectors"
        );
        Ok(Compaction {
            bytes_reclaimed: before.saturating_sub(after),
            wals_rewritten: 1,
            ..Compaction::default()
        })
    }

    /// Rewrites `shard.bin` with `manifest` (the commit point of a merge)
    /// and adopts it; the WAL stays.
    pub(super) fn commit_manifest(
        &self,
        wal: &mut WalState,
        mut manifest: ShardManifest,
    ) -> Result<()> {
        manifest.tombstones = self.tombstones_to_keep();
        checksummed::write_atomic(
            &self.dir.join(SHARD_FILE),
            &serde_json::to_vec(&manifest).expect("serialisable"),
        )?;
        wal.manifest = manifest;
        Ok(())
    }

    /// A receiving shard's tombstones, sorted (see `receiving.rs`).
    fn tombstones_to_keep(&self) -> Vec<u64> {
        let state = self.state.read();
        let mut ids: Vec<u64> = state
            .receiving
            .as_ref()
            .map(|t| t.iter().copied().collect())
            .unwrap_or_default();
        ids.sort_unstable();
        ids
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
        let position = wal.position;
        self.rotate_wal_carrying(wal, manifest, position, &Vec::new(), swap)
    }

    /// [`Self::rotate_wal`] whose new WAL starts with `carried` (rows of the
    /// growing segment that must outlive the old WAL), durable before the
    /// commit point, at `position` (where the shard's history stands once
    /// committed: the new WAL's start). A receiving shard's tombstones,
    /// whose delete records leave with the old WAL, are kept in the manifest.
    pub(super) fn rotate_wal_carrying(
        &self,
        wal: &mut WalState,
        mut manifest: ShardManifest,
        position: Option<WritePosition>,
        carried: &WalRecord,
        swap: impl FnOnce(&mut ShardState) -> Result<()>,
    ) -> Result<()> {
        for segment in &self.state.read().sealed {
            segment.persist_deletes()?;
        }
        manifest.wal_generation = wal.manifest.wal_generation + 1;
        manifest.tombstones = self.tombstones_to_keep();
        manifest.position = position;
        let (mut new_wal, records) = Wal::open(&wal_path(&self.dir, manifest.wal_generation))?;
        debug_assert!(records.is_empty());
        if !carried.is_empty() {
            // At the start position: replaying it leaves the history there.
            new_wal.append(position, carried)?;
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
        wal.position = position;
        {
            let mut state = self.state.write();
            swap(&mut state)?;
            state.wal_dead.clear();
        }
        // Only the old WAL: a merge may be building a segment beside, and
        // what interrupted rewrites left is swept when the shard opens.
        fs::remove_file(&old_wal)?;
        Ok(())
    }
}
