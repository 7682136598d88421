//! Jobs that outlive their coordinator. The Raft leader watches every
//! running job's beat (moved by each publication of its owner,
//! `cluster/jobs.rs`); a beat that has not moved for `cluster.job_takeover_s`
//! means the owner is gone (killed, partitioned, its disk lost), and the
//! leader hands the job to itself through Raft (compare-and-set on the
//! owner and the beat). Every coordinator then runs on the jobs handed to
//! it: an ingest job from the spec and checkpoint its last owner published
//! (rows read after that checkpoint are read again and written again under
//! the same ids, so nothing is duplicated or lost), a resharding from its
//! progress in the Raft state; jobs of other kinds (pruning) do not resume,
//! and are marked failed.
//!
//! The owner stops a job on its own once its lease lapses (half the
//! takeover time without a Raft majority), so the leader's takeover never
//! finds the job still writing.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use engram_meta::{JobRecord, NodeId};

use crate::cluster::ClusterBackend;
use crate::cluster::jobs as cluster_jobs;
use crate::error::{ApiError, Result};
use crate::ingest_job::{self, CHECKPOINT_FILE, ResumePoint};
use crate::jobs::JobState;
use crate::service::Engram;

/// How often the leader looks for silent owners and each coordinator for
/// jobs handed to it.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// A running job's beat as Raft records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct JobBeat {
    pub id: u64,
    pub owner: NodeId,
    pub beat: u64,
}

/// When the leader first saw a job at its current owner and beat.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sighting {
    owner: NodeId,
    beat: u64,
    since: Instant,
}

/// The running jobs (of `running`) whose owner and beat have not changed
/// for `timeout`, as `(id, owner, beat)` to take over; `sightings` remembers
/// since when each was seen unchanged (jobs no longer running are
/// forgotten). A leader counts from its own first sighting, so a new
/// leader waits a full `timeout` before taking anything over.
pub(crate) fn due_for_takeover(
    sightings: &mut HashMap<u64, Sighting>,
    running: &[JobBeat],
    now: Instant,
    timeout: Duration,
) -> Vec<JobBeat> {
    sightings.retain(|id, _| running.iter().any(|j| j.id == *id));
    let mut due = Vec::new();
    for job in running {
        let sighting = sightings.entry(job.id).or_insert(Sighting {
            owner: job.owner,
            beat: job.beat,
            since: now,
        });
        if sighting.owner != job.owner || sighting.beat != job.beat {
            *sighting = Sighting {
                owner: job.owner,
                beat: job.beat,
                since: now,
            };
        }
        if now.duration_since(sighting.since) >= timeout {
            due.push(*job);
        }
    }
    due
}

/// What this coordinator knows of a job it owns in Raft.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Local {
    /// Never ran here (this process).
    Absent,
    Running,
    /// Ended here; `suspended` when it stopped because this coordinator
    /// lost its hold on it (the outcome was not recorded).
    Ended {
        suspended: bool,
    },
}

/// Whether a running job Raft gives to this coordinator must be started
/// here: one handed over by a takeover that never ran here, or one this
/// coordinator stopped when it lost its lease and that came back to it. A
/// job this coordinator created and has not registered yet (no previous
/// owner) and one that ended here and whose outcome is on its way to Raft
/// are left alone.
pub(crate) fn must_adopt(record: &JobRecord, local: Local) -> bool {
    match local {
        Local::Absent => !record.previous_owners.is_empty(),
        Local::Running => false,
        Local::Ended { suspended } => suspended,
    }
}

fn running(record: &JobRecord) -> bool {
    record.status.get("state").and_then(|s| s.as_str()) == Some("running")
}

impl Engram {
    /// In a cluster: every second, runs the jobs handed to this coordinator
    /// and, on the Raft leader, takes over the jobs whose owner went silent
    /// (see the module doc).
    pub fn spawn_job_takeover(&self) -> Option<tokio::task::JoinHandle<()>> {
        let cluster = self.cluster()?.clone();
        let this = self.clone();
        Some(tokio::spawn(async move {
            let mut sightings: HashMap<u64, Sighting> = HashMap::new();
            loop {
                tokio::time::sleep(CHECK_EVERY).await;
                this.adopt_handed_jobs(&cluster).await;
                if cluster.meta().is_leader() {
                    this.take_over_silent_jobs(&cluster, &mut sightings).await;
                } else {
                    sightings.clear();
                }
            }
        }))
    }

    async fn take_over_silent_jobs(
        &self,
        cluster: &ClusterBackend,
        sightings: &mut HashMap<u64, Sighting>,
    ) {
        let me = cluster.meta().id();
        let state = cluster.state();
        let beats: Vec<JobBeat> = state
            .jobs
            .values()
            .filter(|r| running(r))
            // Its own live jobs publish their beats; nothing to watch.
            .filter(|r| r.owner != me || self.local(r) != Local::Running)
            .map(|r| JobBeat {
                id: r.id,
                owner: r.owner,
                beat: r.beat,
            })
            .collect();
        let timeout = cluster.inner.timeouts.job_takeover;
        for job in due_for_takeover(sightings, &beats, Instant::now(), timeout) {
            let command = engram_meta::Command::TakeOverJob {
                id: job.id,
                from: job.owner,
                to: me,
                beat: job.beat,
            };
            match cluster.meta().write(command).await {
                Ok(_) => {
                    tracing::warn!(
                        job = job.id,
                        from = job.owner,
                        silent_s = timeout.as_secs(),
                        "job owner silent; this coordinator takes the job over"
                    );
                    sightings.remove(&job.id);
                }
                Err(engram_meta::MetaError::Refused(reason)) => {
                    tracing::info!(job = job.id, %reason, "job takeover not applied");
                }
                Err(e) => {
                    tracing::warn!(job = job.id, error = %e, "could not take the job over; retrying")
                }
            }
        }
    }

    fn local(&self, record: &JobRecord) -> Local {
        match self.inner.jobs.get(&record.collection, record.id) {
            None => Local::Absent,
            Some(job) if job.status().state == JobState::Running => Local::Running,
            Some(job) => Local::Ended {
                suspended: job.suspended(),
            },
        }
    }

    async fn adopt_handed_jobs(&self, cluster: &ClusterBackend) {
        let me = cluster.meta().id();
        let state = cluster.state();
        for record in state.jobs.values() {
            if record.owner != me || !running(record) || !must_adopt(record, self.local(record)) {
                continue;
            }
            if let Err(error) = self.adopt(cluster, record).await {
                tracing::error!(job = record.id, %error, "could not run on a job handed to this coordinator; retrying");
            }
        }
    }

    /// Runs on a job handed to this coordinator from its last published
    /// resume point, or marks it failed when it cannot resume.
    async fn adopt(&self, cluster: &ClusterBackend, record: &JobRecord) -> Result<()> {
        let from = record
            .previous_owners
            .last()
            .copied()
            .unwrap_or(record.owner);
        if record.kind == "reshard" {
            // A resharding's progress is in the Raft state: it runs on.
            if self.resume_cluster_reshard(cluster, record) {
                self.metrics().job_taken_over();
                tracing::warn!(job = record.id, from, "running on a resharding taken over");
            }
            return Ok(());
        }
        if record.kind != "ingest" {
            let error = format!(
                "coordinator {from}, which ran this {} job, is gone; {} jobs do not resume: start it again",
                record.kind, record.kind
            );
            return cluster_jobs::fail(cluster.meta(), record, error).await;
        }
        let Some(point) = &record.resume else {
            let error = format!(
                "coordinator {from}, which ran this job, is gone and had published no checkpoint: start it again"
            );
            return cluster_jobs::fail(cluster.meta(), record, error).await;
        };
        let ResumePoint {
            spec,
            mut checkpoint,
        } = serde_json::from_value((**point).clone()).map_err(|e| {
            ApiError::internal(format!(
                "job {} has an unreadable checkpoint: {e}",
                record.id
            ))
        })?;
        if spec.id != record.id || spec.collection != record.collection {
            return Err(ApiError::internal(format!(
                "job {}'s checkpoint is of job {} of `{}`",
                record.id, spec.id, spec.collection
            )));
        }
        // The job's directory as its owner had it: spec and checkpoint.
        ingest_job::create(&self.data_dir(), &spec)?;
        checkpoint.state = "running".into();
        checkpoint.error = None;
        let dir = ingest_job::jobs_dir(&self.data_dir()).join(spec.id.to_string());
        ingest_job::save(&dir.join(CHECKPOINT_FILE), &checkpoint)?;
        self.metrics().job_taken_over();
        tracing::warn!(
            job = record.id,
            collection = %record.collection,
            from,
            rows_read = checkpoint.rows_read,
            file = checkpoint.file,
            row_group = checkpoint.row_group,
            "running on an ingest job taken over from its checkpoint"
        );
        self.relaunch(spec, checkpoint);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use engram_meta::Shared;

    fn beat(id: u64, owner: NodeId, beat: u64) -> JobBeat {
        JobBeat { id, owner, beat }
    }

    #[test]
    fn only_a_beat_unchanged_for_the_whole_timeout_is_due() {
        let timeout = Duration::from_secs(10);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut seen = HashMap::new();
        assert!(due_for_takeover(&mut seen, &[beat(1, 2, 5)], at(0), timeout).is_empty());
        assert!(due_for_takeover(&mut seen, &[beat(1, 2, 5)], at(9), timeout).is_empty());
        // The beat moved at 9 s: the clock restarts.
        assert!(due_for_takeover(&mut seen, &[beat(1, 2, 6)], at(9), timeout).is_empty());
        assert!(due_for_takeover(&mut seen, &[beat(1, 2, 6)], at(18), timeout).is_empty());
        assert_eq!(
            due_for_takeover(&mut seen, &[beat(1, 2, 6)], at(19), timeout),
            vec![beat(1, 2, 6)]
        );
        // A new owner at the same beat count restarts it too.
        assert!(due_for_takeover(&mut seen, &[beat(1, 3, 6)], at(20), timeout).is_empty());
        // A job that ended is forgotten; seen again, it starts over.
        assert!(due_for_takeover(&mut seen, &[], at(21), timeout).is_empty());
        assert!(seen.is_empty());
        assert!(due_for_takeover(&mut seen, &[beat(1, 3, 6)], at(40), timeout).is_empty());
    }

    #[test]
    fn handed_jobs_are_adopted_but_not_new_or_finishing_ones() {
        let mut record = JobRecord {
            id: 7,
            collection: "c".into(),
            kind: "ingest".into(),
            owner: 2,
            cancel_requested: false,
            status: Shared::new(serde_json::json!({"state": "running"})),
            beat: 3,
            resume: None,
            previous_owners: Vec::new(),
        };
        // Created here and not registered locally yet: not adopted.
        assert!(!must_adopt(&record, Local::Absent));
        assert!(!must_adopt(&record, Local::Ended { suspended: false }));
        // Stopped here for a lapsed lease and still ours: run again.
        assert!(must_adopt(&record, Local::Ended { suspended: true }));
        record.previous_owners.push(1);
        assert!(must_adopt(&record, Local::Absent));
        assert!(!must_adopt(&record, Local::Running));
        // Ended here, its outcome on its way to Raft: left alone.
        assert!(!must_adopt(&record, Local::Ended { suspended: false }));
    }
}
