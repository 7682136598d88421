//! Building a sealed segment: DiskANN's disk layout from Engram's own
//! pipeline over `diskann-disk`'s parts.
//!
//! `diskann-disk`'s `DiskIndexBuilder` trains a new PQ codebook inside
//! every build and offers no way to pass one; that training was 80 % of a
//! bulk load (docs/benchmarks.md). This module runs the same three steps
//! the builder runs for a full-precision one-shot build, with the codebook
//! as an input: (1) encode every row with a [`Codebook`] (shared, or
//! trained on this segment's rows when none is given) into DiskANN's
//! `_pq_pivots.bin` / `_pq_compressed.bin`; (2) build the Vamana graph in
//! memory with DiskANN's async index (medoid start point, parallel inserts,
//! final prune) and save it; (3) lay graph and full vectors out in 4 KiB
//! sectors with `DiskIndexWriter`. The files are the ones DiskANN's
//! searcher reads, so serving is unchanged.

use fs_err as fs;
use std::io::Write;
use std::path::Path;

use diskann::provider::DefaultContext;
use diskann_disk::data_model::AdHoc;
use diskann_disk::disk_index_build_parameter::DISK_SECTOR_LEN;
use diskann_disk::storage::DiskIndexWriter;
use diskann_providers::index::diskann_async::new_index;
use diskann_providers::model::graph::provider::async_::common::{FullPrecision, NoDeletes};
use diskann_providers::model::graph::provider::async_::inmem::SetStartPoints;
use diskann_providers::storage::{
    DiskGraphOnly, FileStorageProvider, SaveWith, get_compressed_pq_file, get_pq_pivot_file,
};
use diskann_providers::utils::{
    MAX_MEDOID_SAMPLE_SIZE, create_rnd_from_optional_seed, find_medoid_with_sampling,
};
use diskann_utils::io::Metadata;
use rayon::prelude::*;

use engram_core::Metric;
use engram_core::config::IndexParams;

use super::deleted::{DELETED_FILE, write_deleted};
use super::{IDS_FILE, prefix};
use crate::disk::codebook::Codebook;
use crate::disk::manifest::{FORMAT, SegmentManifest};
use crate::error::{IndexError, Result};

/// The medoid sample's seed: builds of the same rows are reproducible.
const MEDOID_SEED: u64 = 0x5eed_0fe4_a3c5;

fn build_threads(params: &IndexParams) -> usize {
    if params.build_threads > 0 {
        params.build_threads
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

/// Builds a segment of `ids` with their prepared `vectors` (row-major,
/// `ids.len() * dim` floats) into `dir`, which must not exist. The build
/// happens in `<dir>.building` and is renamed into place when complete
/// and checksummed, so a crash never leaves a half-built segment at `dir`.
///
/// `codebook` encodes the rows when given (its dimension and chunk count
/// must match); without one the segment trains its own on a sample of its
/// rows.
///
/// Blocking and CPU-heavy (it runs its own tokio runtime inside): call it
/// from a blocking thread, never from async code.
pub(super) fn build(
    dir: &Path,
    ids: &[u64],
    vectors: &[f32],
    dim: usize,
    metric: Metric,
    params: &IndexParams,
    codebook: Option<&Codebook>,
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
    let threads = build_threads(params);
    let pq_bytes = params.pq_bytes.min(dim);
    let started = std::time::Instant::now();
    let own = match codebook {
        Some(shared) => {
            if shared.meta().dim != dim || shared.meta().chunks != pq_bytes {
                return Err(IndexError::Invalid(format!(
                    "codebook v{} encodes {} dimensions in {} bytes, the segment needs {dim} in {pq_bytes}",
                    shared.version(),
                    shared.meta().dim,
                    shared.meta().chunks
                )));
            }
            None
        }
        // No shared codebook: one of its own, as DiskANN's builder trains.
        None => Some(Codebook::train(
            &building.join("codebook"),
            1,
            vectors,
            dim,
            pq_bytes,
            params.codebook_sample_rows,
            threads,
        )?),
    };
    let shared_version = codebook.filter(|_| own.is_none()).map(Codebook::version);
    let codebook = own
        .as_ref()
        .or(codebook)
        .ok_or_else(|| IndexError::Invalid("no codebook".into()))?;
    let trained_s = started.elapsed().as_secs_f64();
    let index_prefix = prefix(&building);
    write_codes(&index_prefix, codebook, vectors, dim, threads)?;
    let pq_s = started.elapsed().as_secs_f64();

    let writer = DiskIndexWriter::new(
        data_file.display().to_string(),
        index_prefix,
        None,
        DISK_SECTOR_LEN,
    )?;
    build_graph(&writer, vectors, dim, params, threads)?;
    let graph_s = started.elapsed().as_secs_f64();
    writer.create_disk_layout::<AdHoc<f32>, _>(&FileStorageProvider)?;
    writer.index_build_cleanup(&FileStorageProvider)?;
    // The full vectors now live in the disk index's sectors.
    fs::remove_file(&data_file)?;
    let codebook_dir = building.join("codebook");
    if codebook_dir.exists() {
        fs::remove_dir_all(&codebook_dir)?;
    }
    tracing::debug!(
        rows = ids.len(),
        dim,
        shared_codebook = ?shared_version,
        train_s = trained_s,
        encode_s = pq_s - trained_s,
        graph_s = graph_s - pq_s,
        layout_s = started.elapsed().as_secs_f64() - graph_s,
        "segment built"
    );

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
        codebook: shared_version,
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

/// Encodes every row with `codebook` into DiskANN's PQ files under
/// `index_prefix`: the pivots (a copy of the codebook's) and the codes.
fn write_codes(
    index_prefix: &str,
    codebook: &Codebook,
    vectors: &[f32],
    dim: usize,
    threads: usize,
) -> Result<()> {
    fs::copy(codebook.pivots_file(), get_pq_pivot_file(index_prefix))?;
    let chunks = codebook.meta().chunks;
    let rows = vectors.len() / dim;
    let mut codes = vec![0u8; rows * chunks];
    const BATCH: usize = 4096;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| IndexError::DiskAnn(e.to_string()))?;
    pool.install(|| {
        vectors
            .par_chunks(BATCH * dim)
            .zip(codes.par_chunks_mut(BATCH * chunks))
            .try_for_each(|(rows, codes)| codebook.encode(rows, codes))
    })?;
    let mut out = std::io::BufWriter::new(fs::File::create(get_compressed_pq_file(index_prefix))?);
    Metadata::new(rows, chunks)
        .map_err(|e| IndexError::Invalid(format!("{rows} rows of {chunks} bytes: {e:?}")))?
        .write(&mut out)?;
    out.write_all(&codes)?;
    out.flush()?;
    Ok(())
}

/// Builds the Vamana graph of `vectors` in memory and saves it where the
/// disk writer reads it (`writer.get_mem_index_file()`), as
/// `DiskIndexBuilder`'s one-shot full-precision path does: the medoid of a
/// sample as start point, rows inserted by `threads` tasks, a final prune.
fn build_graph(
    writer: &DiskIndexWriter,
    vectors: &[f32],
    dim: usize,
    params: &IndexParams,
    threads: usize,
) -> Result<()> {
    let rows = vectors.len() / dim;
    let config = crate::disk::graph_config(params)?;
    let provider = crate::disk::provider_parameters(&config, dim, rows);
    let mut rng = create_rnd_from_optional_seed(Some(MEDOID_SEED));
    let (medoid, medoid_id) = find_medoid_with_sampling::<f32, _>(
        &writer.get_dataset_file(),
        &FileStorageProvider,
        MAX_MEDOID_SAMPLE_SIZE,
        &mut rng,
    )?;
    let start = u32::try_from(medoid_id)
        .map_err(|_| IndexError::Invalid(format!("medoid {medoid_id} is not a u32 slot")))?;
    let slots = u32::try_from(rows)
        .map_err(|_| IndexError::Invalid(format!("{rows} rows do not fit u32 slots")))?;
    let index = new_index::<f32, _>(config, provider, NoDeletes)?;
    index
        .provider()
        .set_start_points(std::iter::once(medoid.as_slice()))?;
    // Inserts and prunes are CPU-bound futures: each of `threads` scoped
    // threads drives its share with the runtime's `block_on`, borrowing the
    // rows (spawned tasks would need them copied into an `Arc`, a second
    // copy of the segment's vectors beside the index's own).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let tasks = threads.max(1) as u32;
    let in_parallel = |total: u32, work: &(dyn Fn(std::ops::Range<u32>) -> Result<()> + Sync)| {
        let per_task = total.div_ceil(tasks).max(1);
        std::thread::scope(|scope| {
            let running: Vec<_> = (0..tasks)
                .map(|task| {
                    let range = (task * per_task).min(total)..((task + 1) * per_task).min(total);
                    scope.spawn(move || work(range))
                })
                .collect();
            running.into_iter().try_for_each(|thread| {
                thread
                    .join()
                    .map_err(|_| IndexError::DiskAnn("a build thread panicked".into()))?
            })
        })
    };
    in_parallel(slots, &|range| {
        runtime.handle().block_on(async {
            for slot in range {
                let at = slot as usize * dim;
                index
                    .insert(
                        &FullPrecision,
                        &DefaultContext,
                        &slot,
                        &vectors[at..at + dim],
                    )
                    .await?;
            }
            Ok(())
        })
    })?;
    in_parallel(index.provider().total_points() as u32, &|range| {
        runtime.handle().block_on(async {
            index
                .prune_range(&FullPrecision, &DefaultContext, range)
                .await?;
            Ok(())
        })
    })?;
    runtime.block_on(index.save_with(
        &FileStorageProvider,
        &(start, DiskGraphOnly::new(&writer.get_mem_index_file())),
    ))?;
    Ok(())
}
