//! The shard worker: hosts the shards of collections on local disk and
//! answers writes and searches for them. A shard is a growing segment (an
//! exact in-memory index over full vectors) behind a write-ahead log; sealed
//! DiskANN segments join it in the next stage.

pub mod error;
pub mod hosted_collection;
pub mod shard;
pub mod worker;

pub use error::{Result, WorkerError};
pub use hosted_collection::{CollectionStats, HostedCollection, SearchResults};
pub use shard::{
    Admit, ItemView, Presence, ScannedItem, SearchFilter, Shard, ShardDeletion, ShardHits,
};
pub use worker::Worker;
