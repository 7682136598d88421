//! The record of unlearning: what a delete request selected, where the
//! deleted items were physically, and the receipt that keeps both.
//!
//! Receipts are metadata (the Raft state machine in a cluster, checksummed
//! files on the embedded node); they name log positions and segment files,
//! never vectors.

use serde::{Deserialize, Serialize};

/// Where a shard's deleted items were physically, and the log position of
/// the delete: what an unlearning receipt records.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ShardDeletion {
    pub shard: u32,
    pub ids: Vec<u64>,
    /// The WAL generation and byte offset just after the delete record.
    pub wal_generation: u64,
    pub wal_offset: u64,
    /// Some deleted item was written since the last seal, so its vector is
    /// in this WAL generation.
    pub vectors_in_wal: bool,
    /// Sealed segments holding a row of some deleted item.
    pub segments: Vec<String>,
}

/// What a delete request selected.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Selector {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ids: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub label: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub source: Option<String>,
}

/// The durable record of one unlearning request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    pub receipt: u64,
    pub at: String,
    pub selector: Selector,
    pub deleted: usize,
    /// Per shard: the ids, the log position of the delete and where the
    /// items' vectors were physically when they were deleted.
    pub log: Vec<ShardDeletion>,
    /// Soft-pruning weights that had counted one of these items as a query.
    pub stale_pruning_weights: usize,
    /// RFC 3339: when every byte of the deleted items must be gone (the
    /// erasure deadline, `curation.erase_within_s` or the request's own);
    /// `None`: no deadline, the bytes go with compactions by policy.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub erase_by: Option<String>,
}

impl Receipt {
    /// The deleted ids, over all shards.
    pub fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.log.iter().flat_map(|d| d.ids.iter().copied())
    }
}
