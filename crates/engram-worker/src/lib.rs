//! The shard worker: hosts the shards of collections on local disk and
//! answers writes and searches for them. A shard is a growing segment (an
//! in-memory DiskANN graph) behind a write-ahead log plus the sealed DiskANN
//! segments it produced.
//!
//! In the embedded node a [`Worker`] hosts every shard of its collections
//! and is called directly. In a cluster a [`WorkerNode`] hosts the replicas
//! the Raft shard map places on it and serves them over internal RPC
//! ([`server`]), following the map through heartbeats ([`agent`]).

pub mod agent;
mod arrivals;
pub mod catch_up;
pub mod collection_api;
mod erasure_rpc;
pub mod error;
pub mod hosted_collection;
pub mod index_metrics;
pub mod lease;
pub mod metrics;
pub mod node;
pub mod presence;
pub mod replicas;
pub mod rpc_client;
pub mod segment_upload;
pub mod server;
pub mod shard;
pub mod ship;
mod ship_stream;
pub mod wire;
pub mod worker;

pub use collection_api::ShardedCollection;
pub use engram_index::SegmentCache;
pub use error::{Result, WorkerError};
pub use hosted_collection::{
    CollectionStats, HostedCollection, ReshardHooks, ReshardReport, SearchResults,
};
pub use node::{Membership, WorkerNode};
pub use presence::{CopyPresence, Leftover, PresenceReport, QuarantinedCopy};
pub use shard::{
    AttachedSegment, Compaction, ItemView, Presence, ScannedItem, SearchFilter, SegmentStats,
    Shard, ShardDeletion, ShardHits,
};
pub use worker::Worker;
