//! Resharding a collection as a job: `POST /v1/collections/{c}/reshard`
//! (or `engramctl reshard`) starts it and answers with the job, which
//! reports rows copied and ends with the resharding's report. Where the
//! shards live decides how (`engram_worker::ShardedCollection::reshard`):
//! on the embedded node the layouts in this process and the catalog file,
//! in a cluster the workers and the Raft shard map.

use serde_json::json;
use std::sync::Arc;

use engram_core::CollectionSpec;
use engram_core::collection::MAX_SHARDS;
use engram_worker::{ReshardHooks, WorkerError};

use crate::backend::{Backend, Collection};
use crate::dto::ReshardRequest;
use crate::error::{ApiError, ErrorCode, Result};
use crate::jobs::{Job, JobStatus};
use crate::service::Engram;

/// What the job reports while a collection's layouts change.
struct JobHooks {
    engram: Engram,
    job: Arc<Job>,
    last: std::sync::atomic::AtomicU64,
}

impl ReshardHooks for JobHooks {
    fn progress(&self, done: u64, total: u64) {
        self.job.set_total(total);
        let before = self.last.swap(done, std::sync::atomic::Ordering::Relaxed);
        self.job.advance(done.saturating_sub(before));
    }

    fn cancelled(&self) -> bool {
        self.job.cancelled()
    }

    fn commit(&self, spec: &CollectionSpec) -> engram_worker::Result<()> {
        match &self.engram.inner.backend {
            Backend::Embedded { catalog, .. } => catalog
                .lock()
                .insert(spec.clone())
                .map_err(|e| WorkerError::Unavailable(e.to_string())),
            // The cluster's flip is a Raft command its collection sends.
            Backend::Cluster(_) => Ok(()),
        }
    }
}

impl Engram {
    /// Starts resharding `collection` to `request.shards` shards online;
    /// answers at once with the job.
    pub async fn reshard(&self, collection: &str, request: ReshardRequest) -> Result<JobStatus> {
        let hosted = self.hosted(collection)?;
        let shards = request.shards;
        if shards == 0 || shards > MAX_SHARDS {
            return Err(ApiError::invalid(format!(
                "shards must be between 1 and {MAX_SHARDS}, got {shards}"
            )));
        }
        let current = hosted.spec().shards;
        match hosted.reshard_target() {
            Some(target) if target != shards => {
                return Err(ApiError::new(
                    ErrorCode::Conflict,
                    format!(
                        "`{collection}` is being resharded to {target} shards; cancel that job first"
                    ),
                ));
            }
            None if current == shards => {
                return Err(ApiError::invalid(format!(
                    "`{collection}` already has {shards} shards"
                )));
            }
            _ => {}
        }
        if self.running_anywhere(collection, "reshard") {
            return Err(ApiError::new(
                ErrorCode::AlreadyExists,
                format!("a reshard job is already running on `{collection}`"),
            ));
        }
        let job = self
            .new_job(
                collection,
                "reshard",
                json!({ "from": current, "shards": shards }),
            )
            .await?;
        self.spawn_reshard(hosted, job.clone(), shards);
        Ok(job.status())
    }

    fn spawn_reshard(&self, hosted: Collection, job: Arc<Job>, shards: u32) {
        let hooks = JobHooks {
            engram: self.clone(),
            job: job.clone(),
            last: Default::default(),
        };
        tokio::task::spawn_blocking(move || {
            let outcome = hosted.reshard(shards, &hooks);
            // A suspended job (this coordinator lost its hold on it) leaves
            // the target for whoever runs the resharding on.
            if hooks.cancelled()
                && !job.suspended()
                && hosted.reshard_target() == Some(shards)
                && let Err(error) = hosted.abandon_reshard()
            {
                tracing::error!(job = job.id(), %error, "could not drop a cancelled resharding's target");
            }
            match &outcome {
                Ok(report) => tracing::info!(
                    job = job.id(),
                    collection = %hosted.spec().name,
                    from = report.from_shards,
                    to = report.to_shards,
                    copied = report.rows_copied,
                    seconds = report.seconds,
                    "reshard job finished"
                ),
                Err(error) => {
                    tracing::warn!(job = job.id(), %error, "reshard job ended without finishing")
                }
            }
            job.finish(
                outcome
                    .map(|report| serde_json::to_value(report).unwrap_or_default())
                    .map_err(|e| e.to_string()),
            );
        });
    }

    /// Restarts the reshard jobs a restart interrupted: on the embedded
    /// node, those whose files say so (see `hosted_collection/reshard.rs`);
    /// in a cluster, the running reshard jobs this coordinator owns in the
    /// Raft state, once it knows a leader.
    pub(crate) fn resume_reshards(&self) {
        if let Backend::Cluster(cluster) = &self.inner.backend {
            let this = self.clone();
            let cluster = cluster.clone();
            tokio::spawn(async move {
                for _ in 0..120 {
                    if cluster.meta().leader().is_some() {
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
                this.resume_cluster_reshards(&cluster);
            });
            return;
        }
        for name in self.inner.backend.names() {
            let Ok(hosted) = self.hosted(&name) else {
                continue;
            };
            let Some(shards) = hosted.reshard_target() else {
                continue;
            };
            let from = hosted.spec().shards;
            let job = self.inner.jobs.start(
                &name,
                "reshard",
                json!({ "from": from, "shards": shards, "resumed": true }),
            );
            tracing::info!(collection = %name, to = shards, job = job.id(), "resuming an interrupted resharding");
            self.spawn_reshard(hosted, job, shards);
        }
    }

    fn resume_cluster_reshards(&self, cluster: &crate::cluster::ClusterBackend) {
        let me = cluster.meta().id();
        let state = cluster.state();
        for record in state.jobs.values() {
            if record.owner != me
                || record.kind != "reshard"
                || self.inner.jobs.get(&record.collection, record.id).is_some()
            {
                continue;
            }
            if self.resume_cluster_reshard(cluster, record) {
                tracing::info!(collection = %record.collection, job = record.id, "resuming a resharding this coordinator ran before it restarted");
            }
        }
    }

    /// Runs on the running reshard job of `record` here (the resharding's
    /// progress is in the Raft state); false if it is not running or its
    /// collection is gone.
    pub(crate) fn resume_cluster_reshard(
        &self,
        cluster: &crate::cluster::ClusterBackend,
        record: &engram_meta::JobRecord,
    ) -> bool {
        let Ok(status) = serde_json::from_value::<JobStatus>((*record.status).clone()) else {
            return false;
        };
        if status.state != crate::jobs::JobState::Running {
            return false;
        }
        let Some(shards) = status.params["shards"].as_u64() else {
            return false;
        };
        let Ok(hosted) = self.hosted(&record.collection) else {
            return false;
        };
        let job = self.inner.jobs.restore(
            record.id,
            &record.collection,
            "reshard",
            status.params.clone(),
            &status.started_at,
        );
        crate::cluster::jobs::spawn_publisher(
            cluster.meta().clone(),
            self.inner.jobs.clone(),
            job.clone(),
            cluster.job_lease(),
        );
        self.spawn_reshard(hosted, job, shards as u32);
        true
    }
}
