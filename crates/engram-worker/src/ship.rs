//! Segment shipping between workers (see `shard/shipping.rs`): a full
//! transfer sends the primary's sealed segment files as they are instead
//! of their rows.
//!
//! The primary first sends the plan (every segment's key and files); the
//! copy answers the bytes of each file it already holds staged from a
//! transfer that was cut off (a kill of either side), so only the rest
//! travels: each file as one stream (`ship_stream.rs`), appended only at
//! the copy's current length. The copy keeps each complete file's CRC32
//! as written, and the attach checks every file against the segment's
//! own checksums as it opens it (reading again only files whose CRC32 was
//! not taken on arrival); a damaged segment is dropped from the staging
//! area so the next attempt sends it whole. Every request is admitted as
//! part of the transfer its reset chunk started (the epoch check and
//! `replicas::admit_transfer`).

use fs_err as fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use engram_core::placement::ShardPlacement;
use engram_index::SealedSegment;

use crate::catch_up::TRANSFER_TIMEOUT;
use crate::node::{WorkerNode, blocking, internal};
use crate::replicas::Replica;
use crate::rpc_client::{call, call_streamed};
use crate::shard::ShippingSnapshot;
use crate::ship_stream;
use crate::wire::*;

/// What shipping a snapshot's segments moved.
pub(crate) struct Shipped {
    /// Bytes sent (file streams, plan and attach included).
    pub bytes: u64,
    /// Bytes of segment files the copy already held from an earlier try.
    pub resumed: u64,
    /// Bytes the copy downloaded from object storage.
    pub downloaded: u64,
    /// Files streamed (whole or the rest of one staged before).
    pub files: usize,
}

/// How long a plan may take when the copy downloads segments first: a
/// 1M-row 128-d segment is about 920 MB.
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(3600);

/// A streamed file gets [`TRANSFER_TIMEOUT`] plus its size at this rate
/// (or half its pace, when slower): a link slower than this fails the
/// transfer, which resumes where it stopped.
const STREAM_FLOOR_BYTES_PER_S: u64 = 10 << 20;

/// Pieces of a streamed file received ahead of the copy's disk writes.
const WRITE_AHEAD: usize = 16;

/// A copy logs a streamed file's progress (debug) every this many bytes.
const PROGRESS_EVERY: u64 = 256 << 10;

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
        let (mut resumed, mut files) = (0, 0);
        for (segment, held) in snapshot.segments.iter().zip(held) {
            for ((file, size), have) in segment.files.iter().zip(held) {
                let offset = have.min(*size);
                resumed += offset;
                // A file the copy holds whole needs no stream; an empty one
                // is sent as an empty stream (the copy creates it).
                if offset == *size && *size > 0 {
                    continue;
                }
                let request = ShipFileRequest {
                    collection: collection.clone(),
                    shard,
                    placement: placement.clone(),
                    transfer,
                    key: segment.key.clone(),
                    file: file.clone(),
                    offset,
                    size: *size,
                };
                bytes += self
                    .stream_file(target, &request, segment.dir.join(file))
                    .await?;
                files += 1;
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
            files,
        })
    }

    /// Streams bytes `request.offset..request.size` of `local` to the copy
    /// at `target` (see `ship_stream.rs`); returns the bytes sent.
    async fn stream_file(
        &self,
        target: &str,
        request: &ShipFileRequest,
        local: PathBuf,
    ) -> RpcResult<u64> {
        let head = ship_stream::encode_head(request)?;
        let bytes = head.len() as u64 + (request.size - request.offset);
        let body = ship_stream::file_body(
            head,
            local,
            request.offset,
            request.size,
            ship_stream::Pace {
                piece: self.inner.transfer_chunk_bytes,
                max_bytes_per_s: self.inner.transfer_max_bytes_per_s,
            },
        );
        // A slow link gets time for the file's size, not a fixed bound
        // (and a paced stream twice the time its pace needs).
        let max = self.inner.transfer_max_bytes_per_s;
        let floor = if max > 0 {
            (max / 2).clamp(1, STREAM_FLOOR_BYTES_PER_S)
        } else {
            STREAM_FLOOR_BYTES_PER_S
        };
        let timeout = TRANSFER_TIMEOUT + Duration::from_secs(bytes / floor);
        let written: u64 = call_streamed(
            &self.inner.client,
            target,
            path::SHIP_FILE,
            reqwest::Body::wrap_stream(body),
            timeout,
        )
        .await
        .map_err(|e| RpcError::Replication(e.to_string()))?;
        if written != request.size - request.offset {
            return Err(RpcError::Replication(format!(
                "{}/{}: the copy wrote {written} bytes of {}",
                request.key,
                request.file,
                request.size - request.offset
            )));
        }
        Ok(bytes)
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
        self.in_shipping_turn(request, || {
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
                    self.inner.arrivals.forget_under(&entry.path());
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
                        self.inner.arrivals.forget(&path);
                        fs::remove_file(&path).map_err(internal)?;
                        sizes.push(0);
                    } else {
                        sizes.push(have);
                    }
                }
                held.push(sizes);
            }
            Ok(held)
        })
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
        self.inner.arrivals.forget_under(&dir);
        self.download_segment(object, &dir).await?;
        // Each file was checked against its size and CRC32 as it arrived.
        self.inner.arrivals.record_dir(
            &dir,
            object
                .files
                .iter()
                .map(|f| (f.name.as_str(), f.bytes, f.crc32)),
        );
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

    /// Copy side of a [`path::SHIP_FILE`] request (see [`ShipFileRequest`];
    /// `first`: the file's bytes that came with the head, `body`: the
    /// rest): appends the streamed bytes to the staged file, which must hold
    /// exactly the request's offset; returns the bytes written. Whatever
    /// arrived stays when the stream is cut. A complete file is synced and
    /// its CRC32 as written is kept for the attach ([`Arrivals`]).
    ///
    /// [`Arrivals`]: crate::arrivals::Arrivals
    pub async fn ship_file(
        self,
        request: ShipFileRequest,
        first: axum::body::Bytes,
        mut body: axum::body::BodyDataStream,
    ) -> RpcResult<u64> {
        if request.offset > request.size {
            return Err(RpcError::Invalid(format!(
                "{}/{}: offset {} past the file's {} bytes",
                request.key, request.file, request.offset, request.size
            )));
        }
        let expected = request.size - request.offset;
        tracing::debug!(
            shard = request.shard,
            transfer = request.transfer,
            segment = %request.key,
            file = %request.file,
            offset = request.offset,
            bytes = expected,
            "segment file stream"
        );
        let host = self.clone();
        let head = request.clone();
        let (file, crc32, staged) = blocking(move || host.open_staged_file(&head)).await?;
        let (pieces, arriving) = tokio::sync::mpsc::channel(WRITE_AHEAD);
        let writer = tokio::task::spawn_blocking(move || {
            ship_stream::write_pieces(file, request.offset, crc32, arriving)
        });
        let streamed = async {
            let mut received = 0u64;
            let mut next = (!first.is_empty()).then_some(first);
            loop {
                let data = match next.take() {
                    Some(data) => data,
                    None => match ship_stream::next_frame(&mut body).await? {
                        Some(data) => data,
                        None => return Ok(()),
                    },
                };
                let before = received;
                received += data.len() as u64;
                if received / PROGRESS_EVERY > before / PROGRESS_EVERY {
                    tracing::debug!(
                        shard = request.shard,
                        segment = %request.key,
                        file = %request.file,
                        received,
                        "segment file progress"
                    );
                }
                if received > expected {
                    return Err(RpcError::Invalid(format!(
                        "{}/{}: more than the {expected} bytes announced",
                        request.key, request.file
                    )));
                }
                if pieces.send(data).await.is_err() {
                    return Ok(()); // the writer stopped; it says why
                }
            }
        }
        .await;
        drop(pieces);
        let written = writer.await.map_err(internal)?;
        if let Some(e) = written.failed {
            return Err(internal(e));
        }
        streamed?;
        if written.bytes != expected {
            return Err(RpcError::Replication(format!(
                "{}/{}: the stream ended after {} of {expected} bytes",
                request.key, request.file, written.bytes
            )));
        }
        let host = self.clone();
        blocking(move || {
            written.file.sync_all().map_err(internal)?;
            // Recorded only while the transfer is still this copy's: a
            // newer one may have dropped or restarted the file meanwhile.
            host.in_shipping_turn(&request, || {
                host.inner
                    .arrivals
                    .record(staged, request.size, written.crc32.finalize());
                Ok(())
            })
        })
        .await?;
        Ok(expected)
    }

    /// Under the transfer's turn: opens staged file `request.file` for
    /// appending at `request.offset` (what it must hold), with the CRC32
    /// state of the bytes it holds (read again only when resuming).
    fn open_staged_file(
        &self,
        request: &ShipFileRequest,
    ) -> RpcResult<(fs::File, crc32fast::Hasher, PathBuf)> {
        self.in_shipping_turn(request, || {
            let dir = self.staged_segment(&request.collection, request.shard, &request.key)?;
            fs::create_dir_all(&dir).map_err(internal)?;
            let path = staged_file(&dir, &request.file)?;
            self.inner.arrivals.forget(&path);
            let file = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(internal)?;
            let have = file.metadata().map_err(internal)?.len();
            if have != request.offset {
                return Err(RpcError::Invalid(format!(
                    "{}/{}: this copy holds {have} bytes, the stream starts at {}",
                    request.key, request.file, request.offset
                )));
            }
            let crc32 = if have == 0 {
                crc32fast::Hasher::new()
            } else {
                let (bytes, crc32) =
                    engram_index::disk::manifest::file_crc32(&path).map_err(internal)?;
                crc32fast::Hasher::new_with_initial_len(crc32, bytes)
            };
            Ok((file, crc32, path))
        })
    }

    /// Copy side of a [`ShipAttachRequest`].
    pub async fn ship_attach(self, request: ShipAttachRequest) -> RpcResult<()> {
        let host = self.clone();
        blocking(move || {
            host.in_shipping_turn(&request, || {
                let replica = host.inner.host.get(&request.collection, request.shard)?;
                let mut staged = Vec::with_capacity(request.segments.len());
                for (key, deleted) in &request.segments {
                    let dir = host.staged_segment(&request.collection, request.shard, key)?;
                    SealedSegment::write_delete_bitmap(&dir, deleted).map_err(internal)?;
                    let arrived = host.inner.arrivals.take_dir(&dir);
                    staged.push((dir, arrived));
                }
                let attached = replica.unless_retired(|shard| {
                    shard.attach_shipped(&staged).map_err(|e| {
                        replica.mark_missed_write();
                        internal(e)
                    })
                });
                if attached.is_err() {
                    // Damaged or not, what is staged is sent whole next time.
                    for (dir, _) in &staged {
                        remove_any(dir)?;
                    }
                }
                attached.map(|_| ())
            })
        })
        .await
    }
}

/// A request that is part of a shipping transfer: admitted under the
/// transfer's turn (`in_transfer_turn`) like every chunk after its reset.
trait ShippingPart {
    fn collection(&self) -> &str;
    fn shard(&self) -> u32;
    fn placement(&self) -> &ShardPlacement;
    fn transfer(&self) -> u64;
}

macro_rules! shipping_part {
    ($($request:ty),*) => {$(
        impl ShippingPart for $request {
            fn collection(&self) -> &str {
                &self.collection
            }
            fn shard(&self) -> u32 {
                self.shard
            }
            fn placement(&self) -> &ShardPlacement {
                &self.placement
            }
            fn transfer(&self) -> u64 {
                self.transfer
            }
        }
    )*};
}
shipping_part!(ShipPlanRequest, ShipFileRequest, ShipAttachRequest);

impl WorkerNode {
    /// Runs `apply` under the turn of the transfer `request` belongs to.
    fn in_shipping_turn<T>(
        &self,
        request: &impl ShippingPart,
        apply: impl FnOnce() -> RpcResult<T>,
    ) -> RpcResult<T> {
        self.in_transfer_turn(
            request.collection(),
            request.shard(),
            request.placement(),
            request.transfer(),
            false,
            apply,
        )
    }

    /// Where segment `key` shipped to this worker's copy of a shard is
    /// staged; the key must be a plain name.
    fn staged_segment(&self, collection: &str, shard: u32, key: &str) -> RpcResult<PathBuf> {
        staged_dir(&self.inner.host.shipping_dir(collection, shard), key)
    }
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
