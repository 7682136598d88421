//! Ingestion jobs: Parquet files on object storage -> (images embedded) ->
//! items written through the shards' durable write path.
//!
//! A job is a directory `<data_dir>/jobs/<id>/`: `job.bin` (what to ingest)
//! and `checkpoint.bin` (which file and row group come next, and the counts),
//! both checksummed and replaced atomically, plus one rejects Parquet part
//! per row group that had bad rows (merged into `rejects.parquet` at the
//! end). The checkpoint advances only after a row group's items are durable,
//! and ids are either given or derived from file and row, so a job that was
//! killed and resumes rewrites the same items (upserts): no duplicates, no
//! losses. Memory stays bounded: one batch of rows at a time.

use object_store::path::Path as ObjectPath;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use engram_ingest::items::{Item, Reject, Target, prepare_rows};
use engram_ingest::rows::{Columns, ParquetFile};
use engram_ingest::source::{Source, SourceFile};
use engram_store::checksummed;
use engram_worker::ShardedCollection;

use crate::backend::Collection;

use crate::error::{ApiError, ErrorCode, Result};
use crate::ingest_rejects::{REJECTS_DIR, RejectsPart, RejectsStore, note_part};
use crate::jobs::{Job, JobStatus};
use crate::meta::now;
use crate::service::{Engram, blocking};

const JOB_FILE: &str = "job.bin";
pub(crate) const CHECKPOINT_FILE: &str = "checkpoint.bin";

/// What an ingestion job reads, as submitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IngestSpec {
    pub id: u64,
    pub collection: String,
    pub uri: String,
    pub columns: Columns,
    /// The job fails once rejected rows exceed this share of rows read.
    pub max_reject_share: f64,
    /// Rows per batch (bounds memory).
    pub batch_rows: usize,
    pub started_at: String,
    /// Build sealed segments from the rows and attach them (the bulk path)
    /// instead of writing rows through the shards' WAL.
    #[serde(default)]
    pub bulk: bool,
    /// Bulk path: rows per shard that trigger building segments (0: the
    /// index's seal threshold).
    #[serde(default)]
    pub segment_rows: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    pub path: String,
    pub size: u64,
    pub rows: u64,
}

/// What a caller asks of an ingestion job.
#[derive(Debug, Clone)]
pub struct IngestOptions {
    pub uri: String,
    pub columns: Columns,
    pub max_reject_share: f64,
    pub batch_rows: usize,
    pub bulk: bool,
    pub segment_rows: usize,
}

/// A job's parameters as its status shows them.
fn params_of(spec: &IngestSpec) -> serde_json::Value {
    json!({
        "uri": spec.uri,
        "columns": spec.columns,
        "max_reject_share": spec.max_reject_share,
        "batch_rows": spec.batch_rows,
        "bulk": spec.bulk,
        "segment_rows": spec.segment_rows,
    })
}

/// Where a job stands; rewritten after every row group (stream path) or
/// after every attached generation of segments (bulk path).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub files: Vec<FileEntry>,
    /// Next file and row group to read.
    pub file: usize,
    pub row_group: usize,
    pub rows_read: u64,
    pub items_written: u64,
    pub rejected: u64,
    /// Sealed segments attached (bulk path).
    #[serde(default)]
    pub segments: u64,
    /// `running`, `succeeded`, `failed` or `cancelled`.
    pub state: String,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub report: Option<serde_json::Value>,
    /// The rejects parts written so far (`ingest_rejects.rs`).
    #[serde(default)]
    pub rejects_parts: Vec<RejectsPart>,
}

fn io(e: std::io::Error) -> ApiError {
    ApiError::internal(e.to_string())
}

fn load<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let bytes = checksummed::read_verified(path)?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::internal(format!("{} is unreadable: {e}", path.display())))
}

pub(crate) fn save<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let bytes = serde_json::to_vec(value).map_err(|e| ApiError::internal(e.to_string()))?;
    checksummed::write_atomic(path, &bytes)?;
    Ok(())
}

/// Saves the job's checkpoint and makes it the job's resume point (what
/// a coordinator taking the job over runs it on from, in a cluster).
pub(crate) fn record_checkpoint(
    dir: &Path,
    job: &Job,
    spec: &IngestSpec,
    cp: &Checkpoint,
) -> Result<()> {
    save(&dir.join(CHECKPOINT_FILE), cp)?;
    job.set_resume(resume_point(spec, cp));
    Ok(())
}

/// What a job's resume point holds: its spec and checkpoint.
pub(crate) fn resume_point(spec: &IngestSpec, cp: &Checkpoint) -> serde_json::Value {
    json!({ "spec": spec, "checkpoint": cp })
}

/// A resume point read back.
#[derive(Deserialize)]
pub(crate) struct ResumePoint {
    pub spec: IngestSpec,
    pub checkpoint: Checkpoint,
}

pub fn jobs_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("jobs")
}

/// Persisted ingest jobs: `(spec, checkpoint)` for each job directory.
pub fn persisted(data_dir: &Path) -> Result<Vec<(IngestSpec, Checkpoint)>> {
    let dir = jobs_dir(data_dir);
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for entry in fs_err::read_dir(&dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if !path.join(JOB_FILE).exists() {
            continue;
        }
        let spec: IngestSpec = load(&path.join(JOB_FILE))?;
        let checkpoint: Checkpoint = if path.join(CHECKPOINT_FILE).exists() {
            load(&path.join(CHECKPOINT_FILE))?
        } else {
            Checkpoint {
                state: "running".into(),
                ..Checkpoint::default()
            }
        };
        out.push((spec, checkpoint));
    }
    out.sort_by_key(|(s, _)| s.id);
    Ok(out)
}

/// Creates the job's directory and description.
pub fn create(data_dir: &Path, spec: &IngestSpec) -> Result<()> {
    let dir = jobs_dir(data_dir).join(spec.id.to_string());
    fs_err::create_dir_all(dir.join(REJECTS_DIR)).map_err(io)?;
    save(&dir.join(JOB_FILE), spec)
}

pub(crate) fn counts(cp: &Checkpoint) -> serde_json::Value {
    json!({
        "files": cp.files.len(),
        "files_done": cp.file,
        "rows_read": cp.rows_read,
        "items_written": cp.items_written,
        "rejected": cp.rejected,
        "segments": cp.segments,
    })
}

/// Runs (or resumes) a job to its end; records the outcome in the
/// checkpoint and on `job`.
pub async fn run(engram: Engram, hosted: Collection, job: Arc<Job>, spec: IngestSpec) {
    let dir = jobs_dir(&engram.data_dir()).join(spec.id.to_string());
    // In its own task so that a panic ends the job as failed instead of
    // leaving it `running` for ever.
    let task = {
        let (engram, hosted, job, spec, dir) = (
            engram.clone(),
            hosted.clone(),
            job.clone(),
            spec.clone(),
            dir.clone(),
        );
        tokio::spawn(async move { ingest(&engram, &hosted, &job, &spec, &dir).await })
    };
    let outcome = task
        .await
        .unwrap_or_else(|e| Err(ApiError::internal(format!("the job stopped on a bug: {e}"))));
    if job.suspended() {
        // Another coordinator runs it on (or will): the checkpoint stays
        // `running` and the outcome is theirs to record.
        tracing::warn!(
            job = spec.id,
            "ingest job stopped here: this coordinator no longer holds it"
        );
        job.finish(Err("stopped: another coordinator runs it".into()));
        return;
    }
    let mut cp: Checkpoint = load(&dir.join(CHECKPOINT_FILE)).unwrap_or_default();
    match &outcome {
        Ok(report) => {
            cp.state = "succeeded".into();
            cp.report = Some(report.clone());
        }
        Err(_) if job.cancelled() => cp.state = "cancelled".into(),
        Err(e) => {
            cp.state = "failed".into();
            cp.error = Some(e.to_string());
            tracing::warn!(job = spec.id, error = %e, "ingest job failed");
        }
    }
    if let Err(e) = save(&dir.join(CHECKPOINT_FILE), &cp) {
        tracing::error!(job = spec.id, error = %e, "could not record the end of an ingest job");
    }
    job.finish(outcome.map_err(|e| e.to_string()));
}

async fn ingest(
    engram: &Engram,
    hosted: &Collection,
    job: &Arc<Job>,
    spec: &IngestSpec,
    dir: &Path,
) -> Result<serde_json::Value> {
    let started = Instant::now();
    let source = engram.open_request_source(&spec.uri)?;
    let checkpoint_path = dir.join(CHECKPOINT_FILE);
    let mut cp: Checkpoint = if checkpoint_path.exists() {
        load(&checkpoint_path)?
    } else {
        let mut files = Vec::new();
        for file in source.files().await? {
            let parquet = ParquetFile::open(source.store.clone(), &file, &spec.columns).await?;
            files.push(FileEntry {
                path: file.path.to_string(),
                size: file.size,
                rows: parquet.rows(),
            });
        }
        if files.is_empty() {
            return Err(ApiError::invalid(format!(
                "no Parquet files at {}",
                spec.uri
            )));
        }
        let cp = Checkpoint {
            files,
            state: "running".into(),
            ..Checkpoint::default()
        };
        save(&checkpoint_path, &cp)?;
        cp
    };
    job.set_resume(resume_point(spec, &cp));
    let resumed_rows = cp.rows_read;
    job.set_total(cp.files.iter().map(|f| f.rows).sum());
    job.advance(cp.rows_read);
    job.set_counts(counts(&cp));
    let embedder = match &hosted.spec().embedder {
        Some(name) => Some(engram.embedder_named(name)?),
        None => None,
    };
    let rejects = Arc::new(RejectsStore::open(engram, &spec.collection, spec.id, dir)?);
    let reader = RowGroupReader {
        rejects: rejects.clone(),
        hosted: hosted.clone(),
        embedder,
        thumbnail_px: engram.config().collections.thumbnail_px,
        source,
        spec: spec.clone(),
        dir: dir.to_path_buf(),
        open: None,
    };
    if spec.bulk {
        cp = crate::ingest_bulk::run(engram, hosted, job, spec, dir, reader, cp).await?;
    } else {
        let mut reader = reader;
        let sink_target = hosted.clone();
        let writer = job.clone();
        let sink: Sink = Arc::new(move |items: &[Item]| {
            // A suspended job writes nothing more: another coordinator may
            // run it already.
            if writer.suspended() {
                return Err(ApiError::invalid("cancelled"));
            }
            write_items(sink_target.as_ref(), items)
        });
        while let Some(group) = reader.next_group(&mut cp, job, &sink).await? {
            cp.items_written += group.accepted;
            record_checkpoint(dir, job, spec, &cp)?;
            engram.metrics().items_added(group.accepted as usize);
            job.set_counts(counts(&cp));
        }
    }
    let (rejects_file, rejects_missing) = rejects.merge(&cp.rejects_parts).await?;
    if !rejects_missing.is_empty() {
        tracing::warn!(
            job = spec.id,
            parts = rejects_missing.len(),
            "some rejects parts stayed on the coordinators that wrote them (no storage.segments_uri)"
        );
    }
    let seconds = started.elapsed().as_secs_f64();
    let rows_this_run = cp.rows_read - resumed_rows;
    // Where the bulk path uploaded this job's segments (every run of it).
    let segments_prefix = match (&engram.config().storage.segments_uri, spec.bulk) {
        (Some(uri), true) => Some(format!(
            "{}/{}/job-{}/",
            uri.trim_end_matches('/'),
            spec.collection,
            spec.id
        )),
        _ => None,
    };
    Ok(json!({
        "files": cp.files.len(),
        "rows_read": cp.rows_read,
        "items_written": cp.items_written,
        "rejected": cp.rejected,
        "segments": cp.segments,
        "segments_prefix": segments_prefix,
        // Lineage: every file the job read, with its rows.
        "files_read": cp.files.iter().map(|f| json!({"path": f.path, "rows": f.rows})).collect::<Vec<_>>(),
        "rejects_file": rejects_file.map(|p| p.display().to_string()),
        // Parts written by coordinators the job was taken from, not in
        // object storage: where they are.
        "rejects_elsewhere": rejects_missing.iter().map(|p| json!({"part": p.name, "rows": p.rows, "coordinator": p.writer})).collect::<Vec<_>>(),
        "seconds": seconds,
        "rows_per_s": rows_this_run as f64 / seconds.max(1e-9),
        "resumed_at_row": resumed_rows,
    }))
}

/// What becomes of a batch's valid items; runs on a blocking thread.
pub(crate) type Sink = Arc<dyn Fn(&[Item]) -> Result<()> + Send + Sync>;

/// One row group read.
pub(crate) struct GroupRead {
    /// Valid items handed to the sink.
    pub accepted: u64,
}

/// Reads a job's input row group by row group from a checkpoint's
/// position: fetches `image_uri` objects, validates rows and embeds images
/// on blocking threads (the next batch is read meanwhile), hands valid
/// items to a sink, writes each row group's rejects, and advances the
/// checkpoint's position and counts (its caller decides when to save it).
pub(crate) struct RowGroupReader {
    rejects: Arc<RejectsStore>,
    hosted: Collection,
    embedder: Option<Arc<engram_ingest::OnnxEmbedder>>,
    /// Thumbnails kept for image rows (`collections.thumbnail_px`).
    thumbnail_px: u32,
    source: Source,
    spec: IngestSpec,
    dir: PathBuf,
    /// The file being read: its index and opened footer.
    open: Option<(usize, ParquetFile)>,
}

impl RowGroupReader {
    /// Reads the row group `cp` points at, or returns `None` at the end.
    pub(crate) async fn next_group(
        &mut self,
        cp: &mut Checkpoint,
        job: &Job,
        sink: &Sink,
    ) -> Result<Option<GroupRead>> {
        loop {
            if cp.file >= cp.files.len() {
                return Ok(None);
            }
            if job.cancelled() {
                return Err(ApiError::invalid("cancelled"));
            }
            if self.open.as_ref().is_none_or(|(i, _)| *i != cp.file) {
                let entry = &cp.files[cp.file];
                let file = SourceFile {
                    path: ObjectPath::from(entry.path.as_str()),
                    size: entry.size,
                };
                let parquet =
                    ParquetFile::open(self.source.store.clone(), &file, &self.spec.columns).await?;
                self.open = Some((cp.file, parquet));
            }
            let (_, parquet) = self.open.as_ref().expect("opened above");
            if cp.row_group < parquet.row_groups() {
                break;
            }
            cp.file += 1;
            cp.row_group = 0;
        }
        let (_, parquet) = self.open.as_ref().expect("opened above");
        let group = cp.row_group;
        let path = cp.files[cp.file].path.clone();
        // (rejects, items accepted) of this row group; the lock is never
        // held across an await.
        let tally: parking_lot::Mutex<(Vec<Reject>, u64)> = Default::default();
        parquet
            .read_row_group(group, self.spec.batch_rows, |rows| {
                let store = self.source.store.clone();
                let hosted = self.hosted.clone();
                let embedder = self.embedder.clone();
                let thumbnail_px = self.thumbnail_px;
                let path = path.clone();
                let sink = sink.clone();
                let tally = &tally;
                async move {
                    let (rows, fetch_failed) =
                        engram_ingest::fetch::fetch_images(&store, &path, rows).await;
                    let (accepted, bad) = blocking(move || {
                        let target = Target {
                            dim: hosted.spec().dim,
                            metric: hosted.spec().metric,
                            embedder: embedder.as_deref(),
                            max_label: crate::service::MAX_LABEL_BYTES,
                            max_source: crate::service::MAX_SOURCE_BYTES,
                            thumbnail_px,
                        };
                        let (items, bad) = prepare_rows(&path, rows, &target)?;
                        sink(&items)?;
                        Ok((items.len() as u64, bad))
                    })
                    .await?;
                    let mut tally = tally.lock();
                    tally.0.extend(fetch_failed);
                    tally.0.extend(bad);
                    tally.1 += accepted;
                    Ok::<(), ApiError>(())
                }
            })
            .await?;
        let (rejects, accepted) = tally.into_inner();
        let rejected = rejects.len() as u64;
        if !rejects.is_empty() {
            let name = format!("{:06}-{:06}.parquet", cp.file, group);
            let part = self.rejects.write(&name, rejects).await?;
            note_part(&mut cp.rejects_parts, part);
        }
        let rows = parquet.row_group_rows(group);
        cp.row_group += 1;
        cp.rows_read += rows;
        cp.rejected += rejected;
        if cp.row_group >= parquet.row_groups() {
            cp.file += 1;
            cp.row_group = 0;
        }
        job.advance(rows);
        let share = cp.rejected as f64 / cp.rows_read.max(1) as f64;
        if share > self.spec.max_reject_share {
            return Err(ApiError::invalid(format!(
                "{} of {} rows rejected ({:.2}%), more than max_reject_share {:.2}%; see {}",
                cp.rejected,
                cp.rows_read,
                100.0 * share,
                100.0 * self.spec.max_reject_share,
                self.dir.join(REJECTS_DIR).display()
            )));
        }
        Ok(Some(GroupRead { accepted }))
    }
}

fn write_items(hosted: &dyn ShardedCollection, items: &[Item]) -> Result<()> {
    if items.is_empty() {
        return Ok(());
    }
    Ok(hosted.write(items.iter().map(Item::to_upsert).collect())?)
}

impl Engram {
    /// Starts an ingestion job (see the module doc).
    pub(crate) async fn start_ingest(
        &self,
        hosted: Collection,
        options: IngestOptions,
    ) -> Result<crate::jobs::JobStatus> {
        let IngestOptions {
            uri,
            columns,
            max_reject_share,
            batch_rows,
            bulk,
            segment_rows,
        } = options;
        // Refuse a bad URI now rather than in the job.
        self.open_request_source(&uri)?;
        if bulk && self.cluster().is_some() && self.config().storage.segments_uri.is_none() {
            return Err(ApiError::invalid(
                "bulk ingestion in a cluster needs object storage for its segments: set storage.segments_uri on the coordinators and workers",
            ));
        }
        let collection = hosted.spec().name.clone();
        let spec = IngestSpec {
            id: 0,
            collection: collection.clone(),
            uri,
            columns,
            max_reject_share,
            batch_rows,
            started_at: now(),
            bulk,
            segment_rows,
        };
        let job = self
            .new_job(&collection, "ingest", params_of(&spec))
            .await?;
        let spec = IngestSpec {
            id: job.id(),
            ..spec
        };
        create(&self.data_dir(), &spec)?;
        tokio::spawn(run(self.clone(), hosted, job.clone(), spec));
        Ok(job.status())
    }

    /// The collection, once this node knows it: at once on the embedded
    /// node; a restarted coordinator may need a moment to apply the Raft
    /// log that holds it.
    async fn wait_for_collection(&self, name: &str) -> Option<Collection> {
        let deadline = Instant::now() + std::time::Duration::from_secs(60);
        loop {
            match self.hosted(name) {
                Ok(hosted) => return Some(hosted),
                Err(_) if self.cluster().is_some() && Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                Err(_) => return None,
            }
        }
    }

    /// Resumes the ingest jobs a previous process left running, and lists
    /// the ended ones. Called once the server runs.
    pub fn resume_jobs(&self) -> Result<()> {
        for (spec, cp) in persisted(&self.data_dir())? {
            self.relaunch(spec, cp);
        }
        Ok(())
    }

    /// Registers a persisted job under its own id; runs it on from its
    /// checkpoint if that says `running`.
    pub(crate) fn relaunch(&self, spec: IngestSpec, cp: Checkpoint) -> Arc<Job> {
        let params = params_of(&spec);
        let job = self.inner.jobs.restore(
            spec.id,
            &spec.collection,
            "ingest",
            params,
            &spec.started_at,
        );
        job.set_counts(counts(&cp));
        job.set_total(cp.files.iter().map(|f| f.rows).sum());
        if cp.state != "running" {
            job.advance(cp.rows_read);
            job.finish(match cp.state.as_str() {
                "succeeded" => Ok(cp.report.clone().unwrap_or_default()),
                _ => Err(cp.error.clone().unwrap_or_else(|| cp.state.clone())),
            });
            return job;
        }
        let this = self.clone();
        let running = job.clone();
        tokio::spawn(async move {
            let Some(hosted) = this.wait_for_collection(&spec.collection).await else {
                running.finish(Err("its collection no longer exists".into()));
                return;
            };
            running.set_resume(resume_point(&spec, &cp));
            if let Some(cluster) = this.cluster() {
                // Another coordinator may have taken the job over while
                // this one was away: run it only while Raft says it is ours.
                if let Err(reason) = crate::cluster::jobs::claim(cluster.meta(), &running).await {
                    tracing::warn!(job = spec.id, %reason, "not resuming the ingest job: another coordinator holds it");
                    running.suspend();
                    running.finish(Err(reason));
                    return;
                }
                crate::cluster::jobs::spawn_publisher(
                    cluster.meta().clone(),
                    this.inner.jobs.clone(),
                    running.clone(),
                    cluster.job_lease(),
                );
            }
            tracing::info!(job = spec.id, collection = %spec.collection, rows_read = cp.rows_read, "resuming ingest job");
            run(this, hosted, running, spec).await;
        });
        job
    }

    /// Runs a failed or cancelled ingest job on from its checkpoint (the
    /// row groups it finished stay; none is written twice). Only the node
    /// that ran it holds its checkpoint.
    pub async fn resume_job(&self, collection: &str, id: u64) -> Result<JobStatus> {
        self.hosted(collection)?;
        let found = persisted(&self.data_dir())?
            .into_iter()
            .find(|(spec, _)| spec.id == id && spec.collection == collection);
        let Some((spec, mut cp)) = found else {
            if let Some(job) = self.inner.jobs.get(collection, id) {
                return Err(ApiError::invalid(format!(
                    "job {id} is a {} job; only ingest jobs resume (start a new one)",
                    job.status().kind
                )));
            }
            let owner = self
                .cluster()
                .and_then(|c| c.state().jobs.get(&id).map(|j| j.owner));
            return Err(match owner {
                Some(owner) => ApiError::new(
                    ErrorCode::AlreadyExists,
                    format!(
                        "job {id} is run by coordinator {owner}, which holds its checkpoint; resume it there"
                    ),
                ),
                None => ApiError::not_found(format!("no job {id} on `{collection}`")),
            });
        };
        match cp.state.as_str() {
            "failed" | "cancelled" => {}
            state => {
                return Err(ApiError::new(
                    ErrorCode::AlreadyExists,
                    format!("job {id} is {state}; only failed or cancelled jobs resume"),
                ));
            }
        }
        cp.state = "running".into();
        cp.error = None;
        let path = jobs_dir(&self.data_dir())
            .join(id.to_string())
            .join(CHECKPOINT_FILE);
        save(&path, &cp)?;
        let job = self.relaunch(spec, cp);
        tracing::info!(job = id, collection, "ingest job resumed on request");
        Ok(job.status())
    }
}
