//! Segment shipping between workers (see `shard/shipping.rs`): a full
//! transfer sends the primary's sealed segment files as they are, in
//! checksummed chunks, instead of their rows.
//!
//! The primary first sends the plan (every segment's key and files); the
//! copy answers the bytes of each file it already holds staged from a
//! transfer that was cut off (a kill of either side), so only the rest
//! travels. Each chunk is appended only at the copy's current length and
//! with a matching CRC32; the attach verifies every file against the
//! segment's own checksums as it opens it, and a damaged segment is
//! dropped from the staging area so the next attempt sends it whole.
//! Every request is admitted as a chunk of the transfer its reset chunk
//! started (the epoch check and `replicas::admit_transfer`).

use fs_err as fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use engram_core::placement::ShardPlacement;
use engram_index::SealedSegment;

use crate::catch_up::TRANSFER_TIMEOUT;
use crate::node::{WorkerNode, blocking, internal};
use crate::replicas::Replica;
use crate::rpc_client::call;
use crate::shard::ShippingSnapshot;
use crate::wire::*;

/// What shipping a snapshot's segments moved.
pub(crate) struct Shipped {
    /// Bytes sent (chunk requests, plan and attach included).
    pub bytes: u64,
    /// Bytes of segment files the copy already held from an earlier try.
    pub resumed: u64,
    /// Bytes the copy downloaded from object storage.
    pub downloaded: u64,
    /// File chunks sent.
    pub chunks: usize,
}

/// How long a plan may take when the copy downloads segments first: a
/// 1M-row 128-d segment is about 920 MB.
const DOWNLOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3600);

impl WorkerNode {
    /// Primary side: ships `snapshot`'s segments to `target`, whose copy the
    /// transfer's reset chunk just emptied, and has them attached.
    pub(crate) async fn ship_segments(
        &self,
        replica: &Replica,
        placement: &ShardPlacement,
        target: &str,
        transfer: u64,
        snapshot: &ShippingSnapshot,
    ) -> RpcResult<Shipped> {
        let collection = replica.spec.name.clone();
        let shard = replica.shard.number();
        let mut segments = Vec::with_capacity(snapshot.segments.len());
        for segment in &snapshot.segments {
            segments.push(ShipPlanSegment {
                key: segment.key.clone(),
                files: segment.files.clone(),
                object: self.uploaded_segment(&collection, shard, segment).await,
            });
        }
        let plan = ShipPlanRequest {
            collection: collection.clone(),
            shard,
            placement: placement.clone(),
            transfer,
            segments,
        };
        let timeout = if plan.segments.iter().any(|s| s.object.is_some()) {
            DOWNLOAD_TIMEOUT
        } else {
            TRANSFER_TIMEOUT
        };
        let mut bytes = bincode::serialized_size(&plan).map_err(internal)?;
        let ShipPlanAnswer { held, downloaded } =
            call(&self.inner.client, target, path::SHIP_PLAN, &plan, timeout)
                .await
                .map_err(|e| RpcError::Replication(e.to_string()))?;
        if held.len() != snapshot.segments.len()
            || held
                .iter()
                .zip(&snapshot.segments)
                .any(|(h, s)| h.len() != s.files.len())
        {
            return Err(RpcError::Replication(
                "the copy answered a shipping plan of another shape".into(),
            ));
        }
        let (mut resumed, mut chunks) = (0, 0);
        for (segment, held) in snapshot.segments.iter().zip(held) {
            for ((file, size), have) in segment.files.iter().zip(held) {
                let mut offset = have.min(*size);
                resumed += offset;
                // A file the copy holds whole needs no chunk; an empty one
                // is sent as one empty chunk.
                if offset == *size && *size > 0 {
                    continue;
                }
                let local = segment.dir.join(file);
                let limit = self.inner.transfer_chunk_bytes;
                let mut next = read_chunk(&local, offset, limit).await?;
                loop {
                    let (data, crc32) = next;
                    let end = offset + data.len() as u64;
                    if data.is_empty() && end < *size {
                        return Err(RpcError::Internal(format!(
                            "segment file {file} of {} ended at {end} bytes, {size} expected",
                            segment.key
                        )));
                    }
                    let complete = end >= *size;
                    let chunk = ShipChunkRequest {
                        collection: collection.clone(),
                        shard,
                        placement: placement.clone(),
                        transfer,
                        key: segment.key.clone(),
                        file: file.clone(),
                        offset,
                        crc32,
                        data,
                        complete,
                    };
                    chunks += 1;
                    if complete {
                        bytes += self.send(target, path::SHIP_CHUNK, &chunk).await?;
                        break;
                    }
                    // The next chunk is read while this one travels.
                    let (sent, read) = tokio::join!(
                        self.send(target, path::SHIP_CHUNK, &chunk),
                        read_chunk(&local, end, limit)
                    );
                    bytes += sent?;
                    next = read?;
                    offset = end;
                }
            }
        }
        let attach = ShipAttachRequest {
            collection,
            shard,
            placement: placement.clone(),
            transfer,
            segments: snapshot
                .segments
                .iter()
                .map(|s| (s.key.clone(), s.deleted.clone()))
                .collect(),
        };
        bytes += self.send(target, path::SHIP_ATTACH, &attach).await?;
        Ok(Shipped {
            bytes,
            resumed: resumed.saturating_sub(downloaded),
            downloaded,
            chunks,
        })
    }

    /// Copy side of a [`ShipPlanRequest`]: drops staged segments not in
    /// the plan, downloads those offered in object storage that it does
    /// not hold whole, and answers the bytes held of each planned file.
    pub async fn ship_plan(self, request: ShipPlanRequest) -> RpcResult<ShipPlanAnswer> {
        let host = self.clone();
        let plan = request.clone();
        let mut held = blocking(move || host.staged_sizes(&plan)).await?;
        let mut downloaded = 0;
        for (segment, sizes) in request.segments.iter().zip(&mut held) {
            let whole = sizes.iter().zip(&segment.files).all(|(h, (_, s))| h == s);
            let Some(object) = segment.object.as_ref().filter(|_| !whole) else {
                continue;
            };
            match self.download_staged(&request, segment, object).await {
                Ok(bytes) => {
                    downloaded += bytes;
                    *sizes = segment.files.iter().map(|(_, size)| *size).collect();
                }
                Err(e) => tracing::warn!(
                    shard = request.shard,
                    segment = %segment.key,
                    error = %e,
                    "downloading a shipped segment failed; its primary sends it"
                ),
            }
        }
        let resumed: u64 = held.iter().flatten().sum::<u64>() - downloaded;
        tracing::info!(
            shard = request.shard,
            transfer = request.transfer,
            segments = request.segments.len(),
            resumed_bytes = resumed,
            downloaded_bytes = downloaded,
            "shipping plan"
        );
        Ok(ShipPlanAnswer { held, downloaded })
    }

    /// Under the transfer's turn: drops staged segments `plan` does not
    /// name and returns the bytes staged of each file it names.
    fn staged_sizes(&self, request: &ShipPlanRequest) -> RpcResult<Vec<Vec<u64>>> {
        self.in_transfer_turn(
            &request.collection,
            request.shard,
            &request.placement,
            request.transfer,
            false,
            || {
                let root = self
                    .inner
                    .host
                    .shipping_dir(&request.collection, request.shard);
                fs::create_dir_all(&root).map_err(internal)?;
                let planned: std::collections::HashSet<&str> =
                    request.segments.iter().map(|s| s.key.as_str()).collect();
                for entry in fs::read_dir(&root).map_err(internal)? {
                    let entry = entry.map_err(internal)?;
                    let name = entry.file_name().to_string_lossy().to_string();
                    if !planned.contains(name.as_str()) {
                        remove_any(&entry.path())?;
                    }
                }
                let mut held = Vec::with_capacity(request.segments.len());
                for segment in &request.segments {
                    let dir = staged_dir(&root, &segment.key)?;
                    let mut sizes = Vec::with_capacity(segment.files.len());
                    for (file, size) in &segment.files {
                        let path = staged_file(&dir, file)?;
                        let have = fs::metadata(&path).map_or(0, |m| m.len());
                        if have > *size {
                            // Not a prefix of this file: start it again.
                            fs::remove_file(&path).map_err(internal)?;
                            sizes.push(0);
                        } else {
                            sizes.push(have);
                        }
                    }
                    held.push(sizes);
                }
                Ok(held)
            },
        )
    }

    /// Downloads `segment` from `object` (each file checked against its
    /// size and CRC32) and stages it whole; returns its bytes. Only from
    /// this node's own `storage.segments_uri`, and only the files the plan
    /// names.
    async fn download_staged(
        &self,
        request: &ShipPlanRequest,
        segment: &ShipPlanSegment,
        object: &SegmentObject,
    ) -> RpcResult<u64> {
        if self.inner.storage.segments_uri.as_deref() != Some(object.uri.as_str()) {
            return Err(RpcError::Invalid(format!(
                "segment {} is offered in {}, not this worker's storage.segments_uri",
                segment.key, object.uri
            )));
        }
        let mut named: Vec<(&str, u64)> = object
            .files
            .iter()
            .map(|f| (f.name.as_str(), f.bytes))
            .collect();
        let mut planned: Vec<(&str, u64)> = segment
            .files
            .iter()
            .map(|(n, b)| (n.as_str(), *b))
            .collect();
        named.sort_unstable();
        planned.sort_unstable();
        if named != planned {
            return Err(RpcError::Invalid(format!(
                "segment {}: the object's files are not the planned ones",
                segment.key
            )));
        }
        let dir = self.staged_segment(&request.collection, request.shard, &segment.key)?;
        let started = std::time::Instant::now();
        self.download_segment(object, &dir).await?;
        let bytes: u64 = object.files.iter().map(|f| f.bytes).sum();
        tracing::info!(
            shard = request.shard,
            segment = %segment.key,
            bytes,
            seconds = started.elapsed().as_secs_f64(),
            "downloaded a shipped segment from object storage"
        );
        Ok(bytes)
    }

    /// Copy side of a [`ShipChunkRequest`].
    pub async fn ship_chunk(self, request: ShipChunkRequest) -> RpcResult<()> {
        let host = self.clone();
        tracing::debug!(
            shard = request.shard,
            transfer = request.transfer,
            segment = %request.key,
            file = %request.file,
            offset = request.offset,
            bytes = request.data.len(),
            "segment file chunk"
        );
        blocking(move || {
            host.in_transfer_turn(
                &request.collection,
                request.shard,
                &request.placement,
                request.transfer,
                false,
                || {
                    if crc32fast::hash(&request.data) != request.crc32 {
                        return Err(RpcError::Invalid(format!(
                            "chunk at {} of {}/{}: CRC32 mismatch",
                            request.offset, request.key, request.file
                        )));
                    }
                    let dir =
                        host.staged_segment(&request.collection, request.shard, &request.key)?;
                    fs::create_dir_all(&dir).map_err(internal)?;
                    let path = staged_file(&dir, &request.file)?;
                    let mut file = fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&path)
                        .map_err(internal)?;
                    let have = file.metadata().map_err(internal)?.len();
                    if have != request.offset {
                        return Err(RpcError::Invalid(format!(
                            "{}/{}: this copy holds {have} bytes, the chunk starts at {}",
                            request.key, request.file, request.offset
                        )));
                    }
                    file.write_all(&request.data).map_err(internal)?;
                    if request.complete {
                        file.sync_all().map_err(internal)?;
                    }
                    Ok(())
                },
            )
        })
        .await
    }

    /// Copy side of a [`ShipAttachRequest`].
    pub async fn ship_attach(self, request: ShipAttachRequest) -> RpcResult<()> {
        let host = self.clone();
        blocking(move || {
            host.in_transfer_turn(
                &request.collection,
                request.shard,
                &request.placement,
                request.transfer,
                false,
                || {
                    let replica = host.inner.host.get(&request.collection, request.shard)?;
                    let mut staged = Vec::with_capacity(request.segments.len());
                    for (key, deleted) in &request.segments {
                        let dir = host.staged_segment(&request.collection, request.shard, key)?;
                        SealedSegment::write_delete_bitmap(&dir, deleted).map_err(internal)?;
                        staged.push(dir);
                    }
                    let attached = replica.unless_retired(|shard| {
                        shard.attach_shipped(&staged).map_err(|e| {
                            replica.mark_missed_write();
                            internal(e)
                        })
                    });
                    if attached.is_err() {
                        // Damaged or not, what is staged is sent whole next time.
                        for dir in &staged {
                            remove_any(dir)?;
                        }
                    }
                    attached.map(|_| ())
                },
            )
        })
        .await
    }
}

impl WorkerNode {
    /// Where segment `key` shipped to this worker's copy of a shard is
    /// staged; the key must be a plain name.
    fn staged_segment(&self, collection: &str, shard: u32, key: &str) -> RpcResult<PathBuf> {
        staged_dir(&self.inner.host.shipping_dir(collection, shard), key)
    }
}

/// Reads up to `limit` bytes of `path` from `offset`, with their CRC32.
async fn read_chunk(path: &Path, offset: u64, limit: usize) -> RpcResult<(Vec<u8>, u32)> {
    let path = path.to_path_buf();
    blocking(move || {
        let mut file = fs::File::open(&path).map_err(internal)?;
        file.seek(SeekFrom::Start(offset)).map_err(internal)?;
        let mut data = Vec::with_capacity(limit);
        file.take(limit as u64)
            .read_to_end(&mut data)
            .map_err(internal)?;
        let crc32 = crc32fast::hash(&data);
        Ok((data, crc32))
    })
    .await
}

/// The staging directory of segment `key` under `root`; the key is a
/// plain file name or the request is refused.
fn staged_dir(root: &Path, key: &str) -> RpcResult<PathBuf> {
    if !engram_core::plain_file_name(key) {
        return Err(RpcError::Invalid(format!(
            "{key:?} is not a plain segment key"
        )));
    }
    Ok(root.join(key))
}

/// A staged segment's file `name`, which must be a plain file name.
fn staged_file(dir: &Path, name: &str) -> RpcResult<PathBuf> {
    if !engram_core::plain_file_name(name) {
        return Err(RpcError::Invalid(format!(
            "{name:?} is not a plain file name"
        )));
    }
    Ok(dir.join(name))
}

fn remove_any(path: &Path) -> RpcResult<()> {
    let removed = if path.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    match removed {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(internal(e)),
        _ => Ok(()),
    }
}
