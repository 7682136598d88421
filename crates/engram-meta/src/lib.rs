//! Engram's cluster metadata (DESIGN.md 4): members, collections and shard
//! maps in an openraft state machine, with its log and snapshots on
//! checksummed files and Raft RPC over HTTP on the internal port.

// openraft's traits fix `StorageError` (224 bytes) as the error type; the
// helpers feeding them return it too rather than boxing and unboxing.
#![allow(clippy::result_large_err)]

pub mod access;
pub mod error;
pub mod journal;
pub mod log_store;
pub mod network;
pub mod node;
pub mod request_id;
pub mod rpc;
pub mod serve;
pub mod shared;
pub mod state;
pub mod state_machine;
pub mod tls;
pub mod types;

pub use access::ClusterAccess;
pub use error::{MetaError, Result};
pub use log_store::LogStore;
pub use node::{MembershipChange, MetaNode, RaftTiming, WriteOutcome};
pub use shared::Shared;
pub use state::{
    ClusterState, CollectionCuration, CollectionMeta, JobRecord, SegmentFile, SegmentRecord,
    WorkerInfo,
};
pub use state_machine::StateMachineStore;
pub use types::{Command, CommandResult, NodeId, Raft, TypeConfig};
