//! Long-running jobs of a node (memory pruning today; ingestion next):
//! progress, cancellation and a final report, polled over the API.
//!
//! The registry lives in memory: a job that was running when the process
//! stopped is not resumed (its effects are all-or-nothing: pruning writes
//! its weights or deletions only at the end). Ingest jobs persist their own
//! checkpoints (`ingest_job.rs`) and, in a cluster, publish them through
//! Raft so that another coordinator can take them over
//! (`cluster/jobs.rs`).

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::meta::now;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

/// What `GET .../jobs/{id}` answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobStatus {
    pub id: u64,
    pub collection: String,
    pub kind: String,
    pub state: JobState,
    /// Units of work done and in all (items for pruning).
    pub done: u64,
    pub total: u64,
    pub started_at: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub finished_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
    /// The job's parameters as given (defaults filled in).
    pub params: serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub report: Option<serde_json::Value>,
    /// Live counts while it runs (ingestion: files, rows read, items
    /// written, rejected).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub counts: Option<serde_json::Value>,
    /// In a cluster: the coordinator that runs it.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub owner: Option<u64>,
    /// In a cluster: coordinators that ran it before and were replaced
    /// (gone for longer than `cluster.job_takeover_s`), oldest first.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub previous_owners: Vec<u64>,
}

/// A running job's shared handle.
pub struct Job {
    status: Mutex<JobStatus>,
    done: AtomicU64,
    cancel: AtomicBool,
    /// Stopped because this coordinator may no longer run it (it lost its
    /// Raft lease or was replaced): it ends without recording an outcome.
    suspended: AtomicBool,
    /// Where another coordinator would run the job on from (an ingest
    /// job's spec and checkpoint), published with its status.
    resume: Mutex<Option<serde_json::Value>>,
}

impl Job {
    pub fn id(&self) -> u64 {
        self.status.lock().id
    }

    pub fn set_total(&self, total: u64) {
        self.status.lock().total = total;
    }

    /// In a cluster: the coordinator that runs it (this one).
    pub fn set_owner(&self, owner: u64) {
        self.status.lock().owner = Some(owner);
    }

    pub fn set_counts(&self, counts: serde_json::Value) {
        self.status.lock().counts = Some(counts);
    }

    pub fn advance(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }

    /// Whether the job must stop: cancelled, or suspended.
    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed) || self.suspended()
    }

    /// Stops the job without an outcome: this coordinator may no longer
    /// run it (see [`Job::suspended`]).
    pub fn suspend(&self) {
        self.suspended.store(true, Ordering::Relaxed);
    }

    /// Whether the job was stopped because this coordinator may no longer
    /// run it; its outcome belongs to whoever runs it next.
    pub fn suspended(&self) -> bool {
        self.suspended.load(Ordering::Relaxed)
    }

    /// Records where the job would resume from (published in a cluster).
    pub fn set_resume(&self, point: serde_json::Value) {
        *self.resume.lock() = Some(point);
    }

    pub fn resume_point(&self) -> Option<serde_json::Value> {
        self.resume.lock().clone()
    }

    pub fn status(&self) -> JobStatus {
        let mut status = self.status.lock().clone();
        status.done = self.done.load(Ordering::Relaxed);
        status
    }

    /// Records the outcome; a cancelled job stays cancelled.
    pub fn finish(&self, outcome: std::result::Result<serde_json::Value, String>) {
        let mut status = self.status.lock();
        status.finished_at = Some(now());
        match outcome {
            Ok(report) => {
                status.state = JobState::Succeeded;
                status.report = Some(report);
            }
            Err(_) if self.cancel.load(Ordering::Relaxed) || self.suspended() => {
                status.state = JobState::Cancelled
            }
            Err(error) => {
                status.state = JobState::Failed;
                status.error = Some(error);
            }
        }
    }
}

#[derive(Default)]
pub struct Jobs {
    next: AtomicU64,
    jobs: Mutex<BTreeMap<u64, Arc<Job>>>,
}

impl Jobs {
    pub fn start(&self, collection: &str, kind: &str, params: serde_json::Value) -> Arc<Job> {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        self.insert(id, collection, kind, params, now())
    }

    /// Registers a job a previous process persisted, under its own id; new
    /// jobs get larger ids.
    pub fn restore(
        &self,
        id: u64,
        collection: &str,
        kind: &str,
        params: serde_json::Value,
        started_at: &str,
    ) -> Arc<Job> {
        self.next.fetch_max(id, Ordering::Relaxed);
        self.insert(id, collection, kind, params, started_at.to_string())
    }

    fn insert(
        &self,
        id: u64,
        collection: &str,
        kind: &str,
        params: serde_json::Value,
        started_at: String,
    ) -> Arc<Job> {
        let job = Arc::new(Job {
            status: Mutex::new(JobStatus {
                id,
                collection: collection.to_string(),
                kind: kind.to_string(),
                state: JobState::Running,
                done: 0,
                total: 0,
                started_at,
                finished_at: None,
                error: None,
                params,
                report: None,
                counts: None,
                owner: None,
                previous_owners: Vec::new(),
            }),
            done: AtomicU64::new(0),
            cancel: AtomicBool::new(false),
            suspended: AtomicBool::new(false),
            resume: Mutex::new(None),
        });
        self.jobs.lock().insert(id, job.clone());
        job
    }

    pub fn get(&self, collection: &str, id: u64) -> Option<Arc<Job>> {
        self.jobs
            .lock()
            .get(&id)
            .filter(|j| j.status.lock().collection == collection)
            .cloned()
    }

    /// The handles of `collection`'s jobs.
    pub fn handles(&self, collection: &str) -> Vec<Arc<Job>> {
        self.jobs
            .lock()
            .values()
            .filter(|j| j.status.lock().collection == collection)
            .cloned()
            .collect()
    }

    pub fn list(&self, collection: &str) -> Vec<JobStatus> {
        self.jobs
            .lock()
            .values()
            .map(|j| j.status())
            .filter(|s| s.collection == collection)
            .collect()
    }

    /// Every job's status, all collections.
    pub fn all(&self) -> Vec<JobStatus> {
        self.jobs.lock().values().map(|j| j.status()).collect()
    }

    /// Asks a running job to stop; returns false if it had already ended.
    pub fn cancel(&self, job: &Job) -> bool {
        let running = job.status.lock().state == JobState::Running;
        if running {
            job.cancel.store(true, Ordering::Relaxed);
        }
        running
    }

    /// Whether a job of `kind` is running on `collection`.
    pub fn running(&self, collection: &str, kind: &str) -> bool {
        self.jobs.lock().values().any(|j| {
            let s = j.status.lock();
            s.collection == collection && s.kind == kind && s.state == JobState::Running
        })
    }
}
