//! The bulk path of an ingestion job (DESIGN.md section 5: bulk ingestion
//! builds sealed segments directly; it never pushes rows through a WAL).
//!
//! Two stages overlap:
//! - the reader (this task) reads row groups, validates and embeds rows on
//!   blocking threads and appends them to per-shard spill files on local
//!   disk — one *generation* of spills at a time;
//! - the builder (a second task) takes a full generation, builds one sealed
//!   DiskANN segment per shard, uploads it to `storage.segments_uri` when
//!   set (required in a cluster: workers download from there) and attaches
//!   it to its shard (every in-sync copy, in write order), then saves the
//!   checkpoint the reader had reached when the generation was closed.
//!
//! A generation closes when a shard's spill reaches `segment_rows` (or the
//! spills pass [`SPILL_BYTES`]); the channel between the stages holds one,
//! so at most three generations exist at once (filling, queued, building),
//! and memory is bounded by the segment being built, whatever the size of
//! the input. A killed job resumes from the last saved checkpoint: rows
//! read after it are read again and attached again, and an attached row
//! supersedes an earlier copy of its id, so nothing is duplicated or lost.

use parking_lot::Mutex;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use engram_index::disk::codebook::CodebookStore;
use engram_ingest::bulk::{BuiltSegment, ShardSpills, Spill, build_segment};
use engram_store::ObjectLocation;
use engram_worker::wire::SegmentObject;

use crate::backend::Collection;
use crate::error::{ApiError, Result};
use crate::ingest_job::{
    CHECKPOINT_FILE, Checkpoint, IngestSpec, RowGroupReader, Sink, counts, record_checkpoint, save,
};
use crate::jobs::Job;
use crate::service::{Engram, blocking};

/// Spilled bytes (all shards) that close a generation even if no shard
/// has `segment_rows` yet (many shards, few rows each).
const SPILL_BYTES: u64 = 4 << 30;

/// Rows per shard of one bulk segment when the job names none: the merge
/// policy's largest segment (`index.merge_max_segment_mb` of full vectors,
/// the memory a build may hold). Segments that size are never merged
/// again, only rewritten to drop deleted rows, so a bulk load writes each
/// row once. Segments of `index.seal_threshold` rows (the former default)
/// were merged four into one, and again, by the workers while the job was
/// still building: the 10M run of docs/benchmarks.md slowed from 12 s to
/// 50 s per segment under those merges.
fn default_segment_rows(index: &engram_core::config::IndexParams, dim: usize) -> u64 {
    index.merge_policy(dim, 0.0).max_segment_rows.max(1_000)
}

/// A closed generation: its spills and the reader's position after them.
struct Generation {
    number: u64,
    spills: ShardSpills,
    checkpoint: Checkpoint,
}

/// What the builder needs besides the generations.
struct Builder {
    engram: Engram,
    hosted: Collection,
    spec: IngestSpec,
    dir: PathBuf,
    work: PathBuf,
    store: Option<ObjectLocation>,
    /// Distinguishes this run's objects from a killed run's.
    run: String,
    /// Attached so far (rows, segments), for progress and the checkpoint.
    attached: Mutex<(u64, u64)>,
    /// The shard count rows are routed by (attaching refuses a collection
    /// resharded since).
    routed_by: u32,
    /// The job's PQ codebook, trained on the first spill and reused by
    /// every segment after it (kept in the job directory, so a resumed job
    /// keeps it too).
    codebooks: Arc<CodebookStore>,
    /// The newest codebook version uploaded beside the segments.
    uploaded_codebook: Mutex<u64>,
}

/// Runs the job's bulk path from `cp`; returns the final checkpoint.
pub(crate) async fn run(
    engram: &Engram,
    hosted: &Collection,
    job: &Arc<Job>,
    spec: &IngestSpec,
    dir: &Path,
    mut reader: RowGroupReader,
    cp: Checkpoint,
) -> Result<Checkpoint> {
    let config = engram.config();
    let store = match &config.storage.segments_uri {
        Some(uri) => Some(ObjectLocation::parse(uri, &config.storage)?),
        None if engram.cluster().is_some() => {
            return Err(ApiError::invalid(
                "bulk ingestion in a cluster needs object storage for its segments: set storage.segments_uri",
            ));
        }
        None => None,
    };
    let segment_rows = match spec.segment_rows {
        0 => default_segment_rows(&config.index, hosted.spec().dim),
        n => n as u64,
    };
    let shards = hosted.spec().shards;
    let work = dir.join("bulk");
    if work.exists() {
        fs_err::remove_dir_all(&work).map_err(|e| ApiError::internal(e.to_string()))?;
    }
    let builder = Arc::new(Builder {
        engram: engram.clone(),
        hosted: hosted.clone(),
        spec: spec.clone(),
        dir: dir.to_path_buf(),
        work: work.clone(),
        store,
        run: format!(
            "run-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis())
        ),
        attached: Mutex::new((cp.items_written, cp.segments)),
        routed_by: shards,
        codebooks: Arc::new(CodebookStore::open(&dir.join("codebooks"))?),
        uploaded_codebook: Mutex::new(0),
    });
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Generation>(1);
    let building = {
        let builder = builder.clone();
        let job_view = job.clone();
        tokio::spawn(async move {
            while let Some(generation) = rx.recv().await {
                builder.build_generation(generation, &job_view).await?;
            }
            Ok::<(), ApiError>(())
        })
    };

    let open = |number: u64| -> Result<Arc<Mutex<ShardSpills>>> {
        let spills = ShardSpills::create(&work.join(format!("g{number:06}")), shards)?;
        Ok(Arc::new(Mutex::new(spills)))
    };
    let mut number = 0u64;
    let mut spills = open(number)?;
    let mut read_cp = cp;
    let read = async {
        loop {
            let group = {
                let target = spills.clone();
                let sink: Sink = Arc::new(move |items| Ok(target.lock().append(items)?));
                reader.next_group(&mut read_cp, job, &sink).await?
            };
            let done = group.is_none();
            let (full, empty) = {
                let s = spills.lock();
                (
                    s.max_rows() >= segment_rows || s.bytes() >= SPILL_BYTES,
                    s.is_empty(),
                )
            };
            if full || (done && !empty) {
                let closed = std::mem::replace(&mut spills, open(number + 1)?);
                // The row group's sink (the only other owner) is gone.
                let closed = Arc::into_inner(closed)
                    .ok_or_else(|| ApiError::internal("spills still shared"))?
                    .into_inner();
                let generation = Generation {
                    number,
                    spills: closed,
                    checkpoint: read_cp.clone(),
                };
                number += 1;
                if tx.send(generation).await.is_err() {
                    break; // the builder failed; its error is reported below
                }
            }
            let mut view = read_cp.clone();
            (view.items_written, view.segments) = *builder.attached.lock();
            job.set_counts(counts(&view));
            if done {
                break;
            }
        }
        Ok::<(), ApiError>(())
    };
    let read_result = read.await;
    drop(tx);
    let build_result = building
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    read_result?;
    build_result?;
    // Everything read is attached: the final position and counts.
    let mut last = read_cp;
    (last.items_written, last.segments) = *builder.attached.lock();
    save(&dir.join(CHECKPOINT_FILE), &last)?;
    let _ = fs_err::remove_dir_all(&work);
    builder.delete_uploaded_segments().await;
    Ok(last)
}

impl Builder {
    /// Every segment is attached: the copies hold them (and primaries
    /// upload their own), so the job's uploads, this run's and killed
    /// runs', are deleted (each a copy of rows that unlearning would
    /// otherwise have to find). The codebooks stay. Failures are logged:
    /// an unlearning receipt lists what is left and its erasure deletes it.
    async fn delete_uploaded_segments(&self) {
        let Some(store) = &self.store else {
            return;
        };
        let prefix = format!("{}/job-{}", self.spec.collection, self.spec.id);
        let deleted = async {
            let mut deleted = 0usize;
            for (key, _) in store.list(&prefix).await? {
                if key.split('/').any(|part| part.starts_with("run-")) {
                    store.delete(&key).await?;
                    deleted += 1;
                }
            }
            Ok::<usize, engram_store::StoreError>(deleted)
        };
        match deleted.await {
            Ok(objects) => tracing::info!(
                job = self.spec.id,
                objects,
                "deleted the job's uploaded segments"
            ),
            Err(error) => {
                tracing::warn!(job = self.spec.id, %error, "could not delete the job's uploaded segments")
            }
        }
    }

    /// Uploads the job's current codebook beside its segments
    /// (`<collection>/job-<id>/codebooks/v<version>/`) once per version,
    /// so object storage holds what encoded them.
    async fn upload_codebook(&self) -> Result<()> {
        let (Some(store), Some(codebook)) = (&self.store, self.codebooks.current()) else {
            return Ok(());
        };
        if *self.uploaded_codebook.lock() >= codebook.version() {
            return Ok(());
        }
        let dir = codebook.dir().to_path_buf();
        let files = blocking(move || {
            let mut files = Vec::new();
            for entry in fs_err::read_dir(&dir).map_err(|e| ApiError::internal(e.to_string()))? {
                let entry = entry.map_err(|e| ApiError::internal(e.to_string()))?;
                let name = entry.file_name().to_string_lossy().to_string();
                let (bytes, crc32) = engram_index::disk::manifest::file_crc32(&entry.path())?;
                files.push(engram_store::CheckedFile { name, bytes, crc32 });
            }
            Ok(files)
        })
        .await?;
        let key = format!(
            "{}/job-{}/codebooks/v{:06}",
            self.spec.collection,
            self.spec.id,
            codebook.version()
        );
        store.upload(&key, codebook.dir(), &files).await?;
        *self.uploaded_codebook.lock() = codebook.version();
        Ok(())
    }

    /// Builds, uploads and attaches one segment per shard of `generation`,
    /// then saves its checkpoint. The next shard's build runs while the
    /// last one is uploaded and attached, so the cores stay busy with the
    /// graph build while object storage and the workers take the segment.
    async fn build_generation(&self, generation: Generation, job: &Job) -> Result<()> {
        let Generation {
            number,
            spills,
            mut checkpoint,
        } = generation;
        let spills: Vec<Spill> = blocking(move || Ok(spills.finish()?)).await?;
        let record = |rows: u64| {
            let mut attached = self.attached.lock();
            attached.0 += rows;
            attached.1 += 1;
            let mut view = checkpoint.clone();
            (view.items_written, view.segments) = *attached;
            job.set_counts(counts(&view));
        };
        let mut attaching = None;
        for spill in spills {
            if job.cancelled() {
                return Err(ApiError::invalid("cancelled"));
            }
            let build = self.build(number, &spill);
            let built = match attaching.take() {
                Some(attach) => {
                    let (built, rows) = tokio::join!(build, attach);
                    record(rows?);
                    built?
                }
                None => build.await?,
            };
            if job.cancelled() {
                // A suspended job attaches nothing more: another
                // coordinator may run it already.
                return Err(ApiError::invalid("cancelled"));
            }
            attaching = Some(Box::pin(self.attach(built)));
        }
        if let Some(attach) = attaching {
            record(attach.await?);
        }
        (checkpoint.items_written, checkpoint.segments) = *self.attached.lock();
        record_checkpoint(&self.dir, job, &self.spec, &checkpoint)?;
        tracing::info!(
            job = self.spec.id,
            generation = number,
            rows_read = checkpoint.rows_read,
            items = checkpoint.items_written,
            "bulk generation attached; checkpoint saved"
        );
        Ok(())
    }

    /// Builds one shard's segment of `generation` from its spill (which is
    /// removed once built).
    async fn build(&self, generation: u64, spill: &Spill) -> Result<ShardSegment> {
        let shard = spill.shard;
        let dir = self
            .work
            .join(format!("segment-g{generation:06}-s{shard:05}"));
        let (dim, metric) = (self.hosted.spec().dim, self.hosted.spec().metric);
        let params = self.engram.config().index.clone();
        let started = std::time::Instant::now();
        let built = {
            let (path, dir) = (spill.path.clone(), dir.clone());
            let codebooks = self.codebooks.clone();
            blocking(move || {
                let built = build_segment(&path, &dir, dim, metric, &params, &codebooks)?;
                fs_err::remove_file(&path).map_err(|e| ApiError::internal(e.to_string()))?;
                Ok(built)
            })
            .await?
        };
        Ok(ShardSegment {
            generation,
            shard,
            dir,
            built,
            build_s: started.elapsed().as_secs_f64(),
        })
    }

    /// Uploads a built segment (with the codebook that encoded it) and
    /// attaches it to its shard; returns its rows.
    async fn attach(&self, segment: ShardSegment) -> Result<u64> {
        let ShardSegment {
            generation,
            shard,
            dir: segment_dir,
            built,
            build_s,
        } = segment;
        self.upload_codebook().await?;
        let object = match &self.store {
            Some(store) => {
                let key = format!(
                    "{}/job-{}/{}/g{generation:06}-s{shard:05}",
                    self.spec.collection, self.spec.id, self.run
                );
                store.upload(&key, &segment_dir, &built.files).await?;
                Some(SegmentObject {
                    uri: store.uri.clone(),
                    key,
                    files: built.files.clone(),
                })
            }
            None => None,
        };
        let hosted = self.hosted.clone();
        let dir = segment_dir.clone();
        let routed_by = self.routed_by;
        let attached =
            blocking(move || Ok(hosted.attach_segment(shard, routed_by, &dir, object.as_ref())?))
                .await?;
        if segment_dir.exists() {
            let _ = fs_err::remove_dir_all(&segment_dir);
        }
        self.engram.metrics().items_added(built.rows);
        tracing::info!(
            job = self.spec.id,
            shard,
            rows = built.rows,
            replaced = attached.replaced,
            build_s,
            "bulk segment attached"
        );
        Ok(built.rows as u64)
    }
}

/// One shard's segment of a generation, built and not yet attached.
struct ShardSegment {
    generation: u64,
    shard: u32,
    dir: PathBuf,
    built: BuiltSegment,
    build_s: f64,
}

#[cfg(test)]
mod tests {
    use super::default_segment_rows;
    use engram_core::config::IndexParams;
    use engram_core::merge_policy::{SegmentSize, plan};

    #[test]
    fn default_bulk_segments_are_never_merged_again() {
        let index = IndexParams::default();
        // 2 GiB of full vectors: 4 Mi rows at 128-d, a tenth at 1280-d.
        assert_eq!(default_segment_rows(&index, 128), 4 << 20);
        assert_eq!(default_segment_rows(&index, 1280), 419_430);
        for dim in [8, 128, 1280] {
            let rows = default_segment_rows(&index, dim);
            let policy = index.merge_policy(dim, index.compact_deleted_fraction);
            let full = SegmentSize { rows, live: rows };
            assert!(
                plan(&[full; 12], &policy).is_empty(),
                "a shard of full bulk segments ({rows} rows at {dim}-d) was planned for a merge"
            );
        }
        // The former default (the seal threshold) was merged four into one.
        let small = index.seal_threshold as u64;
        let policy = index.merge_policy(128, index.compact_deleted_fraction);
        let segment = SegmentSize {
            rows: small,
            live: small,
        };
        assert!(!plan(&[segment; 4], &policy).is_empty());
    }
}
