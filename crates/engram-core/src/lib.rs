//! Engram's pure core.
//!
//! Everything here is deterministic and free of I/O and async so that the
//! rules that decide what the memory answers (distances, top-k, voting) can be
//! tested exhaustively and reused by every layer above.

pub mod collection;
pub mod config;
pub mod counterfactual;
pub mod curation;
pub mod deletion_log;
pub mod distance;
pub mod error;
pub mod file_name;
pub mod head;
pub mod merge_policy;
pub mod neighbor;
pub mod placement;
pub mod rebalance;
pub mod rerank;
pub mod reranker_config;
pub mod residency;
pub mod rng;
pub mod shard;
pub mod topk;
pub mod unlearning;
pub mod vector;
pub mod voting;

pub use collection::{CollectionSpec, validate_collection_name};
pub use counterfactual::{Counterfactual, counterfactual};
pub use curation::{
    Adjustment, Admission, AuditEntry, BlockedNeighbor, Curation, Intervention, PruningScores,
    PruningWeights,
};
pub use deletion_log::{DeletionLog, LoggedDeletion, SnapshotRecord};
pub use distance::Metric;
pub use error::{CoreError, Result};
pub use file_name::plain_file_name;
pub use head::{HeadTraining, LinearHead, MemoryVersion, TrainedHead};
pub use neighbor::{Neighbor, ScoredId};
pub use unlearning::{Receipt, Selector, ShardDeletion};
pub use voting::{Decision, VoteParams, VotedNeighbor, VotingRule, decide};
