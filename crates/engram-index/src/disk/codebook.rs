//! A PQ codebook trained once and shared by many segment builds.
//!
//! DiskANN's disk builder trains a fresh product-quantisation codebook
//! (k-means, 256 centres per chunk) for every segment it builds, which was
//! 80 % of a bulk load's time (docs/benchmarks.md). A [`Codebook`] is
//! trained on a sample once per shard or per bulk job and handed to every
//! later build ([`crate::SealedSegment::build_with`]), which then only
//! encodes its rows. Each segment still carries its own copy of the pivots
//! (`index_pq_pivots.bin`), so it is served, shipped and verified exactly as
//! before.
//!
//! On disk a codebook is a directory `<parent>/v<version>/` holding
//! `pivots.bin` (DiskANN's pivot file, as its searcher reads it) and
//! `codebook.json` (one JSON line with the format, version, shape, training
//! error and the pivot file's size and CRC32, then the CRC32 of that line),
//! so a damaged or foreign codebook is refused before it encodes anything.
//! A retrained codebook gets the next version; [`latest`] finds the newest.

use fs_err as fs;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use diskann_providers::model::pq::generate_pq_pivots;
use diskann_providers::model::{GeneratePivotArguments, NUM_KMEANS_REPS_PQ, NUM_PQ_CENTROIDS};
use diskann_providers::storage::{FileStorageProvider, PQStorage};
use diskann_providers::utils::{create_rnd_provider_from_optional_seed, create_thread_pool};
use diskann_quantization::CompressInto;
use diskann_quantization::product::{BasicTable, TransposedTable};
use diskann_utils::views::rowmajor::{self, Matrix};

use engram_core::config::IndexParams;

use super::manifest::file_crc32;
use crate::error::{IndexError, Result};

/// The on-disk format of `codebook.json`.
pub const CODEBOOK_FORMAT: u32 = 1;
const META_FILE: &str = "codebook.json";
const PIVOTS_FILE: &str = "pivots.bin";
/// The same seed for every training: a codebook is reproducible from its
/// sample.
const TRAINING_SEED: u64 = 0x0e96_4a3c_0deb_00c5;
/// Rows the baseline error is measured on, at most.
const BASELINE_ROWS: usize = 10_000;

/// What a codebook is, as recorded in `codebook.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CodebookMeta {
    pub format: u32,
    /// 1 for the first codebook of a shard or job, +1 per retraining.
    pub version: u64,
    pub dim: usize,
    /// PQ chunks = bytes of code per vector.
    pub chunks: usize,
    pub centers: usize,
    /// Rows of the sample it was trained on.
    pub trained_rows: usize,
    /// Relative quantisation error on rows of the training set held out of
    /// the sample (see [`Codebook::quantisation_error`]): the baseline
    /// drift is measured against.
    pub train_error: f64,
    pub pivots_bytes: u64,
    pub pivots_crc32: u32,
}

/// A verified, loaded codebook.
pub struct Codebook {
    dir: PathBuf,
    meta: CodebookMeta,
    table: BasicTable,
    encoder: TransposedTable,
}

impl std::fmt::Debug for Codebook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codebook")
            .field("dir", &self.dir)
            .field("meta", &self.meta)
            .finish()
    }
}

/// The directory of version `version` under `parent`.
pub fn version_dir(parent: &Path, version: u64) -> PathBuf {
    parent.join(format!("v{version:06}"))
}

/// The newest verified codebook under `parent`, if any. A newest version
/// that fails verification is an error, not skipped: segments built from
/// it may exist, and silently training another would hide the damage.
pub fn latest(parent: &Path) -> Result<Option<Codebook>> {
    let Some(version) = newest_version(parent)? else {
        return Ok(None);
    };
    Codebook::open(&version_dir(parent, version)).map(Some)
}

fn newest_version(parent: &Path) -> Result<Option<u64>> {
    if !parent.exists() {
        return Ok(None);
    }
    let mut newest = None;
    for entry in fs::read_dir(parent)? {
        let name = entry?.file_name().to_string_lossy().to_string();
        if let Some(v) = name.strip_prefix('v').and_then(|v| v.parse::<u64>().ok()) {
            newest = newest.max(Some(v));
        }
    }
    Ok(newest)
}

/// Rows `sample` picks from `rows` rows: all of them, or `max` spread
/// evenly over the whole range (rows arrive in input order, which may be
/// sorted by class or source; a prefix would see only the first ones).
pub fn sample_rows(rows: usize, max: usize) -> Vec<usize> {
    if rows <= max {
        return (0..rows).collect();
    }
    (0..max).map(|i| i * rows / max).collect()
}

impl Codebook {
    /// Trains a codebook of `chunks` bytes per vector on (a sample of at
    /// most `max_sample` of) `vectors` and stores it as version `version`
    /// under `parent`. Blocking and CPU-heavy.
    pub fn train(
        parent: &Path,
        version: u64,
        vectors: &[f32],
        dim: usize,
        chunks: usize,
        max_sample: usize,
        threads: usize,
    ) -> Result<Codebook> {
        if dim == 0 || vectors.is_empty() || !vectors.len().is_multiple_of(dim) {
            return Err(IndexError::Invalid(format!(
                "{} floats do not make rows of dimension {dim}",
                vectors.len()
            )));
        }
        if chunks == 0 || chunks > dim {
            return Err(IndexError::Invalid(format!(
                "a codebook needs 1..={dim} chunks, not {chunks}"
            )));
        }
        let rows = vectors.len() / dim;
        // Every tenth row is held out of training: the baseline error is
        // measured on rows the codebook has not seen, as later segments'
        // rows will be (on its own sample it would look better than it is,
        // and every later segment would seem to drift).
        let (trainable, held_out): (Vec<usize>, Vec<usize>) =
            (0..rows).partition(|r| rows < 10 || r % 10 != 9);
        let picked: Vec<usize> = sample_rows(trainable.len(), max_sample.max(1))
            .into_iter()
            .map(|i| trainable[i])
            .collect();
        let gather = |which: &[usize]| -> Vec<f32> {
            let mut out = Vec::with_capacity(which.len() * dim);
            for &row in which {
                out.extend_from_slice(&vectors[row * dim..(row + 1) * dim]);
            }
            out
        };
        let sample = gather(&picked);
        let baseline = if held_out.is_empty() {
            sample.clone()
        } else {
            gather(&held_out)
        };
        let dir = version_dir(parent, version);
        if dir.exists() {
            return Err(IndexError::Invalid(format!(
                "codebook {} already exists",
                dir.display()
            )));
        }
        let building = dir.with_extension("building");
        if building.exists() {
            fs::remove_dir_all(&building)?;
        }
        fs::create_dir_all(&building)?;
        let pivots = building.join(PIVOTS_FILE);
        let storage = PQStorage::new(&pivots.display().to_string(), "", None);
        let pool = create_thread_pool(threads)?;
        generate_pq_pivots(
            GeneratePivotArguments::new(
                picked.len(),
                dim,
                NUM_PQ_CENTROIDS,
                chunks,
                NUM_KMEANS_REPS_PQ,
            )
            .map_err(|e| IndexError::Invalid(format!("PQ training: {e}")))?,
            // Centre the data first, as DiskANN's builder does for L2.
            true,
            &mut sample.clone(),
            &storage,
            &FileStorageProvider,
            create_rnd_provider_from_optional_seed(Some(TRAINING_SEED)),
            pool.as_ref(),
        )?;
        let table = storage.load_pivots(&FileStorageProvider)?;
        let encoder = transpose(&table)?;
        let (pivots_bytes, pivots_crc32) = file_crc32(&pivots)?;
        let mut codebook = Codebook {
            dir: dir.clone(),
            meta: CodebookMeta {
                format: CODEBOOK_FORMAT,
                version,
                dim,
                chunks,
                centers: table.ncenters(),
                trained_rows: picked.len(),
                train_error: 0.0,
                pivots_bytes,
                pivots_crc32,
            },
            table,
            encoder,
        };
        codebook.meta.train_error = codebook.quantisation_error(&baseline, BASELINE_ROWS);
        fs::File::open(&pivots)?.sync_all()?;
        write_meta(&building, &codebook.meta)?;
        fs::rename(&building, &dir)?;
        fs::File::open(parent)?.sync_all()?;
        Ok(codebook)
    }

    /// Opens the codebook in `dir`, verifying `codebook.json` and the
    /// pivot file's size and CRC32 against it.
    pub fn open(dir: &Path) -> Result<Codebook> {
        let meta_path = dir.join(META_FILE);
        let meta = parse_meta(&meta_path, &fs::read_to_string(&meta_path)?)?;
        let pivots = dir.join(PIVOTS_FILE);
        let (bytes, crc32) = file_crc32(&pivots)?;
        if bytes != meta.pivots_bytes || crc32 != meta.pivots_crc32 {
            return Err(IndexError::Corrupted {
                file: pivots,
                reason: format!(
                    "{bytes} bytes with crc32 {crc32:08x}, codebook.json records {} bytes with crc32 {:08x}",
                    meta.pivots_bytes, meta.pivots_crc32
                ),
            });
        }
        let table = PQStorage::new(&pivots.display().to_string(), "", None)
            .load_pivots(&FileStorageProvider)?;
        if table.dim() != meta.dim || table.nchunks() != meta.chunks {
            return Err(IndexError::Corrupted {
                file: pivots,
                reason: format!(
                    "pivots of {} dimensions in {} chunks, codebook.json says {} in {}",
                    table.dim(),
                    table.nchunks(),
                    meta.dim,
                    meta.chunks
                ),
            });
        }
        let encoder = transpose(&table)?;
        Ok(Codebook {
            dir: dir.to_path_buf(),
            meta,
            table,
            encoder,
        })
    }

    pub fn meta(&self) -> &CodebookMeta {
        &self.meta
    }

    pub fn version(&self) -> u64 {
        self.meta.version
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// DiskANN's pivot file, copied into each segment built with it.
    pub fn pivots_file(&self) -> PathBuf {
        self.dir.join(PIVOTS_FILE)
    }

    /// Encodes `rows` (row-major, `dim` floats each) into `codes`
    /// (`chunks` bytes each).
    pub fn encode(&self, rows: &[f32], codes: &mut [u8]) -> Result<()> {
        let n = rows.len() / self.meta.dim.max(1);
        let failed = |e: String| IndexError::DiskAnn(format!("PQ encoding failed: {e}"));
        let from = rowmajor::Ref::try_from_data(rows, n, self.meta.dim)
            .map_err(|e| failed(e.to_string()))?;
        let to = rowmajor::Mut::try_from_data(codes, n, self.meta.chunks)
            .map_err(|e| failed(e.to_string()))?;
        self.encoder
            .compress_into(from, to)
            .map_err(|e| failed(e.to_string()))
    }

    /// Relative quantisation error over (at most `max_rows` evenly spread
    /// rows of) `vectors`: the summed squared distance of each row to its
    /// decoded code over the summed squared distance of each row to the
    /// rows' mean. 0 is lossless; a codebook trained on other data shows a
    /// higher value than on its own sample, which is what drift detection
    /// compares.
    pub fn quantisation_error(&self, vectors: &[f32], max_rows: usize) -> f64 {
        let dim = self.meta.dim;
        if dim == 0 || vectors.len() < dim {
            return 0.0;
        }
        let picked = sample_rows(vectors.len() / dim, max_rows);
        let mut sample = Vec::with_capacity(picked.len() * dim);
        for &r in &picked {
            sample.extend_from_slice(&vectors[r * dim..(r + 1) * dim]);
        }
        let chunks = self.meta.chunks;
        let mut codes = vec![0u8; picked.len() * chunks];
        if self.encode(&sample, &mut codes).is_err() {
            return f64::INFINITY;
        }
        let mut mean = vec![0f64; dim];
        for row in sample.chunks_exact(dim) {
            for (m, x) in mean.iter_mut().zip(row) {
                *m += f64::from(*x);
            }
        }
        mean.iter_mut().for_each(|m| *m /= picked.len() as f64);
        let pivots = self.table.view_pivots();
        let offsets = self.table.view_offsets();
        let (mut residual, mut spread) = (0f64, 0f64);
        for (row, code) in sample.chunks_exact(dim).zip(codes.chunks_exact(chunks)) {
            for (chunk, &center) in code.iter().enumerate() {
                let centre = pivots.row(center as usize);
                for d in offsets.at(chunk) {
                    residual += (f64::from(row[d]) - f64::from(centre[d])).powi(2);
                }
            }
            spread += row
                .iter()
                .zip(&mean)
                .map(|(x, m)| (f64::from(*x) - m).powi(2))
                .sum::<f64>();
        }
        if spread == 0.0 {
            return if residual == 0.0 { 0.0 } else { f64::INFINITY };
        }
        residual / spread
    }

    /// Whether `vectors` quantise worse than the codebook's own sample by
    /// more than `threshold` times (a threshold <= 0 never drifts).
    pub fn drifted(&self, vectors: &[f32], threshold: f64, max_rows: usize) -> bool {
        if threshold <= 0.0 {
            return false;
        }
        let error = self.quantisation_error(vectors, max_rows);
        let baseline = self.meta.train_error.max(1e-9);
        let drifted = error > baseline * threshold;
        tracing::debug!(
            codebook = self.meta.version,
            error,
            baseline,
            threshold,
            drifted,
            "codebook drift measured"
        );
        drifted
    }
}

/// Rows drift is measured on, at most (an even sample).
const DRIFT_ROWS: usize = 10_000;

/// Why a [`CodebookStore`] trained a new version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrainReason {
    /// There was none (or none of the rows' shape).
    First,
    /// The one there was had seen fewer rows than the sample size and at
    /// most half of the rows at hand: a small first seal's codebook is
    /// replaced once more rows exist.
    Grown,
    /// The rows at hand quantise worse than `codebook_drift` allows.
    Drift,
    /// Asked for ([`CodebookStore::retrain`]).
    Requested,
}

/// The codebooks of one shard or bulk job, in `dir`: the current one in
/// memory, each version in `dir/v<version>/`, older versions removed once
/// a newer one is stored (every segment carries its own copy of the
/// pivots it was encoded with, so nothing else reads them).
pub struct CodebookStore {
    dir: PathBuf,
    state: Mutex<StoreState>,
}

struct StoreState {
    current: Option<Arc<Codebook>>,
    /// The next [`CodebookStore::for_rows`] trains a new version.
    retrain: bool,
    /// Versions are never reused, even of a codebook refused as damaged.
    next_version: u64,
}

impl CodebookStore {
    /// Opens the store in `dir` (created when first trained). A damaged
    /// newest version is refused by its checksum, logged and removed: it
    /// encodes nothing, and the next seal trains a new version.
    pub fn open(dir: &Path) -> Result<CodebookStore> {
        let newest = newest_version(dir)?;
        let current = match newest {
            None => None,
            Some(version) => match Codebook::open(&version_dir(dir, version)) {
                Ok(codebook) => Some(Arc::new(codebook)),
                Err(error) => {
                    tracing::warn!(dir = %dir.display(), version, %error, "refusing a damaged codebook; a new one will be trained");
                    fs::remove_dir_all(version_dir(dir, version))?;
                    None
                }
            },
        };
        Ok(CodebookStore {
            dir: dir.to_path_buf(),
            state: Mutex::new(StoreState {
                current,
                retrain: false,
                next_version: newest.map_or(1, |v| v + 1),
            }),
        })
    }

    pub fn current(&self) -> Option<Arc<Codebook>> {
        self.state.lock().current.clone()
    }

    /// The codebook to encode `vectors` with: the current one, or a new
    /// version trained on them when there is none of their shape, when it
    /// saw far fewer rows than these, or when these drifted from it.
    /// Blocking and CPU-heavy when it trains.
    pub fn for_rows(
        &self,
        vectors: &[f32],
        dim: usize,
        params: &IndexParams,
    ) -> Result<Arc<Codebook>> {
        let chunks = params.pq_bytes.min(dim);
        let rows = vectors.len() / dim.max(1);
        let mut state = self.state.lock();
        let reason = match &state.current {
            _ if state.retrain => TrainReason::Requested,
            None => TrainReason::First,
            Some(c) if c.meta().dim != dim || c.meta().chunks != chunks => TrainReason::First,
            Some(c)
                if c.meta().trained_rows < params.codebook_sample_rows
                    && rows >= 2 * c.meta().trained_rows.max(1) * 10 / 9 =>
            {
                TrainReason::Grown
            }
            Some(c) if c.drifted(vectors, params.codebook_drift, DRIFT_ROWS) => TrainReason::Drift,
            Some(c) => return Ok(c.clone()),
        };
        self.train_locked(&mut state, vectors, dim, params, reason)
    }

    /// Makes the next [`Self::for_rows`] train a new version whatever the
    /// current one is (an operator's request: after the data changed in a
    /// way drift detection does not see, or to use a new sample size).
    pub fn request_retraining(&self) {
        self.state.lock().retrain = true;
    }

    fn train_locked(
        &self,
        state: &mut StoreState,
        vectors: &[f32],
        dim: usize,
        params: &IndexParams,
        reason: TrainReason,
    ) -> Result<Arc<Codebook>> {
        let version = state.next_version;
        fs::create_dir_all(&self.dir)?;
        let started = std::time::Instant::now();
        let threads = if params.build_threads > 0 {
            params.build_threads
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        };
        let trained = Arc::new(Codebook::train(
            &self.dir,
            version,
            vectors,
            dim,
            params.pq_bytes.min(dim),
            params.codebook_sample_rows,
            threads,
        )?);
        state.next_version = version + 1;
        state.current = Some(trained.clone());
        state.retrain = false;
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().to_string();
            let older = name
                .strip_prefix('v')
                .and_then(|v| v.split('.').next()?.parse::<u64>().ok())
                .is_some_and(|v| v < version);
            if older {
                fs::remove_dir_all(entry.path())?;
            }
        }
        crate::activity::codebook_trained(reason);
        tracing::info!(
            dir = %self.dir.display(),
            version,
            ?reason,
            rows = trained.meta().trained_rows,
            train_error = trained.meta().train_error,
            seconds = started.elapsed().as_secs_f64(),
            "PQ codebook trained"
        );
        Ok(trained)
    }
}

fn transpose(table: &BasicTable) -> Result<TransposedTable> {
    TransposedTable::from_parts(table.view_pivots(), table.view_offsets().to_owned())
        .map_err(|e| IndexError::DiskAnn(format!("PQ table unusable: {e}")))
}

fn write_meta(dir: &Path, meta: &CodebookMeta) -> Result<()> {
    let body = serde_json::to_string(meta).map_err(|e| IndexError::DiskAnn(e.to_string()))?;
    let mut file = fs::File::create(dir.join(META_FILE))?;
    write!(file, "{body}\n{:08x}\n", crc32fast::hash(body.as_bytes()))?;
    file.sync_all()?;
    Ok(())
}

fn parse_meta(path: &Path, text: &str) -> Result<CodebookMeta> {
    let corrupted = |reason: String| IndexError::Corrupted {
        file: path.to_path_buf(),
        reason,
    };
    let mut lines = text.lines();
    let (Some(body), Some(crc)) = (lines.next(), lines.next()) else {
        return Err(corrupted("codebook.json is truncated".into()));
    };
    if u32::from_str_radix(crc.trim(), 16).ok() != Some(crc32fast::hash(body.as_bytes())) {
        return Err(corrupted("codebook.json checksum mismatch".into()));
    }
    let meta: CodebookMeta =
        serde_json::from_str(body).map_err(|e| corrupted(format!("unreadable: {e}")))?;
    if meta.format != CODEBOOK_FORMAT {
        return Err(corrupted(format!(
            "codebook format {} is not {CODEBOOK_FORMAT}, the one this build reads",
            meta.format
        )));
    }
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::sealed::tests::clustered;

    fn trained(parent: &Path, version: u64, rows: &[f32], dim: usize) -> Codebook {
        Codebook::train(parent, version, rows, dim, 8, 2_000, 2).unwrap()
    }

    fn flip_byte(path: &Path, at: usize) {
        let mut bytes = fs::read(path).unwrap();
        let at = at.min(bytes.len() - 1);
        bytes[at] ^= 0x20;
        fs::write(path, bytes).unwrap();
    }

    #[test]
    fn a_stored_codebook_opens_with_the_same_meta_and_codes() {
        let tmp = tempfile::tempdir().unwrap();
        let dim = 16;
        let rows = clustered(3_000, dim, 5, false);
        let made = trained(tmp.path(), 1, &rows, dim);
        assert_eq!(made.version(), 1);
        assert_eq!(
            made.meta().trained_rows,
            2_000,
            "an even sample, not every row"
        );
        assert!(
            Codebook::train(
                &tmp.path().join("b"),
                1,
                &rows[..1_000 * dim],
                dim,
                8,
                2_000,
                2
            )
            .unwrap()
            .meta()
            .trained_rows
                == 900,
            "every tenth row is held out for the baseline"
        );
        assert!(made.meta().train_error > 0.0 && made.meta().train_error < 0.5);
        let opened = Codebook::open(&version_dir(tmp.path(), 1)).unwrap();
        let (a, b) = (opened.meta().train_error, made.meta().train_error);
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        let mut meta = opened.meta().clone();
        meta.train_error = b;
        assert_eq!(&meta, made.meta());
        let (mut a, mut b) = (vec![0u8; 100 * 8], vec![0u8; 100 * 8]);
        made.encode(&rows[..100 * dim], &mut a).unwrap();
        opened.encode(&rows[..100 * dim], &mut b).unwrap();
        assert_eq!(a, b);
        assert!(a.iter().any(|c| *c != a[0]), "codes vary");
    }

    #[test]
    fn damaged_or_foreign_codebooks_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dim = 16;
        let rows = clustered(1_000, dim, 6, false);
        let dir = version_dir(tmp.path(), 1);
        trained(tmp.path(), 1, &rows, dim);
        let pristine = tmp.path().join("pristine");
        fs::create_dir(&pristine).unwrap();
        for name in [META_FILE, PIVOTS_FILE] {
            fs::copy(dir.join(name), pristine.join(name)).unwrap();
        }
        let restore = || {
            for name in [META_FILE, PIVOTS_FILE] {
                fs::copy(pristine.join(name), dir.join(name)).unwrap();
            }
        };
        // Any flipped byte of the pivots, anywhere.
        let len = fs::metadata(dir.join(PIVOTS_FILE)).unwrap().len() as usize;
        for at in [0, 40, len / 2, len - 1] {
            flip_byte(&dir.join(PIVOTS_FILE), at);
            let err = Codebook::open(&dir).unwrap_err();
            assert!(matches!(err, IndexError::Corrupted { .. }), "{at}: {err}");
            restore();
        }
        // A flipped byte of codebook.json, and a truncated one.
        flip_byte(&dir.join(META_FILE), 10);
        assert!(matches!(
            Codebook::open(&dir),
            Err(IndexError::Corrupted { .. })
        ));
        restore();
        fs::write(dir.join(META_FILE), "{\"format\":1}").unwrap();
        assert!(matches!(
            Codebook::open(&dir),
            Err(IndexError::Corrupted { .. })
        ));
        restore();
        // A format this build does not know, even with a valid checksum.
        let text = fs::read_to_string(dir.join(META_FILE)).unwrap();
        let body = text
            .lines()
            .next()
            .unwrap()
            .replace("\"format\":1", "\"format\":2");
        fs::write(
            dir.join(META_FILE),
            format!("{body}\n{:08x}\n", crc32fast::hash(body.as_bytes())),
        )
        .unwrap();
        let err = Codebook::open(&dir).unwrap_err().to_string();
        assert!(err.contains("format 2"), "{err}");
        restore();
        Codebook::open(&dir).unwrap();
        // The newest version is the one `latest` returns; a damaged newest
        // version is an error, not silently skipped.
        assert_eq!(latest(tmp.path()).unwrap().unwrap().version(), 1);
        trained(tmp.path(), 2, &rows, dim);
        assert_eq!(latest(tmp.path()).unwrap().unwrap().version(), 2);
        assert!(
            Codebook::train(tmp.path(), 2, &rows, dim, 8, 500, 1).is_err(),
            "a version is never overwritten"
        );
        flip_byte(&version_dir(tmp.path(), 2).join(PIVOTS_FILE), 100);
        assert!(latest(tmp.path()).is_err());
        assert!(latest(&tmp.path().join("none")).unwrap().is_none());
    }

    #[test]
    fn rows_from_elsewhere_drift_and_rows_like_the_sample_do_not() {
        let tmp = tempfile::tempdir().unwrap();
        let dim = 16;
        let rows = clustered(4_000, dim, 7, false);
        let codebook = trained(tmp.path(), 1, &rows[..2_000 * dim], dim);
        // The other half of the same distribution quantises as well.
        let same = codebook.quantisation_error(&rows[2_000 * dim..], 1_000);
        assert!(same < codebook.meta().train_error * 1.2, "{same}");
        assert!(!codebook.drifted(&rows[2_000 * dim..], 1.5, 1_000));
        // Rows around other centres do not.
        let other = clustered(2_000, dim, 8, false);
        assert!(codebook.drifted(&other, 1.5, 1_000));
        assert!(!codebook.drifted(&other, 0.0, 1_000), "0 turns drift off");
    }

    #[test]
    fn samples_are_spread_over_every_row() {
        assert_eq!(sample_rows(5, 10), vec![0, 1, 2, 3, 4]);
        let picked = sample_rows(1_000, 10);
        assert_eq!(picked.len(), 10);
        assert_eq!(picked[0], 0);
        assert!(picked[9] >= 900, "{picked:?}");
        assert!(picked.windows(2).all(|w| w[0] < w[1]));
    }
}
