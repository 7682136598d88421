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

use fs_err as fs;
use parking_lot::RwLock;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use diskann::utils::ONE;
use diskann_disk::QuantizationType;
use diskann_disk::build::builder::build::DiskIndexBuilder;
use diskann_disk::data_model::{AdHoc, CachingStrategy, GraphHeader};
use diskann_disk::disk_index_build_parameter::{
    DISK_SECTOR_LEN, DiskIndexBuildParameters, MemoryBudget, NumPQChunks,
};
use diskann_disk::search::provider::disk_provider::DiskIndexSearcher;
use diskann_disk::search::provider::disk_vertex_provider_factory::DiskVertexProviderFactory;
use diskann_disk::search::search_mode::SearchMode;
use diskann_disk::storage::DiskIndexWriter;
use diskann_disk::storage::disk_index_reader::DiskIndexReader;
use diskann_providers::model::IndexConfiguration;
use diskann_providers::storage::{
    FileStorageProvider, get_compressed_pq_file, get_disk_index_file, get_pq_pivot_file,
};
use diskann_vector::distance::Metric as DiskMetric;

use engram_core::config::IndexParams;
use engram_core::{Metric, ScoredId};

use super::manifest::{FORMAT, SegmentManifest};
use super::reader::{AutoReaderFactory, ReaderKind, direct_io_probe};
use crate::error::{IndexError, Result};
use crate::segment_index::{IdFilter, SearchTuning, SegmentIndex};

const PREFIX: &str = "index";
const IDS_FILE: &str = "ids.bin";
const DELETED_FILE: &str = "deleted.bin";

type Searcher =
    DiskIndexSearcher<AdHoc<f32>, DiskVertexProviderFactory<AdHoc<f32>, AutoReaderFactory>>;

/// Search settings that may change per query.
#[derive(Debug, Clone, Copy)]
pub struct SearchSettings {
    pub list_size: u32,
    pub beam_width: usize,
}

pub struct SealedSegment {
    dir: PathBuf,
    manifest: SegmentManifest,
    ids: Vec<u64>,
    slot_of: HashMap<u64, u32>,
    deleted: RwLock<Vec<u64>>,
    live: AtomicUsize,
    /// Dropped off async threads: it owns a tokio runtime.
    searcher: super::off_runtime_drop::DropOffRuntime<Searcher>,
    reader_kind: ReaderKind,
    settings: SearchSettings,
}

fn prefix(dir: &Path) -> String {
    dir.join(PREFIX).display().to_string()
}

fn build_threads(params: &IndexParams) -> usize {
    if params.build_threads > 0 {
        params.build_threads
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
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
        if ids.is_empty() || vectors.len() != ids.len() * dim {
            return Err(IndexError::Invalid(format!(
                "{} ids and {} floats do not make rows of dimension {dim}",
                ids.len(),
                vectors.len()
            )));
        }
        let mut seen = std::collections::HashSet::with_capacity(ids.len());
        if let Some(dup) = ids.iter().find(|id| !seen.insert(**id)) {
            return Err(IndexError::Invalid(format!("id {dup} appears twice")));
        }
        if dir.exists() {
            return Err(IndexError::Invalid(format!(
                "{} already exists",
                dir.display()
            )));
        }
        let building = dir.with_extension("building");
        if building.exists() {
            fs::remove_dir_all(&building)?;
        }
        fs::create_dir_all(&building)?;

        // DiskANN builds from a file of rows: n u32 | dim u32 | floats.
        let data_file = building.join("rows.fbin");
        {
            let mut out = std::io::BufWriter::new(fs::File::create(&data_file)?);
            out.write_all(&(ids.len() as u32).to_le_bytes())?;
            out.write_all(&(dim as u32).to_le_bytes())?;
            for x in vectors {
                out.write_all(&x.to_le_bytes())?;
            }
            out.flush()?;
        }
        let graph = super::graph_config(params)?;
        let pq_bytes = params.pq_bytes.min(dim);
        let build_params = DiskIndexBuildParameters::new(
            MemoryBudget::try_from_gb(4.0).map_err(|e| IndexError::DiskAnn(e.to_string()))?,
            QuantizationType::FP,
            NumPQChunks::new_with(pq_bytes, dim).map_err(|e| IndexError::DiskAnn(e.to_string()))?,
        );
        let configuration = IndexConfiguration::new(
            DiskMetric::L2,
            dim,
            ids.len(),
            ONE,
            build_threads(params),
            graph,
        )
        .with_pseudo_rng();
        let writer = DiskIndexWriter::new(
            data_file.display().to_string(),
            prefix(&building),
            None,
            DISK_SECTOR_LEN,
        )?;
        let mut builder = DiskIndexBuilder::<AdHoc<f32>, FileStorageProvider>::new(
            &FileStorageProvider,
            build_params,
            configuration,
            writer,
        )?;
        builder.build()?;
        // The full vectors now live in the disk index's sectors.
        fs::remove_file(&data_file)?;

        let mut id_bytes = Vec::with_capacity(ids.len() * 8);
        for id in ids {
            id_bytes.extend_from_slice(&id.to_le_bytes());
        }
        fs::write(building.join(IDS_FILE), &id_bytes)?;
        write_deleted(&building, &vec![0u64; ids.len().div_ceil(64)])?;

        let mut names: Vec<String> = fs::read_dir(&building)?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n != DELETED_FILE)
            .collect();
        names.sort();
        for name in &names {
            fs::File::open(building.join(name))?.sync_all()?;
        }
        let mut manifest = SegmentManifest {
            format: FORMAT,
            rows: ids.len(),
            dim,
            metric,
            max_degree: params.max_degree,
            build_list_size: params.build_list_size,
            alpha: params.alpha,
            pq_bytes,
            files: Vec::new(),
        };
        manifest.checksum_files(&building, &names)?;
        manifest.write(&building)?;
        fs::rename(&building, dir)?;
        if let Some(parent) = dir.parent() {
            fs::File::open(parent)?.sync_all()?;
        }
        Ok(())
    }

    /// Opens a built segment after verifying every file against its
    /// manifest. `force_pread` skips io_uring/O_DIRECT.
    pub fn open(dir: &Path, params: &IndexParams, force_pread: bool) -> Result<SealedSegment> {
        let manifest = SegmentManifest::load_verified(dir)?;
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
        let slot_of: HashMap<u64, u32> = ids
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
        let reader = DiskIndexReader::new(
            get_pq_pivot_file(&prefix),
            get_compressed_pq_file(&prefix),
            &FileStorageProvider,
        )?;
        let factory =
            AutoReaderFactory::new(get_disk_index_file(&prefix), force_pread, direct_io_probe);
        let reader_kind = factory.kind();
        let vertices = DiskVertexProviderFactory::new(factory, CachingStrategy::None)?;
        let searcher = Searcher::new(1, usize::MAX, &reader, vertices, DiskMetric::L2, None)?;
        Ok(SealedSegment {
            dir: dir.to_path_buf(),
            manifest,
            ids,
            slot_of,
            deleted: RwLock::new(deleted),
            live: AtomicUsize::new(live),
            searcher: super::off_runtime_drop::DropOffRuntime::new(searcher),
            reader_kind,
            settings: SearchSettings {
                list_size: params.search_list_size,
                beam_width: params.beam_width,
            },
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn manifest(&self) -> &SegmentManifest {
        &self.manifest
    }

    pub fn reader_kind(&self) -> ReaderKind {
        self.reader_kind
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

    fn is_deleted_slot(deleted: &[u64], slot: u32) -> bool {
        deleted[slot as usize / 64] & (1 << (slot % 64)) != 0
    }

    pub fn persist_deletes(&self) -> Result<()> {
        let deleted = self.deleted.read().clone();
        write_deleted(&self.dir, &deleted)
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
    pub fn search_with(
        &self,
        query: &[f32],
        k: usize,
        filter: IdFilter<'_>,
        settings: SearchSettings,
    ) -> Result<Vec<ScoredId>> {
        if k == 0 || self.live.load(Ordering::Relaxed) == 0 {
            return Ok(Vec::new());
        }
        let deleted = self.deleted.read();
        let ids = &self.ids;
        // Deleted and filtered rows are excluded inside the graph search,
        // so k live results come back even when many rows are deleted.
        let accept =
            |slot: &u32| !Self::is_deleted_slot(&deleted, *slot) && filter(ids[*slot as usize]);
        let k = k.min(self.live.load(Ordering::Relaxed));
        let list_size = settings.list_size.max(k as u32);
        let result = self.searcher.search(
            query,
            k as u32,
            list_size,
            Some(settings.beam_width),
            SearchMode::inline_filter(accept, None),
        )?;
        let cosine = self.manifest.metric == Metric::Cosine;
        let mut hits: Vec<ScoredId> = result
            .results
            .iter()
            .take(result.stats.result_count as usize)
            .filter(|r| (r.vertex_id as usize) < ids.len())
            .filter(|r| !Self::is_deleted_slot(&deleted, r.vertex_id))
            .map(|r| ScoredId {
                id: ids[r.vertex_id as usize],
                distance: if cosine { r.distance / 2.0 } else { r.distance },
            })
            .filter(|hit| filter(hit.id))
            .collect();
        hits.sort_by(ScoredId::rank_cmp);
        Ok(hits)
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
            if Self::is_deleted_slot(&deleted, slot as u32) {
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
            .is_some_and(|slot| !Self::is_deleted_slot(&self.deleted.read(), *slot))
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

/// Where rows sit in DiskANN's disk index: sector 0 is the header (after
/// an 8-byte preamble); small rows are packed `per_block` to a sector, large
/// rows start on a sector boundary. Rows begin with the full vector.
struct RowLayout {
    block: usize,
    node_len: usize,
    per_block: usize,
    sectors_per_node: usize,
}

impl RowLayout {
    /// From the first sector of the file.
    fn parse(first_sector: &[u8]) -> Result<RowLayout> {
        let header =
            GraphHeader::try_from(first_sector.get(8..DISK_SECTOR_LEN).unwrap_or_default())?;
        let meta = header.metadata();
        let block = header.block_size() as usize;
        let node_len = meta.node_len as usize;
        let per_block = meta.num_nodes_per_block as usize;
        Ok(RowLayout {
            block,
            node_len,
            per_block,
            sectors_per_node: if per_block > 0 {
                1
            } else {
                node_len.div_ceil(block.max(1))
            },
        })
    }

    fn offset(&self, slot: usize) -> usize {
        match slot.checked_div(self.per_block) {
            Some(sector) => (1 + sector) * self.block + (slot % self.per_block) * self.node_len,
            None => (1 + slot * self.sectors_per_node) * self.block,
        }
    }
}

fn floats(raw: &[u8]) -> impl Iterator<Item = f32> + '_ {
    raw.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
}

fn write_deleted(dir: &Path, words: &[u64]) -> Result<()> {
    let mut body = Vec::with_capacity(words.len() * 8 + 4);
    for w in words {
        body.extend_from_slice(&w.to_le_bytes());
    }
    let crc = crc32fast::hash(&body);
    body.extend_from_slice(&crc.to_le_bytes());
    let tmp = dir.join("deleted.bin.tmp");
    {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(&body)?;
        file.sync_all()?;
    }
    fs::rename(&tmp, dir.join(DELETED_FILE))?;
    fs::File::open(dir)?.sync_all()?;
    Ok(())
}

fn read_deleted(dir: &Path, rows: usize) -> Result<Vec<u64>> {
    let path = dir.join(DELETED_FILE);
    let bytes = fs::read(&path)?;
    let words = rows.div_ceil(64);
    let corrupted = |reason: &str| IndexError::Corrupted {
        file: path.clone(),
        reason: reason.to_string(),
    };
    if bytes.len() != words * 8 + 4 {
        return Err(corrupted("wrong length for the segment's rows"));
    }
    let (body, crc) = bytes.split_at(words * 8);
    if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
        return Err(corrupted("delete bitmap checksum mismatch"));
    }
    Ok(body
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::flat::FlatIndex;
    use crate::segment_index::MutableSegmentIndex;

    /// Clustered Gaussian-like rows from a fixed-seed generator.
    pub(crate) fn clustered(n: usize, dim: usize, seed: u64, normalise: bool) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        let centres: Vec<f32> = (0..16 * dim).map(|_| next() * 4.0).collect();
        let mut rows = Vec::with_capacity(n * dim);
        for i in 0..n {
            let c = (i * 7) % 16;
            let mut row: Vec<f32> = (0..dim).map(|j| centres[c * dim + j] + next()).collect();
            if normalise {
                engram_core::vector::normalize_in_place(&mut row).unwrap();
            }
            rows.extend(row);
        }
        rows
    }

    fn params() -> IndexParams {
        IndexParams {
            max_degree: 32,
            build_list_size: 64,
            pq_bytes: 16,
            search_list_size: 64,
            build_threads: 2,
            ..IndexParams::default()
        }
    }

    fn recall_at_10(
        segment: &SealedSegment,
        exact: &FlatIndex,
        queries: &[f32],
        dim: usize,
    ) -> f64 {
        let mut hits = 0;
        let mut total = 0;
        for q in queries.chunks_exact(dim) {
            let truth: Vec<u64> = exact
                .search(q, 10, &|_| true)
                .iter()
                .map(|h| h.id)
                .collect();
            let got = segment.search(q, 10, &|_| true);
            hits += got.iter().filter(|h| truth.contains(&h.id)).count();
            total += truth.len();
        }
        hits as f64 / total as f64
    }

    fn build_pair(
        dir: &Path,
        n: usize,
        dim: usize,
        metric: Metric,
    ) -> (Vec<u64>, Vec<f32>, FlatIndex) {
        let rows = clustered(n, dim, 1, metric == Metric::Cosine);
        let ids: Vec<u64> = (0..n as u64).map(|i| i * 3 + 1_000_000_000_000).collect();
        SealedSegment::build(dir, &ids, &rows, dim, metric, &params()).unwrap();
        let mut exact = FlatIndex::new(dim, metric);
        for (id, row) in ids.iter().zip(rows.chunks_exact(dim)) {
            exact.upsert(*id, row).unwrap();
        }
        (ids, rows, exact)
    }

    #[test]
    fn recall_distances_and_ids_match_exact_search() {
        for metric in [Metric::L2, Metric::Cosine] {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().join("seg");
            let dim = 24;
            let (_, rows, exact) = build_pair(&dir, 3000, dim, metric);
            let segment = SealedSegment::open(&dir, &params(), false).unwrap();
            assert_eq!(segment.len(), 3000);
            let queries = clustered(100, dim, 99, metric == Metric::Cosine);
            let recall = recall_at_10(&segment, &exact, &queries, dim);
            assert!(recall >= 0.95, "{metric:?} recall@10 {recall}");
            // Distances are full precision, in the collection's metric.
            let q = &rows[5 * dim..6 * dim];
            let got = segment.search(q, 3, &|_| true);
            let want = exact.search(q, 3, &|_| true);
            assert_eq!(got[0].id, want[0].id);
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g.distance - w.distance).abs() < 1e-3,
                    "{metric:?}: {g:?} vs {w:?}"
                );
            }
        }
    }

    #[test]
    fn deleted_rows_are_never_returned_and_deletes_persist() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("seg");
        let dim = 16;
        let (ids, rows, _) = build_pair(&dir, 2000, dim, Metric::L2);
        let segment = SealedSegment::open(&dir, &params(), false).unwrap();
        // Delete every id of cluster 0 (rows 0, 16, 32, ... share a centre).
        let doomed: Vec<u64> = ids
            .iter()
            .copied()
            .enumerate()
            .filter(|(i, _)| (i * 7) % 16 == 0)
            .map(|(_, id)| id)
            .collect();
        for id in &doomed {
            assert!(segment.delete(*id));
            assert!(!segment.delete(*id));
        }
        assert!(!segment.delete(42), "unknown id");
        let q = &rows[0..dim];
        let hits = segment.search(q, 10, &|_| true);
        assert_eq!(
            hits.len(),
            10,
            "k live rows come back even when the nearest cluster is deleted"
        );
        assert!(hits.iter().all(|h| !doomed.contains(&h.id)));
        segment.persist_deletes().unwrap();
        drop(segment);
        let segment = SealedSegment::open(&dir, &params(), false).unwrap();
        assert_eq!(segment.len(), 2000 - doomed.len());
        assert!(
            segment
                .search(q, 50, &|_| true)
                .iter()
                .all(|h| !doomed.contains(&h.id))
        );
        // The id filter applies too.
        let odd = segment.search(q, 10, &|id| id % 2 == 1);
        assert_eq!(odd.len(), 10);
        assert!(odd.iter().all(|h| h.id % 2 == 1));
    }

    #[test]
    fn every_damaged_file_is_refused_by_name() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("seg");
        build_pair(&dir, 600, 8, Metric::L2);
        let names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        assert!(
            names.iter().any(|n| n.ends_with("_disk.index")),
            "{names:?}"
        );
        for name in names {
            let path = dir.join(&name);
            let original = std::fs::read(&path).unwrap();
            let mut bad = original.clone();
            let at = bad.len() / 2;
            bad[at] ^= 0x20;
            std::fs::write(&path, &bad).unwrap();
            match SealedSegment::open(&dir, &params(), false) {
                Err(IndexError::Corrupted { file, .. }) => {
                    assert!(file.ends_with(&name), "{name}: blamed {}", file.display())
                }
                Err(other) => panic!("{name}: unexpected error {other}"),
                Ok(_) => panic!("{name}: a damaged file was accepted"),
            }
            std::fs::write(&path, &original).unwrap();
        }
        SealedSegment::open(&dir, &params(), false).unwrap();
    }

    #[test]
    fn pread_reader_serves_the_same_results_and_works_on_tmpfs() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("seg");
        let dim = 16;
        let (_, rows, exact) = build_pair(&dir, 1500, dim, Metric::L2);
        let direct = SealedSegment::open(&dir, &params(), false).unwrap();
        let pread = SealedSegment::open(&dir, &params(), true).unwrap();
        assert_eq!(pread.reader_kind(), ReaderKind::Pread);
        for q in rows.chunks_exact(dim).step_by(97) {
            assert_eq!(
                direct.search(q, 10, &|_| true),
                pread.search(q, 10, &|_| true)
            );
        }
        // When the direct reader cannot be created (an injected failure,
        // as on a kernel whose tmpfs refuses O_DIRECT or under a seccomp
        // profile without io_uring), the factory falls back by itself.
        let failing = AutoReaderFactory::new(get_disk_index_file(&prefix(&dir)), false, |_| {
            Err("injected: io_uring_setup blocked".into())
        });
        assert_eq!(failing.kind(), ReaderKind::Pread);
        // A real tmpfs: whichever reader the probe picks must serve the segment.
        let shm = Path::new("/dev/shm");
        assert!(shm.is_dir(), "/dev/shm (tmpfs) is missing on this machine");
        let tmpfs = tempfile::tempdir_in(shm).unwrap();
        let on_tmpfs = tmpfs.path().join("seg");
        build_pair(&on_tmpfs, 1500, dim, Metric::L2);
        let segment = SealedSegment::open(&on_tmpfs, &params(), false).unwrap();
        let queries = clustered(50, dim, 7, false);
        assert!(
            recall_at_10(&segment, &exact, &queries, dim) >= 0.95,
            "tmpfs with {:?}",
            segment.reader_kind()
        );
    }

    #[test]
    fn live_rows_read_back_exactly_for_small_and_multi_sector_rows() {
        // 8 floats: many rows per 4 KiB sector; 1280 floats: one row spans two sectors.
        for dim in [8usize, 1280] {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().join("seg");
            let n = 300;
            let rows = clustered(n, dim, 3, true);
            let ids: Vec<u64> = (0..n as u64).collect();
            SealedSegment::build(&dir, &ids, &rows, dim, Metric::Cosine, &params()).unwrap();
            let segment = SealedSegment::open(&dir, &params(), false).unwrap();
            segment.delete(7);
            let (live_ids, live_rows) = segment.live_rows().unwrap();
            assert_eq!(live_ids.len(), n - 1);
            for (id, row) in live_ids.iter().zip(live_rows.chunks_exact(dim)) {
                assert_eq!(
                    row,
                    &rows[*id as usize * dim..(*id as usize + 1) * dim],
                    "dim {dim} id {id}"
                );
            }
        }
    }

    #[test]
    fn compaction_removes_deleted_vectors_from_every_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("seg");
        let dim = 16;
        let (ids, rows, mut exact) = build_pair(&dir, 2000, dim, Metric::L2);
        let segment = SealedSegment::open(&dir, &params(), false).unwrap();
        let doomed: Vec<usize> = (0..2000).filter(|i| i % 10 < 3).collect();
        for i in &doomed {
            segment.delete(ids[*i]);
            exact.remove(ids[*i]);
        }
        assert!((segment.deleted_fraction() - 0.3).abs() < 1e-9);
        let compacted = tmp.path().join("seg-2");
        segment
            .compact_into(&compacted, &params())
            .unwrap()
            .unwrap();
        let segment = SealedSegment::open(&compacted, &params(), false).unwrap();
        assert_eq!(segment.len(), 1400);
        assert_eq!(segment.deleted_fraction(), 0.0);
        let queries = clustered(100, dim, 11, false);
        assert!(recall_at_10(&segment, &exact, &queries, dim) >= 0.9);
        // No file of the new segment holds a deleted row's bytes.
        let files: Vec<Vec<u8>> = fs::read_dir(&compacted)
            .unwrap()
            .map(|e| std::fs::read(e.unwrap().path()).unwrap())
            .collect();
        for i in doomed.iter().step_by(7) {
            let needle: Vec<u8> = rows[i * dim..(i + 1) * dim]
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect();
            for file in &files {
                assert!(
                    !file.windows(needle.len()).any(|w| w == needle.as_slice()),
                    "row {i} survived compaction"
                );
            }
            let id_bytes = ids[*i].to_le_bytes();
            assert!(
                !std::fs::read(compacted.join(IDS_FILE))
                    .unwrap()
                    .chunks_exact(8)
                    .any(|c| c == id_bytes)
            );
        }
        // A live row's bytes are still there (the scan above can find rows).
        let live: Vec<u8> = rows[5 * dim..6 * dim]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        assert!(
            files
                .iter()
                .any(|f| f.windows(live.len()).any(|w| w == live.as_slice()))
        );
    }
}
