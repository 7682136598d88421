//! Object storage as a second home of every sealed segment: with
//! `storage.segments_uri` set (and `storage.upload_sealed_segments`, on by
//! default), a worker uploads the sealed segments of each shard it leads
//! (seals, merges, compactions and attaches alike) to
//! `<segments_uri>/shards/<collection>/<nnnn>/<key>/`, the key naming the
//! segment's content (`shard::ShippedSegment::key`), and deletes the
//! segments its shard no longer holds once they are [`GARBAGE_AFTER`] old
//! (each shard's prefix is listed every [`SWEEP_EVERY`]).
//! A full transfer then tells the copy where each uploaded segment is and
//! the copy downloads it (`ship.rs`) instead of receiving it from its
//! primary.
//!
//! The manifest is uploaded last: its object is the mark of a complete
//! upload, so a primary restarted (or newly promoted) finds what is there
//! already with one request per segment.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use engram_store::{CheckedFile, ObjectLocation};

use crate::node::{WorkerNode, blocking, internal};
use crate::replicas::Replica;
use crate::shard::ShippedSegment;
use crate::wire::{RpcResult, SegmentObject};

/// How old the objects of a segment no shard of this worker holds must be
/// before they are deleted: a copy may still be downloading them for a
/// transfer planned before a merge replaced them (it then asks again).
pub const GARBAGE_AFTER: std::time::Duration = std::time::Duration::from_secs(600);

const MANIFEST: &str = engram_index::disk::manifest::MANIFEST_FILE;

/// One shard's uploaded segments: key -> files as copies download them.
type ShardUploads = HashMap<String, Vec<CheckedFile>>;

/// Segments this worker uploaded (or found uploaded), per shard, and when
/// each shard's prefix was last swept of segments no longer held.
#[derive(Default)]
pub(crate) struct Uploaded {
    /// `storage.segments_uri` opened once (`None`: uploads off, or the
    /// URI cannot be opened, which is logged once).
    location: std::sync::OnceLock<Option<ObjectLocation>>,
    segments: parking_lot::Mutex<HashMap<(String, u32), ShardUploads>>,
    swept: parking_lot::Mutex<HashMap<(String, u32), std::time::Instant>>,
}

/// How often a shard's prefix is listed for segments to delete: a listing
/// per shard every upload pass (3 s) would be most of the requests a large
/// worker sends its object store.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(300);

/// The object key below `segments_uri` of a shard's segments.
fn shard_prefix(collection: &str, shard: u32) -> String {
    format!("shards/{collection}/{shard:04}")
}

impl WorkerNode {
    /// Where sealed segments are uploaded, when they are.
    pub(crate) fn segment_location(&self) -> Option<ObjectLocation> {
        self.inner
            .uploaded
            .location
            .get_or_init(|| {
                let storage = &self.inner.storage;
                let uri = storage
                    .segments_uri
                    .as_deref()
                    .filter(|_| storage.upload_sealed_segments)?;
                ObjectLocation::parse(uri, storage)
                    .inspect_err(|e| {
                        tracing::warn!(uri, error = %e, "storage.segments_uri cannot be opened; sealed segments are not uploaded");
                    })
                    .ok()
            })
            .clone()
    }

    /// The object a copy downloads `segment` of a shard from, if it is in
    /// object storage: uploaded by this worker, or found there (uploaded
    /// by an earlier primary of the shard, whose copy held the same
    /// segment) and remembered.
    pub(crate) async fn uploaded_segment(
        &self,
        collection: &str,
        shard: u32,
        segment: &ShippedSegment,
    ) -> Option<SegmentObject> {
        let location = self.segment_location()?;
        let key = format!("{}/{}", shard_prefix(collection, shard), segment.key);
        let known = self
            .inner
            .uploaded
            .segments
            .lock()
            .get(&(collection.to_string(), shard))
            .and_then(|uploads| uploads.get(&segment.key).cloned());
        let files = match known {
            Some(files) => files,
            None => {
                let present = location.exists(&format!("{key}/{MANIFEST}")).await;
                if !matches!(present, Ok(true)) {
                    return None;
                }
                let files = checked_files(segment).await.ok()?;
                self.inner
                    .uploaded
                    .segments
                    .lock()
                    .entry((collection.to_string(), shard))
                    .or_default()
                    .insert(segment.key.clone(), files.clone());
                files
            }
        };
        Some(SegmentObject {
            uri: location.uri.clone(),
            key,
            files,
        })
    }

    /// One pass: uploads the sealed segments of every shard this worker
    /// leads that object storage lacks, and deletes old ones no longer
    /// held. Failures are logged and retried by the next pass.
    pub async fn upload_sealed_segments(&self) {
        let Some(location) = self.segment_location() else {
            return;
        };
        for replica in self.inner.host.all() {
            if replica.placement().primary != self.inner.id {
                continue;
            }
            if let Err(e) = self.upload_shard(&location, &replica).await {
                tracing::warn!(
                    collection = %replica.spec.name,
                    shard = replica.shard.number(),
                    error = %e,
                    "uploading sealed segments failed; the next pass retries"
                );
            }
        }
    }

    async fn upload_shard(
        &self,
        location: &ObjectLocation,
        replica: &Arc<Replica>,
    ) -> RpcResult<()> {
        let collection = replica.spec.name.clone();
        let shard = replica.shard.number();
        let prefix = shard_prefix(&collection, shard);
        let source = replica.clone();
        let keys = blocking(move || source.shard.segment_keys().map_err(internal)).await?;
        let missing: HashSet<String> = {
            let mut uploaded = self.inner.uploaded.segments.lock();
            let known = uploaded.entry((collection.clone(), shard)).or_default();
            known.retain(|key, _| keys.contains(key));
            keys.iter()
                .filter(|k| !known.contains_key(*k))
                .cloned()
                .collect()
        };
        if !missing.is_empty() {
            let source = replica.clone();
            let tag = format!(
                "upload-{}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos())
            );
            let wanted = missing.clone();
            let snapshot = blocking(move || {
                source
                    .shard
                    .link_segments_for_upload(&tag, &|key| wanted.contains(key))
                    .map_err(internal)
            })
            .await?;
            for segment in &snapshot.segments {
                let key = format!("{prefix}/{}", segment.key);
                let files = checked_files(segment).await?;
                let present = location
                    .exists(&format!("{key}/{MANIFEST}"))
                    .await
                    .map_err(internal)?;
                if !present {
                    let started = std::time::Instant::now();
                    location
                        .upload(&key, &segment.dir, &files)
                        .await
                        .map_err(internal)?;
                    tracing::info!(
                        collection = %collection,
                        shard,
                        segment = %segment.key,
                        bytes = files.iter().map(|f| f.bytes).sum::<u64>(),
                        seconds = started.elapsed().as_secs_f64(),
                        "uploaded a sealed segment"
                    );
                }
                self.inner
                    .uploaded
                    .segments
                    .lock()
                    .entry((collection.clone(), shard))
                    .or_default()
                    .insert(segment.key.clone(), files);
            }
        }
        let due = {
            let mut swept = self.inner.uploaded.swept.lock();
            let last = swept.entry((collection.clone(), shard));
            match last {
                std::collections::hash_map::Entry::Occupied(mut at) => {
                    let due = at.get().elapsed() >= SWEEP_EVERY;
                    if due {
                        at.insert(std::time::Instant::now());
                    }
                    due
                }
                std::collections::hash_map::Entry::Vacant(at) => {
                    at.insert(std::time::Instant::now());
                    true
                }
            }
        };
        if !due {
            return Ok(());
        }
        self.collect_garbage(location, &prefix, &keys).await
    }

    /// Deletes the objects below `prefix` of segments not in `keys` whose
    /// newest object is older than [`GARBAGE_AFTER`].
    async fn collect_garbage(
        &self,
        location: &ObjectLocation,
        prefix: &str,
        keys: &[String],
    ) -> RpcResult<()> {
        let objects = location.list(prefix).await.map_err(internal)?;
        let mut stale: HashMap<&str, (i64, Vec<&str>)> = HashMap::new();
        for (object, modified) in &objects {
            let Some(rest) = object
                .strip_prefix(prefix)
                .map(|r| r.trim_start_matches('/'))
            else {
                continue;
            };
            let Some((segment, _)) = rest.split_once('/') else {
                continue;
            };
            if keys.iter().any(|k| k == segment) {
                continue;
            }
            let entry = stale.entry(segment).or_insert((i64::MIN, Vec::new()));
            entry.0 = entry.0.max(*modified);
            entry.1.push(object);
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        for (segment, (newest, objects)) in stale {
            if now - newest < GARBAGE_AFTER.as_secs() as i64 {
                continue;
            }
            for object in &objects {
                location.delete(object).await.map_err(internal)?;
            }
            tracing::info!(
                prefix,
                segment,
                objects = objects.len(),
                "deleted a segment no longer held"
            );
        }
        Ok(())
    }
}

/// `segment`'s files with their sizes and CRC32s, the manifest last (the
/// mark of a complete upload). Files the manifest does not list (itself,
/// the item table, the thumbnails) are checksummed here.
async fn checked_files(segment: &ShippedSegment) -> RpcResult<Vec<CheckedFile>> {
    let dir = segment.dir.clone();
    let listed = segment.crc32s.clone();
    let mut names: Vec<(String, u64)> = segment.files.clone();
    names.sort_by_key(|(name, _)| name == MANIFEST);
    blocking(move || {
        names
            .into_iter()
            .map(|(name, bytes)| {
                let crc32 = match listed.get(&name) {
                    Some(crc32) => *crc32,
                    None => {
                        engram_index::disk::manifest::file_crc32(&dir.join(&name))
                            .map_err(internal)?
                            .1
                    }
                };
                Ok(CheckedFile { name, bytes, crc32 })
            })
            .collect::<RpcResult<Vec<_>>>()
    })
    .await
}
