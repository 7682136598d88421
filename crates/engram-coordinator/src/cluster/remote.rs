//! One shard layout of a collection on cluster workers (the Raft state
//! keys layouts: a collection's public name until it is first resharded,
//! `<name>@<generation>` after; see [`super::collection`]): writes go to
//! each shard's primary (retried across failovers and stale maps until the
//! write deadline), reads fan out to one healthy in-sync replica per shard
//! (retried on another replica when one fails or is too slow).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tracing::Instrument;

use engram_core::merge_policy::CompactOptions;
use engram_core::placement::WorkerId;
use engram_core::shard::shard_of;
use engram_core::topk::merge_per_query;
use engram_core::{Admission, CollectionSpec};
use engram_index::SearchTuning;
use engram_store::WalOp;
use engram_worker::rpc_client::{CallError, call};
use engram_worker::wire::*;
use engram_worker::{
    AttachedSegment, CollectionStats, Compaction, CopyPresence, ItemView, PresenceReport, Result,
    ScannedItem, SearchFilter, SearchResults, ShardDeletion, WorkerError,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::ClusterBackend;
use super::routing;

pub struct RemoteLayout {
    cluster: ClusterBackend,
    /// `spec.name` is the layout's key.
    spec: CollectionSpec,
    runtime: tokio::runtime::Handle,
    /// The collection's layouts when this one was taken from the shard
    /// map, for writes (see [`LayoutView`]); `None` outside a collection's
    /// layouts.
    view: Option<LayoutView>,
}

/// Which layouts a collection had in the shard map a write was planned
/// on: its current layout and its resharding target, if any.
///
/// A write retried by its primary's loop re-reads the shard's placement
/// (a failover, a copy marked out of sync) but must not outlive the set
/// of layouts it was planned for: begun under one layout, it would land
/// there alone after a resharding began, once the copy may have read that
/// shard already, and the flip would lose it. Each attempt checks the view
/// still holds; if not, the write fails and the collection runs it again
/// on both layouts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LayoutView {
    pub(crate) collection: String,
    pub(crate) current: String,
    pub(crate) target: Option<String>,
}

impl LayoutView {
    /// The view of `collection` in `state` (`None` if it does not exist).
    pub(crate) fn of(state: &engram_meta::ClusterState, collection: &str) -> Option<LayoutView> {
        Some(LayoutView {
            collection: collection.to_string(),
            current: state.collection(collection)?.spec.name.clone(),
            target: state
                .reshard_target(collection)
                .map(|(key, _)| key.to_string()),
        })
    }
}

/// Queries per worker search request (see `search_batch`).
const QUERIES_PER_REQUEST: usize = 16;

/// Longest a worker may take to copy one shard out for a snapshot.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(600);

/// Items per scan page.
const SCAN_PAGE: u32 = 2_048;

/// Pause between write attempts while the shard map settles.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// Longest a bulk segment attach may take (every copy downloads it).
const BULK_ATTACH_DEADLINE: Duration = Duration::from_secs(900);

impl RemoteLayout {
    pub(crate) fn new(
        cluster: ClusterBackend,
        spec: CollectionSpec,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        RemoteLayout {
            cluster,
            spec,
            runtime,
            view: None,
        }
    }

    /// This layout as one of the collection's layouts in `view`.
    pub(crate) fn in_view(mut self, view: LayoutView) -> Self {
        self.view = Some(view);
        self
    }

    /// Refuses to go on with a write whose layouts are no longer the
    /// collection's (see [`LayoutView`]).
    fn check_view(&self) -> Result<()> {
        let Some(view) = &self.view else {
            return Ok(());
        };
        let now = LayoutView::of(&self.cluster.state(), &view.collection);
        if now.as_ref() != Some(view) {
            return Err(WorkerError::Unavailable(format!(
                "the layouts of `{}` changed under this write ({view:?} -> {now:?}); it is run again on the new ones",
                view.collection
            )));
        }
        Ok(())
    }

    fn placements(&self) -> Result<Vec<engram_core::placement::ShardPlacement>> {
        self.cluster
            .state()
            .collections
            .get(&self.spec.name)
            .map(|c| c.shards.clone())
            .ok_or_else(|| WorkerError::UnknownCollection(self.spec.name.clone()))
    }

    fn addr(&self, worker: WorkerId) -> Option<String> {
        self.cluster
            .state()
            .workers
            .get(&worker)
            .map(|w| w.addr.clone())
    }

    /// Sends each shard's ops to its primary, in parallel; retries until
    /// the write deadline on anything but the caller's own mistake.
    fn write_shards(&self, per_shard: BTreeMap<u32, Vec<ShardOp>>) -> Result<Vec<ShardDeletion>> {
        let deadline = Instant::now() + self.cluster.inner.timeouts.write;
        self.runtime.block_on(async {
            let writes = per_shard
                .into_iter()
                .map(|(shard, ops)| self.write_shard(shard, ops, deadline));
            let mut deletions = Vec::new();
            for result in futures::future::join_all(writes).await {
                deletions.extend(result?);
            }
            Ok(deletions)
        })
    }

    async fn write_shard(
        &self,
        shard: u32,
        ops: Vec<ShardOp>,
        deadline: Instant,
    ) -> Result<Vec<ShardDeletion>> {
        let reply: WriteReply = self
            .to_primary(shard, path::WRITE, deadline, |placement| WriteRequest {
                collection: self.spec.name.clone(),
                shard,
                placement,
                ops: ops.clone(),
            })
            .await?;
        Ok(reply.deletions)
    }

    /// Sends what `request` makes of the current placement to the shard's
    /// primary, retrying through failovers (stale epochs, a dead primary)
    /// until `deadline`.
    async fn to_primary<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        shard: u32,
        route: &str,
        deadline: Instant,
        request: impl Fn(engram_core::placement::ShardPlacement) -> Req,
    ) -> Result<Resp> {
        let mut last;
        loop {
            self.check_view()?;
            let placement = self.placements()?[shard as usize].clone();
            if let Some(addr) = self.addr(placement.primary) {
                let primary = placement.primary;
                let request = request(placement);
                let left = deadline.saturating_duration_since(Instant::now());
                match call::<_, Resp>(
                    &self.cluster.inner.client,
                    &addr,
                    route,
                    &request,
                    left.max(Duration::from_millis(1)),
                )
                .await
                {
                    Ok(reply) => return Ok(reply),
                    Err(CallError::Refused(RpcError::Invalid(m))) => {
                        return Err(WorkerError::Invalid(m));
                    }
                    Err(CallError::Refused(RpcError::StaleEpoch { current, .. })) => {
                        self.wait_for_epoch(shard, current, deadline).await;
                        if Instant::now() >= deadline {
                            return Err(WorkerError::Unavailable(format!(
                                "shard {shard}: the shard map here did not reach epoch {current} in time"
                            )));
                        }
                        continue;
                    }
                    Err(e) => last = format!("shard {shard} primary {primary}: {e}"),
                }
            } else {
                last = format!("shard {shard}: primary {} unknown", placement.primary);
            }
            if Instant::now() + RETRY_PAUSE >= deadline {
                return Err(WorkerError::Unavailable(format!(
                    "not acknowledged in time: {last}"
                )));
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// Waits until this coordinator's shard map has `shard` at `epoch` or
    /// later (Raft applies it here shortly after the leader).
    async fn wait_for_epoch(&self, shard: u32, epoch: u64, deadline: Instant) {
        while Instant::now() < deadline {
            let current = self
                .cluster
                .state()
                .placement(&self.spec.name, shard)
                .map_or(u64::MAX, |p| p.epoch);
            if current >= epoch {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends a read to one healthy in-sync replica per shard, grouped by
    /// worker, retrying the shards of a failed worker on other replicas.
    /// Returns each worker's answer with its shards, and the shards nobody
    /// could serve.
    async fn fan_out<Req, Resp>(
        &self,
        shards: Vec<u32>,
        path: &'static str,
        request: impl Fn(Vec<u32>) -> Req,
    ) -> Result<(Vec<(Vec<u32>, Resp)>, Vec<u32>)>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
    {
        let timeout = self.cluster.inner.timeouts.query;
        let span = tracing::debug_span!("fan_out", route = path, shards = shards.len());
        self.fan_out_within(timeout, shards, path, request)
            .instrument(span)
            .await
    }

    /// [`Self::fan_out`] with another per-request deadline (long reads).
    async fn fan_out_within<Req, Resp>(
        &self,
        timeout: Duration,
        shards: Vec<u32>,
        path: &'static str,
        request: impl Fn(Vec<u32>) -> Req,
    ) -> Result<(Vec<(Vec<u32>, Resp)>, Vec<u32>)>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
    {
        let salt = self.cluster.inner.salt.fetch_add(1, Ordering::Relaxed);
        // Replicas that just restarted may not have opened their shards yet:
        // shards every replica failed are tried again until the deadline.
        let deadline = Instant::now() + 2 * self.cluster.inner.timeouts.query;
        let mut tried: BTreeMap<u32, BTreeSet<WorkerId>> = BTreeMap::new();
        let mut pending = shards;
        let mut answers = Vec::new();
        let mut unserved = Vec::new();
        while !pending.is_empty() {
            let placements = self.placements()?;
            let plan = routing::plan(
                &placements,
                pending.iter().copied(),
                |w| self.cluster.healthy(w),
                &tried,
                salt,
            );
            let mut retry = Vec::new();
            for shard in plan.unserved {
                if tried.contains_key(&shard) && Instant::now() + RETRY_PAUSE < deadline {
                    tried.remove(&shard);
                    retry.push(shard);
                } else {
                    unserved.push(shard);
                }
            }
            let calls = plan.requests.into_iter().map(|(worker, shards)| {
                let body = request(shards.clone());
                let span = tracing::debug_span!("shard_call", worker, shards = shards.len());
                async move {
                    let started = std::time::Instant::now();
                    let result = self
                        .call_worker(worker, path, &body, timeout)
                        .await
                        .unwrap_or_else(|| {
                            Err(CallError::Refused(RpcError::Internal(
                                "unknown worker".into(),
                            )))
                        });
                    crate::metrics::fan_out_call(path, worker, result.is_ok(), started.elapsed());
                    (worker, shards, result)
                }
                .instrument(span)
            });
            let results = futures::future::join_all(calls).await;
            if !retry.is_empty() {
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            pending = retry;
            for (worker, shards, result) in results {
                match result {
                    Ok(answer) => answers.push((shards, answer)),
                    Err(CallError::Refused(RpcError::Invalid(m))) => {
                        return Err(WorkerError::Invalid(m));
                    }
                    Err(e) => {
                        tracing::warn!(worker, error = %e, "replica failed; trying another");
                        for s in shards {
                            tried.entry(s).or_default().insert(worker);
                            pending.push(s);
                        }
                    }
                }
            }
        }
        unserved.sort_unstable();
        Ok((answers, unserved))
    }

    fn search_slice(
        &self,
        queries: &[&[f32]],
        k: usize,
        exclude: &[u64],
        admission: Option<&Admission>,
        tuning: SearchTuning,
    ) -> SearchResults {
        let queries: Vec<Vec<f32>> = queries.iter().map(|q| q.to_vec()).collect();
        let n = queries.len();
        let outcome =
            self.runtime
                .block_on(
                    self.fan_out(self.all_shards(), path::SEARCH, |shards| SearchRequest {
                        collection: self.spec.name.clone(),
                        shards,
                        queries: queries.clone(),
                        k,
                        exclude: exclude.to_vec(),
                        list_size: tuning.list_size,
                        admission: admission.cloned(),
                    }),
                );
        let (answers, unserved) = match outcome {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(error = %e, "search fan-out failed");
                (Vec::new(), self.all_shards())
            }
        };
        let mut incomplete_shards = unserved;
        let mut per_worker = Vec::with_capacity(answers.len());
        for (_, reply) in answers {
            let reply: SearchReply = reply;
            incomplete_shards.extend(reply.incomplete_shards);
            per_worker.push(
                reply
                    .lists
                    .into_iter()
                    .map(|list| list.into_iter().map(Into::into).collect())
                    .collect(),
            );
        }
        let _merge = tracing::debug_span!("merge", workers = per_worker.len()).entered();
        SearchResults {
            lists: merge_per_query(per_worker, n, k),
            incomplete_shards,
        }
    }

    /// One internal call to `worker`; `None` if the shard map does not
    /// know it.
    async fn call_worker<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        worker: WorkerId,
        path: &str,
        request: &Req,
        timeout: Duration,
    ) -> Option<std::result::Result<Resp, CallError>> {
        let addr = self.addr(worker)?;
        Some(call(&self.cluster.inner.client, &addr, path, request, timeout).await)
    }

    pub(crate) fn all_shards(&self) -> Vec<u32> {
        (0..self.spec.shards).collect()
    }

    fn get_item(&self, id: u64, vector: bool, thumbnail: bool) -> Result<Option<ItemReply>> {
        let shard = shard_of(id, self.spec.shards);
        let (answers, unserved) =
            self.runtime
                .block_on(self.fan_out(vec![shard], path::GET, |_| GetRequest {
                    collection: self.spec.name.clone(),
                    shard,
                    id,
                    vector,
                    thumbnail,
                }))?;
        if !unserved.is_empty() {
            return Err(WorkerError::Unavailable(format!(
                "no replica of shard {shard} answered"
            )));
        }
        Ok(answers.into_iter().next().and_then(|(_, item)| item))
    }
}

/// The operations of [`ShardedCollection`] on one layout; the collection
/// wraps them with resharding's dual writes.
impl RemoteLayout {
    pub(crate) fn spec(&self) -> &CollectionSpec {
        &self.spec
    }

    pub(crate) fn write(&self, ops: Vec<WalOp>) -> Result<()> {
        let mut per_shard: BTreeMap<u32, Vec<ShardOp>> = BTreeMap::new();
        for op in ops {
            let id = match &op {
                WalOp::Upsert { id, .. } | WalOp::Delete { id } => *id,
            };
            per_shard
                .entry(shard_of(id, self.spec.shards))
                .or_default()
                .push(ShardOp::Op(op));
        }
        self.write_shards(per_shard).map(|_| ())
    }

    pub(crate) fn delete_ids_traced(&self, ids: &[u64]) -> Result<Vec<ShardDeletion>> {
        let mut per_shard: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
        for id in ids {
            per_shard
                .entry(shard_of(*id, self.spec.shards))
                .or_default()
                .push(*id);
        }
        self.write_shards(
            per_shard
                .into_iter()
                .map(|(s, ids)| (s, vec![ShardOp::DeleteIds(ids)]))
                .collect(),
        )
    }

    pub(crate) fn delete_label_traced(&self, label: &str) -> Result<Vec<ShardDeletion>> {
        self.write_shards(
            self.all_shards()
                .into_iter()
                .map(|s| (s, vec![ShardOp::DeleteLabel(label.to_string())]))
                .collect(),
        )
    }

    pub(crate) fn delete_source_traced(&self, source: &str) -> Result<Vec<ShardDeletion>> {
        self.write_shards(
            self.all_shards()
                .into_iter()
                .map(|s| (s, vec![ShardOp::DeleteSource(source.to_string())]))
                .collect(),
        )
    }

    /// Where the deleted rows of `deletions` still are, copy by copy: every
    /// live worker is asked about the shards the ids route to in this
    /// layout (deletions recorded before a resharding name the old
    /// layout's), and answers for its own copies, staged transfers and
    /// quarantined copies. A copy the placements name whose worker does not
    /// answer is reported unchecked, never as clean.
    pub(crate) fn presence(&self, deletions: &[ShardDeletion]) -> Result<PresenceReport> {
        // Every shard is asked (those without ids for their segment keys
        // only): an uploaded segment is garbage only if no copy of any
        // shard holds it.
        let grouped = self.group_by_shard(deletions, true);
        let placements = self.placements()?;
        let workers: Vec<(WorkerId, bool)> = self
            .cluster
            .state()
            .workers
            .values()
            .map(|w| (w.id, w.alive))
            .collect();
        self.runtime.block_on(async {
            let mut report = PresenceReport::default();
            let request = PresenceRequest {
                collection: self.spec.name.clone(),
                deletions: grouped.clone(),
            };
            let timeout = self.cluster.inner.timeouts.query;
            let asks = workers
                .iter()
                .filter(|(_, alive)| *alive)
                .map(|(worker, _)| {
                    let request = &request;
                    async move {
                        let reply = self
                            .call_worker::<_, PresenceReply>(
                                *worker,
                                path::PRESENCE,
                                request,
                                timeout,
                            )
                            .await;
                        (*worker, reply)
                    }
                });
            let mut answered = BTreeSet::new();
            let mut failed: BTreeMap<WorkerId, String> = BTreeMap::new();
            for (worker, reply) in futures::future::join_all(asks).await {
                match reply {
                    Some(Ok(reply)) => {
                        answered.insert(worker);
                        report.extend(reply.report);
                    }
                    Some(Err(e)) => {
                        failed.insert(worker, e.to_string());
                    }
                    None => {
                        failed.insert(worker, "no address".to_string());
                    }
                }
            }
            // A worker that did not answer (down, paused, cut off) may
            // hold any shard's bytes on its disk: every touched shard is
            // unchecked there, whether or not the placements name it now
            // (a copy failed over away from a dead worker stays on its
            // disk until it comes back and drops it).
            let silent = workers
                .iter()
                .filter(|(worker, _)| !answered.contains(worker))
                .map(|(worker, alive)| {
                    let reason = failed.get(worker).cloned().unwrap_or_else(|| {
                        if *alive {
                            "no answer".to_string()
                        } else {
                            "the worker is down".to_string()
                        }
                    });
                    (*worker, reason)
                });
            for (worker, reason) in silent {
                for d in grouped.iter().filter(|d| !d.ids.is_empty()) {
                    report.copies.push(CopyPresence {
                        worker: Some(worker),
                        layout: self.spec.name.clone(),
                        shard: d.shard,
                        presence: None,
                        unchecked: Some(reason.clone()),
                        held_keys: Vec::new(),
                    });
                }
            }
            // Placements naming a worker the state does not list.
            for d in grouped.iter().filter(|d| !d.ids.is_empty()) {
                let Some(p) = placements.get(d.shard as usize) else {
                    continue;
                };
                for host in p.all_hosts() {
                    if !workers.iter().any(|(w, _)| *w == host) {
                        report.copies.push(CopyPresence {
                            worker: Some(host),
                            layout: self.spec.name.clone(),
                            shard: d.shard,
                            presence: None,
                            unchecked: Some("not a registered worker".to_string()),
                            held_keys: Vec::new(),
                        });
                    }
                }
            }
            Ok(report)
        })
    }

    /// Rewrites what holds the deleted rows of `deletions` on every live
    /// worker (each erases its own copies and quarantined copies).
    pub(crate) fn erase(&self, deletions: &[ShardDeletion]) -> Result<Compaction> {
        let grouped = self.group_by_shard(deletions, false);
        let workers: Vec<WorkerId> = self
            .cluster
            .state()
            .workers
            .values()
            .filter(|w| w.alive)
            .map(|w| w.id)
            .collect();
        self.runtime.block_on(async {
            let request = EraseRequest {
                collection: self.spec.name.clone(),
                deletions: grouped,
            };
            let mut total = Compaction::default();
            let mut quarantined = 0;
            for worker in workers {
                let timeout = Duration::from_secs(3600);
                let Some(reply) = self
                    .call_worker::<_, EraseReply>(worker, path::ERASE, &request, timeout)
                    .await
                else {
                    continue;
                };
                let reply = reply.map_err(|e| WorkerError::Unavailable(e.to_string()))?;
                total = total + reply.compaction;
                quarantined += reply.quarantined_removed;
            }
            if quarantined > 0 {
                tracing::warn!(collection = %self.spec.name, quarantined, "quarantined copies deleted for an erasure");
            }
            Ok(total)
        })
    }

    /// `deletions`' ids grouped by this layout's shards (`every`: with an
    /// empty entry for each shard none of them routes to).
    fn group_by_shard(&self, deletions: &[ShardDeletion], every: bool) -> Vec<ShardDeletion> {
        let mut per_shard: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
        if every {
            per_shard.extend(self.all_shards().into_iter().map(|s| (s, Vec::new())));
        }
        for id in deletions.iter().flat_map(|d| d.ids.iter()) {
            per_shard
                .entry(shard_of(*id, self.spec.shards))
                .or_default()
                .push(*id);
        }
        per_shard
            .into_iter()
            .map(|(shard, ids)| ShardDeletion {
                shard,
                ids,
                ..ShardDeletion::default()
            })
            .collect()
    }

    /// Deletes `ids` in a resharding's target layout whether or not its
    /// copies hold them yet (each becomes a tombstone there).
    pub(crate) fn delete_receiving(&self, ids: &[u64]) -> Result<()> {
        let mut per_shard: BTreeMap<u32, Vec<ShardOp>> = BTreeMap::new();
        for id in ids {
            per_shard
                .entry(shard_of(*id, self.spec.shards))
                .or_default()
                .push(ShardOp::Op(WalOp::Delete { id: *id }));
        }
        self.write_shards(per_shard).map(|_| ())
    }

    /// Copies `rows` into this (target) layout: each primary applies those
    /// its shard has seen no write or delete of (see `Shard::copy_in`).
    pub(crate) fn copy_in(&self, rows: Vec<ScannedItem>) -> Result<()> {
        let mut per_shard: BTreeMap<u32, Vec<ItemReply>> = BTreeMap::new();
        for row in rows {
            per_shard
                .entry(shard_of(row.id, self.spec.shards))
                .or_default()
                .push(ItemReply::from(row));
        }
        self.write_shards(
            per_shard
                .into_iter()
                .map(|(shard, rows)| (shard, vec![ShardOp::CopyIn(rows)]))
                .collect(),
        )
        .map(|_| ())
    }

    /// Makes `shard`'s primary adopt the placement this coordinator knows
    /// (an empty write ordered like any other): from then on it refuses
    /// writes of coordinators acting on an older shard map.
    pub(crate) fn fence(&self, shard: u32) -> Result<()> {
        let deadline = Instant::now() + self.cluster.inner.timeouts.write;
        let _: WriteReply =
            self.runtime
                .block_on(self.to_primary(shard, path::WRITE, deadline, |placement| {
                    WriteRequest {
                        collection: self.spec.name.clone(),
                        shard,
                        placement,
                        ops: Vec::new(),
                    }
                }))?;
        Ok(())
    }

    /// From one in-sync replica (another if it fails).
    pub(crate) fn snapshot_shard(&self, shard: u32) -> Result<Vec<ScannedItem>> {
        let (answers, unserved) = self.runtime.block_on(self.fan_out_within(
            SNAPSHOT_TIMEOUT,
            vec![shard],
            path::SNAPSHOT,
            |_| SnapshotRequest {
                collection: self.spec.name.clone(),
                shard,
            },
        ))?;
        let Some((_, reply)) = answers.into_iter().next() else {
            return Err(WorkerError::Unavailable(format!(
                "no replica of shard {shard} answered a snapshot ({unserved:?})"
            )));
        };
        let reply: ScanReply = reply;
        Ok(reply
            .items
            .into_iter()
            .filter_map(ItemReply::into_scanned)
            .collect())
    }

    /// Pages through each shard in id order on one in-sync replica per
    /// page (another one when a replica fails), holding no lock between
    /// pages. A shard no replica can serve fails the scan.
    pub(crate) fn scan(&self, f: &mut dyn FnMut(Vec<ScannedItem>) -> Result<()>) -> Result<()> {
        for shard in self.all_shards() {
            self.scan_shard(shard, f)?;
        }
        Ok(())
    }

    /// [`Self::scan`] of one shard.
    pub(crate) fn scan_shard(
        &self,
        shard: u32,
        f: &mut dyn FnMut(Vec<ScannedItem>) -> Result<()>,
    ) -> Result<()> {
        let mut after = None;
        loop {
            let (answers, unserved) =
                self.runtime
                    .block_on(self.fan_out(vec![shard], path::SCAN, |_| ScanRequest {
                        collection: self.spec.name.clone(),
                        shard,
                        after,
                        limit: SCAN_PAGE,
                    }))?;
            let Some((_, page)) = answers.into_iter().next() else {
                return Err(WorkerError::Unavailable(format!(
                    "no replica of shard {shard} answered a scan ({unserved:?})"
                )));
            };
            let page: ScanReply = page;
            let items: Vec<ScannedItem> = page
                .items
                .into_iter()
                .filter_map(ItemReply::into_scanned)
                .collect();
            if !items.is_empty() {
                f(items)?;
            }
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(()),
            }
        }
    }

    pub(crate) fn search_batch(
        &self,
        queries: &[&[f32]],
        k: usize,
        filter: &SearchFilter,
        tuning: SearchTuning,
    ) -> SearchResults {
        let exclude: Vec<u64> = filter.exclude.iter().copied().collect();
        let admission = filter.admit.as_deref().cloned();
        let mut results = SearchResults::default();
        // Large batches go out in slices, so that each worker request's
        // deadline covers a bounded amount of work.
        for slice in queries.chunks(QUERIES_PER_REQUEST) {
            let part = self.search_slice(slice, k, &exclude, admission.as_ref(), tuning);
            results.lists.extend(part.lists);
            results.incomplete_shards.extend(part.incomplete_shards);
        }
        results.incomplete_shards.sort_unstable();
        results.incomplete_shards.dedup();
        results
    }

    pub(crate) fn get(&self, id: u64) -> Result<Option<ItemView>> {
        Ok(self.get_item(id, false, false)?.map(|item| ItemView {
            id: item.id,
            label: Arc::from(item.label),
            weight: item.weight,
            source: item.source.map(Arc::from),
        }))
    }

    pub(crate) fn get_vector(&self, id: u64) -> Result<Option<Vec<f32>>> {
        Ok(self.get_item(id, true, false)?.and_then(|item| item.vector))
    }

    pub(crate) fn thumbnail(&self, id: u64) -> Result<Option<Arc<[u8]>>> {
        Ok(self
            .get_item(id, false, true)?
            .and_then(|item| item.thumbnail)
            .map(Into::into))
    }

    pub(crate) fn stats(&self) -> Result<CollectionStats> {
        let (answers, unserved) =
            self.runtime
                .block_on(
                    self.fan_out(self.all_shards(), path::STATS, |shards| StatsRequest {
                        collection: self.spec.name.clone(),
                        shards,
                    }),
                )?;
        if !unserved.is_empty() {
            return Err(WorkerError::Unavailable(format!(
                "no replica of shards {unserved:?} answered"
            )));
        }
        let shards: Vec<ShardStats> = answers
            .into_iter()
            .flat_map(|(_, shards): (_, Vec<ShardStats>)| shards)
            .collect();
        Ok(CollectionStats::from_shards(shards))
    }

    pub(crate) fn attach_segment(
        &self,
        shard: u32,
        _local: &std::path::Path,
        object: Option<&SegmentObject>,
    ) -> Result<AttachedSegment> {
        let Some(object) = object else {
            return Err(WorkerError::Invalid(
                "bulk ingestion in a cluster needs object storage for its segments: set storage.segments_uri".into(),
            ));
        };
        let deadline = Instant::now() + BULK_ATTACH_DEADLINE;
        self.runtime
            .block_on(
                self.to_primary(shard, path::ATTACH, deadline, |placement| AttachRequest {
                    collection: self.spec.name.clone(),
                    shard,
                    placement,
                    segment: object.clone(),
                    stage_only: false,
                    position: None,
                }),
            )
    }

    pub(crate) fn compact(&self, options: CompactOptions) -> Result<Compaction> {
        // Every in-sync copy compacts its own files; the count is over all
        // copies.
        let placements = self.placements()?;
        let mut per_worker: BTreeMap<WorkerId, Vec<u32>> = BTreeMap::new();
        for (shard, p) in placements.iter().enumerate() {
            for w in p.in_sync() {
                per_worker.entry(w).or_default().push(shard as u32);
            }
        }
        self.runtime.block_on(async {
            let mut total = Compaction::default();
            for (worker, shards) in per_worker {
                let request = CompactRequest {
                    collection: self.spec.name.clone(),
                    shards,
                    min_deleted_fraction: options.min_deleted_fraction,
                    seal: options.seal,
                    retrain_codebook: options.retrain_codebook,
                };
                let timeout = Duration::from_secs(3600);
                let Some(n) = self
                    .call_worker::<_, Compaction>(worker, path::COMPACT, &request, timeout)
                    .await
                else {
                    continue;
                };
                let n = n.map_err(|e| WorkerError::Unavailable(e.to_string()))?;
                total = total + n;
            }
            Ok(total)
        })
    }
}
