//! Jobs in a cluster: registered through Raft (cluster-wide ids), run by
//! the coordinator that accepted them, which publishes their status to the
//! Raft state about once a second and at the end, so every coordinator
//! lists them and can cancel them.
//!
//! An ingest job's checkpoint stays on its owner's disk; the owner resumes
//! it after a restart (`Engram::resume_jobs`).

use std::sync::Arc;
use std::time::Duration;

use engram_meta::{Command, CommandResult, MetaNode, Shared};

use crate::error::{ApiError, Result};
use crate::jobs::{Job, JobState, JobStatus, Jobs};
use crate::meta::now;

/// How often a running job's status is published.
const PUBLISH_EVERY: Duration = Duration::from_secs(1);

/// Registers a new job through Raft; its id is unique in the cluster.
pub(crate) async fn register(
    meta: &MetaNode,
    collection: &str,
    kind: &str,
    params: &serde_json::Value,
) -> Result<u64> {
    let status = JobStatus {
        id: 0,
        collection: collection.to_string(),
        kind: kind.to_string(),
        state: JobState::Running,
        done: 0,
        total: 0,
        started_at: now(),
        finished_at: None,
        error: None,
        params: params.clone(),
        report: None,
        counts: None,
    };
    let command = Command::CreateJob {
        collection: collection.to_string(),
        kind: kind.to_string(),
        owner: meta.id(),
        status: Shared::new(to_json(&status)?),
    };
    match meta.write(command).await? {
        CommandResult::Job(id) => Ok(id),
        other => Err(ApiError::internal(format!(
            "unexpected answer to a job registration: {other:?}"
        ))),
    }
}

/// Publishes `job`'s status until it has ended (and its final status is
/// in the Raft state); stops it when another coordinator asked to cancel.
pub(crate) fn spawn_publisher(meta: MetaNode, jobs: Arc<Jobs>, job: Arc<Job>) {
    tokio::spawn(async move {
        let id = job.id();
        let mut published = None;
        loop {
            tokio::time::sleep(PUBLISH_EVERY).await;
            if meta
                .state()
                .jobs
                .get(&id)
                .is_some_and(|r| r.cancel_requested)
            {
                jobs.cancel(&job);
            }
            let status = job.status();
            let ended = status.state != JobState::Running;
            let Ok(value) = to_json(&status) else {
                return;
            };
            if published.as_ref() != Some(&value) {
                let command = Command::UpdateJob {
                    id,
                    owner: meta.id(),
                    status: Shared::new(value.clone()),
                };
                match meta.write(command).await {
                    Ok(_) => published = Some(value),
                    Err(e) => {
                        tracing::warn!(job = id, error = %e, "could not publish the job's status; retrying");
                        continue;
                    }
                }
            }
            if ended {
                return;
            }
        }
    });
}

/// The last published status of job `id` of `collection`.
pub(crate) fn recorded(meta: &MetaNode, collection: &str, id: u64) -> Option<JobStatus> {
    let state = meta.state();
    let record = state.jobs.get(&id).filter(|r| r.collection == collection)?;
    serde_json::from_value((*record.status).clone()).ok()
}

/// Every published job of `collection`.
pub(crate) fn recorded_all(meta: &MetaNode, collection: &str) -> Vec<JobStatus> {
    meta.state()
        .jobs
        .values()
        .filter(|r| r.collection == collection)
        .filter_map(|r| serde_json::from_value((*r.status).clone()).ok())
        .collect()
}

/// Asks the owner of job `id` to stop it.
pub(crate) async fn request_cancel(meta: &MetaNode, id: u64) -> Result<()> {
    meta.write(Command::CancelJob { id }).await?;
    Ok(())
}

fn to_json(status: &JobStatus) -> Result<serde_json::Value> {
    serde_json::to_value(status).map_err(|e| ApiError::internal(e.to_string()))
}
