//! The coordinator's side of a cluster: its Raft metadata node, what it
//! knows of worker health (heartbeats), the leader's failure detector, and
//! collections served by remote workers ([`remote::RemoteCollection`]).

pub mod collection;
pub(crate) mod jobs;
pub mod remote;
mod reshard;
pub mod routing;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, post};
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use engram_core::CollectionSpec;
use engram_core::config::ClusterConfig;
use engram_core::placement::WorkerId;
use engram_meta::serve::{InternalLimits, ServeStats, internal_limits};
use engram_meta::{
    ClusterAccess, ClusterState, Command, CommandResult, MetaError, MetaNode, RaftTiming,
};
use engram_worker::rpc_client::{BINCODE, InternalClient, call};
use engram_worker::wire::{
    DropRequest, Heartbeat, HeartbeatReply, HostRequest, RpcError, RpcResult, coordinator_path,
    path,
};

use crate::error::{ApiError, ErrorCode, Result};
use collection::RemoteCollection;

/// Timeouts of the fan-out and of writes.
#[derive(Debug, Clone)]
pub struct Timeouts {
    pub worker: Duration,
    pub query: Duration,
    pub write: Duration,
    /// Silence after which a job's owner is replaced (`cluster.job_takeover_s`).
    pub job_takeover: Duration,
}

#[derive(Clone)]
pub struct ClusterBackend {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) meta: MetaNode,
    /// When each worker last heartbeated this coordinator.
    seen: Mutex<HashMap<WorkerId, Instant>>,
    /// Registrations being written, so a burst of heartbeats writes once.
    registering: Mutex<HashSet<WorkerId>>,
    pub(crate) client: InternalClient,
    /// Sent on every internal call; required by [`ClusterBackend::internal_router`].
    access: ClusterAccess,
    internal_listener: Arc<ServeStats>,
    pub(crate) timeouts: Timeouts,
    pub(crate) started: Instant,
    /// Rotates replica choice between queries.
    pub(crate) salt: AtomicUsize,
}

impl From<MetaError> for ApiError {
    fn from(e: MetaError) -> Self {
        match e {
            MetaError::Refused(m) => ApiError::invalid(m),
            MetaError::NoLeader(_) | MetaError::Raft(_) => {
                ApiError::new(ErrorCode::Unavailable, e.to_string())
            }
            MetaError::Corrupted(_) | MetaError::Journal(_) => {
                ApiError::new(ErrorCode::Corrupted, e.to_string())
            }
            MetaError::Io(_) | MetaError::Tls(_) => ApiError::internal(e.to_string()),
        }
    }
}

/// The routes workers call on a coordinator's internal port, the one list
/// the router and [`ClusterBackend::internal_paths`] read.
fn worker_facing_routes() -> Vec<(&'static str, MethodRouter<ClusterBackend>)> {
    vec![
        (coordinator_path::HEARTBEAT, post(heartbeat)),
        (coordinator_path::COMMAND, post(command)),
    ]
}

impl ClusterBackend {
    /// Starts this coordinator's Raft node (data under `<data_dir>/raft`)
    /// and, on the lowest-id coordinator, forms the group on first start.
    /// Its calls to workers and Raft peers carry the secret of `access`, and its internal
    /// routes require it (when set).
    pub async fn start(
        config: &ClusterConfig,
        access: ClusterAccess,
        data_dir: &std::path::Path,
    ) -> Result<Self> {
        let timing = RaftTiming {
            heartbeat_ms: config.raft_heartbeat_ms,
            election_min_ms: config.raft_election_min_ms,
            election_max_ms: config.raft_election_max_ms,
        };
        let meta =
            MetaNode::start(config.node_id, &data_dir.join("raft"), &timing, &access).await?;
        // A coordinator whose Raft core stopped (its log could not be
        // written) would go on answering from a state that no longer
        // advances: exit instead, so that the supervisor restarts it and
        // it recovers from its log like after a crash.
        let watched = meta.clone();
        tokio::spawn(async move {
            let reason = watched.fatal().await;
            tracing::error!(%reason, "the Raft core stopped; exiting so that the process is restarted");
            std::process::exit(70);
        });
        let lowest = config.coordinators.iter().map(|p| p.id).min();
        if lowest == Some(config.node_id) {
            let members: BTreeMap<u64, String> = config
                .coordinators
                .iter()
                .map(|p| (p.id, p.addr.clone()))
                .collect();
            meta.bootstrap(&members).await?;
        }
        Ok(ClusterBackend {
            inner: Arc::new(Inner {
                meta,
                seen: Mutex::new(HashMap::new()),
                registering: Mutex::new(HashSet::new()),
                client: InternalClient::new(&access),
                access,
                internal_listener: Arc::new(ServeStats::default()),
                timeouts: Timeouts {
                    worker: Duration::from_millis(config.worker_timeout_ms),
                    query: Duration::from_millis(config.query_timeout_ms),
                    write: Duration::from_millis(config.write_timeout_ms),
                    job_takeover: Duration::from_secs(config.job_takeover_s),
                },
                started: Instant::now(),
                salt: AtomicUsize::new(0),
            }),
        })
    }

    /// What this coordinator sees of the cluster now (for `/metrics`).
    pub fn view(&self) -> crate::metrics::ClusterView {
        let meta = &self.inner.meta;
        let raft = meta.raft().metrics().borrow().clone();
        let state = meta.state();
        let alive = state.workers.values().filter(|w| w.alive).count();
        crate::metrics::ClusterView {
            has_leader: raft.current_leader.is_some(),
            is_leader: raft.current_leader == Some(meta.id()),
            term: raft.current_term,
            applied_index: meta.applied_index(),
            voters: raft.membership_config.membership().voter_ids().count(),
            workers_alive: alive,
            workers_dead: state.workers.len() - alive,
            copies_out_of_sync: state
                .collections
                .values()
                .flat_map(|c| &c.shards)
                .map(|p| p.out_of_sync.len())
                .sum(),
        }
    }

    /// How this coordinator holds the jobs it runs (`cluster/jobs.rs`).
    pub(crate) fn job_lease(&self) -> jobs::Lease {
        jobs::Lease::for_takeover(self.inner.timeouts.job_takeover)
    }

    pub fn meta(&self) -> &MetaNode {
        &self.inner.meta
    }

    pub fn state(&self) -> Arc<ClusterState> {
        self.inner.meta.state()
    }

    /// A worker is used for queries if the shard map has it alive and it
    /// heartbeated recently (or this coordinator just started and has not
    /// heard from anyone yet).
    pub(crate) fn healthy(&self, worker: WorkerId) -> bool {
        let state = self.state();
        if !state.workers.get(&worker).is_some_and(|w| w.alive) {
            return false;
        }
        match self.inner.seen.lock().get(&worker) {
            Some(at) => at.elapsed() < self.inner.timeouts.worker,
            None => self.inner.started.elapsed() < self.inner.timeouts.worker,
        }
    }

    /// Routes for the internal port: Raft RPC plus the worker-facing calls,
    /// all behind the cluster secret.
    /// Behind the cluster secret first (nothing of a request without it is
    /// read), then the port's own limits ([`engram_meta::serve::internal_limits`]).
    pub fn internal_router(&self, limits: InternalLimits) -> Router {
        let workers_facing = worker_facing_routes()
            .into_iter()
            .fold(Router::new(), |router, (path, handler)| {
                router.route(path, handler)
            })
            .with_state(self.clone());
        let routes = engram_meta::rpc::router(self.inner.meta.clone())
            .merge(workers_facing)
            .layer(axum::middleware::from_fn(engram_meta::request_id::internal));
        let limited = internal_limits(routes, limits, self.inner.internal_listener.clone());
        self.inner.access.guard(limited)
    }

    /// What the internal listener counts on its own (timeouts, busy).
    pub fn internal_listener(&self) -> Arc<ServeStats> {
        self.inner.internal_listener.clone()
    }

    /// The path of every route [`ClusterBackend::internal_router`] serves.
    pub fn internal_paths() -> Vec<&'static str> {
        let mut paths = engram_meta::rpc::paths();
        paths.extend(worker_facing_routes().into_iter().map(|(path, _)| path));
        paths
    }

    /// Internal requests refused for want of the secret, by reason.
    pub fn secret_refusals(&self) -> engram_meta::access::Refusals {
        self.inner.access.refusals()
    }

    /// On the leader, declares dead every live worker not heard from within
    /// the timeout (counting from when this node took the lead).
    pub fn spawn_failure_detector(&self) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut leading_since: Option<Instant> = None;
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                if !this.inner.meta.is_leader() {
                    leading_since = None;
                    continue;
                }
                let since = *leading_since.get_or_insert_with(Instant::now);
                let timeout = this.inner.timeouts.worker;
                if since.elapsed() < timeout {
                    continue;
                }
                let state = this.state();
                let dead: Vec<WorkerId> = state
                    .workers
                    .values()
                    .filter(|w| w.alive)
                    .filter(|w| {
                        this.inner
                            .seen
                            .lock()
                            .get(&w.id)
                            .is_none_or(|at| at.elapsed() >= timeout)
                    })
                    .map(|w| w.id)
                    .collect();
                for id in dead {
                    tracing::warn!(worker = id, "worker missed its heartbeats; failing it over");
                    if let Err(e) = this.inner.meta.write(Command::WorkerFailed { id }).await {
                        tracing::error!(worker = id, error = %e, "cannot record the failure");
                    }
                }
            }
        })
    }

    pub(crate) fn collection(&self, name: &str) -> Result<Arc<RemoteCollection>> {
        if self.state().collection(name).is_none() {
            return Err(ApiError::not_found(format!(
                "collection `{name}` does not exist"
            )));
        }
        Ok(Arc::new(RemoteCollection::new(
            self.clone(),
            name.to_string(),
            tokio::runtime::Handle::current(),
        )))
    }

    /// Public names of the collections.
    pub(crate) fn names(&self) -> Vec<String> {
        self.state().public_names()
    }

    /// Places the collection through Raft, then has its workers open their
    /// shards before answering (so the first write finds them).
    pub(crate) async fn create(&self, spec: CollectionSpec) -> Result<()> {
        match self
            .inner
            .meta
            .write(Command::CreateCollection { spec: spec.clone() })
            .await
        {
            Ok(_) => {}
            Err(MetaError::Refused(m)) if m.contains("already exists") => {
                return Err(ApiError::new(ErrorCode::AlreadyExists, m));
            }
            Err(e) => return Err(e.into()),
        }
        self.host(&spec.name, false).await
    }

    /// Has the workers open their copies of the layout keyed `key` now
    /// (`receiving`: a resharding's target), so that the first write finds
    /// them; a worker that misses it opens them from the shard map later.
    pub(crate) async fn host(&self, key: &str, receiving: bool) -> Result<()> {
        let index = self.inner.meta.applied_index();
        let state = self.state();
        let Some(meta) = state.collections.get(key) else {
            return Err(ApiError::internal(format!(
                "layout `{key}` is missing from the shard map"
            )));
        };
        let spec = meta.spec.clone();
        let mut per_worker: BTreeMap<WorkerId, Vec<(u32, _)>> = BTreeMap::new();
        for (shard, placement) in meta.shards.iter().enumerate() {
            for worker in placement.in_sync() {
                per_worker
                    .entry(worker)
                    .or_default()
                    .push((shard as u32, placement.clone()));
            }
        }
        let calls = per_worker.into_iter().filter_map(|(worker, shards)| {
            let addr = state.workers.get(&worker)?.addr.clone();
            let request = HostRequest {
                spec: spec.clone(),
                shards,
                index,
                receiving,
            };
            let client = self.inner.client.clone();
            Some(async move {
                call::<_, ()>(
                    &client,
                    &addr,
                    path::HOST,
                    &request,
                    Duration::from_secs(30),
                )
                .await
                .map_err(|e| (worker, e))
            })
        });
        for result in futures::future::join_all(calls).await {
            if let Err((worker, e)) = result {
                // The worker opens them from the shard map when it is back.
                tracing::warn!(worker, error = %e, "worker did not open its new shards now");
            }
        }
        Ok(())
    }

    pub(crate) async fn drop(&self, name: &str) -> Result<()> {
        // Its layouts' keys, which the workers know its copies by.
        let keys: Vec<String> = {
            let state = self.state();
            std::iter::once(state.key_of(name).to_string())
                .chain(state.reshard_target(name).map(|(key, _)| key.to_string()))
                .collect()
        };
        match self
            .inner
            .meta
            .write(Command::DropCollection {
                name: name.to_string(),
            })
            .await
        {
            Ok(_) => {}
            Err(MetaError::Refused(m)) => return Err(ApiError::not_found(m)),
            Err(e) => return Err(e.into()),
        }
        let index = self.inner.meta.applied_index();
        let state = self.state();
        let calls = state.workers.values().flat_map(|w| {
            keys.iter().map(|key| {
                let request = DropRequest {
                    collection: key.clone(),
                    index,
                };
                let client = self.inner.client.clone();
                let addr = w.addr.clone();
                async move {
                    call::<_, ()>(
                        &client,
                        &addr,
                        path::DROP,
                        &request,
                        Duration::from_secs(30),
                    )
                    .await
                }
            })
        });
        // Workers that miss this drop the files when they next see the map.
        let _ = futures::future::join_all(calls).await;
        Ok(())
    }

    fn note_heartbeat(&self, beat: &Heartbeat) {
        self.inner.seen.lock().insert(beat.worker, Instant::now());
        let state = self.state();
        let current = state
            .workers
            .get(&beat.worker)
            .is_some_and(|w| w.alive && w.addr == beat.addr);
        if current || !self.inner.registering.lock().insert(beat.worker) {
            return;
        }
        let this = self.clone();
        let id = beat.worker;
        let command = Command::RegisterWorker {
            id,
            addr: beat.addr.clone(),
        };
        tokio::spawn(async move {
            match this.inner.meta.write(command).await {
                Ok(_) => tracing::info!(worker = id, "worker registered"),
                Err(e) => tracing::warn!(worker = id, error = %e, "cannot register worker yet"),
            }
            this.inner.registering.lock().remove(&id);
        });
    }
}

fn encode<T: serde::Serialize>(value: &T) -> Response {
    match bincode::serialize(value) {
        Ok(bytes) => ([(header::CONTENT_TYPE, BINCODE)], bytes).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn heartbeat(State(cluster): State<ClusterBackend>, body: Bytes) -> Response {
    let beat: Heartbeat = match bincode::deserialize(&body) {
        Ok(b) => b,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    cluster.note_heartbeat(&beat);
    let reply: RpcResult<HeartbeatReply> = Ok(HeartbeatReply {
        applied: cluster.inner.meta.applied_index(),
        state: cluster.state().as_ref().clone(),
        leader: cluster.inner.meta.is_leader(),
    });
    encode(&reply)
}

/// A worker's metadata command (replica in/out of sync), through Raft.
async fn command(State(cluster): State<ClusterBackend>, body: Bytes) -> Response {
    let command: Command = match bincode::deserialize(&body) {
        Ok(c) => c,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let reply: RpcResult<CommandResult> = match cluster.inner.meta.write(command).await {
        Ok(result) => Ok(result),
        Err(MetaError::Refused(why)) => Ok(CommandResult::Refused(why)),
        Err(e) => Err(RpcError::Internal(e.to_string())),
    };
    encode(&reply)
}
