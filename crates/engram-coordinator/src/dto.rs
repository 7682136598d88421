//! The JSON shapes of the public API (DESIGN.md section 7.1). Unknown
//! fields are refused so that a misspelt parameter is an error, not a
//! silently ignored default.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use engram_core::{Decision, Metric, VotingRule};

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
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompactRequest {
    pub min_deleted_fraction: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Compacted {
    pub segments_rewritten: usize,
    pub sealed_segments: usize,
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
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteItems {
    pub ids: Option<Vec<u64>>,
    pub label: Option<String>,
    pub source: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Deleted {
    pub deleted: usize,
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
}

impl SearchRequest {
    pub fn into_parts(self) -> (Query, Option<usize>, Option<u32>) {
        let query = Query {
            vector: self.vector,
            image: self.image,
            exclude_ids: self.exclude_ids,
        };
        (query, self.k, self.search_list_size)
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
