//! A cluster worker: hosts shard replicas, orders and replicates writes for
//! the shards it leads, answers searches, and catches up shards it fell
//! behind on from their primary (`catch_up.rs`).

use parking_lot::{Mutex, RwLock};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use engram_core::merge_policy::CompactOptions;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use engram_core::config::IndexParams;
use engram_core::config::{CatchUpMode, StorageConfig};
use engram_core::placement::{ShardPlacement, WorkerId};
use engram_core::topk::merge_per_query;
use engram_index::SearchTuning;
use engram_meta::{ClusterAccess, ClusterState, Command, CommandResult};
use engram_store::{ObjectLocation, WalOp, WritePosition};

use crate::lease::ReadLease;
use crate::replicas::{Replica, ReplicaHost};
use crate::rpc_client::{CallError, InternalClient, call};
use crate::shard::{AttachedSegment, Compaction, SearchFilter, ShardDeletion, Stamp};
use crate::wire::*;

/// Longest a replication or transfer chunk may take.
pub(crate) const REPLICATION_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a replica may take to say where its copy stands.
const POSITION_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest a copy may take to download and attach a bulk segment.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(600);
/// Items per transfer chunk.
pub(crate) const TRANSFER_CHUNK: usize = 2_000;

/// What a worker knows of its data directory.
pub(crate) enum DataDir {
    /// It holds [`DISK_MARKER`]: a copy missing from it is a new one.
    Known,
    /// No marker (a new worker, or one whose disk was replaced), and no
    /// shard map seen yet.
    New,
    /// No marker; these copies, which the first shard map seen counted in
    /// sync here, are not on it (lost with the old disk) and the map still
    /// counts them in sync. Copies of collections created later are new.
    Missing(HashSet<(String, u32)>),
}

/// A file in a worker's data directory naming the worker that ran on it,
/// written once the shard map and the directory agree: without it, the
/// directory is new (a new worker, or one whose disk was replaced).
pub const DISK_MARKER: &str = "worker.id";

#[derive(Clone)]
pub struct WorkerNode {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) id: WorkerId,
    /// The internal address others reach this worker at.
    pub(crate) addr: String,
    pub(crate) coordinators: Vec<String>,
    pub(crate) host: ReplicaHost,
    pub(crate) client: InternalClient,
    /// The newest cluster state seen, and the Raft index it was applied at.
    pub(crate) state: RwLock<(u64, Arc<ClusterState>)>,
    /// The catch-ups this worker's copies are asking for, by shard.
    pub(crate) catching_up: Mutex<HashMap<(String, u32), crate::agent::CatchUpTask>>,
    /// Shards whose last full transfer could not send the writes made
    /// while its rows travelled: the next one holds the writes throughout
    /// (`catch_up.rs`).
    pub(crate) hold_transfers: Mutex<HashSet<(String, u32)>>,
    /// Copies found corrupted and set aside whose loss the shard map does
    /// not show yet: no fresh copy is opened for them until it does (an
    /// empty copy counted as in sync would answer reads without the data).
    pub(crate) lost: Mutex<HashSet<(String, u32)>>,
    /// Whether this worker's data directory is one it ran on before (see
    /// `agent::open_copy`).
    pub(crate) data_dir: Mutex<DataDir>,
    /// Where [`DISK_MARKER`] is written once the shard map agrees.
    pub(crate) disk_marker: std::path::PathBuf,
    /// The highest Raft index a coordinator told this worker about
    /// directly; collections are only dropped on a state at least as new.
    pub(crate) floor: AtomicU64,
    /// Whether this worker's view of the shard map is recent enough to
    /// answer reads (see [`crate::lease`]).
    pub(crate) lease: ReadLease,
    /// Credentials and endpoints for object storage (bulk segments).
    pub(crate) storage: StorageConfig,
    /// How this worker, as primary, catches copies up.
    pub(crate) catch_up: CatchUpMode,
    /// Bytes of one read of a shipped segment file.
    pub(crate) transfer_chunk_bytes: usize,
    /// Most bytes/s one shipped file streams at (0: no limit).
    pub(crate) transfer_max_bytes_per_s: u64,
    /// Sealed segments uploaded to object storage (`segment_upload.rs`).
    pub(crate) uploaded: crate::segment_upload::Uploaded,
    /// Staged segment files checksummed as they arrived (`arrivals.rs`).
    pub(crate) arrivals: crate::arrivals::Arrivals,
    /// Sent on every call to peers; required by this node's routes.
    access: ClusterAccess,
}

pub(crate) fn internal(e: impl std::fmt::Display) -> RpcError {
    RpcError::Internal(e.to_string())
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> RpcResult<T> + Send + 'static,
) -> RpcResult<T> {
    // The request's id and span go with the work (its log lines, and the
    // shard searches' spans under the request's).
    tokio::task::spawn_blocking(engram_meta::request_id::in_blocking(f))
        .await
        .map_err(internal)?
}

/// Who a worker is in the cluster and how it reaches the others.
pub struct Membership {
    pub id: WorkerId,
    /// The address the others reach this worker at.
    pub addr: String,
    /// Coordinators' internal addresses.
    pub coordinators: Vec<String>,
    /// Sent on every call to peers; required by this node's routes.
    pub access: ClusterAccess,
    /// How this worker, as primary, catches copies up.
    pub catch_up: CatchUpMode,
    /// Bytes of one read of a shipped segment file.
    pub transfer_chunk_bytes: usize,
    /// Most bytes/s one shipped file streams at (0: no limit).
    pub transfer_max_bytes_per_s: u64,
}

impl WorkerNode {
    pub fn new(
        membership: Membership,
        data_dir: &Path,
        params: IndexParams,
        storage: StorageConfig,
        cache: Arc<engram_index::SegmentCache>,
    ) -> crate::Result<WorkerNode> {
        let Membership {
            id,
            addr,
            coordinators,
            access,
            catch_up,
            transfer_chunk_bytes,
            transfer_max_bytes_per_s,
        } = membership;
        Ok(WorkerNode {
            inner: Arc::new(Inner {
                id,
                addr,
                coordinators,
                host: ReplicaHost::with_cache(data_dir, params, cache)?,
                client: InternalClient::new(&access),
                access,
                state: RwLock::new((0, Arc::new(ClusterState::default()))),
                catching_up: Mutex::new(HashMap::new()),
                hold_transfers: Mutex::new(HashSet::new()),
                lost: Mutex::new(HashSet::new()),
                data_dir: Mutex::new(if data_dir.join(DISK_MARKER).exists() {
                    DataDir::Known
                } else {
                    DataDir::New
                }),
                disk_marker: data_dir.join(DISK_MARKER),
                floor: AtomicU64::new(0),
                lease: ReadLease::default(),
                storage,
                catch_up,
                transfer_chunk_bytes,
                transfer_max_bytes_per_s,
                uploaded: Default::default(),
                arrivals: Default::default(),
            }),
        })
    }

    pub fn id(&self) -> WorkerId {
        self.inner.id
    }

    pub fn access(&self) -> &ClusterAccess {
        &self.inner.access
    }

    pub fn host(&self) -> &ReplicaHost {
        &self.inner.host
    }

    pub(crate) fn state(&self) -> Arc<ClusterState> {
        self.inner.state.read().1.clone()
    }

    pub(crate) fn worker_addr(&self, worker: WorkerId) -> RpcResult<String> {
        self.state()
            .workers
            .get(&worker)
            .map(|w| w.addr.clone())
            .ok_or_else(|| RpcError::Internal(format!("worker {worker} is not in the shard map")))
    }

    /// Sends `command` through any coordinator (they forward to the Raft
    /// leader) and returns its result.
    pub(crate) async fn command(&self, command: Command) -> RpcResult<CommandResult> {
        let mut last = String::from("no coordinator configured");
        for addr in &self.inner.coordinators {
            match call::<_, CommandResult>(
                &self.inner.client,
                addr,
                coordinator_path::COMMAND,
                &command,
                Duration::from_secs(20),
            )
            .await
            {
                Ok(result) => return Ok(result),
                Err(CallError::Refused(e)) => return Err(e),
                Err(e) => last = e.to_string(),
            }
        }
        Err(RpcError::Internal(format!(
            "no coordinator took the command: {last}"
        )))
    }

    // ----- writes ------------------------------------------------------

    /// A primary's write: apply locally (WAL fsync), then replicate to every
    /// in-sync replica; a replica that cannot take it is marked out of sync
    /// through Raft first. Only then is the write acknowledged.
    pub async fn write(self, request: WriteRequest) -> RpcResult<WriteReply> {
        let replica = self.inner.host.get(&request.collection, request.shard)?;
        let _order = replica.order.lock().await;
        let placement = self
            .order_as_primary(&replica, &request.placement, &request.collection)
            .await?;
        let at = next_position(&replica, &placement);
        let local = replica.clone();
        let applied = blocking(move || {
            local.unless_retired(|_| Ok(apply_as_primary(&local, request.ops, at)))
        })
        .await?;
        if !applied.ops.is_empty() {
            self.replicate(
                &replica,
                &placement,
                &request.collection,
                request.shard,
                at,
                applied.ops,
            )
            .await?;
        }
        if let Some(error) = applied.error {
            return Err(error);
        }
        hold_acknowledgement(&replica).await;
        Ok(WriteReply {
            deletions: applied.deletions,
        })
    }

    /// Checks, with the shard's order lock held, that this copy may order
    /// a write as primary under `sent` (the coordinator's placement) and
    /// settles its suspected replicas; returns the placement the write is
    /// ordered under. The write is replicated with that placement's epoch
    /// whatever this copy learns meanwhile (a transfer or a newer map may
    /// replace it while the write runs; replicas then refuse).
    async fn order_as_primary(
        &self,
        replica: &Arc<Replica>,
        sent: &ShardPlacement,
        collection: &str,
    ) -> RpcResult<ShardPlacement> {
        let shard = replica.shard.number();
        replica.check_epoch(sent)?;
        replica.check_writable()?;
        if replica.placement().primary != self.inner.id {
            return Err(RpcError::NotPrimary(shard));
        }
        self.settle_suspects(replica, collection, shard).await?;
        let placement = replica.placement();
        if placement.primary != self.inner.id {
            return Err(RpcError::NotPrimary(shard));
        }
        Ok(placement)
    }

    async fn replicate(
        &self,
        replica: &Arc<Replica>,
        placement: &ShardPlacement,
        collection: &str,
        shard: u32,
        position: WritePosition,
        ops: Vec<WalOp>,
    ) -> RpcResult<()> {
        let request = ReplicateRequest {
            collection: collection.to_string(),
            shard,
            placement: placement.clone(),
            position,
            ops,
        };
        self.to_replicas(
            replica,
            placement,
            collection,
            shard,
            path::REPLICATE,
            &request,
            REPLICATION_TIMEOUT,
        )
        .await
    }

    /// Sends `request` to every in-sync replica of `placement` (the one
    /// the write was ordered under); a replica that does not take it is
    /// marked out of sync through Raft, compare-and-set on that placement's
    /// epoch, before this returns, so the caller may acknowledge. If the
    /// shard map moved on meanwhile the marking is refused and so is the
    /// write; the replica stays suspected until the next write marks it.
    #[allow(clippy::too_many_arguments)]
    async fn to_replicas<R: serde::Serialize + Sync>(
        &self,
        replica: &Arc<Replica>,
        placement: &ShardPlacement,
        collection: &str,
        shard: u32,
        route: &str,
        request: &R,
        timeout: Duration,
    ) -> RpcResult<()> {
        let sends = placement.replicas.iter().map(|r| async move {
            let started = std::time::Instant::now();
            let result = match self.worker_addr(*r) {
                Ok(addr) => call::<_, ()>(&self.inner.client, &addr, route, request, timeout)
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            crate::metrics::replication_sent(route, result.is_ok(), started.elapsed());
            (*r, result)
        });
        let results = futures::future::join_all(sends).await;
        let mut epoch = placement.epoch;
        for (worker, result) in results {
            let Err(reason) = result else { continue };
            tracing::warn!(collection, shard, replica = worker, %reason, "replication failed; marking the replica out of sync");
            // Until it is marked, it may lack what was applied here.
            replica.suspect(worker);
            epoch = self
                .mark_out_of_sync(replica, collection, shard, worker, epoch)
                .await?;
        }
        Ok(())
    }

    /// Marks `worker` out of sync through Raft, compare-and-set on `epoch`,
    /// and returns the new placement's epoch; refused if the shard map has
    /// moved on from `epoch` (the worker stays suspected).
    async fn mark_out_of_sync(
        &self,
        replica: &Replica,
        collection: &str,
        shard: u32,
        worker: WorkerId,
        epoch: u64,
    ) -> RpcResult<u64> {
        let marked = self
            .command(Command::ReplicaOutOfSync {
                collection: collection.to_string(),
                shard,
                worker,
                epoch,
            })
            .await?;
        match marked {
            CommandResult::Placement(next) => {
                replica.observe(&next);
                replica.clear_suspect(worker);
                Ok(next.epoch)
            }
            CommandResult::Refused(why) => Err(RpcError::Replication(format!(
                "replica {worker} may lack writes and could not be marked out of sync: {why}"
            ))),
            _ => Ok(epoch),
        }
    }

    /// Marks out of sync, through Raft, every replica that may lack a write
    /// this copy applied as primary (see [`Replica::suspects`]); refused
    /// (and no write ordered) until that has happened. A suspect whose copy
    /// stands at this copy's position holds every write this one holds
    /// (`shard/history.rs`) and stays in sync: a restarted or newly
    /// promoted primary costs its replicas nothing when they are complete.
    pub(crate) async fn settle_suspects(
        &self,
        replica: &Arc<Replica>,
        collection: &str,
        shard: u32,
    ) -> RpcResult<()> {
        let suspects = replica.suspects(self.inner.id);
        if suspects.is_empty() {
            return Ok(());
        }
        let held = replica.shard.position();
        for worker in suspects {
            let placement = replica.placement();
            if held.is_some()
                && self
                    .position_of(worker, collection, shard, &placement)
                    .await
                    == held
            {
                tracing::debug!(collection, shard, replica = worker, position = ?held, "a suspected replica holds every write; it stays in sync");
                replica.clear_suspect(worker);
                continue;
            }
            self.mark_out_of_sync(replica, collection, shard, worker, placement.epoch)
                .await?;
        }
        Ok(())
    }

    /// Where `worker`'s copy of the shard stands (`None`: unknown, or it
    /// did not answer).
    async fn position_of(
        &self,
        worker: WorkerId,
        collection: &str,
        shard: u32,
        placement: &ShardPlacement,
    ) -> Option<WritePosition> {
        let addr = self.worker_addr(worker).ok()?;
        let request = PositionRequest {
            collection: collection.to_string(),
            shard,
            placement: placement.clone(),
        };
        call::<_, Option<WritePosition>>(
            &self.inner.client,
            &addr,
            path::POSITION,
            &request,
            POSITION_TIMEOUT,
        )
        .await
        .ok()
        .flatten()
    }

    // ----- bulk segments -----------------------------------------------

    /// Primary side of attaching a bulk-built segment: every copy downloads
    /// it first (writes continue meanwhile), then, in write order, the
    /// primary attaches its copy and has every in-sync replica attach
    /// theirs (a replica that cannot is marked out of sync, as for a
    /// write). Acknowledged once every in-sync copy serves the rows.
    pub async fn attach(self, request: AttachRequest) -> RpcResult<AttachedSegment> {
        let replica = self.inner.host.get(&request.collection, request.shard)?;
        replica.check_epoch(&request.placement)?;
        if replica.placement().primary != self.inner.id {
            return Err(RpcError::NotPrimary(request.shard));
        }
        let prefetch = AttachRequest {
            placement: replica.placement(),
            stage_only: true,
            position: None,
            ..request.clone()
        };
        let this = &self;
        let staged = replica.placement().replicas.into_iter().map(|r| {
            let prefetch = &prefetch;
            async move {
                let addr = this.worker_addr(r)?;
                call::<_, AttachedSegment>(
                    &this.inner.client,
                    &addr,
                    path::ATTACH_REPLICA,
                    prefetch,
                    ATTACH_TIMEOUT,
                )
                .await
                .map_err(|e| RpcError::Replication(e.to_string()))
            }
        });
        let (local, remote) = futures::future::join(
            self.stage_segment(&replica, &request.segment),
            futures::future::join_all(staged),
        )
        .await;
        let local = local?;
        for failed in remote.into_iter().filter_map(|r| r.err()) {
            // Attaching downloads again; if that fails too, out of sync.
            tracing::warn!(collection = %request.collection, shard = request.shard, error = %failed, "a replica could not stage a segment ahead");
        }
        let _order = replica.order.lock().await;
        let placement = self
            .order_as_primary(&replica, &request.placement, &request.collection)
            .await?;
        let at = next_position(&replica, &placement);
        let shard = replica.clone();
        let attached = blocking(move || {
            shard.unless_retired(|s| s.attach_at(&local, Stamp::At(at)).map_err(internal))
        })
        .await?;
        let forward = AttachRequest {
            placement: placement.clone(),
            stage_only: false,
            position: Some(at),
            ..request.clone()
        };
        self.to_replicas(
            &replica,
            &placement,
            &request.collection,
            request.shard,
            path::ATTACH_REPLICA,
            &forward,
            ATTACH_TIMEOUT,
        )
        .await?;
        hold_acknowledgement(&replica).await;
        Ok(attached)
    }

    /// A replica's side: stage (download) the segment, and unless
    /// `stage_only`, attach it.
    pub async fn apply_attach(self, request: AttachRequest) -> RpcResult<AttachedSegment> {
        let replica = self.inner.host.get(&request.collection, request.shard)?;
        replica.check_epoch(&request.placement)?;
        let staged = self.stage_segment(&replica, &request.segment).await?;
        if request.stage_only {
            return Ok(AttachedSegment::default());
        }
        // Without a position (an older primary): outside the history.
        let stamp = request.position.map_or(Stamp::Unordered, Stamp::At);
        blocking(move || {
            replica.unless_retired(|s| {
                s.attach_at(&staged, stamp).map_err(|e| {
                    if matches!(e, crate::WorkerError::OutOfOrder { .. }) {
                        replica.mark_missed_write();
                    }
                    internal(e)
                })
            })
        })
        .await
    }

    /// Downloads `segment` (checked file by file against its CRC32s) into
    /// the shard's staging directory, unless a complete copy is already
    /// there; returns the staged directory.
    async fn stage_segment(
        &self,
        replica: &Arc<Replica>,
        segment: &SegmentObject,
    ) -> RpcResult<std::path::PathBuf> {
        let name: String = segment
            .key
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let staging = replica.shard.staging_dir();
        let target = staging.join(&name);
        if target.exists() {
            return Ok(target);
        }
        self.download_segment(segment, &target).await?;
        Ok(target)
    }

    /// Downloads `segment` (checked file by file against its size and
    /// CRC32) beside `target` and renames it into place, replacing what
    /// was there; nothing is left at `target` unless it is complete.
    pub(crate) async fn download_segment(
        &self,
        segment: &SegmentObject,
        target: &std::path::Path,
    ) -> RpcResult<()> {
        let location = ObjectLocation::parse(&segment.uri, &self.inner.storage)
            .map_err(|e| RpcError::Invalid(e.to_string()))?;
        let mut partial = target.as_os_str().to_owned();
        partial.push(format!(
            ".partial-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        let partial = std::path::PathBuf::from(partial);
        let downloaded = location
            .download(&segment.key, &segment.files, &partial)
            .await;
        if let Err(e) = downloaded {
            let _ = fs_err::remove_dir_all(&partial);
            // A file name that is not one plain name is the caller's fault
            // and wrote nothing; anything else is this node's.
            return Err(match e {
                engram_store::StoreError::Refused(refused) => {
                    RpcError::Invalid(refused.to_string())
                }
                other => internal(other),
            });
        }
        let target = target.to_path_buf();
        blocking(move || {
            if target.exists() {
                fs_err::remove_dir_all(&target).map_err(internal)?;
            }
            fs_err::rename(&partial, &target).map_err(internal)
        })
        .await
    }

    /// A replica's side of replication.
    pub async fn apply_replicated(self, request: ReplicateRequest) -> RpcResult<()> {
        let replica = self.inner.host.get(&request.collection, request.shard)?;
        replica.check_epoch(&request.placement)?;
        tracing::debug!(shard = request.shard, ids = ?op_ids(&request.ops), epoch = request.placement.epoch, "replica writes");
        blocking(move || {
            replica.unless_retired(|shard| {
                shard
                    .write_at(request.ops, Stamp::At(request.position))
                    .map_err(|e| {
                        replica.mark_missed_write();
                        internal(e)
                    })
            })
        })
        .await
    }

    // ----- reads -------------------------------------------------------

    /// The hosted replicas of `shards`; refused if one is not hosted here.
    /// The hosted replicas of `shards` that may answer reads (see
    /// [`Replica::check_readable`]); refused if one is not hosted here.
    fn replicas(&self, collection: &str, shards: &[u32]) -> RpcResult<Vec<Arc<Replica>>> {
        shards
            .iter()
            .map(|s| self.readable(collection, *s))
            .collect()
    }

    fn readable(&self, collection: &str, shard: u32) -> RpcResult<Arc<Replica>> {
        self.inner.lease.check()?;
        let replica = self.inner.host.get(collection, shard)?;
        replica.check_readable(self.inner.id)?;
        Ok(replica)
    }

    pub async fn search(self, request: SearchRequest) -> RpcResult<SearchReply> {
        let replicas = self.replicas(&request.collection, &request.shards)?;
        let tuning = SearchTuning {
            list_size: request.list_size,
        };
        blocking(move || {
            use rayon::prelude::*;
            let filter = SearchFilter {
                exclude: request.exclude.iter().copied().collect(),
                admit: request.admission.map(Arc::new),
            };
            let queries: Vec<&[f32]> = request.queries.iter().map(Vec::as_slice).collect();
            let parent = tracing::Span::current();
            let per_shard: Vec<_> = replicas
                .par_iter()
                .map(|r| {
                    let _span = tracing::debug_span!(
                        parent: &parent,
                        "shard_search",
                        collection = %request.collection,
                        shard = r.shard.number()
                    )
                    .entered();
                    r.shard.search_batch(&queries, request.k, &filter, tuning)
                })
                .collect();
            let incomplete_shards = replicas
                .iter()
                .zip(&per_shard)
                .filter(|(_, hits)| hits.failed_segments > 0)
                .map(|(replica, _)| replica.shard.number())
                .collect();
            let _merge = tracing::debug_span!("merge", shards = per_shard.len()).entered();
            let lists = merge_per_query(
                per_shard.into_iter().map(|h| h.lists),
                queries.len(),
                request.k,
            );
            Ok(SearchReply {
                lists: lists
                    .iter()
                    .map(|list| list.iter().map(WireNeighbor::from).collect())
                    .collect(),
                incomplete_shards,
            })
        })
        .await
    }

    pub async fn get(self, request: GetRequest) -> RpcResult<Option<ItemReply>> {
        let replica = self.readable(&request.collection, request.shard)?;
        blocking(move || {
            let Some(item) = replica.shard.get(request.id) else {
                return Ok(None);
            };
            let vector = if request.vector {
                replica.shard.get_vector(request.id).map_err(internal)?
            } else {
                None
            };
            let thumbnail = if request.thumbnail {
                replica
                    .shard
                    .thumbnail(request.id)
                    .map_err(internal)?
                    .map(|t| t.to_vec())
            } else {
                None
            };
            Ok(Some(ItemReply {
                id: item.id,
                label: item.label.to_string(),
                weight: item.weight,
                source: item.source.map(|s| s.to_string()),
                vector,
                thumbnail,
            }))
        })
        .await
    }

    /// Largest scan page served, whatever the caller asks.
    pub const MAX_SCAN_PAGE: u32 = 4_096;

    pub async fn scan(self, request: ScanRequest) -> RpcResult<ScanReply> {
        let replica = self.readable(&request.collection, request.shard)?;
        let limit = request.limit.clamp(1, Self::MAX_SCAN_PAGE) as usize;
        blocking(move || {
            let (items, next) = replica
                .shard
                .scan_page(request.after, limit)
                .map_err(internal)?;
            Ok(ScanReply {
                items: items.into_iter().map(ItemReply::from).collect(),
                next,
            })
        })
        .await
    }

    pub async fn snapshot(self, request: SnapshotRequest) -> RpcResult<ScanReply> {
        let replica = self.inner.host.get(&request.collection, request.shard)?;
        blocking(move || {
            let items = replica.shard.snapshot().map_err(internal)?;
            Ok(ScanReply {
                items: items.into_iter().map(ItemReply::from).collect(),
                next: None,
            })
        })
        .await
    }

    pub async fn stats(self, request: StatsRequest) -> RpcResult<Vec<ShardStats>> {
        let replicas = self.replicas(&request.collection, &request.shards)?;
        Ok(replicas.iter().map(|r| r.shard.stats()).collect())
    }

    /// Compacts the listed shards (every replica compacts its own copy).
    pub async fn compact(self, request: CompactRequest) -> RpcResult<Compaction> {
        let replicas = self.replicas(&request.collection, &request.shards)?;
        blocking(move || {
            replicas
                .iter()
                .map(|r| {
                    r.compact(CompactOptions {
                        min_deleted_fraction: request.min_deleted_fraction,
                        seal: request.seal,
                        retrain_codebook: request.retrain_codebook,
                    })
                })
                .sum::<crate::Result<Compaction>>()
                .map_err(internal)
        })
        .await
    }
}

/// Waits until `replica` may acknowledge (see [`crate::lease`]): after its
/// in-sync set shrank, until every lease a dropped copy could still hold
/// has run out. Called with the shard's write order held, so later writes
/// wait too.
async fn hold_acknowledgement(replica: &Replica) {
    if let Some(wait) = replica.ack_hold.remaining() {
        tracing::debug!(
            shard = replica.shard.number(),
            wait_ms = wait.as_millis() as u64,
            "holding an acknowledgement until dropped copies' read leases end"
        );
        tokio::time::sleep(wait).await;
    }
}

/// The position a primary logs its next write at: after its copy's, in
/// the epoch of the placement the write is ordered under. (A copy whose
/// position is unknown, written before positions existed, starts over at
/// 1: no copy of unknown position matches it.)
fn next_position(replica: &Replica, placement: &ShardPlacement) -> WritePosition {
    replica
        .shard
        .position()
        .unwrap_or_default()
        .next(placement.epoch)
}

/// The ids `ops` touch, deletes negated, for debug logs that follow one
/// item through its copies.
fn op_ids(ops: &[WalOp]) -> Vec<i128> {
    ops.iter()
        .map(|op| match op {
            WalOp::Upsert { id, .. } => i128::from(*id),
            WalOp::Delete { id } => -i128::from(*id),
        })
        .collect()
}

/// What a primary applied of a write: the concrete operations to
/// replicate, the deletions made, and the error that stopped it partway,
/// if one did. What was applied before the error is replicated all the
/// same, so that the copies stay alike (a retried delete finds nothing
/// left to delete on the primary and would otherwise never reach them).
struct AppliedWrite {
    ops: Vec<WalOp>,
    deletions: Vec<ShardDeletion>,
    error: Option<RpcError>,
}

/// Applies a primary's ops in order: upserts and id deletes as given,
/// label/source deletes resolved to ids under the WAL lock. Returns the
/// concrete operations to replicate and the deletions made.
fn apply_as_primary(replica: &Replica, ops: Vec<ShardOp>, at: WritePosition) -> AppliedWrite {
    let mut applied = Vec::new();
    let mut deletions = Vec::new();
    let error = apply_ops(replica, ops, Stamp::At(at), &mut applied, &mut deletions).err();
    AppliedWrite {
        ops: applied,
        deletions,
        error,
    }
}

fn apply_ops(
    replica: &Replica,
    ops: Vec<ShardOp>,
    stamp: Stamp,
    applied: &mut Vec<WalOp>,
    deletions: &mut Vec<ShardDeletion>,
) -> RpcResult<()> {
    let shard = &replica.shard;
    let mut pending: Vec<WalOp> = Vec::new();
    let flush = |pending: &mut Vec<WalOp>, applied: &mut Vec<WalOp>| -> RpcResult<()> {
        if !pending.is_empty() {
            let ops = std::mem::take(pending);
            tracing::debug!(shard = shard.number(), ids = ?op_ids(&ops), epoch = replica.placement().epoch, "primary writes");
            shard.write_at(ops.clone(), stamp).map_err(|e| match e {
                crate::WorkerError::Index(engram_index::IndexError::DimensionMismatch {
                    ..
                }) => RpcError::Invalid(e.to_string()),
                e => internal(e),
            })?;
            applied.extend(ops);
        }
        Ok(())
    };
    for op in ops {
        let deletion = match op {
            ShardOp::Op(op) => {
                pending.push(op);
                continue;
            }
            ShardOp::DeleteIds(ids) => {
                flush(&mut pending, applied)?;
                shard.delete_traced_at(
                    |items| {
                        let (mut live, absent): (Vec<u64>, Vec<u64>) =
                            ids.iter().partition(|id| items.contains(**id));
                        if !absent.is_empty() {
                            tracing::debug!(
                                shard = shard.number(),
                                ?absent,
                                "delete of ids not stored here (deleted before, or never written)"
                            );
                        }
                        live.sort_unstable();
                        live.dedup();
                        live
                    },
                    stamp,
                )
            }
            ShardOp::DeleteLabel(label) => {
                flush(&mut pending, applied)?;
                shard.delete_traced_at(|items| items.ids_with_label(&label), stamp)
            }
            ShardOp::CopyIn(rows) => {
                flush(&mut pending, applied)?;
                let rows = rows
                    .into_iter()
                    .map(|row| {
                        row.into_scanned().ok_or_else(|| {
                            RpcError::Invalid("a copied row came without its vector".into())
                        })
                    })
                    .collect::<RpcResult<Vec<_>>>()?;
                let ops = shard.copy_in_at(rows, stamp).map_err(|e| match e {
                    crate::WorkerError::Index(engram_index::IndexError::DimensionMismatch {
                        ..
                    }) => RpcError::Invalid(e.to_string()),
                    e => internal(e),
                })?;
                applied.extend(ops);
                continue;
            }
            ShardOp::DeleteSource(source) => {
                flush(&mut pending, applied)?;
                shard.delete_traced_at(|items| items.ids_with_source(&source), stamp)
            }
        }
        .map_err(internal)?;
        if let Some(d) = deletion {
            tracing::debug!(shard = shard.number(), deleted = ?d.ids, epoch = replica.placement().epoch, "primary deletes");
            applied.extend(d.ids.iter().map(|id| WalOp::Delete { id: *id }));
            deletions.push(d);
        }
    }
    flush(&mut pending, applied)
}
