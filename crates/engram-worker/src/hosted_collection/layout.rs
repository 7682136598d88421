//! One shard layout of a collection: `spec.shards` shards in one directory,
//! ids routed to them by jump hash. A collection has one layout, and a
//! second while it is resharded.
//!
//! The layout a collection was created with lives in `shards/`; a layout
//! made by resharding to `n` shards lives in `shards-<n>/`. Counts are
//! unique among a collection's layouts at any time (resharding to the
//! current count is refused), so the count names the directory.

use fs_err as fs;
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use engram_core::CollectionSpec;
use engram_core::config::IndexParams;
use engram_core::shard::shard_of;
use engram_index::SegmentCache;
use engram_store::{WalOp, WalRecord};

use crate::error::Result;
use crate::shard::Shard;

const INITIAL_DIR: &str = "shards";

pub(crate) struct Layout {
    pub(crate) spec: CollectionSpec,
    pub(crate) dir: PathBuf,
    pub(crate) shards: Vec<Shard>,
}

/// The directory of a `shards`-shard layout made by resharding.
pub(crate) fn resharded_dir(collection_dir: &Path, shards: u32) -> PathBuf {
    collection_dir.join(format!("{INITIAL_DIR}-{shards}"))
}

/// Where the current layout of `shards` shards lives: its resharded
/// directory if there is one, else the one the collection was created with.
pub(crate) fn current_dir(collection_dir: &Path, shards: u32) -> PathBuf {
    let resharded = resharded_dir(collection_dir, shards);
    if resharded.exists() {
        resharded
    } else {
        collection_dir.join(INITIAL_DIR)
    }
}

/// Removes every layout directory but `keep` (leftovers of a resharding
/// that finished or was abandoned).
pub(crate) fn remove_other_layouts(collection_dir: &Path, keep: &[&Path]) -> Result<()> {
    if !collection_dir.exists() {
        return Ok(());
    }
    for entry in fs::read_dir(collection_dir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let is_layout = name == INITIAL_DIR
            || name
                .strip_prefix("shards-")
                .is_some_and(|n| n.parse::<u32>().is_ok());
        if is_layout && path.is_dir() && !keep.contains(&path.as_path()) {
            tracing::info!(layout = %path.display(), "removing a shard layout no longer served");
            fs::remove_dir_all(&path)?;
        }
    }
    Ok(())
}

impl Layout {
    /// Opens (creating where missing) the shards of `spec` in `dir`.
    pub(crate) fn open(
        dir: PathBuf,
        spec: CollectionSpec,
        params: &IndexParams,
        cache: &Arc<SegmentCache>,
    ) -> Result<Layout> {
        let shards = (0..spec.shards)
            .into_par_iter()
            .map(|n| {
                Shard::open_cached(
                    &dir.join(format!("{n:04}")),
                    n,
                    spec.dim,
                    spec.metric,
                    params,
                    cache.clone(),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Layout { spec, dir, shards })
    }

    pub(crate) fn shard_for(&self, id: u64) -> &Shard {
        &self.shards[shard_of(id, self.spec.shards) as usize]
    }

    /// `ops` split by the shard that holds each id.
    pub(crate) fn route(&self, ops: Vec<WalOp>) -> Vec<WalRecord> {
        let mut per_shard: Vec<WalRecord> = vec![Vec::new(); self.shards.len()];
        for op in ops {
            let id = match &op {
                WalOp::Upsert { id, .. } | WalOp::Delete { id } => *id,
            };
            per_shard[shard_of(id, self.spec.shards) as usize].push(op);
        }
        per_shard
    }

    /// Writes the shards in parallel, then seals the full ones. Each
    /// shard's part is atomic; if one shard fails the error is returned and
    /// the request was not acknowledged (other shards' parts may already be
    /// durable, as with any upsert retried by the client).
    pub(crate) fn write(&self, ops: Vec<WalOp>) -> Result<()> {
        let per_shard = self.route(ops);
        let full: Vec<bool> = self
            .shards
            .par_iter()
            .zip(per_shard)
            .map(|(shard, ops)| shard.write_unsealed(ops))
            .collect::<Result<_>>()?;
        // Seals run here, off rayon's threads (see `Shard::write_unsealed`).
        for (shard, full) in self.shards.iter().zip(full) {
            if full {
                shard.seal()?;
            }
        }
        Ok(())
    }

    pub(crate) fn items(&self) -> u64 {
        self.shards.iter().map(|s| s.len() as u64).sum()
    }
}
