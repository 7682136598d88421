//! Jobs in a cluster: registered through Raft (cluster-wide ids), run by
//! the coordinator that accepted them (their *owner*), which publishes their
//! status to the Raft state about once a second and at the end, so every
//! coordinator lists them and can cancel them.
//!
//! An ingest job's checkpoint is kept on its owner's disk and published
//! with its status (its *resume point*), so that the job outlives its
//! owner: every publication moves the job's *beat*, and the Raft leader
//! hands a running job whose beat has not moved for `cluster.job_takeover_s`
//! to itself (`job_takeover.rs`), which runs it on from the published
//! checkpoint. The owner holds the job like a lease: once it has reached no
//! Raft majority for half that time, or a publication is refused (the job
//! was taken over), it stops the job without recording an outcome, so two
//! coordinators never write a job's rows at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use engram_meta::{Command, CommandResult, JobRecord, MetaError, MetaNode, Shared};

use crate::error::{ApiError, Result};
use crate::jobs::{Job, JobState, JobStatus, Jobs};
use crate::meta::now;

/// How often a running job's status is published (when it changed).
const PUBLISH_EVERY: Duration = Duration::from_secs(1);

/// How a job's owner keeps its hold on the job.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lease {
    /// A publication at least this often, changed or not.
    pub beat_every: Duration,
    /// Without a successful publication for this long the owner stops.
    pub lapse: Duration,
    /// How often, at most, a changed resume point travels with a
    /// publication: it lists every input file, and a takeover redoes the
    /// work done since the last one (rewriting the same items, so nothing
    /// is duplicated).
    pub resume_every: Duration,
}

impl Lease {
    /// The lease of a cluster whose leader takes jobs over after `takeover`.
    pub(crate) fn for_takeover(takeover: Duration) -> Lease {
        Lease {
            beat_every: (takeover / 6).clamp(Duration::from_secs(1), Duration::from_secs(10)),
            lapse: takeover / 2,
            resume_every: (takeover / 12).clamp(Duration::from_secs(1), Duration::from_secs(5)),
        }
    }
}

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
        owner: Some(meta.id()),
        previous_owners: Vec::new(),
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

/// Publishes `job`'s status (and resume point) until it has ended and its
/// final status is in the Raft state; stops it when another coordinator
/// asked to cancel it, and suspends it when the lease lapses or a
/// publication is refused (see the module doc).
pub(crate) fn spawn_publisher(meta: MetaNode, jobs: Arc<Jobs>, job: Arc<Job>, lease: Lease) {
    tokio::spawn(async move {
        let id = job.id();
        let mut published: Option<serde_json::Value> = None;
        let mut published_resume: Option<serde_json::Value> = None;
        let mut resume_sent_at: Option<Instant> = None;
        let mut last_ok = Instant::now();
        loop {
            tokio::time::sleep(PUBLISH_EVERY).await;
            if job.suspended() {
                return; // its outcome belongs to whoever runs it next
            }
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
            let resume = job.resume_point().filter(|point| {
                published_resume.as_ref() != Some(point)
                    && (ended || resume_sent_at.is_none_or(|at| at.elapsed() >= lease.resume_every))
            });
            let due = published.as_ref() != Some(&value)
                || resume.is_some()
                || last_ok.elapsed() >= lease.beat_every;
            if !due {
                continue;
            }
            let command = Command::UpdateJob {
                id,
                owner: meta.id(),
                status: Shared::new(value.clone()),
                resume: resume.clone().map(Shared::new),
            };
            match tokio::time::timeout(lease.lapse, meta.write(command)).await {
                Ok(Err(MetaError::Refused(reason))) => {
                    tracing::warn!(job = id, %reason, "the job's status was refused: another coordinator runs it; stopping it here");
                    job.suspend();
                    return;
                }
                Ok(Ok(_)) => {
                    last_ok = Instant::now();
                    published = Some(value);
                    if resume.is_some() {
                        published_resume = resume;
                        resume_sent_at = Some(last_ok);
                    }
                    if ended {
                        return;
                    }
                }
                outcome => {
                    let error = match outcome {
                        Ok(Err(e)) => e.to_string(),
                        _ => "timed out".to_string(),
                    };
                    if !ended && last_ok.elapsed() >= lease.lapse {
                        tracing::warn!(job = id, %error, lapse_s = lease.lapse.as_secs(), "no Raft majority took the job's status for half the takeover time; stopping it here (the leader hands it on)");
                        job.suspend();
                        return;
                    }
                    tracing::warn!(job = id, %error, "could not publish the job's status; retrying");
                }
            }
        }
    });
}

/// Makes sure this coordinator still owns job `id` before it runs it: a
/// publication of its status through the Raft leader, refused if another
/// coordinator took it over meanwhile (or its collection was dropped).
/// Retries while no leader answers.
pub(crate) async fn claim(meta: &MetaNode, job: &Job) -> std::result::Result<(), String> {
    loop {
        let value = to_json(&job.status()).map_err(|e| e.to_string())?;
        let command = Command::UpdateJob {
            id: job.id(),
            owner: meta.id(),
            status: Shared::new(value),
            resume: job.resume_point().map(Shared::new),
        };
        match meta.write(command).await {
            Err(MetaError::Refused(reason)) => return Err(reason),
            Ok(_) => return Ok(()),
            Err(e) => {
                tracing::warn!(job = job.id(), error = %e, "cannot reach the Raft leader to claim the job; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Publishes a final `failed` status for a job this coordinator was handed
/// but cannot run.
pub(crate) async fn fail(meta: &MetaNode, record: &JobRecord, error: String) -> Result<()> {
    let mut status: JobStatus = serde_json::from_value((*record.status).clone()).map_err(|e| {
        ApiError::internal(format!("job {} has an unreadable status: {e}", record.id))
    })?;
    status.state = JobState::Failed;
    status.error = Some(error);
    status.finished_at = Some(now());
    let command = Command::UpdateJob {
        id: record.id,
        owner: meta.id(),
        status: Shared::new(to_json(&status)?),
        resume: None,
    };
    meta.write(command).await?;
    Ok(())
}

/// `status` with the owners `record` names.
fn stamped(mut status: JobStatus, record: &JobRecord) -> JobStatus {
    status.owner = Some(record.owner);
    status.previous_owners = record.previous_owners.clone();
    status
}

/// A record's status as the API shows it, with its owners.
fn status_of(record: &JobRecord) -> Option<JobStatus> {
    let status = serde_json::from_value((*record.status).clone()).ok()?;
    Some(stamped(status, record))
}

/// `status` (live, on this coordinator) with the owners Raft records.
pub(crate) fn with_owners(meta: &MetaNode, status: JobStatus) -> JobStatus {
    match meta.state().jobs.get(&status.id) {
        Some(record) => stamped(status, record),
        None => status,
    }
}

/// The last published status of job `id` of `collection`.
pub(crate) fn recorded(meta: &MetaNode, collection: &str, id: u64) -> Option<JobStatus> {
    let state = meta.state();
    let record = state.jobs.get(&id).filter(|r| r.collection == collection)?;
    status_of(record)
}

/// Every published job of `collection`.
pub(crate) fn recorded_all(meta: &MetaNode, collection: &str) -> Vec<JobStatus> {
    meta.state()
        .jobs
        .values()
        .filter(|r| r.collection == collection)
        .filter_map(status_of)
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
