//! The coordinator: Engram's public face.
//!
//! [`service::Engram`] implements every operation of the public API
//! independently of HTTP: it validates input, embeds images, routes items
//! to shards, merges per-shard top-k lists and lets neighbours vote.
//! [`api`] is the thin axum layer over it: parse, call, map the error.

pub mod admission;
pub mod api;
mod backend;
pub mod catalog;
pub mod cluster;
pub mod cluster_service;
mod curation_service;
mod curation_store;
pub mod dto;
pub mod error;
mod ingest_bulk;
pub mod ingest_job;
mod ingest_rejects;
mod job_takeover;
pub mod jobs;
pub mod meta;
pub mod metrics;
mod query_service;
pub mod rebalance_service;
mod receipt_watch;
pub mod rerank;
mod reshard_service;
pub mod service;
mod snapshot_erasure;
pub mod snapshot_service;
pub mod token;
pub mod unlearning;

pub use api::{router, serve};
pub use error::{ApiError, ErrorCode};
pub use service::Engram;
