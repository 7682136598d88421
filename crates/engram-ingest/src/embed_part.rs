//! `engram embed`: image Parquet (or `image_uri` rows) on object storage ->
//! embedding Parquet (`id`, `label`, `source`, `weight`, `embedding`), as N
//! independent parts, so that batch engines (Kubernetes Indexed Jobs,
//! Spark, Ray) can spread the work over a fleet without a scheduler here.
//!
//! The input's row groups, in file order, are split by rows into N
//! contiguous runs ([`part_range`], pure): N processes given `--part i/N`
//! over the same input cover every row group exactly once. A part writes
//! `part-IIIII-of-NNNNN.parquet` (rows in input order), its rejects and,
//! last, its manifest (what it read, with which model, every file's size
//! and CRC32). The manifest is the commit point: a part whose manifest
//! matches the plan and the model is skipped on a retry; a part killed
//! before it is redone, and its objects replaced whole (each upload
//! appears at once), so no row is written twice.

use arrow_array::builder::{FixedSizeListBuilder, Float32Builder};
use arrow_array::{ArrayRef, Float32Array, RecordBatch, StringArray, UInt64Array};
use arrow_schema::{DataType, Field, Schema};
use object_store::ObjectStoreExt;
use object_store::path::Path as ObjectPath;
use parquet::arrow::ArrowWriter;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use engram_core::Metric;
use engram_core::collection::{MAX_LABEL_BYTES, MAX_SOURCE_BYTES};
use engram_store::{CheckedFile, ObjectLocation};

use crate::embedder::OnnxEmbedder;
use crate::error::{IngestError, Result};
use crate::items::{Item, Reject, Target, prepare_rows, write_rejects};
use crate::rows::{Columns, ParquetFile};
use crate::source::{Source, SourceFile};

const MANIFEST_FORMAT: u32 = 1;

/// One row group of one input file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unit {
    pub file: String,
    pub size: u64,
    pub group: usize,
    pub rows: u64,
}

/// Every row group of the input, files in path order.
pub async fn plan(source: &Source, columns: &Columns) -> Result<Vec<Unit>> {
    let mut units = Vec::new();
    for file in source.files().await? {
        let parquet = ParquetFile::open(source.store.clone(), &file, columns).await?;
        for group in 0..parquet.row_groups() {
            units.push(Unit {
                file: file.path.to_string(),
                size: file.size,
                group,
                rows: parquet.row_group_rows(group),
            });
        }
    }
    Ok(units)
}

/// The units of part `part` of `parts`: the contiguous run whose first
/// rows start at or after `part / parts` of all rows. Consecutive parts
/// meet, so the parts cover every unit exactly once, in order.
pub fn part_range(rows: &[u64], part: usize, parts: usize) -> std::ops::Range<usize> {
    let total: u64 = rows.iter().sum();
    let boundary = |k: usize| -> usize {
        if k == 0 {
            return 0;
        }
        if k >= parts {
            return rows.len();
        }
        let target = (total as u128 * k as u128 / parts as u128) as u64;
        let mut start = 0u64;
        for (i, r) in rows.iter().enumerate() {
            if start >= target {
                return i;
            }
            start += r;
        }
        rows.len()
    };
    boundary(part)..boundary(part + 1)
}

/// What a finished part wrote; stored next to it as its commit point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartManifest {
    pub format: u32,
    pub input: String,
    pub part: usize,
    pub parts: usize,
    pub units: Vec<Unit>,
    pub model_sha256: String,
    pub dim: usize,
    pub provider: String,
    pub rows_read: u64,
    pub rows_written: u64,
    pub rejected: u64,
    /// The part's Parquet file and, when rows were rejected, its rejects.
    pub files: Vec<CheckedFile>,
    pub seconds: f64,
}

/// A part to run.
pub struct PartJob<'a> {
    pub input: &'a Source,
    pub output: &'a ObjectLocation,
    pub columns: &'a Columns,
    pub embedder: Arc<OnnxEmbedder>,
    /// sha256 of the model file (recorded, and compared on a retry).
    pub model_sha256: String,
    pub part: usize,
    pub parts: usize,
    pub batch_rows: usize,
    /// Local scratch directory for the part's files before upload.
    pub work_dir: &'a Path,
}

/// What running a part did.
#[derive(Debug, Clone, PartialEq)]
pub struct PartOutcome {
    pub manifest: PartManifest,
    /// The part was already complete (same plan, same model): nothing done.
    pub skipped: bool,
}

/// The object names of part `part` of `parts`.
pub fn part_name(part: usize, parts: usize) -> String {
    format!("part-{part:05}-of-{parts:05}")
}

fn runtime(reason: impl std::fmt::Display) -> IngestError {
    IngestError::Runtime(reason.to_string())
}

/// Runs one part (see the module doc).
pub async fn run_part(job: PartJob<'_>) -> Result<PartOutcome> {
    if job.parts == 0 || job.part >= job.parts {
        return Err(runtime(format!(
            "part {}/{} does not exist: parts are 0/N .. N-1/N",
            job.part, job.parts
        )));
    }
    let started = Instant::now();
    let all = plan(job.input, job.columns).await?;
    let rows: Vec<u64> = all.iter().map(|u| u.rows).collect();
    let units = all[part_range(&rows, job.part, job.parts)].to_vec();
    let name = part_name(job.part, job.parts);
    let manifest_key = format!("{name}.manifest.json");
    if let Some(done) = read_manifest(job.output, &manifest_key).await?
        && done.units == units
        && done.model_sha256 == job.model_sha256
        && done.input == job.input.uri
    {
        tracing::info!(
            part = job.part,
            parts = job.parts,
            "part already complete; skipped"
        );
        return Ok(PartOutcome {
            manifest: done,
            skipped: true,
        });
    }

    fs_err::create_dir_all(job.work_dir)?;
    let dim = job.embedder.dim();
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::UInt64, false),
        Field::new("label", DataType::Utf8, false),
        Field::new("source", DataType::Utf8, true),
        Field::new("weight", DataType::Float32, false),
        Field::new(
            "embedding",
            DataType::FixedSizeList(
                Arc::new(Field::new("item", DataType::Float32, true)),
                dim as i32,
            ),
            false,
        ),
    ]));
    let data_name = format!("{name}.parquet");
    let data_path = job.work_dir.join(&data_name);
    let mut writer = ArrowWriter::try_new(fs_err::File::create(&data_path)?, schema.clone(), None)
        .map_err(runtime)?;
    let mut rejects: Vec<Reject> = Vec::new();
    let (mut rows_read, mut rows_written) = (0u64, 0u64);
    let mut open: Option<(String, ParquetFile)> = None;
    for unit in &units {
        if open.as_ref().is_none_or(|(f, _)| *f != unit.file) {
            let file = SourceFile {
                path: ObjectPath::from(unit.file.as_str()),
                size: unit.size,
            };
            let parquet = ParquetFile::open(job.input.store.clone(), &file, job.columns).await?;
            open = Some((unit.file.clone(), parquet));
        }
        let (_, parquet) = open.as_ref().expect("opened above");
        let batches: parking_lot::Mutex<Vec<(Vec<Item>, Vec<Reject>)>> = Default::default();
        parquet
            .read_row_group(unit.group, job.batch_rows, |rows| {
                let store = job.input.store.clone();
                let embedder = job.embedder.clone();
                let file = unit.file.clone();
                let out = &batches;
                async move {
                    let (mut rows, failed) = crate::fetch::fetch_images(&store, &file, rows).await;
                    // Lineage: a row without a source gets the object it came from.
                    for row in rows.iter_mut().filter(|r| r.source.is_none()) {
                        row.source = Some(file.clone());
                    }
                    let (items, mut bad) = tokio::task::spawn_blocking(move || {
                        let target = Target {
                            dim,
                            metric: Metric::L2,
                            embedder: Some(&embedder),
                            max_label: MAX_LABEL_BYTES,
                            max_source: MAX_SOURCE_BYTES,
                            // Embedding Parquet has no column for them.
                            thumbnail_px: 0,
                        };
                        prepare_rows(&file, rows, &target)
                    })
                    .await
                    .map_err(runtime)??;
                    bad.extend(failed);
                    out.lock().push((items, bad));
                    Ok::<(), IngestError>(())
                }
            })
            .await?;
        for (items, bad) in batches.into_inner() {
            rows_written += items.len() as u64;
            if !items.is_empty() {
                writer
                    .write(&batch_of(&schema, &items, dim)?)
                    .map_err(runtime)?;
            }
            rejects.extend(bad);
        }
        // One output row group per input row group.
        writer.flush().map_err(runtime)?;
        rows_read += unit.rows;
    }
    writer.into_inner().map_err(runtime)?.sync_all()?;
    let mut files = vec![checked(&data_path, &data_name)?];
    if !rejects.is_empty() {
        let rejects_name = format!("{name}.rejects.parquet");
        let path = job.work_dir.join(&rejects_name);
        rejects.sort_by(|a, b| (&a.file, a.row).cmp(&(&b.file, b.row)));
        write_rejects(&path, &rejects)?;
        files.push(checked(&path, &rejects_name)?);
    }
    job.output.upload("", job.work_dir, &files).await?;
    let manifest = PartManifest {
        format: MANIFEST_FORMAT,
        input: job.input.uri.clone(),
        part: job.part,
        parts: job.parts,
        units,
        model_sha256: job.model_sha256.clone(),
        dim,
        provider: job.embedder.provider().to_string(),
        rows_read,
        rows_written,
        rejected: rejects.len() as u64,
        files,
        seconds: started.elapsed().as_secs_f64(),
    };
    let bytes = serde_json::to_vec_pretty(&manifest).map_err(runtime)?;
    job.output
        .store
        .put(&job.output.object(&manifest_key), bytes.into())
        .await
        .map_err(|e| runtime(format!("{}: {e}", job.output.uri_of(&manifest_key))))?;
    for file in &manifest.files {
        let _ = fs_err::remove_file(job.work_dir.join(&file.name));
    }
    Ok(PartOutcome {
        manifest,
        skipped: false,
    })
}

async fn read_manifest(output: &ObjectLocation, key: &str) -> Result<Option<PartManifest>> {
    match output.store.get(&output.object(key)).await {
        Ok(got) => {
            let bytes = got.bytes().await.map_err(runtime)?;
            // An unreadable manifest is an unfinished part: redo it.
            Ok(serde_json::from_slice(&bytes).ok())
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(runtime(format!("{}: {e}", output.uri_of(key)))),
    }
}

fn checked(path: &Path, name: &str) -> Result<CheckedFile> {
    let (bytes, crc32) = engram_index::disk::manifest::file_crc32(path)?;
    Ok(CheckedFile {
        name: name.to_string(),
        bytes,
        crc32,
    })
}

fn batch_of(schema: &Arc<Schema>, items: &[Item], dim: usize) -> Result<RecordBatch> {
    let mut embeddings = FixedSizeListBuilder::new(Float32Builder::new(), dim as i32);
    for item in items {
        embeddings.values().append_slice(&item.vector);
        embeddings.append(true);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt64Array::from_iter_values(items.iter().map(|i| i.id))),
        Arc::new(StringArray::from_iter_values(
            items.iter().map(|i| i.label.as_str()),
        )),
        Arc::new(StringArray::from_iter(
            items.iter().map(|i| i.source.as_deref()),
        )),
        Arc::new(Float32Array::from_iter_values(
            items.iter().map(|i| i.weight),
        )),
        Arc::new(embeddings.finish()),
    ];
    RecordBatch::try_new(schema.clone(), columns).map_err(runtime)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parts_split_rows_evenly() {
        let rows = [100u64; 8];
        let ranges: Vec<_> = (0..4).map(|p| part_range(&rows, p, 4)).collect();
        assert_eq!(ranges, vec![0..2, 2..4, 4..6, 6..8]);
        assert_eq!(part_range(&rows, 0, 1), 0..8);
        // More parts than units: some parts are empty, none overlaps.
        let ranges: Vec<_> = (0..3).map(|p| part_range(&[5, 5], p, 3)).collect();
        assert_eq!(ranges, vec![0..1, 1..2, 2..2]);
    }

    proptest! {
        #[test]
        fn parts_cover_every_unit_once_in_order(
            rows in proptest::collection::vec(0u64..1000, 0..40),
            parts in 1usize..12,
        ) {
            let mut next = 0;
            for part in 0..parts {
                let range = part_range(&rows, part, parts);
                prop_assert_eq!(range.start, next);
                prop_assert!(range.end >= range.start);
                next = range.end;
            }
            prop_assert_eq!(next, rows.len());
        }
    }
}
