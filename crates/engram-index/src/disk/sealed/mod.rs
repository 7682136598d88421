//! A sealed segment: an immutable DiskANN disk index plus Engram's ids,
//! delete bitmap and manifest.
//!
//! Files in the segment directory:
//! - `index_disk.index`: graph and full vectors in 4 KiB sectors (DiskANN);
//! - `index_pq_pivots.bin`, `index_pq_compressed.bin`: PQ table and codes,
//!   loaded into RAM for search (DiskANN);
//! - `ids.bin`: the external u64 id of each DiskANN slot;
//! - `manifest.json`: sizes and CRC32s of all of the above;
//! - `deleted.bin`: the delete bitmap (mutable, CRC32-checked on load).
//!
//! Cosine segments store unit vectors and search by squared L2, which ranks
//! identically; distances are converted back (`1 - cos = l2 / 2`).
//!
//! Where the sectors are read from is the segment's [`Residency`]: the disk
//! (O_DIRECT through io_uring, or `pread`), DiskANN's static cache of the
//! nodes nearest the entry point in front of the disk, or the whole sector
//! file in RAM. The node's cache budget decides it (`crate::disk::cache`)
//! and may change it while searches run: each search uses the searcher it
//! started with.

mod build;
mod deleted;
mod rows;
#[cfg(test)]
pub(crate) mod tests;

use fs_err as fs;
use parking_lot::RwLock;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use diskann_disk::data_model::{AdHoc, CachingStrategy};
use diskann_disk::disk_index_build_parameter::DISK_SECTOR_LEN;
use diskann_disk::search::provider::disk_provider::DiskIndexSearcher;
use diskann_disk::search::provider::disk_vertex_provider_factory::DiskVertexProviderFactory;
use diskann_disk::search::search_mode::SearchMode;
use diskann_disk::storage::disk_index_reader::DiskIndexReader;
use diskann_providers::storage::{
    FileStorageProvider, get_compressed_pq_file, get_disk_index_file, get_pq_pivot_file,
};
use diskann_vector::distance::Metric as DiskMetric;

use engram_core::config::IndexParams;
use engram_core::residency::{Footprint, Residency, node_bytes};
use engram_core::{Metric, ScoredId};

use self::deleted::{DELETED_FILE, is_deleted, read_deleted, write_deleted};
use self::rows::{RowLayout, floats};
use super::manifest::{ArrivedFiles, SegmentManifest};
use super::off_runtime_drop::DropOffRuntime;
use super::reader::{AutoReaderFactory, ReaderKind, SectorImage, direct_io_probe};
use crate::error::{IndexError, Result};
use crate::segment_index::{IdFilter, SearchTuning, SegmentIndex};

const PREFIX: &str = "index";
const IDS_FILE: &str = "ids.bin";

type Searcher =
    DiskIndexSearcher<AdHoc<f32>, DiskVertexProviderFactory<AdHoc<f32>, AutoReaderFactory>>;

/// Search settings that may change per query.
#[derive(Debug, Clone, Copy)]
pub struct SearchSettings {
    pub list_size: u32,
    pub beam_width: usize,
}

/// A searcher and where its reads go.
struct Serving {
    /// Dropped off async threads: it owns a tokio runtime.
    searcher: DropOffRuntime<Searcher>,
    residency: Residency,
    reader_kind: ReaderKind,
}

pub struct SealedSegment {
    dir: PathBuf,
    manifest: SegmentManifest,
    ids: Vec<u64>,
    /// Row id to slot (foldhash, randomly seeded: ids are chosen by
    /// users; SipHash made this the slowest part of opening a segment).
    slot_of: HashMap<u64, u32, foldhash::quality::RandomState>,
    deleted: RwLock<Vec<u64>>,
    live: AtomicUsize,
    /// The PQ table and codes (always in RAM), shared by every searcher.
    pq: DiskIndexReader,
    force_pread: bool,
    serving: RwLock<Arc<Serving>>,
    settings: SearchSettings,
}

fn prefix(dir: &Path) -> String {
    dir.join(PREFIX).display().to_string()
}

impl SealedSegment {
    /// Builds a segment of `ids` with their prepared `vectors` (row-major,
    /// `ids.len() * dim` floats) into `dir`, which must not exist. The build
    /// happens in `<dir>.building` and is renamed into place when complete
    /// and checksummed, so a crash never leaves a half-built segment at `dir`.
    ///
    /// Blocking and CPU-heavy (DiskANN calls `block_on` inside): call it from
    /// a blocking thread, never from async code.
    pub fn build(
        dir: &Path,
        ids: &[u64],
        vectors: &[f32],
        dim: usize,
        metric: Metric,
        params: &IndexParams,
    ) -> Result<()> {
        build::build(dir, ids, vectors, dim, metric, params, None)
    }

    /// [`Self::build`] with rows encoded by a shared `codebook` instead of
    /// one trained for this segment: no k-means, only encoding.
    pub fn build_with(
        dir: &Path,
        ids: &[u64],
        vectors: &[f32],
        dim: usize,
        metric: Metric,
        params: &IndexParams,
        codebook: &crate::disk::codebook::Codebook,
    ) -> Result<()> {
        build::build(dir, ids, vectors, dim, metric, params, Some(codebook))
    }

    /// Opens a built segment after verifying every file against its
    /// manifest; it is served from disk until [`Self::set_residency`] says
    /// otherwise. `force_pread` skips io_uring/O_DIRECT.
    pub fn open(dir: &Path, params: &IndexParams, force_pread: bool) -> Result<SealedSegment> {
        Self::open_arrived(dir, params, force_pread, &ArrivedFiles::new())
    }

    /// [`Self::open`] of a segment some of whose files were checksummed as
    /// they arrived (see [`SegmentManifest::load_verified_arrived`]): those
    /// are not read again, which halves the disk reads of a shipped copy.
    pub fn open_arrived(
        dir: &Path,
        params: &IndexParams,
        force_pread: bool,
        arrived: &ArrivedFiles,
    ) -> Result<SealedSegment> {
        let manifest = SegmentManifest::load_verified_arrived(dir, arrived)?;
        let id_bytes = fs::read(dir.join(IDS_FILE))?;
        let ids: Vec<u64> = id_bytes
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        if ids.len() != manifest.rows {
            return Err(IndexError::Corrupted {
                file: dir.join(IDS_FILE),
                reason: format!("{} ids for {} rows", ids.len(), manifest.rows),
            });
        }
        let slot_of: HashMap<u64, u32, foldhash::quality::RandomState> = ids
            .iter()
            .enumerate()
            .map(|(slot, id)| (*id, slot as u32))
            .collect();
        let deleted = read_deleted(dir, manifest.rows)?;
        let live = manifest.rows
            - deleted
                .iter()
                .map(|w| w.count_ones() as usize)
                .sum::<usize>();
        let prefix = prefix(dir);
        let pq = DiskIndexReader::new(
            get_pq_pivot_file(&prefix),
            get_compressed_pq_file(&prefix),
            &FileStorageProvider,
        )?;
        let serving = serve(dir, &manifest, &pq, Residency::Disk, force_pread)?;
        Ok(SealedSegment {
            dir: dir.to_path_buf(),
            manifest,
            ids,
            slot_of,
            deleted: RwLock::new(deleted),
            live: AtomicUsize::new(live),
            pq,
            force_pread,
            serving: RwLock::new(Arc::new(serving)),
            settings: SearchSettings {
                list_size: params.search_list_size,
                beam_width: params.beam_width,
            },
        })
    }

    /// Serves the segment from `residency` from now on (searches already
    /// running finish on the searcher they started with). Loading the
    /// sector file or the node cache happens here, on the caller's thread.
    pub fn set_residency(&self, residency: Residency) -> Result<()> {
        if self.residency() == residency {
            return Ok(());
        }
        let serving = serve(
            &self.dir,
            &self.manifest,
            &self.pq,
            residency,
            self.force_pread,
        )?;
        tracing::debug!(segment = %self.dir.display(), residency = %residency.describe(), "segment residency changed");
        *self.serving.write() = Arc::new(serving);
        Ok(())
    }

    /// Where the segment is served from now.
    pub fn residency(&self) -> Residency {
        self.serving.read().residency
    }

    /// What the cache planner needs to know about this segment.
    pub fn footprint(&self, key: u64) -> Footprint {
        Footprint {
            key,
            file_bytes: self.sector_file_bytes(),
            rows: self.manifest.rows as u64,
            node_bytes: node_bytes(self.manifest.dim, self.manifest.max_degree),
        }
    }

    fn sector_file_bytes(&self) -> u64 {
        let name = Path::new(&get_disk_index_file(&prefix(&self.dir)))
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        self.manifest
            .files
            .iter()
            .find(|f| f.name == name)
            .map_or(0, |f| f.bytes)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn manifest(&self) -> &SegmentManifest {
        &self.manifest
    }

    /// How sectors are read now (disk readers, or memory).
    pub fn reader_kind(&self) -> ReaderKind {
        self.serving.read().reader_kind
    }

    /// Rows ever stored, deleted or not.
    pub fn rows(&self) -> usize {
        self.manifest.rows
    }

    /// Whether `id` has a row in this segment's files, deleted or not: its
    /// vector's bytes are on disk here until compaction.
    pub fn holds_row(&self, id: u64) -> bool {
        self.slot_of.contains_key(&id)
    }

    /// The slot of row `id`, looked for at slot `hint` first: a segment's
    /// item table lists its rows in slot order, so reading it the i-th
    /// item is at slot i and no map lookup (a cache miss in a map of
    /// millions) is needed.
    fn slot_hinted(&self, hint: usize, id: u64) -> Option<u32> {
        if self.ids.get(hint) == Some(&id) {
            return Some(hint as u32);
        }
        self.slot_of.get(&id).copied()
    }

    /// Whether every one of `ids` (an item table, in its order) is a row
    /// of this segment, deleted or not.
    pub fn holds_rows(&self, ids: impl IntoIterator<Item = u64>) -> bool {
        ids.into_iter()
            .enumerate()
            .all(|(hint, id)| self.slot_hinted(hint, id).is_some())
    }

    /// For each of `ids` (an item table, in its order), whether it is a
    /// live row of this segment: [`SegmentIndex::contains`] for a whole
    /// table at once.
    pub fn live_flags(&self, ids: impl IntoIterator<Item = u64>) -> Vec<bool> {
        let deleted = self.deleted.read();
        ids.into_iter()
            .enumerate()
            .map(|(hint, id)| {
                self.slot_hinted(hint, id)
                    .is_some_and(|slot| !is_deleted(&deleted, slot))
            })
            .collect()
    }

    /// The segment's name (its directory's).
    pub fn name(&self) -> String {
        self.dir
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default()
    }

    /// Rows deleted (their bytes stay until compaction).
    pub fn deleted_rows(&self) -> usize {
        self.manifest
            .rows
            .saturating_sub(self.live.load(Ordering::Relaxed))
    }

    /// Fraction of rows deleted; compaction is worth it past a threshold.
    pub fn deleted_fraction(&self) -> f64 {
        1.0 - self.live.load(Ordering::Relaxed) as f64 / self.manifest.rows.max(1) as f64
    }

    /// Marks `id` deleted in memory; returns whether it was live here.
    /// [`Self::persist_deletes`] makes the bitmap durable.
    pub fn delete(&self, id: u64) -> bool {
        let Some(slot) = self.slot_of.get(&id) else {
            return false;
        };
        let (word, bit) = (*slot as usize / 64, *slot as usize % 64);
        let mut deleted = self.deleted.write();
        if deleted[word] & (1 << bit) != 0 {
            return false;
        }
        deleted[word] |= 1 << bit;
        self.live.fetch_sub(1, Ordering::Relaxed);
        true
    }

    pub fn persist_deletes(&self) -> Result<()> {
        let deleted = self.deleted.read().clone();
        write_deleted(&self.dir, &deleted)
    }

    /// The delete bitmap as it stands in memory (one bit per row), for a
    /// copy of the segment's files shipped elsewhere: the file on disk may
    /// lag behind it until the shard's WAL is retired.
    pub fn deleted_words(&self) -> Vec<u64> {
        self.deleted.read().clone()
    }

    /// The segment's files other than its mutable delete bitmap: what a
    /// copy of it elsewhere needs, with [`Self::deleted_words`] beside.
    pub fn immutable_files(&self) -> Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().to_string();
            if entry.file_type()?.is_file() && name != DELETED_FILE && !name.ends_with(".tmp") {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    /// Writes `words` as the delete bitmap of the segment files in `dir`
    /// (a shipped copy, before it is opened; opening checks the length).
    pub fn write_delete_bitmap(dir: &Path, words: &[u64]) -> Result<()> {
        write_deleted(dir, words)
    }

    /// [`SegmentIndex::search_tuned`] that reports a failed read instead of
    /// hiding it.
    pub fn try_search_tuned(
        &self,
        query: &[f32],
        k: usize,
        filter: IdFilter<'_>,
        tuning: SearchTuning,
    ) -> Result<Vec<ScoredId>> {
        let settings = SearchSettings {
            list_size: tuning.list_size.unwrap_or(self.settings.list_size),
            ..self.settings
        };
        self.search_with(query, k, filter, settings)
    }

    /// Searches with explicit settings (per-query `L` and beam width).
    ///
    /// Deleted and filtered rows are excluded inside the graph search
    /// (DiskANN's inline filter), so `k` admitted rows come back however
    /// many are deleted. When the filter admits so few rows that the graph
    /// walk meets fewer than `k` of them, the admitted rows are scanned
    /// instead (PQ distances over the codes in RAM, the best `L` re-ranked
    /// at full precision): bounded by the segment's size, never a search
    /// that widens without end.
    pub fn search_with(
        &self,
        query: &[f32],
        k: usize,
        filter: IdFilter<'_>,
        settings: SearchSettings,
    ) -> Result<Vec<ScoredId>> {
        let live = self.live.load(Ordering::Relaxed);
        if k == 0 || live == 0 {
            return Ok(Vec::new());
        }
        let serving = self.serving.read().clone();
        let deleted = self.deleted.read();
        let ids = &self.ids;
        let accept = |slot: &u32| {
            (*slot as usize) < ids.len()
                && !is_deleted(&deleted, *slot)
                && filter(ids[*slot as usize])
        };
        let k = k.min(live);
        let list_size = settings.list_size.max(k as u32);
        let result = serving.searcher.search(
            query,
            k as u32,
            list_size,
            Some(settings.beam_width),
            SearchMode::inline_filter(accept, None),
        )?;
        let mut reads = u64::from(result.stats.query_statistics.total_io_operations);
        let mut hits = self.scored(&result, &deleted, filter);
        if hits.len() < k {
            let scanned = serving.searcher.search(
                query,
                k as u32,
                list_size,
                Some(settings.beam_width),
                SearchMode::flat_filtered(accept),
            )?;
            reads += u64::from(scanned.stats.query_statistics.total_io_operations);
            let more = self.scored(&scanned, &deleted, filter);
            if more.len() > hits.len() {
                hits = more;
            }
        }
        crate::activity::record_search(serving.residency, reads);
        Ok(hits)
    }

    /// The admitted live rows of a DiskANN result, best first.
    fn scored<A>(
        &self,
        result: &diskann_disk::search::provider::disk_provider::SearchResult<A>,
        deleted: &[u64],
        filter: IdFilter<'_>,
    ) -> Vec<ScoredId> {
        let cosine = self.manifest.metric == Metric::Cosine;
        let ids = &self.ids;
        let mut hits: Vec<ScoredId> = result
            .results
            .iter()
            .take(result.stats.result_count as usize)
            .filter(|r| (r.vertex_id as usize) < ids.len())
            .filter(|r| !is_deleted(deleted, r.vertex_id))
            .map(|r| ScoredId {
                id: ids[r.vertex_id as usize],
                distance: if cosine { r.distance / 2.0 } else { r.distance },
            })
            .filter(|hit| filter(hit.id))
            .collect();
        hits.sort_by(ScoredId::rank_cmp);
        hits
    }

    /// Reads the full vector of every live row from the disk index, in slot
    /// order: what compaction rebuilds from.
    pub fn live_rows(&self) -> Result<(Vec<u64>, Vec<f32>)> {
        let path = PathBuf::from(get_disk_index_file(&prefix(&self.dir)));
        let bytes = fs::read(&path)?;
        let layout = RowLayout::parse(&bytes)?;
        let dim = self.manifest.dim;
        let deleted = self.deleted.read();
        let mut ids = Vec::new();
        let mut vectors = Vec::new();
        for (slot, id) in self.ids.iter().enumerate() {
            if is_deleted(&deleted, slot as u32) {
                continue;
            }
            let offset = layout.offset(slot);
            let raw = bytes
                .get(offset..offset + dim * 4)
                .ok_or_else(|| IndexError::Corrupted {
                    file: path.clone(),
                    reason: format!("row {slot} lies beyond the end of the file"),
                })?;
            ids.push(*id);
            vectors.extend(floats(raw));
        }
        Ok((ids, vectors))
    }

    /// The stored vector of a live `id` (two positional reads: the header
    /// sector and the row), `None` if it is not live here.
    pub fn vector(&self, id: u64) -> Result<Option<Vec<f32>>> {
        if !SegmentIndex::contains(self, id) {
            return Ok(None);
        }
        let slot = self.slot_of[&id] as usize;
        let path = PathBuf::from(get_disk_index_file(&prefix(&self.dir)));
        let file = std::fs::File::open(&path)?;
        let mut header = vec![0u8; DISK_SECTOR_LEN];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut header, 0)?;
        let layout = RowLayout::parse(&header)?;
        let mut raw = vec![0u8; self.manifest.dim * 4];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut raw, layout.offset(slot) as u64)
            .map_err(|e| IndexError::Corrupted {
                file: path.clone(),
                reason: format!("row {slot}: {e}"),
            })?;
        Ok(Some(floats(&raw).collect()))
    }

    /// Rebuilds this segment without its deleted rows into `new_dir`
    /// (compaction). Returns `None` when every row was deleted: the caller
    /// then drops the segment without a replacement.
    pub fn compact_into(&self, new_dir: &Path, params: &IndexParams) -> Result<Option<()>> {
        let (ids, vectors) = self.live_rows()?;
        if ids.is_empty() {
            return Ok(None);
        }
        Self::build(
            new_dir,
            &ids,
            &vectors,
            self.manifest.dim,
            self.manifest.metric,
            params,
        )?;
        Ok(Some(()))
    }
}

/// A searcher over the segment in `dir` reading from `residency`.
fn serve(
    dir: &Path,
    manifest: &SegmentManifest,
    pq: &DiskIndexReader,
    residency: Residency,
    force_pread: bool,
) -> Result<Serving> {
    let file = get_disk_index_file(&prefix(dir));
    let (factory, caching) = match residency {
        Residency::Disk => (
            AutoReaderFactory::new(file, force_pread, direct_io_probe),
            CachingStrategy::None,
        ),
        Residency::NodeCache { nodes } => (
            AutoReaderFactory::new(file, force_pread, direct_io_probe),
            CachingStrategy::StaticCacheWithBfsNodes(nodes.max(1) as usize),
        ),
        Residency::Memory => {
            let image = SectorImage::load(&file)?;
            verify_image(dir, manifest, &file, &image)?;
            (
                AutoReaderFactory::in_memory(file, image),
                CachingStrategy::None,
            )
        }
    };
    let reader_kind = factory.kind();
    let vertices = DiskVertexProviderFactory::new(factory, caching)?;
    let searcher = Searcher::new(1, usize::MAX, pq, vertices, DiskMetric::L2, None)?;
    Ok(Serving {
        searcher: DropOffRuntime::new(searcher),
        residency,
        reader_kind,
    })
}

/// A sector file loaded into RAM must still match its manifest: a file
/// damaged since the segment was opened is refused, not served from memory.
fn verify_image(
    dir: &Path,
    manifest: &SegmentManifest,
    file: &str,
    image: &SectorImage,
) -> Result<()> {
    let name = Path::new(file)
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let Some(entry) = manifest.files.iter().find(|f| f.name == name) else {
        return Ok(());
    };
    if entry.bytes != image.len() as u64 || entry.crc32 != image.crc32() {
        return Err(IndexError::Corrupted {
            file: dir.join(&name),
            reason: "the sector file no longer matches its manifest".into(),
        });
    }
    Ok(())
}

impl SegmentIndex for SealedSegment {
    fn dim(&self) -> usize {
        self.manifest.dim
    }

    fn metric(&self) -> Metric {
        self.manifest.metric
    }

    fn len(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    fn contains(&self, id: u64) -> bool {
        self.slot_of
            .get(&id)
            .is_some_and(|slot| !is_deleted(&self.deleted.read(), *slot))
    }

    /// Logs and returns nothing on an I/O error; callers that must know
    /// (the shard, to mark answers partial) use [`SealedSegment::try_search_tuned`].
    fn search_tuned(
        &self,
        query: &[f32],
        k: usize,
        filter: IdFilter<'_>,
        tuning: SearchTuning,
    ) -> Vec<ScoredId> {
        match self.try_search_tuned(query, k, filter, tuning) {
            Ok(hits) => hits,
            Err(e) => {
                tracing::error!(segment = %self.dir.display(), error = %e, "sealed segment search failed");
                Vec::new()
            }
        }
    }
}
