//! An ingest job's rejected rows: one Parquet part per row group that had
//! bad rows, under the job's `rejects/` directory, merged into
//! `rejects.parquet` when the job ends.
//!
//! A job can end on another coordinator than the one that read a row group
//! (`job_takeover.rs`), so each part is named in the checkpoint with its
//! size, CRC32 and the coordinator that wrote it, and in a cluster with
//! `storage.segments_uri` set it is also uploaded beside the job's segments
//! (`<collection>/job-<id>/rejects/<part>`). The coordinator that ends the
//! job downloads the parts it lacks (each checked against its checksum)
//! before merging; a part that was never uploaded (no `segments_uri`) and
//! is not on its disk is reported as left on its writer's.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

use engram_ingest::items::{Reject, read_rejects, write_rejects};
use engram_store::{CheckedFile, ObjectLocation};

use crate::error::{ApiError, Result};
use crate::service::{Engram, blocking};

pub(crate) const REJECTS_DIR: &str = "rejects";

/// One row group's rejects part, as the checkpoint names it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RejectsPart {
    pub name: String,
    pub rows: u64,
    pub bytes: u64,
    pub crc32: u32,
    /// The coordinator that wrote it (0 on the embedded node).
    pub writer: u64,
    /// Whether it is in object storage too.
    pub uploaded: bool,
}

/// Where a job's rejects parts go.
pub(crate) struct RejectsStore {
    /// The job's `rejects/` directory.
    dir: PathBuf,
    /// Object storage and the parts' prefix there, in a cluster with
    /// `storage.segments_uri` set.
    remote: Option<(ObjectLocation, String)>,
    writer: u64,
}

fn io(e: std::io::Error) -> ApiError {
    ApiError::internal(e.to_string())
}

impl RejectsStore {
    pub(crate) fn open(engram: &Engram, collection: &str, id: u64, job_dir: &Path) -> Result<Self> {
        let writer = engram.cluster().map_or(0, |c| c.meta().id());
        let remote = match (&engram.config().storage.segments_uri, engram.cluster()) {
            (Some(uri), Some(_)) => Some((
                ObjectLocation::parse(uri, &engram.config().storage)?,
                format!("{collection}/job-{id}/rejects"),
            )),
            _ => None,
        };
        Ok(RejectsStore {
            dir: job_dir.join(REJECTS_DIR),
            remote,
            writer,
        })
    }

    /// Writes the part `name` (and uploads it where there is object
    /// storage); returns what the checkpoint records of it.
    pub(crate) async fn write(&self, name: &str, rejects: Vec<Reject>) -> Result<RejectsPart> {
        let path = self.dir.join(name);
        let rows = rejects.len() as u64;
        let (bytes, crc32) = blocking(move || {
            write_rejects(&path, &rejects)?;
            Ok(engram_index::disk::manifest::file_crc32(&path)?)
        })
        .await?;
        let mut part = RejectsPart {
            name: name.to_string(),
            rows,
            bytes,
            crc32,
            writer: self.writer,
            uploaded: false,
        };
        if let Some((store, prefix)) = &self.remote {
            store.upload(prefix, &self.dir, &[checked(&part)]).await?;
            part.uploaded = true;
        }
        Ok(part)
    }

    /// Merges every part (those `parts` name that are not on this disk
    /// downloaded first) into `rejects.parquet`; returns it (`None` when
    /// no row was rejected) and the parts that could not be gathered.
    pub(crate) async fn merge(
        &self,
        parts: &[RejectsPart],
    ) -> Result<(Option<PathBuf>, Vec<RejectsPart>)> {
        let mut missing = Vec::new();
        for part in parts {
            if self.dir.join(&part.name).exists() {
                continue;
            }
            match &self.remote {
                Some((store, prefix)) if part.uploaded => {
                    store.download(prefix, &[checked(part)], &self.dir).await?;
                }
                _ => missing.push(part.clone()),
            }
        }
        let dir = self.dir.clone();
        let merged = blocking(move || merge_parts(&dir)).await?;
        Ok((merged, missing))
    }
}

fn checked(part: &RejectsPart) -> CheckedFile {
    CheckedFile {
        name: part.name.clone(),
        bytes: part.bytes,
        crc32: part.crc32,
    }
}

/// Merges the parts in `parts_dir` into `rejects.parquet` beside it
/// (kept, with the job).
fn merge_parts(parts_dir: &Path) -> Result<Option<PathBuf>> {
    let mut parts: Vec<PathBuf> = fs_err::read_dir(parts_dir)
        .map_err(io)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .collect();
    parts.sort();
    let target = parts_dir
        .parent()
        .unwrap_or(parts_dir)
        .join("rejects.parquet");
    if parts.is_empty() {
        return Ok(target.exists().then_some(target));
    }
    let mut all = if target.exists() {
        read_rejects(&target)?
    } else {
        Vec::new()
    };
    for part in &parts {
        all.extend(read_rejects(part)?);
    }
    write_rejects(&target, &all)?;
    for part in parts {
        fs_err::remove_file(part).map_err(io)?;
    }
    Ok(Some(target))
}

/// Records `part` in a checkpoint's list (a row group read again replaces
/// its earlier part).
pub(crate) fn note_part(parts: &mut Vec<RejectsPart>, part: RejectsPart) {
    parts.retain(|p| p.name != part.name);
    parts.push(part);
}
