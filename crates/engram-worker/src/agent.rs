//! The worker's background work: heartbeat every coordinator, follow the
//! newest cluster state they report, open the shards placed here, drop
//! collections that are gone, and catch up shards this worker fell behind on.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use engram_core::merge_policy::CompactOptions;
use engram_meta::{ClusterState, Command, CommandResult, SegmentFile, SegmentRecord};

use crate::node::{DataDir, WorkerNode, blocking, internal};
use crate::rpc_client::call;
use crate::shard::Compaction;
use crate::wire::*;

/// How often a worker heartbeats.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(300);

/// How often a worker compares its copies' sealed segments with the Raft
/// state and reports differences.
const SEGMENT_REPORT_INTERVAL: Duration = Duration::from_secs(3);

/// How often the agent reconciles its copies with the shard map even when
/// nothing changed: failed catch-ups are retried at this pace.
const RECONCILE_INTERVAL: Duration = Duration::from_secs(2);

/// Longest a copy waits for its primary to bring it in sync. A full
/// transfer by rows rebuilds every segment of the shard on the copy
/// (minutes per million 128-d rows on 2 cores; shipped segments take
/// seconds), so this bounds only a primary that
/// stopped answering without losing its place; one that no longer leads
/// has its catch-up abandoned at once (see `start_catch_ups`).
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(12 * 3600);

/// Numbers the catch-up tasks (see [`CatchUpTask`]).
static CATCH_UP_IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A catch-up this worker asked a primary for, still running.
pub(crate) struct CatchUpTask {
    id: u64,
    primary: engram_core::placement::WorkerId,
    abort: tokio::task::AbortHandle,
}

/// A shard copy's sealed segments as the Raft state records them.
fn segment_records(shard: &crate::shard::Shard) -> Vec<SegmentRecord> {
    shard
        .sealed()
        .iter()
        .map(|segment| SegmentRecord {
            name: segment.name(),
            rows: segment.rows() as u64,
            deleted: segment.deleted_rows() as u64,
            files: segment
                .manifest()
                .files
                .iter()
                .map(|f| SegmentFile {
                    name: f.name.clone(),
                    bytes: f.bytes,
                    crc32: f.crc32,
                })
                .collect(),
        })
        .collect()
}

impl WorkerNode {
    /// Runs the agent forever (spawn it): four independent loops, so that
    /// nothing slow (opening or dropping copies, a Raft write for a segment
    /// report under load) delays a heartbeat. A worker whose heartbeats
    /// stall is failed over by the coordinators, which costs every copy it
    /// holds a catch-up; its liveness must reflect the process, not its
    /// busiest chore.
    pub async fn run_agent(self) {
        let changed = tokio::sync::Notify::new();
        let follow = async {
            loop {
                // Also without news: a catch-up that failed (its primary
                // busy, the epoch moved on) is retried, not left waiting
                // for the next change of the shard map.
                let _ = tokio::time::timeout(RECONCILE_INTERVAL, changed.notified()).await;
                self.reconcile().await;
            }
        };
        let report = async {
            loop {
                tokio::time::sleep(SEGMENT_REPORT_INTERVAL).await;
                self.report_segments().await;
            }
        };
        // Uploads of sealed segments to object storage (when configured)
        // may take minutes for a large segment: a loop of their own.
        let upload = async {
            loop {
                tokio::time::sleep(SEGMENT_REPORT_INTERVAL).await;
                self.upload_sealed_segments().await;
            }
        };
        let beat = async {
            loop {
                if self.heartbeat().await {
                    // One stored permit: whatever arrives while a reconcile
                    // runs leads to exactly one more round.
                    changed.notify_one();
                }
                tokio::time::sleep(HEARTBEAT_INTERVAL).await;
            }
        };
        tokio::join!(follow, report, upload, beat);
    }

    /// Automatic compaction of this worker's copies: every `every`, each
    /// copy whose most-deleted sealed segment passes `threshold` is
    /// rewritten without its deleted rows (each copy compacts its own
    /// files; writes to a shard wait for its rebuild, searches continue).
    /// The new segments reach the Raft state with the next segment report.
    pub async fn run_compaction(self, every: Duration, threshold: f64) {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            for replica in self.host().all() {
                let collection = replica.spec.name.clone();
                let shard = replica.shard.number();
                let compacted = blocking(move || {
                    replica
                        .compact(CompactOptions::maintenance(threshold))
                        .map_err(internal)
                })
                .await;
                match compacted {
                    Ok(done) if done == Compaction::default() => {}
                    Ok(done) => tracing::info!(
                        %collection,
                        shard,
                        rewritten = done.segments_rewritten,
                        written = done.segments_written,
                        wals = done.wals_rewritten,
                        bytes_reclaimed = done.bytes_reclaimed,
                        "automatic merge and compaction"
                    ),
                    Err(e) => {
                        tracing::error!(%collection, shard, error = %e, "automatic compaction failed; retrying next round")
                    }
                }
            }
            // Copies dropped or rewritten since the last round free their
            // share of the cache budget.
            let host = self.clone();
            let _ = blocking(move || {
                host.host().cache().rebalance();
                Ok(())
            })
            .await;
        }
    }

    /// Reports each hosted copy's sealed segments to the Raft state where
    /// they differ from what it holds (after a seal, a compaction, or
    /// deletes). Comparing with the replicated state, not with the last
    /// report, makes a lost report harmless: the next round sends it again.
    async fn report_segments(&self) {
        let state = self.state();
        let me = self.inner.id;
        for replica in self.host().all() {
            let shard = replica.shard.number();
            let Some(collection) = state.collections.get(&replica.spec.name) else {
                continue;
            };
            if !collection
                .shards
                .get(shard as usize)
                .is_some_and(|p| p.hosts(me))
            {
                continue;
            }
            let records = segment_records(&replica.shard);
            let known = collection.segments.get(&shard).and_then(|m| m.get(&me));
            if known == Some(&records) || (known.is_none() && records.is_empty()) {
                continue;
            }
            let command = Command::ReportSegments {
                collection: replica.spec.name.clone(),
                shard,
                worker: me,
                segments: records,
            };
            if let Err(e) = self.command(command).await {
                tracing::warn!(collection = %replica.spec.name, shard, error = %e, "could not report segments; retrying later");
            }
        }
    }

    /// Heartbeats every coordinator and keeps the newest state any of them
    /// reports; true when that state is newer than the one held.
    async fn heartbeat(&self) -> bool {
        let beat = Heartbeat {
            worker: self.inner.id,
            addr: self.inner.addr.clone(),
        };
        // The lease counts from before the heartbeats left.
        let sent = std::time::Instant::now();
        let replies = futures::future::join_all(self.inner.coordinators.iter().map(|addr| {
            call::<_, HeartbeatReply>(
                &self.inner.client,
                addr,
                coordinator_path::HEARTBEAT,
                &beat,
                Duration::from_secs(1),
            )
        }))
        .await;
        let replies: Vec<HeartbeatReply> = replies.into_iter().filter_map(Result::ok).collect();
        let from_leader = replies.iter().any(|r| r.leader);
        let Some(reply) = replies.into_iter().max_by_key(|r| r.applied) else {
            tracing::debug!("no coordinator answered the heartbeat");
            return false;
        };
        let mut state = self.inner.state.write();
        let newer = reply.applied >= state.0;
        if newer {
            // The copies learn their placements now, not at the next
            // reconcile: the lease renewed below vouches for this state,
            // and reads are fenced by the placement each copy knows.
            for replica in self.host().all() {
                if let Some(placement) = reply
                    .state
                    .placement(&replica.spec.name, replica.shard.number())
                {
                    replica.observe(placement);
                }
            }
            *state = (reply.applied, Arc::new(reply.state));
        }
        // The state held now is at least as new as the leader's answer.
        if from_leader {
            self.inner.lease.renew(sent);
        }
        newer
    }
    /// Brings hosted replicas in line with the newest state.
    async fn reconcile(&self) {
        let (applied, state) = self.inner.state.read().clone();
        // A coordinator may have told this worker about a collection (see
        // `host_now`) at a log index the state seen here does not reach yet:
        // then its absence here means "not yet", not "dropped".
        let may_drop = applied >= self.inner.floor.load(Ordering::SeqCst);
        let me = self.inner.id;
        if applied > 0 {
            self.note_missing_copies(&state);
        }
        let node = self.clone();
        let opened = tokio::task::spawn_blocking(move || {
            let mut lost = Vec::new();
            for collection in state.collections.values() {
                for (shard, placement) in collection.shards.iter().enumerate() {
                    if placement.hosts(me)
                        && let Some(epoch) = node.open_copy(
                            &collection.spec,
                            shard as u32,
                            placement,
                            collection.reshard_of.is_some(),
                        )
                    {
                        lost.push((collection.spec.name.clone(), shard as u32, epoch));
                    }
                }
            }
            // A resharding's target that became its collection's layout (the
            // flip) stops receiving: its tombstones are no longer needed.
            for replica in node.host().all() {
                let flipped = state
                    .collections
                    .get(&replica.spec.name)
                    .is_some_and(|c| c.reshard_of.is_none());
                if flipped
                    && replica.shard.is_receiving()
                    && let Err(e) = replica.shard.finish_receiving()
                {
                    tracing::error!(collection = %replica.spec.name, error = %e, "cannot end a resharded copy's receiving mode; retrying");
                }
            }
            // Copies moved elsewhere (rebalancing) leave this worker.
            for replica in node.host().all() {
                let shard = replica.shard.number();
                let placed = state
                    .collections
                    .get(&replica.spec.name)
                    .and_then(|c| c.shards.get(shard as usize))
                    .map(|p| p.hosts(me));
                if may_drop && placed == Some(false) {
                    tracing::info!(collection = %replica.spec.name, shard, "dropping a shard copy placed elsewhere now");
                    if let Err(e) = node.host().drop_shard(&replica.spec.name, shard) {
                        tracing::error!(collection = %replica.spec.name, shard, error = %e, "cannot drop shard copy");
                    }
                }
            }
            let on_disk = node.host().collections_on_disk().unwrap_or_default();
            for name in on_disk {
                if may_drop && !state.collections.contains_key(&name) {
                    tracing::info!(collection = %name, "dropping a collection that is no longer in the cluster state");
                    if let Err(e) = node.host().drop_collection(&name) {
                        tracing::error!(collection = %name, error = %e, "cannot drop");
                    }
                }
            }
            (state, lost)
        })
        .await;
        let Ok((state, lost)) = opened else { return };
        self.mark_disk_known();
        for (collection, shard, epoch) in lost {
            let command = Command::CopyLost {
                collection: collection.clone(),
                shard,
                worker: me,
                epoch,
            };
            match self.command(command).await {
                Ok(CommandResult::Placement(next)) => {
                    tracing::warn!(%collection, shard, epoch = next.epoch, "the shard map shows the corrupted copy lost; it is rebuilt from the primary");
                }
                Ok(CommandResult::Refused(why)) => {
                    tracing::warn!(%collection, shard, %why, "could not record the corrupted copy as lost yet; retrying");
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(%collection, shard, error = %e, "could not record the corrupted copy as lost yet; retrying");
                }
            }
        }
        self.start_catch_ups(&state);
    }

    /// On a new data directory, the first time the shard map is known:
    /// remembers the copies it counts in sync here whose files are missing
    /// (copies of collections created later are new, not lost).
    fn note_missing_copies(&self, state: &ClusterState) {
        let mut data_dir = self.inner.data_dir.lock();
        if !matches!(*data_dir, DataDir::New) {
            return;
        }
        let me = self.inner.id;
        let lost: HashSet<(String, u32)> = state
            .collections
            .values()
            .flat_map(|c| {
                c.shards
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| p.is_in_sync(me))
                    .map(|(shard, _)| (c.spec.name.clone(), shard as u32))
            })
            .filter(|(c, shard)| {
                self.host().get(c, *shard).is_err() && !self.host().copy_on_disk(c, *shard)
            })
            .collect();
        if !lost.is_empty() {
            tracing::warn!(
                copies = lost.len(),
                "this worker's data directory is new but the shard map counts copies here: they were lost with the old disk and are rebuilt from other copies"
            );
        }
        *data_dir = DataDir::Missing(lost);
    }

    /// Once every copy a new data directory lacked is recorded lost (the
    /// shard map no longer counts it in sync here), writes
    /// [`crate::node::DISK_MARKER`]: a copy missing after that is a new one.
    fn mark_disk_known(&self) {
        let mut data_dir = self.inner.data_dir.lock();
        if !matches!(&*data_dir, DataDir::Missing(missing) if missing.is_empty()) {
            return;
        }
        let written = engram_store::checksummed::write_atomic(
            &self.inner.disk_marker,
            format!("{}\n", self.inner.id).as_bytes(),
        );
        match written {
            Ok(()) => {
                *data_dir = DataDir::Known;
                tracing::info!(marker = %self.inner.disk_marker.display(), "data directory recorded as this worker's");
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot write the data directory's marker; retrying")
            }
        }
    }

    /// Opens this worker's copy of `shard` if it is not open yet (blocking).
    /// A copy whose files fail their checksums is set aside under
    /// `<data_dir>/quarantine/` (kept for inspection, never served); the
    /// result is then the epoch at which to tell the shard map that the
    /// copy is lost, after which a fresh copy catches up from the primary.
    /// The only in-sync copy is never set aside: it stays unopened (the
    /// shard unavailable) and the operator decides.
    fn open_copy(
        &self,
        spec: &engram_core::CollectionSpec,
        shard: u32,
        placement: &engram_core::placement::ShardPlacement,
        receiving: bool,
    ) -> Option<u64> {
        let me = self.inner.id;
        let key = (spec.name.clone(), shard);
        let counted_in_sync = placement.is_in_sync(me);
        let lost_with_disk = match &mut *self.inner.data_dir.lock() {
            DataDir::Missing(missing) if missing.contains(&key) => {
                if !counted_in_sync {
                    // The map shows it lost now: a fresh copy catches up.
                    missing.remove(&key);
                }
                counted_in_sync
            }
            _ => false,
        };
        if lost_with_disk {
            // The first shard map this new data directory met counted a
            // copy here that it does not hold: the disk that held it was
            // lost (and the worker restarted before it was missed). An
            // empty copy must not answer as in sync: record it lost, as a
            // corrupted one, and rebuild it from another copy.
            if placement.primary == me && placement.replicas.is_empty() {
                tracing::error!(collection = %spec.name, shard, "the only in-sync copy of this shard was lost with this worker's data directory; it stays unavailable (restore a snapshot)");
                return None;
            }
            tracing::warn!(collection = %spec.name, shard, "this worker's data directory is new but the shard map counts a copy here: it was lost with the old disk; rebuilding it from another copy");
            self.inner.lost.lock().insert(key);
            return Some(placement.epoch);
        }
        if self.inner.lost.lock().contains(&key) {
            if counted_in_sync {
                return Some(placement.epoch);
            }
            self.inner.lost.lock().remove(&key);
        }
        let Err(error) = self.host().ensure(spec, shard, placement, receiving) else {
            return None;
        };
        if !error.is_corruption() {
            tracing::error!(collection = %spec.name, shard, %error, "cannot open replica");
            return None;
        }
        if placement.primary == me && placement.replicas.is_empty() {
            tracing::error!(collection = %spec.name, shard, %error, "the only in-sync copy of this shard is corrupted; it stays unavailable (restore a snapshot, or repair the file)");
            return None;
        }
        match self.host().quarantine(&spec.name, shard) {
            Ok(to) => {
                tracing::error!(collection = %spec.name, shard, %error, quarantined = %to.display(), "corrupted shard copy refused and set aside; rebuilding it from another copy");
            }
            Err(e) => {
                tracing::error!(collection = %spec.name, shard, %error, quarantine_error = %e, "corrupted shard copy refused, and it could not be set aside");
                return None;
            }
        }
        if !counted_in_sync {
            return None;
        }
        self.inner.lost.lock().insert(key);
        Some(placement.epoch)
    }

    fn start_catch_ups(&self, state: &ClusterState) {
        let me = self.inner.id;
        for collection in state.collections.values() {
            for (shard, placement) in collection.shards.iter().enumerate() {
                if !placement.out_of_sync.contains(&me) {
                    continue;
                }
                let primary_alive = state
                    .workers
                    .get(&placement.primary)
                    .is_some_and(|w| w.alive);
                let Some(primary) = state.workers.get(&placement.primary) else {
                    continue;
                };
                if !primary_alive || placement.primary == me {
                    continue;
                }
                let key = (collection.spec.name.clone(), shard as u32);
                let mut running = self.inner.catching_up.lock();
                match running.get(&key) {
                    Some(task) if task.primary == placement.primary => continue,
                    Some(task) => {
                        // Its primary no longer leads (a failover): a call
                        // still waiting on it (paused, cut off) must not
                        // keep this copy from the new one.
                        tracing::info!(collection = %key.0, shard = key.1, from = task.primary, to = placement.primary, "abandoning a catch-up from a primary that no longer leads");
                        task.abort.abort();
                        running.remove(&key);
                    }
                    None => {}
                }
                let node = self.clone();
                let addr = primary.addr.clone();
                let id = CATCH_UP_IDS.fetch_add(1, Ordering::SeqCst);
                let task_key = key.clone();
                let task = tokio::spawn(async move {
                    let key = task_key;
                    let position = node
                        .host()
                        .get(&key.0, key.1)
                        .ok()
                        .and_then(|copy| copy.shard.position());
                    let request = CatchUpRequest {
                        collection: key.0.clone(),
                        shard: key.1,
                        worker: node.inner.id,
                        position,
                    };
                    let result = call::<_, ()>(
                        &node.inner.client,
                        &addr,
                        path::CATCH_UP,
                        &request,
                        CATCH_UP_TIMEOUT,
                    )
                    .await;
                    if let Err(e) = result {
                        tracing::warn!(collection = %key.0, shard = key.1, error = %e, "catch-up failed; retrying later");
                    }
                    let mut running = node.inner.catching_up.lock();
                    if running.get(&key).is_some_and(|t| t.id == id) {
                        running.remove(&key);
                    }
                });
                running.insert(
                    key,
                    CatchUpTask {
                        id,
                        primary: placement.primary,
                        abort: task.abort_handle(),
                    },
                );
            }
        }
    }

    /// A coordinator creating a collection: open its shards placed here now.
    pub async fn host_now(self, request: HostRequest) -> RpcResult<()> {
        self.inner.floor.fetch_max(request.index, Ordering::SeqCst);
        blocking(move || {
            for (shard, placement) in &request.shards {
                self.host()
                    .ensure(&request.spec, *shard, placement, request.receiving)
                    .map_err(internal)?;
            }
            Ok(())
        })
        .await
    }

    /// A coordinator dropping a collection.
    pub async fn drop_now(self, request: DropRequest) -> RpcResult<()> {
        blocking(move || {
            self.host()
                .drop_collection(&request.collection)
                .map_err(internal)
        })
        .await
    }
}
