//! Segments over Microsoft's DiskANN crates.
//!
//! - [`sealed::SealedSegment`]: an SSD-resident DiskANN index (graph and full
//!   vectors in 4 KiB sectors, PQ codes in RAM, beam search) plus what the
//!   crates lack: external u64 ids, a persisted delete bitmap, a manifest
//!   with the checksum of every file, compaction by rebuild.
//! - [`reader`]: io_uring + O_DIRECT where the platform allows, a `pread`
//!   reader where it does not (tmpfs, seccomp), chosen automatically.

pub mod cache;
pub mod codebook;
pub mod growing;
pub mod manifest;
mod off_runtime_drop;
pub mod reader;
pub mod sealed;

use diskann::ANNError;
use diskann::graph::config;
use diskann_providers::model::graph::provider::async_::inmem::DefaultProviderParameters;
use diskann_vector::distance::Metric as DiskMetric;

use engram_core::config::IndexParams;

use crate::error::{IndexError, Result};

/// The Vamana graph settings shared by growing and sealed segments: both
/// search by squared L2 (cosine collections store unit vectors).
fn graph_config(params: &IndexParams) -> Result<config::Config> {
    config::Builder::new_with(
        params.max_degree as usize,
        config::MaxDegree::default_slack(),
        params.build_list_size as usize,
        DiskMetric::L2.into(),
        |b| {
            b.alpha(params.alpha);
            b.saturate_after_prune(true);
        },
    )
    .build()
    .map_err(|e| IndexError::DiskAnn(e.to_string()))
}

/// DiskANN's in-memory provider settings for a graph of up to `max_points`
/// rows of `dim` floats (squared L2, one frozen start point), shared by the
/// growing segment and the sealed build.
fn provider_parameters(
    config: &config::Config,
    dim: usize,
    max_points: usize,
) -> DefaultProviderParameters {
    DefaultProviderParameters {
        max_points,
        frozen_points: diskann::utils::ONE,
        dim,
        metric: DiskMetric::L2,
        prefetch_lookahead: None,
        prefetch_cache_line_level: None,
        max_degree: config.max_degree_u32().get(),
    }
}

impl From<ANNError> for IndexError {
    fn from(e: ANNError) -> Self {
        IndexError::DiskAnn(e.to_string())
    }
}
