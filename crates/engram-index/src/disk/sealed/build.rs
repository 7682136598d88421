//! Building a sealed segment with `diskann-disk`'s builder.

use fs_err as fs;
use std::io::Write;
use std::path::Path;

use diskann::utils::ONE;
use diskann_disk::QuantizationType;
use diskann_disk::build::builder::build::DiskIndexBuilder;
use diskann_disk::data_model::AdHoc;
use diskann_disk::disk_index_build_parameter::{
    DISK_SECTOR_LEN, DiskIndexBuildParameters, MemoryBudget, NumPQChunks,
};
use diskann_disk::storage::DiskIndexWriter;
use diskann_providers::model::IndexConfiguration;
use diskann_providers::storage::FileStorageProvider;
use diskann_vector::distance::Metric as DiskMetric;

use engram_core::Metric;
use engram_core::config::IndexParams;

use super::deleted::{DELETED_FILE, write_deleted};
use super::{IDS_FILE, prefix};
use crate::disk::manifest::{FORMAT, SegmentManifest};
use crate::error::{IndexError, Result};

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
/// Blocking and CPU-heavy (DiskANN calls `block_on` inside): call it from
/// a blocking thread, never from async code.
pub(super) fn build(
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
    let graph = crate::disk::graph_config(params)?;
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
