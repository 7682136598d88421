//! The `train_head` job: reads the memory (every admitted row, with its
//! effective label; a uniform sample past `max_rows`), trains the head and
//! stores it with the memory version read before the first row. Runs
//! behind the node's job abstraction like pruning and ingestion.

use serde_json::json;
use std::collections::BTreeMap;

use engram_core::config::RerankerConfig;
use engram_core::head::{SplitMix64, TrainingSet};
use engram_core::{HeadTraining, LinearHead, MemoryVersion, TrainedHead};
use engram_worker::ShardedCollection;

use crate::backend::Collection;
use crate::dto::JobRequest;
use crate::error::{ApiError, ErrorCode, Result};
use crate::jobs::{Job, JobStatus};
use crate::meta::now;
use crate::service::Engram;

/// The job kind.
pub(crate) const KIND: &str = "train_head";
/// Most weights (classes x dimensions) a head may have: it travels through
/// Raft as one entry (JSON), and every coordinator keeps it in memory.
const MAX_WEIGHTS: usize = 4_000_000;
/// Most bytes of rows one training may hold in the coordinator's RAM.
const MAX_TRAINING_BYTES: u64 = 8 << 30;

impl Engram {
    /// `POST .../jobs {"kind": "train_head", "reranker": "<name>"}`.
    pub(crate) async fn train_head_request(
        &self,
        collection: &str,
        hosted: Collection,
        request: JobRequest,
    ) -> Result<JobStatus> {
        if request.mode.is_some()
            || request.k.is_some()
            || request.threshold.is_some()
            || request.uri.is_some()
            || request.columns.is_some()
            || request.bulk.is_some()
        {
            return Err(ApiError::invalid(
                "a train_head job takes `reranker` and `training` only",
            ));
        }
        let name = request
            .reranker
            .clone()
            .ok_or_else(|| ApiError::invalid("a train_head job needs `reranker`"))?;
        let training = self.head_training(&name, request.training.as_ref())?;
        self.start_head_training(collection, hosted, &name, training)
            .await
    }

    /// The training parameters: the re-ranker's configured ones, with the
    /// request's fields over them.
    fn head_training(
        &self,
        name: &str,
        overrides: Option<&serde_json::Map<String, serde_json::Value>>,
    ) -> Result<HeadTraining> {
        let configured = match self.config().rerankers.get(name) {
            Some(RerankerConfig::Head(head)) => head.training.clone(),
            Some(other) => {
                return Err(ApiError::invalid(format!(
                    "re-ranker `{name}` is of kind {}; only heads are trained",
                    other.kind()
                )));
            }
            None => {
                return Err(ApiError::invalid(format!(
                    "unknown re-ranker `{name}`; configured: {:?}",
                    self.config().rerankers.keys().collect::<Vec<_>>()
                )));
            }
        };
        let mut merged =
            serde_json::to_value(configured).map_err(|e| ApiError::internal(e.to_string()))?;
        if let (Some(fields), Some(target)) = (overrides, merged.as_object_mut()) {
            for (key, value) in fields {
                target.insert(key.clone(), value.clone());
            }
        }
        let training: HeadTraining = serde_json::from_value(merged)
            .map_err(|e| ApiError::invalid(format!("training: {e}")))?;
        training.validate()?;
        Ok(training)
    }

    /// Starts training head `name` on `collection` (one at a time per
    /// head).
    pub(crate) async fn start_head_training(
        &self,
        collection: &str,
        hosted: Collection,
        name: &str,
        training: HeadTraining,
    ) -> Result<JobStatus> {
        let bytes = training
            .max_rows
            .saturating_mul(hosted.spec().dim as u64 * 4);
        if bytes > MAX_TRAINING_BYTES {
            return Err(ApiError::invalid(format!(
                "max_rows {} x {} dimensions would hold {} MiB of rows in RAM; at most {} MiB",
                training.max_rows,
                hosted.spec().dim,
                bytes >> 20,
                MAX_TRAINING_BYTES >> 20
            )));
        }
        if self.head_training_running(collection, name) {
            return Err(ApiError::new(
                ErrorCode::AlreadyExists,
                format!("head `{name}` is already being trained on `{collection}`"),
            ));
        }
        let params = json!({ "reranker": name, "training": training });
        let job = self.new_job(collection, KIND, params).await?;
        let (this, running, collection, name) = (
            self.clone(),
            job.clone(),
            collection.to_string(),
            name.to_string(),
        );
        tokio::task::spawn_blocking(move || {
            let outcome = train(
                &this,
                &collection,
                &name,
                hosted.as_ref(),
                &running,
                &training,
            );
            if let Err(e) = &outcome {
                tracing::warn!(job = running.id(), error = %e, "train_head job ended without a head");
            } else {
                tracing::info!(
                    job = running.id(),
                    collection,
                    reranker = name,
                    "head trained"
                );
            }
            running.finish(outcome.map_err(|e| e.to_string()));
        });
        Ok(job.status())
    }

    /// Whether a `train_head` job for head `name` runs on `collection`.
    pub(crate) fn head_training_running(&self, collection: &str, name: &str) -> bool {
        self.jobs(collection).is_ok_and(|list| {
            list.jobs.iter().any(|j| {
                j.kind == KIND
                    && j.state == crate::jobs::JobState::Running
                    && j.params.get("reranker").and_then(|r| r.as_str()) == Some(name)
            })
        })
    }

    /// Trains head `name` again so that the rows of `receipts` leave it
    /// (unless a training already runs; one started after the receipts
    /// were durable is enough). A head no longer configured is removed
    /// instead: nothing could retrain it.
    pub(crate) async fn retrain_head(
        &self,
        collection: &str,
        name: &str,
        receipts: &[u64],
    ) -> Result<()> {
        if self.head_training_running(collection, name) {
            return Ok(());
        }
        if !matches!(
            self.config().rerankers.get(name),
            Some(RerankerConfig::Head(_))
        ) {
            tracing::info!(
                collection,
                reranker = name,
                ?receipts,
                "removing a head no re-ranker of this node's config trains"
            );
            return self.inner.meta.set_head(collection, name, None).await;
        }
        let training = self.head_training(name, None)?;
        let hosted = self.hosted(collection)?;
        tracing::info!(
            collection,
            reranker = name,
            ?receipts,
            "retraining a head without unlearned rows"
        );
        self.start_head_training(collection, hosted, name, training)
            .await
            .map(|_| ())
    }
}

/// Reads the memory, trains, stores. Blocking.
fn train(
    engram: &Engram,
    collection: &str,
    name: &str,
    hosted: &dyn ShardedCollection,
    job: &Job,
    training: &HeadTraining,
) -> Result<serde_json::Value> {
    let runtime = tokio::runtime::Handle::current();
    let meta = &engram.inner.meta;
    // The version first: every receipt up to it is durable, so no row it
    // deleted can be read below.
    let curation = meta.curation(collection)?;
    let items = hosted.stats()?.items;
    let version = MemoryVersion {
        receipt: meta.newest_receipt(collection)?,
        audit_seq: curation.audit.last().map_or(0, |e| e.seq),
        items,
    };
    job.set_total(items);
    let dim = hosted.spec().dim;
    let max_rows = training.max_rows as usize;
    let mut rng = SplitMix64(training.seed ^ 0x5EED);
    let mut vectors: Vec<f32> = Vec::new();
    let mut labels_of: Vec<String> = Vec::new();
    let mut seen = 0u64;
    let mut skipped = 0u64;
    hosted.scan(&mut |batch| {
        let scanned = batch.len() as u64;
        for item in batch {
            if job.cancelled() {
                return Ok(());
            }
            if !curation.admits(item.id, &item.label, item.source.as_deref()) {
                skipped += 1;
                continue;
            }
            let label = curation.effective_label(item.id, &item.label).to_string();
            seen += 1;
            // Reservoir sampling: each admitted row kept with equal chance.
            let slot = if labels_of.len() < max_rows {
                labels_of.push(label);
                vectors.extend_from_slice(&item.vector);
                continue;
            } else {
                rng.below(seen) as usize
            };
            if slot < max_rows {
                labels_of[slot] = label;
                vectors[slot * dim..(slot + 1) * dim].copy_from_slice(&item.vector);
            }
        }
        job.advance(scanned);
        Ok(())
    })?;
    if job.cancelled() {
        return Err(ApiError::invalid("cancelled"));
    }
    let mut index: BTreeMap<String, u32> = BTreeMap::new();
    for label in &labels_of {
        let next = index.len() as u32;
        index.entry(label.clone()).or_insert(next);
    }
    // Classes in label order, so a head's layout does not depend on the
    // scan order.
    let labels: Vec<String> = index.keys().cloned().collect();
    if labels.len() * dim > MAX_WEIGHTS {
        return Err(ApiError::invalid(format!(
            "a head over {} labels x {dim} dimensions has more than {MAX_WEIGHTS} weights \
             (it is replicated through Raft); block rare classes or use an http re-ranker",
            labels.len()
        )));
    }
    let order: BTreeMap<&String, u32> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l, i as u32))
        .collect();
    let classes: Vec<u32> = labels_of.iter().map(|l| order[l]).collect();
    let set = TrainingSet {
        dim,
        vectors: &vectors,
        classes: &classes,
        labels,
    };
    job.set_total(u64::from(training.epochs));
    let head = LinearHead::train(&set, training, &mut |epoch| {
        job.set_counts(json!({ "rows": set.classes.len(), "epochs_done": epoch }));
        !job.cancelled()
    })?
    .ok_or_else(|| ApiError::invalid("cancelled"))?;
    job.advance(u64::from(training.epochs));
    let train_accuracy = head.accuracy(&set);
    let trained = TrainedHead {
        reranker: name.to_string(),
        job: job.id(),
        trained_at: now(),
        version,
        rows: set.classes.len() as u64,
        train_accuracy,
        training: training.clone(),
        head,
    };
    let report = json!({
        "reranker": name,
        "rows": trained.rows,
        "rows_admitted": seen,
        "rows_blocked": skipped,
        "classes": trained.head.labels.len(),
        "train_accuracy": train_accuracy,
        "version": version,
    });
    runtime.block_on(meta.set_head(collection, name, Some(trained)))?;
    Ok(report)
}
