//! The curation operations of the public API: interventions, unlearning
//! receipts, and memory pruning as a job.

use serde_json::json;
use std::collections::BTreeMap;

use engram_core::{AuditEntry, Intervention, PruningScores, PruningWeights};
use engram_index::SearchTuning;
use engram_worker::{SearchFilter, ShardedCollection};

use crate::backend::Collection;

use crate::cluster::jobs as cluster_jobs;
use crate::dto::InterventionRequest;
use crate::dto::{CurationView, JobList, JobRequest, PruningSummary};
use crate::error::{ApiError, ErrorCode, Result};
use crate::ingest_job::IngestOptions;
use crate::jobs::{Job, JobState, JobStatus};
use crate::meta::now;
use crate::service::{Engram, MAX_LABEL_BYTES, MAX_SOURCE_BYTES};
use engram_core::Selector;
use std::sync::Arc;

/// Queries per search batch while pruning.
const PRUNE_BATCH: usize = 256;
/// Candidates listed in a pruning report.
const REPORT_TOP: usize = 100;

/// How a pruning job ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PruneMode {
    DryRun,
    Hard,
    Soft,
}

impl Engram {
    /// Applies one intervention and records it in the audit trail.
    pub async fn intervene(
        &self,
        collection: &str,
        request: InterventionRequest,
    ) -> Result<AuditEntry> {
        let hosted = self.hosted_collection(collection)?;
        let too_long = match &request.intervention {
            Intervention::Relabel { label, .. }
            | Intervention::BlockClass { label }
            | Intervention::UnblockClass { label }
            | Intervention::ScaleClass { label, .. } => {
                (label.len() > MAX_LABEL_BYTES).then_some(("label", MAX_LABEL_BYTES))
            }
            Intervention::BlockSource { source } | Intervention::UnblockSource { source } => {
                (source.len() > MAX_SOURCE_BYTES).then_some(("source", MAX_SOURCE_BYTES))
            }
            _ => None,
        };
        if let Some((what, limit)) = too_long {
            return Err(ApiError::invalid(format!(
                "{what} longer than {limit} bytes"
            )));
        }
        if request.reason.len() > MAX_SOURCE_BYTES {
            return Err(ApiError::invalid(format!(
                "reason longer than {MAX_SOURCE_BYTES} bytes"
            )));
        }
        if let Intervention::SetReranker {
            reranker: Some(name),
        } = &request.intervention
            && !self.config().rerankers.contains_key(name)
        {
            return Err(ApiError::invalid(format!(
                "unknown re-ranker `{name}`; configured: {:?}",
                self.config().rerankers.keys().collect::<Vec<_>>()
            )));
        }
        if let Some(id) = request.intervention.item()
            && crate::service::blocking(move || Ok(hosted.get(id)?))
                .await?
                .is_none()
        {
            return Err(ApiError::not_found(format!(
                "item {id} does not exist in `{collection}`"
            )));
        }
        let entry = self
            .inner
            .meta
            .intervene(collection, request.intervention, request.reason)
            .await?;
        tracing::info!(collection, seq = entry.seq, reason = %entry.reason, "intervention");
        Ok(entry)
    }

    /// The active interventions, the audit trail and the pruning weights.
    pub async fn curation(&self, collection: &str) -> Result<CurationView> {
        self.hosted_collection(collection)?;
        Ok(CurationView {
            curation: (*self.inner.meta.curation(collection)?).clone(),
            pruning: self.pruning_summary(collection)?,
        })
    }

    pub async fn pruning(&self, collection: &str) -> Result<PruningSummary> {
        self.hosted_collection(collection)?;
        self.pruning_summary(collection)?.ok_or_else(|| {
            ApiError::not_found(format!("`{collection}` has no soft-pruning weights"))
        })
    }

    /// Removes the soft-pruning weights (every item votes with its own
    /// weight again).
    pub async fn clear_pruning(&self, collection: &str) -> Result<()> {
        self.hosted_collection(collection)?;
        self.inner.meta.set_pruning(collection, None).await
    }

    /// Starts a job; answers at once with its status.
    pub async fn start_job(&self, collection: &str, request: JobRequest) -> Result<JobStatus> {
        let hosted = self.hosted_collection(collection)?;
        match request.kind.as_str() {
            "prune" => {}
            "ingest" => return self.ingest_request(hosted, request).await,
            crate::rerank::train::KIND => {
                return self.train_head_request(collection, hosted, request).await;
            }
            other => {
                return Err(ApiError::invalid(format!(
                    "unknown job kind `{other}`; known: prune, ingest, train_head"
                )));
            }
        }
        if request.reranker.is_some() || request.training.is_some() {
            return Err(ApiError::invalid(
                "reranker and training belong to train_head jobs",
            ));
        }
        if request.uri.is_some()
            || request.columns.is_some()
            || request.max_reject_share.is_some()
            || request.batch_rows.is_some()
            || request.bulk.is_some()
            || request.segment_rows.is_some()
        {
            return Err(ApiError::invalid(
                "uri, columns, max_reject_share, batch_rows, bulk and segment_rows belong to ingest jobs",
            ));
        }
        let mode = match request.mode.as_deref().unwrap_or("dry_run") {
            "dry_run" => PruneMode::DryRun,
            "hard" => PruneMode::Hard,
            "soft" => PruneMode::Soft,
            other => {
                return Err(ApiError::invalid(format!(
                    "unknown pruning mode `{other}`; use dry_run, hard or soft"
                )));
            }
        };
        let k = request.k.unwrap_or(10);
        let max_k = self.config().limits.max_k;
        if k == 0 || k > max_k {
            return Err(ApiError::invalid(format!(
                "k must be between 1 and {max_k}, got {k}"
            )));
        }
        let threshold = request.threshold.unwrap_or(3);
        if threshold == 0 {
            return Err(ApiError::invalid("threshold must be at least 1"));
        }
        if self.running_anywhere(collection, "prune") {
            return Err(ApiError::new(
                ErrorCode::AlreadyExists,
                format!("a prune job is already running on `{collection}`"),
            ));
        }
        let params = json!({
            "mode": request.mode.as_deref().unwrap_or("dry_run"),
            "k": k,
            "threshold": threshold,
        });
        let job = self.new_job(collection, "prune", params).await?;
        let this = self.clone();
        let running = job.clone();
        let name = collection.to_string();
        tokio::task::spawn_blocking(move || {
            let outcome = prune(&this, &name, hosted.as_ref(), &running, mode, k, threshold);
            if let Err(e) = &outcome {
                tracing::warn!(job = running.id(), error = %e, "prune job ended without a result");
            }
            running.finish(outcome.map_err(|e| e.to_string()));
        });
        Ok(job.status())
    }

    async fn ingest_request(&self, hosted: Collection, request: JobRequest) -> Result<JobStatus> {
        if request.mode.is_some() || request.k.is_some() || request.threshold.is_some() {
            return Err(ApiError::invalid(
                "mode, k and threshold belong to prune jobs",
            ));
        }
        if request.reranker.is_some() || request.training.is_some() {
            return Err(ApiError::invalid(
                "reranker and training belong to train_head jobs",
            ));
        }
        let uri = request
            .uri
            .filter(|u| !u.trim().is_empty())
            .ok_or_else(|| ApiError::invalid("an ingest job needs `uri`"))?;
        let max_reject_share = request.max_reject_share.unwrap_or(0.01);
        if !(0.0..=1.0).contains(&max_reject_share) {
            return Err(ApiError::invalid(
                "max_reject_share must be between 0 and 1",
            ));
        }
        let batch_rows = request.batch_rows.unwrap_or(1024);
        if !(1..=65_536).contains(&batch_rows) {
            return Err(ApiError::invalid("batch_rows must be between 1 and 65536"));
        }
        let bulk = request.bulk.unwrap_or(false);
        let segment_rows = request.segment_rows.unwrap_or(0);
        if request.segment_rows.is_some() && !bulk {
            return Err(ApiError::invalid(
                "segment_rows applies to bulk ingest jobs only",
            ));
        }
        if request.segment_rows.is_some() && !(1_000..=100_000_000).contains(&segment_rows) {
            return Err(ApiError::invalid(
                "segment_rows must be between 1000 and 100000000",
            ));
        }
        self.start_ingest(
            hosted,
            IngestOptions {
                uri,
                columns: request.columns.unwrap_or_default(),
                max_reject_share,
                batch_rows,
                bulk,
                segment_rows,
            },
        )
        .await
    }

    /// A new running job: numbered locally on the embedded node, through
    /// Raft in a cluster (and then published there while it runs).
    pub(crate) async fn new_job(
        &self,
        collection: &str,
        kind: &str,
        params: serde_json::Value,
    ) -> Result<Arc<Job>> {
        let Some(cluster) = self.cluster() else {
            return Ok(self.inner.jobs.start(collection, kind, params));
        };
        let meta = cluster.meta().clone();
        let id = cluster_jobs::register(&meta, collection, kind, &params).await?;
        let job = self
            .inner
            .jobs
            .restore(id, collection, kind, params, &now());
        job.set_owner(meta.id());
        cluster_jobs::spawn_publisher(
            meta,
            self.inner.jobs.clone(),
            job.clone(),
            cluster.job_lease(),
        );
        Ok(job)
    }

    /// Whether a job of `kind` runs on `collection` here or (as last
    /// published) on another coordinator.
    pub(crate) fn running_anywhere(&self, collection: &str, kind: &str) -> bool {
        self.inner.jobs.running(collection, kind)
            || self.cluster().is_some_and(|c| {
                cluster_jobs::recorded_all(c.meta(), collection)
                    .iter()
                    .any(|j| j.kind == kind && j.state == JobState::Running)
            })
    }

    /// A job's status: live if this node runs it, else as its owner last
    /// published it (also when this node ran it before another coordinator
    /// took it over).
    pub fn job(&self, collection: &str, id: u64) -> Result<JobStatus> {
        self.hosted_collection(collection)?;
        let recorded = self
            .cluster()
            .and_then(|c| cluster_jobs::recorded(c.meta(), collection, id));
        let local = self.inner.jobs.get(collection, id);
        self.newest(local, recorded)
            .ok_or_else(|| ApiError::not_found(format!("no job {id} on `{collection}`")))
    }

    pub fn jobs(&self, collection: &str) -> Result<JobList> {
        self.hosted_collection(collection)?;
        let mut recorded: BTreeMap<u64, JobStatus> = BTreeMap::new();
        if let Some(cluster) = self.cluster() {
            for job in cluster_jobs::recorded_all(cluster.meta(), collection) {
                recorded.insert(job.id, job);
            }
        }
        let mut jobs: BTreeMap<u64, JobStatus> = BTreeMap::new();
        for job in self.inner.jobs.handles(collection) {
            let id = job.id();
            if let Some(status) = self.newest(Some(job), recorded.remove(&id)) {
                jobs.insert(id, status);
            }
        }
        jobs.extend(recorded);
        Ok(JobList {
            jobs: jobs.into_values().collect(),
        })
    }

    /// Of a job's live status here and its status in Raft: the live one
    /// (with its owners) unless another coordinator owns the job now, or
    /// this one stopped it for having lost its hold on it (it runs again
    /// here, or elsewhere, from what Raft holds).
    fn newest(&self, local: Option<Arc<Job>>, recorded: Option<JobStatus>) -> Option<JobStatus> {
        let me = self.cluster().map(|c| c.meta().id());
        match (local, recorded) {
            (Some(local), Some(recorded)) if recorded.owner != me || local.suspended() => {
                Some(recorded)
            }
            (Some(local), _) => Some(self.with_owners(local.status())),
            (None, recorded) => recorded,
        }
    }

    /// A live status with the owners Raft records (in a cluster).
    fn with_owners(&self, status: JobStatus) -> JobStatus {
        match self.cluster() {
            Some(cluster) => cluster_jobs::with_owners(cluster.meta(), status),
            None => status,
        }
    }

    pub async fn cancel_job(&self, collection: &str, id: u64) -> Result<JobStatus> {
        self.hosted_collection(collection)?;
        if let Some(job) = self.inner.jobs.get(collection, id) {
            self.inner.jobs.cancel(&job);
            return Ok(job.status());
        }
        let cluster = self.cluster();
        let recorded = cluster
            .and_then(|c| cluster_jobs::recorded(c.meta(), collection, id))
            .ok_or_else(|| ApiError::not_found(format!("no job {id} on `{collection}`")))?;
        if let Some(cluster) = cluster
            && recorded.state == JobState::Running
        {
            cluster_jobs::request_cancel(cluster.meta(), id).await?;
        }
        Ok(recorded)
    }

    pub(crate) fn hosted_collection(&self, name: &str) -> Result<Collection> {
        self.hosted(name)
    }
}

impl Engram {
    fn pruning_summary(&self, collection: &str) -> Result<Option<PruningSummary>> {
        Ok(self
            .inner
            .meta
            .pruning(collection)?
            .map(|p| PruningSummary {
                job: p.job,
                at: p.at.clone(),
                k: p.k,
                weighted_items: p.v.len(),
                stale_items: p.stale.len(),
            }))
    }
}

/// Scores every item by querying the memory with it (its own id
/// excluded), then ends as `mode` says. Blocking (runs on a blocking
/// thread of the runtime, whose handle records the outcome).
fn prune(
    engram: &Engram,
    collection: &str,
    hosted: &dyn ShardedCollection,
    job: &Job,
    mode: PruneMode,
    k: usize,
    threshold: u32,
) -> Result<serde_json::Value> {
    let runtime = tokio::runtime::Handle::current();
    let meta = &engram.inner.meta;
    let curation = meta.curation(collection)?;
    job.set_total(hosted.stats()?.items);
    let mut scores = PruningScores::default();
    let mut partial = false;
    hosted.scan(&mut |items| {
        for chunk in items.chunks(PRUNE_BATCH) {
            if job.cancelled() {
                return Ok(());
            }
            let queries: Vec<&[f32]> = chunk.iter().map(|i| i.vector.as_slice()).collect();
            let found = hosted.search_batch(
                &queries,
                k + 1,
                &SearchFilter::default(),
                SearchTuning::default(),
            );
            partial |= !found.incomplete_shards.is_empty();
            for (item, list) in chunk.iter().zip(&found.lists) {
                let neighbors: Vec<(u64, &str)> = list
                    .iter()
                    .filter(|n| n.id != item.id)
                    .take(k)
                    .map(|n| (n.id, curation.effective_label(n.id, &n.label)))
                    .collect();
                scores.add_query(
                    item.id,
                    curation.effective_label(item.id, &item.label),
                    &neighbors,
                );
            }
            job.advance(chunk.len() as u64);
        }
        Ok(())
    })?;
    if job.cancelled() {
        return Err(ApiError::invalid("cancelled"));
    }
    if partial {
        return Err(ApiError::internal(
            "some sealed segment could not be searched; scores would be incomplete",
        ));
    }
    let mut histogram: BTreeMap<u32, u64> = BTreeMap::new();
    for v in scores.v.values() {
        *histogram.entry(*v).or_default() += 1;
    }
    histogram.insert(0, scores.items - scores.v.len() as u64);
    let candidates = scores.at_least(threshold);
    let top: Vec<serde_json::Value> = candidates
        .iter()
        .take(REPORT_TOP)
        .map(|(id, v)| {
            let label = hosted.get(*id).ok().flatten().map(|i| i.label.to_string());
            json!({ "id": id, "v": v, "label": label })
        })
        .collect();
    let mut report = json!({
        "items_scored": scores.items,
        "v_histogram": histogram,
        "at_or_above_threshold": candidates.len(),
        "top": top,
    });
    match mode {
        PruneMode::DryRun => {}
        PruneMode::Hard => {
            let ids: Vec<u64> = candidates.iter().map(|(id, _)| *id).collect();
            let log = hosted.delete_ids_traced(&ids)?;
            let deleted: usize = log.iter().map(|d| d.ids.len()).sum();
            engram.inner.metrics.items_deleted(deleted);
            report["deleted"] = json!(deleted);
            if deleted > 0 {
                let selector = Selector {
                    ids: Some(ids.len()),
                    ..Selector::default()
                };
                let erase_by = engram.erase_by(None);
                let receipt =
                    runtime.block_on(meta.record_deletion(collection, selector, log, erase_by))?;
                report["receipt"] = json!(receipt.receipt);
            }
        }
        PruneMode::Soft => {
            let weighted = scores.v.len();
            let gamma_min = scores
                .v
                .values()
                .max()
                .map_or(1.0, |v| engram_core::curation::soft_pruning_gamma(*v));
            let weights = PruningWeights::new(job.id(), now(), k, scores);
            runtime.block_on(meta.set_pruning(collection, Some(weights)))?;
            report["weighted_items"] = json!(weighted);
            report["gamma_min"] = json!(gamma_min);
        }
    }
    Ok(report)
}
