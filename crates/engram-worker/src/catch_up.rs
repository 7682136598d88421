//! Bringing a shard copy that fell behind back in sync from its primary.
//!
//! The copy asks with its position (`shard/history.rs`). When the
//! primary's WAL still holds every write after it, the primary sends just
//! those writes, each at its position (a *delta*: a copy at the primary's
//! position gets none); otherwise (a new copy, one behind the WAL's start,
//! one on another branch of the history, or `cluster.catch_up = "rows"`)
//! it streams every live item and the copy rebuilds the shard from them
//! (*rows*). A delta is sent holding the shard's write order. The rows of
//! a full transfer travel while writes go on: the primary reads them and
//! its position holding the order, pins its WAL (seals wait, up to a
//! bound), and once the rows are in, takes the order again and sends the
//! writes since that position as a delta. If those left the WAL anyway (an
//! attach, or the growing segment outgrew the pin), the copy's next
//! attempt holds the order throughout. The copy then holds every write, and
//! the primary marks it in sync through Raft.

use std::time::Instant;

use engram_core::config::CatchUpMode;
use engram_core::placement::ShardPlacement;
use engram_meta::{Command, CommandResult};
use engram_store::{WalOp, WritePosition};

use crate::node::{TRANSFER_CHUNK, WorkerNode, blocking, internal};
use crate::replicas::Replica;
use crate::rpc_client::call;
use crate::shard::{HistoryDelta, ShippingSnapshot, Stamp};
use crate::wire::*;

/// Longest one transfer chunk may take: applying it may seal the copy's
/// growing segment (a DiskANN build of up to `index.seal_threshold` rows,
/// about 15 s for 100,000 128-d rows on 2 cores). A full transfer's rows
/// travel without the shard's write order held, so writes do not wait on
/// it; a delta is small.
pub(crate) const TRANSFER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// A whole shard read for a full transfer (see `WorkerNode::read_full`).
enum FullCopy {
    /// Every live item, and the position they were read at.
    Rows(Vec<WalOp>, Option<WritePosition>),
    Segments(ShippingSnapshot),
}

impl FullCopy {
    fn position(&self) -> Option<WritePosition> {
        match self {
            FullCopy::Rows(_, position) => *position,
            FullCopy::Segments(snapshot) => snapshot.position,
        }
    }
}

/// How a catch-up was done, and what it moved.
#[derive(Default)]
struct Sent {
    kind: &'static str,
    bytes: u64,
    ops: usize,
}

impl WorkerNode {
    /// Primary side of a catch-up: sends `worker` what it lacks, then marks
    /// it in sync through Raft. A delta is sent holding the shard's write
    /// order. A full transfer holds it only while the shard is read: the
    /// rows travel while writes go on, and the writes ordered meanwhile
    /// follow as a delta from the transfer's position, under the order
    /// again (so a long transfer does not stall the shard's writes).
    pub async fn catch_up(self, request: CatchUpRequest) -> RpcResult<()> {
        let started = Instant::now();
        let replica = self.inner.host.get(&request.collection, request.shard)?;
        let transfer = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        // Not fenced (see `Replica::fence_writes_until`): a catch-up that
        // succeeds is what lifts a fence whose command was never applied.
        let mut order = Some(replica.order.lock().await);
        let mut placement = self.catching_up(&replica, &request).await?;
        let target = self.worker_addr(request.worker)?;
        let delta = match (self.inner.catch_up, request.position) {
            (CatchUpMode::Delta, Some(from)) => {
                let source = replica.clone();
                blocking(move || source.shard.history_since(from).map_err(internal)).await?
            }
            _ => None,
        };
        let sent = match delta {
            Some(delta) => {
                self.send_delta(&replica, &placement, &target, transfer, true, delta)
                    .await?
            }
            None => {
                let pin = replica.shard.pin_history();
                let copy = self.read_full(&replica, transfer).await?;
                let position = copy.position();
                // Without a position (a shard from before positions) the
                // writes meanwhile could not be told, and after a transfer
                // that lost them they may be lost again: keep the order.
                let held = self
                    .inner
                    .hold_transfers
                    .lock()
                    .remove(&(request.collection.clone(), request.shard));
                let released = position.is_some() && !held;
                if released {
                    order = None;
                }
                let full = self
                    .send_full(&replica, &placement, &target, transfer, copy)
                    .await?;
                if released {
                    order = Some(replica.order.lock().await);
                    placement = self.catching_up(&replica, &request).await?;
                }
                let tail = match position {
                    Some(from) => {
                        let source = replica.clone();
                        let tail =
                            blocking(move || source.shard.history_since(from).map_err(internal))
                                .await?;
                        drop(pin);
                        let Some(tail) = tail else {
                            // An attach, or the growing segment outgrew the
                            // pin: the copy asks again and gets the shard
                            // under the order this time.
                            self.inner
                                .hold_transfers
                                .lock()
                                .insert((request.collection.clone(), request.shard));
                            return Err(RpcError::Unavailable(format!(
                                "shard {}: the writes since the transfer's position {from} left this primary's WAL while the shard travelled; the copy asks again",
                                request.shard
                            )));
                        };
                        self.send_delta(&replica, &placement, &target, transfer, false, tail)
                            .await?
                    }
                    None => Sent::default(),
                };
                Sent {
                    kind: full.kind,
                    bytes: full.bytes + tail.bytes,
                    ops: full.ops + tail.ops,
                }
            }
        };
        let marked = self
            .command(Command::ReplicaInSync {
                collection: request.collection.clone(),
                shard: request.shard,
                worker: request.worker,
                epoch: placement.epoch,
            })
            .await;
        match marked {
            Ok(CommandResult::Placement(next)) => replica.observe(&next),
            Ok(CommandResult::Refused(why)) => {
                // Refused now, perhaps after an earlier attempt through a
                // coordinator that died had already been applied.
                replica.fence_writes_until(placement.epoch + 1);
                return Err(RpcError::Replication(why));
            }
            Ok(_) => {}
            Err(e) => {
                replica.fence_writes_until(placement.epoch + 1);
                return Err(e);
            }
        }
        drop(order);
        crate::metrics::caught_up(sent.kind, sent.bytes, started.elapsed());
        tracing::info!(
            collection = %request.collection,
            shard = request.shard,
            worker = request.worker,
            kind = sent.kind,
            ops = sent.ops,
            bytes = sent.bytes,
            seconds = started.elapsed().as_secs_f64(),
            "replica caught up"
        );
        Ok(())
    }

    /// Checks, holding the shard's write order, that this copy leads the
    /// shard and that `request.worker` is catching up on it, after settling
    /// suspected replicas (so that a transfer is never followed by one to
    /// the replicas this primary suspected anyway); returns the placement.
    async fn catching_up(
        &self,
        replica: &std::sync::Arc<Replica>,
        request: &CatchUpRequest,
    ) -> RpcResult<ShardPlacement> {
        if replica.placement().primary != self.inner.id {
            return Err(RpcError::NotPrimary(request.shard));
        }
        self.settle_suspects(replica, &request.collection, request.shard)
            .await?;
        let placement = replica.placement();
        if placement.primary != self.inner.id {
            return Err(RpcError::NotPrimary(request.shard));
        }
        if !placement.out_of_sync.contains(&request.worker) {
            return Err(RpcError::Invalid(format!(
                "worker {} is not catching up on shard {} (epoch {})",
                request.worker, request.shard, placement.epoch
            )));
        }
        Ok(placement)
    }

    /// The whole shard as a full transfer sends it, read holding its write
    /// order: its sealed segments' files and the growing segment's rows
    /// (see `shard/shipping.rs`), or with `cluster.catch_up = "rows"`
    /// every live item.
    async fn read_full(
        &self,
        replica: &std::sync::Arc<Replica>,
        transfer: u64,
    ) -> RpcResult<FullCopy> {
        let source = replica.clone();
        if self.inner.catch_up == CatchUpMode::Rows {
            return blocking(move || {
                let mut all = Vec::new();
                let position = source.shard.position();
                source
                    .shard
                    .scan(&mut |items| {
                        all.extend(items.into_iter().map(|i| WalOp::Upsert {
                            id: i.id,
                            label: i.label,
                            weight: i.weight,
                            source: i.source,
                            vector: i.vector,
                            thumbnail: i.thumbnail,
                        }));
                        Ok(())
                    })
                    .map_err(internal)?;
                Ok(FullCopy::Rows(all, position))
            })
            .await;
        }
        blocking(move || {
            source
                .shard
                .snapshot_for_shipping(transfer)
                .map(FullCopy::Segments)
                .map_err(internal)
        })
        .await
    }

    /// Sends `copy` to the copy at `target`, which its first chunk resets:
    /// the segments' files (when there are any), then the rows, the last
    /// chunk giving the copy the position it was read at.
    async fn send_full(
        &self,
        replica: &Replica,
        placement: &ShardPlacement,
        target: &str,
        transfer: u64,
        copy: FullCopy,
    ) -> RpcResult<Sent> {
        let mut snapshot = match copy {
            FullCopy::Rows(items, position) => {
                return self
                    .send_rows(replica, placement, target, transfer, true, items, position)
                    .await;
            }
            FullCopy::Segments(snapshot) => snapshot,
        };
        let growing = std::mem::take(&mut snapshot.growing);
        if snapshot.segments.is_empty() {
            // Nothing sealed yet: the growing segment's rows are the shard.
            return self
                .send_rows(
                    replica,
                    placement,
                    target,
                    transfer,
                    true,
                    growing,
                    snapshot.position,
                )
                .await;
        }
        let reset = self
            .send_rows(replica, placement, target, transfer, true, Vec::new(), None)
            .await?;
        let shipping = std::time::Instant::now();
        let shipped = self
            .ship_segments(replica, placement, target, transfer, &snapshot)
            .await?;
        let ship_seconds = shipping.elapsed().as_secs_f64();
        let rows = self
            .send_rows(
                replica,
                placement,
                target,
                transfer,
                false,
                growing,
                snapshot.position,
            )
            .await?;
        tracing::info!(
            shard = replica.shard.number(),
            segments = snapshot.segments.len(),
            file_bytes = snapshot.file_bytes(),
            resumed_bytes = shipped.resumed,
            downloaded_bytes = shipped.downloaded,
            files = shipped.files,
            ship_seconds,
            growing_rows = rows.ops,
            "shipped sealed segments"
        );
        // Counted as object storage when the copy downloaded the segments
        // and this primary sent none of their files; the bytes then
        // include what it downloaded.
        let from_storage = shipped.downloaded > 0 && shipped.files == 0;
        Ok(Sent {
            kind: if from_storage {
                "object_store"
            } else {
                "segments"
            },
            bytes: reset.bytes + shipped.bytes + rows.bytes + shipped.downloaded,
            ops: rows.ops,
        })
    }

    /// Sends the writes of `delta` in chunks of about [`TRANSFER_CHUNK`]
    /// operations (at least one chunk, which also clears a copy's missed
    /// write once it holds everything).
    async fn send_delta(
        &self,
        replica: &Replica,
        placement: &ShardPlacement,
        target: &str,
        transfer: u64,
        starts: bool,
        delta: HistoryDelta,
    ) -> RpcResult<Sent> {
        let ops = delta.ops();
        let chunks = chunk_writes(delta.writes, TRANSFER_CHUNK);
        let count = chunks.len();
        let mut from = delta.from;
        let mut bytes = 0;
        for (i, writes) in chunks.into_iter().enumerate() {
            let next = writes.last().map_or(from, |(p, _)| *p);
            let request = DeltaRequest {
                collection: replica.spec.name.clone(),
                shard: replica.shard.number(),
                placement: placement.clone(),
                transfer,
                first: starts && i == 0,
                last: i + 1 == count,
                from,
                writes,
            };
            bytes += self.send(target, path::DELTA, &request).await?;
            from = next;
        }
        Ok(Sent {
            kind: "delta",
            bytes,
            ops,
        })
    }

    /// Streams `items` (the whole shard, or what its shipped segments
    /// leave out, read at `position`) in chunks of [`TRANSFER_CHUNK`]; the
    /// first chunk resets the copy when `resets`, the last gives it
    /// `position`.
    #[allow(clippy::too_many_arguments)]
    async fn send_rows(
        &self,
        replica: &Replica,
        placement: &ShardPlacement,
        target: &str,
        transfer: u64,
        resets: bool,
        items: Vec<WalOp>,
        position: Option<WritePosition>,
    ) -> RpcResult<Sent> {
        let total = items.len();
        let tombstones = replica.shard.tombstones_if_receiving();
        let mut chunks: Vec<Vec<WalOp>> = items
            .chunks(TRANSFER_CHUNK)
            .map(<[WalOp]>::to_vec)
            .collect();
        drop(items);
        if chunks.is_empty() {
            chunks.push(Vec::new());
        }
        let count = chunks.len();
        let mut bytes = 0;
        for (i, ops) in chunks.into_iter().enumerate() {
            let install = InstallRequest {
                transfer,
                spec: replica.spec.clone(),
                shard: replica.shard.number(),
                placement: placement.clone(),
                reset: resets && i == 0,
                ops,
                tombstones: if resets && i == 0 {
                    tombstones.clone()
                } else {
                    None
                },
                position: if i + 1 == count { position } else { None },
            };
            bytes += self.send(target, path::INSTALL, &install).await?;
        }
        Ok(Sent {
            kind: "rows",
            bytes,
            ops: total,
        })
    }

    /// One transfer chunk to the copy; returns the bytes sent.
    pub(crate) async fn send<R: serde::Serialize>(
        &self,
        target: &str,
        route: &str,
        request: &R,
    ) -> RpcResult<u64> {
        let bytes = bincode::serialized_size(request).map_err(internal)?;
        call::<_, ()>(&self.inner.client, target, route, request, TRANSFER_TIMEOUT)
            .await
            .map_err(|e| RpcError::Replication(e.to_string()))?;
        Ok(bytes)
    }

    /// Receiving side of a full transfer.
    pub async fn install(self, request: InstallRequest) -> RpcResult<()> {
        let host = self.clone();
        tracing::debug!(
            shard = request.shard,
            transfer = request.transfer,
            reset = request.reset,
            items = request.ops.len(),
            epoch = request.placement.epoch,
            "transfer chunk"
        );
        blocking(move || {
            // Held through the write: a late chunk of an older transfer is
            // checked and applied (or refused) as one step.
            host.in_transfer_turn(
                &request.spec.name,
                request.shard,
                &request.placement,
                request.transfer,
                request.reset,
                || {
                    let replica = if request.reset {
                        let replica = host
                            .inner
                            .host
                            .reset(
                                &request.spec,
                                request.shard,
                                &request.placement,
                                request.tombstones.is_some(),
                            )
                            .map_err(internal)?;
                        if let Some(tombstones) = &request.tombstones {
                            replica
                                .shard
                                .delete_receiving_at(tombstones, Stamp::Unordered)
                                .map_err(internal)?;
                        }
                        replica
                    } else {
                        host.inner.host.get(&request.spec.name, request.shard)?
                    };
                    replica.observe(&request.placement);
                    replica.unless_retired(|shard| {
                        shard
                            .write_at(request.ops, Stamp::Unordered)
                            .and_then(|()| match request.position {
                                Some(position) => shard.set_position(position),
                                None => Ok(()),
                            })
                            .map_err(|e| {
                                replica.mark_missed_write();
                                internal(e)
                            })
                    })
                },
            )
        })
        .await
    }

    /// Receiving side of a delta: the copy must stand at the chunk's
    /// `from` (else nothing is applied and the primary gives up; the
    /// copy's agent asks again with its new position).
    pub async fn apply_delta(self, request: DeltaRequest) -> RpcResult<()> {
        let host = self.clone();
        tracing::debug!(
            shard = request.shard,
            transfer = request.transfer,
            from = %request.from,
            writes = request.writes.len(),
            epoch = request.placement.epoch,
            "delta chunk"
        );
        blocking(move || {
            let replica = host.inner.host.get(&request.collection, request.shard)?;
            host.in_transfer_turn(
                &request.collection,
                request.shard,
                &request.placement,
                request.transfer,
                request.first,
                || {
                    let delta = HistoryDelta {
                        from: request.from,
                        writes: request.writes,
                    };
                    replica.unless_retired(|shard| {
                        if shard.position() != Some(delta.from) {
                            return Err(RpcError::Unavailable(format!(
                                "shard {}: this copy is no longer at {} (a write reached it meanwhile)",
                                request.shard, delta.from
                            )));
                        }
                        shard.apply_history(delta).map_err(|e| {
                            replica.mark_missed_write();
                            internal(e)
                        })
                    })?;
                    if request.last {
                        // It holds every write its primary holds now.
                        replica.clear_missed_write();
                    }
                    Ok(())
                },
            )
        })
        .await
    }

    /// Runs `apply` holding the shard copy's transfer slot (so a chunk is
    /// checked and applied, or refused, as one step), after checking a
    /// hosted copy has seen no newer shard map than `placement` (it may be
    /// in sync by now) and admitting `transfer`'s chunk (see
    /// `replicas::admit_transfer`).
    pub(crate) fn in_transfer_turn<T>(
        &self,
        collection: &str,
        shard: u32,
        placement: &ShardPlacement,
        transfer: u64,
        starts: bool,
        apply: impl FnOnce() -> RpcResult<T>,
    ) -> RpcResult<T> {
        let slot = self.inner.host.transfer_slot(collection, shard);
        let mut current = slot.lock();
        if let Ok(existing) = self.inner.host.get(collection, shard) {
            existing.check_epoch(placement)?;
        }
        crate::replicas::admit_transfer(&mut current, shard, transfer, starts)?;
        apply()
    }

    /// Where this worker's copy of a shard stands, for its primary (see
    /// [`PositionRequest`]).
    pub async fn position(self, request: PositionRequest) -> RpcResult<Option<WritePosition>> {
        let replica = self.inner.host.get(&request.collection, request.shard)?;
        replica.check_epoch(&request.placement)?;
        Ok(replica.shard.position())
    }
}

/// Splits `writes` into chunks of at most `limit` operations each (a
/// larger write travels alone); at least one chunk, empty if need be.
fn chunk_writes(
    writes: Vec<(WritePosition, Vec<WalOp>)>,
    limit: usize,
) -> Vec<Vec<(WritePosition, Vec<WalOp>)>> {
    let mut chunks = vec![Vec::new()];
    let mut size = 0;
    for write in writes {
        let ops = write.1.len().max(1);
        let current = chunks.last_mut().expect("never empty");
        if !current.is_empty() && size + ops > limit {
            chunks.push(vec![write]);
            size = ops;
        } else {
            current.push(write);
            size += ops;
        }
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(seq: u64, ops: usize) -> (WritePosition, Vec<WalOp>) {
        (
            WritePosition { epoch: 1, seq },
            (0..ops).map(|i| WalOp::Delete { id: i as u64 }).collect(),
        )
    }

    #[test]
    fn writes_are_chunked_by_operations_and_never_split() {
        assert_eq!(chunk_writes(Vec::new(), 10), vec![Vec::new()]);
        let chunks = chunk_writes(
            vec![write(1, 4), write(2, 4), write(3, 4), write(4, 30)],
            10,
        );
        let seqs: Vec<Vec<u64>> = chunks
            .iter()
            .map(|c| c.iter().map(|(p, _)| p.seq).collect())
            .collect();
        assert_eq!(seqs, vec![vec![1, 2], vec![3], vec![4]]);
        // Every write once, in order.
        let all: Vec<u64> = seqs.concat();
        assert_eq!(all, vec![1, 2, 3, 4]);
    }
}
