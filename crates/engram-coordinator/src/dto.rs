//! The JSON shapes of the public API (DESIGN.md section 7.1). Unknown
//! fields are refused so that a misspelt parameter is an error, not a
//! silently ignored default.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use engram_core::{
    BlockedNeighbor, Counterfactual, Curation, Decision, Intervention, Metric, VotingRule,
};

use crate::jobs::JobStatus;
use engram_core::Selector;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateCollection {
    pub name: String,
    /// May be left out when `embedder` is given: the embedder's dimension.
    pub dim: Option<usize>,
    pub metric: Option<String>,
    pub embedder: Option<String>,
    pub shards: Option<u32>,
    pub replication: Option<u32>,
    pub default_k: Option<usize>,
    pub default_rule: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectionInfo {
    pub name: String,
    pub dim: usize,
    pub metric: Metric,
    pub embedder: Option<String>,
    pub shards: u32,
    pub replication: u32,
    pub default_k: usize,
    pub default_rule: VotingRule,
    /// Live items.
    pub items: u64,
    /// Live items per label.
    pub labels: BTreeMap<String, u64>,
    /// Sealed (SSD-resident) segments over all shards.
    #[serde(default)]
    pub sealed_segments: usize,
    /// Deleted rows still in sealed segments (until compaction), and their
    /// share of the sealed rows.
    #[serde(default)]
    pub tombstones: u64,
    #[serde(default)]
    pub tombstone_share: f64,
    /// Bytes of the sealed segments' files (one copy of each shard).
    #[serde(default)]
    pub sealed_bytes: u64,
    /// The same counts per shard.
    #[serde(default)]
    pub shard_stats: Vec<ShardInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardInfo {
    pub shard: u32,
    pub items: u64,
    pub sealed_segments: usize,
    pub sealed_rows: u64,
    pub tombstones: u64,
    pub sealed_bytes: u64,
    /// Rows in the growing (in-memory, WAL-backed) segment.
    #[serde(default)]
    pub growing_rows: u64,
    /// The sealed segments, oldest first.
    #[serde(default)]
    pub segments: Vec<SegmentInfo>,
}

/// One sealed segment of a shard (one copy of it in a cluster).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentInfo {
    pub name: String,
    pub rows: u64,
    pub deleted: u64,
    pub bytes: u64,
    /// Where the node's cache budget serves it from: `memory` (the whole
    /// sector file in RAM), `node_cache` (the nodes nearest the entry
    /// point in RAM, `cached_nodes` of them) or `disk`.
    pub served_from: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_nodes: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompactRequest {
    pub min_deleted_fraction: Option<f64>,
    /// Seal every shard's growing segment first, whatever its size.
    pub seal: Option<bool>,
    /// Train a new PQ codebook per shard at its next segment build (this
    /// compaction's seal or merge, if it has one) instead of reusing the
    /// current one.
    pub retrain_codebook: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Compacted {
    /// Sealed segments rewritten: merged with others, or alone without
    /// their deleted rows.
    pub segments_rewritten: usize,
    /// Segments those rewrites wrote (fewer than rewritten when merging).
    #[serde(default)]
    pub segments_written: usize,
    /// WALs rewritten without the vectors of rows deleted since they began.
    #[serde(default)]
    pub wals_rewritten: usize,
    pub sealed_segments: usize,
    /// Bytes of the rewritten segments' files minus their replacements'
    /// (over every copy in a cluster).
    pub bytes_reclaimed: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CollectionList {
    pub collections: Vec<CollectionInfo>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewItem {
    pub id: u64,
    pub label: String,
    pub vector: Option<Vec<f32>>,
    /// Base64 of PNG or JPEG bytes.
    pub image: Option<String>,
    pub weight: Option<f32>,
    pub source: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddItems {
    pub items: Vec<NewItem>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Added {
    pub added: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemInfo {
    pub id: u64,
    pub label: String,
    pub weight: f32,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub source: Option<String>,
    /// Only with `?vector=true`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub vector: Option<Vec<f32>>,
}

/// Query string of `GET .../items/{id}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItemQuery {
    #[serde(default)]
    pub vector: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteItems {
    pub ids: Option<Vec<u64>>,
    pub label: Option<String>,
    pub source: Option<String>,
    /// Seconds by which every byte of the deleted items must be gone (the
    /// receipt's erasure deadline); default `curation.erase_within_s`.
    pub erase_within_s: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Deleted {
    pub deleted: usize,
    /// The unlearning receipt (`GET .../unlearning/{receipt}`); absent when
    /// nothing was deleted.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub receipt: Option<u64>,
}

/// Exactly one of `vector` and `image`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Query {
    pub vector: Option<Vec<f32>>,
    pub image: Option<String>,
    pub exclude_ids: Option<Vec<u64>>,
}

// serde cannot combine `flatten` with `deny_unknown_fields`, so request
// bodies list their fields and split themselves into parts.

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    pub vector: Option<Vec<f32>>,
    pub image: Option<String>,
    pub exclude_ids: Option<Vec<u64>>,
    pub k: Option<usize>,
    /// DiskANN candidate list size L for this query (recall vs speed).
    pub search_list_size: Option<u32>,
    /// Fail (503) rather than answer without some shard.
    pub require_complete: Option<bool>,
}

impl SearchRequest {
    pub fn into_parts(self) -> (Query, Option<usize>, Option<u32>, bool) {
        let query = Query {
            vector: self.vector,
            image: self.image,
            exclude_ids: self.exclude_ids,
        };
        (
            query,
            self.k,
            self.search_list_size,
            self.require_complete.unwrap_or(false),
        )
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NeighborOut {
    pub id: u64,
    pub label: String,
    pub distance: f32,
    pub weight: f32,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub source: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SearchResponse {
    pub neighbors: Vec<NeighborOut>,
    /// Some stored neighbours may be missing: a shard could not search all
    /// of its segments (listed in `missing_shards`).
    pub partial: bool,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub missing_shards: Vec<u32>,
}

/// Voting parameters; anything left out takes the collection's or the
/// paper's default.
#[derive(Debug, Clone, Default)]
pub struct VoteOptions {
    pub k: Option<usize>,
    pub search_list_size: Option<u32>,
    pub rule: Option<String>,
    pub alpha: Option<f64>,
    pub tau: Option<f64>,
    pub xi: Option<f64>,
    pub explain: Option<bool>,
    pub require_complete: Option<bool>,
    pub rerank: Option<RerankOption>,
}

/// A classify request's `rerank`: a configured re-ranker's name, or
/// `false` for the votes alone (left out: the collection's default).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum RerankOption {
    Named(String),
    Flag(bool),
}

/// How a re-ranker's part in a decision went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RerankStatus {
    /// It answered; `label` is the fused decision.
    Ok,
    /// It failed (timeout, error status, malformed answer, breaker open,
    /// busy); the votes decided. `reason` says which.
    Fallback,
    /// It was not asked (a head not trained yet, or stale); the votes
    /// decided. `reason` says why.
    Skipped,
}

/// The second stage of one decision: the re-ranker's own scores, the
/// votes' own decision and how the two were fused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RerankAnswer {
    pub name: String,
    pub kind: String,
    pub status: RerankStatus,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
    /// The call's wall time (one call serves a whole batch).
    pub latency_ms: f64,
    /// The re-ranker's scores per label, curated (blocked classes out,
    /// scaled classes scaled) and normalised to sum 1; empty unless `ok`.
    pub scores: BTreeMap<String, f64>,
    /// The label the re-ranker's scores alone would choose.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reranker_label: Option<String>,
    /// Weight of `scores` against the vote shares.
    pub mix: f64,
    /// `(1 - mix) * vote share + mix * score share` per label; the
    /// decision's `label` is its largest. Empty unless `ok`.
    pub fused: BTreeMap<String, f64>,
    /// The decision the votes alone gave, with its confidence.
    pub vote_label: Option<String>,
    pub vote_confidence: f64,
    /// For a head: the memory version it was trained on.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub head: Option<HeadVersion>,
}

/// Which trained head answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadVersion {
    pub job: u64,
    pub trained_at: String,
    pub version: engram_core::MemoryVersion,
    pub stale: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifyRequest {
    pub vector: Option<Vec<f32>>,
    pub image: Option<String>,
    pub exclude_ids: Option<Vec<u64>>,
    pub k: Option<usize>,
    pub rule: Option<String>,
    pub alpha: Option<f64>,
    pub tau: Option<f64>,
    pub xi: Option<f64>,
    pub search_list_size: Option<u32>,
    /// Also return the blocked neighbours and a counterfactual.
    pub explain: Option<bool>,
    /// Fail (503) rather than answer without some shard.
    pub require_complete: Option<bool>,
    /// A re-ranker's name, or `false` (default: the collection's).
    pub rerank: Option<RerankOption>,
}

impl ClassifyRequest {
    pub fn into_parts(self) -> (Query, VoteOptions) {
        let query = Query {
            vector: self.vector,
            image: self.image,
            exclude_ids: self.exclude_ids,
        };
        let options = VoteOptions {
            k: self.k,
            rule: self.rule,
            alpha: self.alpha,
            tau: self.tau,
            xi: self.xi,
            search_list_size: self.search_list_size,
            explain: self.explain,
            require_complete: self.require_complete,
            rerank: self.rerank,
        };
        (query, options)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClassifyResponse {
    #[serde(flatten)]
    pub decision: Decision,
    pub partial: bool,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub missing_shards: Vec<u32>,
    /// With `explain`: blocked items that would otherwise have been among
    /// the k neighbours, and why they did not vote.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub blocked: Option<Vec<BlockedNeighbor>>,
    /// With `explain`: the smallest set of neighbours whose removal would
    /// change the decision.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub counterfactual: Option<Counterfactual>,
    /// When a re-ranker took part: its scores and how the decision (the
    /// top-level `label` and `confidence`) was reached.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub rerank: Option<RerankAnswer>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifyBatchRequest {
    pub queries: Vec<Query>,
    pub k: Option<usize>,
    pub rule: Option<String>,
    pub alpha: Option<f64>,
    pub tau: Option<f64>,
    pub xi: Option<f64>,
    pub search_list_size: Option<u32>,
    pub explain: Option<bool>,
    /// Fail (503) rather than answer without some shard.
    pub require_complete: Option<bool>,
    /// A re-ranker's name, or `false` (default: the collection's).
    pub rerank: Option<RerankOption>,
}

impl ClassifyBatchRequest {
    pub fn into_parts(self) -> (Vec<Query>, VoteOptions) {
        let options = VoteOptions {
            k: self.k,
            rule: self.rule,
            alpha: self.alpha,
            tau: self.tau,
            xi: self.xi,
            search_list_size: self.search_list_size,
            explain: self.explain,
            require_complete: self.require_complete,
            rerank: self.rerank,
        };
        (self.queries, options)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClassifyBatchResponse {
    pub results: Vec<ClassifyResponse>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbedRequest {
    pub images: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EmbedResponse {
    pub vectors: Vec<Vec<f32>>,
}

/// `{"action": ..., <its fields>, "reason": "..."}`: an intervention and
/// why (the reason is required and kept in the audit trail).
#[derive(Debug, Clone)]
pub struct InterventionRequest {
    pub intervention: Intervention,
    pub reason: String,
}

impl<'de> Deserialize<'de> for InterventionRequest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut body = serde_json::Map::<String, serde_json::Value>::deserialize(deserializer)?;
        let reason = match body.remove("reason") {
            Some(serde_json::Value::String(reason)) => reason,
            Some(_) => return Err(D::Error::custom("`reason` must be a string")),
            None => return Err(D::Error::custom("missing field `reason`")),
        };
        let intervention =
            Intervention::deserialize(serde_json::Value::Object(body)).map_err(D::Error::custom)?;
        Ok(InterventionRequest {
            intervention,
            reason,
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PruningSummary {
    /// The pruning job that computed the weights.
    pub job: u64,
    pub at: String,
    pub k: usize,
    /// Items whose vote is scaled by gamma = 1.75 / (1 + v).
    pub weighted_items: usize,
    /// Of those, items whose v counted a query that has since been unlearned.
    pub stale_items: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CurationView {
    #[serde(flatten)]
    pub curation: Curation,
    pub pruning: Option<PruningSummary>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SegmentRef {
    pub shard: u32,
    pub segment: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PresentIn {
    /// Shards whose current write-ahead log still holds a deleted vector.
    pub wal_shards: Vec<u32>,
    /// Sealed segments that still hold a deleted row (until compaction).
    pub sealed_segments: Vec<SegmentRef>,
    /// Snapshots holding a deleted item (`<uri>#<id>`).
    pub snapshots: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogPosition {
    pub shard: u32,
    pub wal_generation: u64,
    pub wal_offset: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UnlearningStatus {
    pub receipt: u64,
    pub at: String,
    pub selector: Selector,
    pub deleted: usize,
    /// `deleted`: never returned, but some bytes remain on disk;
    /// `erased`: no place Engram knows of holds them any more.
    pub status: String,
    /// Every place the deleted bytes may still be, each checked from the
    /// thing itself (a copy's own files, the object listing, a snapshot's
    /// manifest); empty once `erased`.
    pub places: Vec<crate::unlearning::Place>,
    /// RFC 3339: the erasure deadline (absent: none).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub erase_by: Option<String>,
    /// Past `erase_by` and not `erased`.
    pub overdue: bool,
    /// RFC 3339: when the places were checked.
    pub checked_at: String,
    /// The places in the earlier shape: shards whose WAL (on some copy)
    /// holds a deleted vector, segments (on some copy) holding a deleted
    /// row, snapshots holding one.
    pub present_in: PresentIn,
    pub log_positions: Vec<LogPosition>,
    pub ids: Vec<u64>,
    pub stale_pruning_weights: usize,
}

/// `GET /v1/collections/{c}/unlearning` query.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnlearningQuery {
    pub overdue: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UnlearningList {
    pub receipts: Vec<UnlearningStatus>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    pub kind: String,
    // prune
    pub mode: Option<String>,
    pub k: Option<usize>,
    pub threshold: Option<u32>,
    // ingest
    pub uri: Option<String>,
    pub columns: Option<engram_ingest::rows::Columns>,
    pub max_reject_share: Option<f64>,
    pub batch_rows: Option<usize>,
    /// Build sealed segments straight from the rows (the bulk path).
    pub bulk: Option<bool>,
    /// Bulk path: rows per shard segment (default: the seal threshold).
    pub segment_rows: Option<usize>,
    // train_head
    /// The head re-ranker to train.
    pub reranker: Option<String>,
    /// Training parameters over the re-ranker's configured ones.
    pub training: Option<serde_json::Map<String, serde_json::Value>>,
}

/// `POST /v1/collections/{c}/reshard`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReshardRequest {
    /// The shard count to reach (1 to 4096, not the current one).
    pub shards: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobList {
    pub jobs: Vec<JobStatus>,
}
