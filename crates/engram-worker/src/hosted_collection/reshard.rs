//! Online resharding of a collection on this node: `n` shards become `m`
//! while writes and queries go on.
//!
//! 1. **Begin.** The target layout (`m` shards, each receiving: see
//!    `shard/receiving.rs`) is created, `reshard.json` records it, and,
//!    between two writes (the gate), every later write starts reaching the
//!    target as well as the current layout.
//! 2. **Copy.** Every shard of the current layout is scanned and its rows
//!    are copied into the target shards jump hash names for `m`. A copied
//!    row is older than anything the target took since step 1, so it only
//!    lands where the target has seen no write or delete of its id.
//! 3. **Flip.** Between two writes: the caller commits the new shard
//!    count (the embedded catalog), the target becomes the current layout,
//!    then the old layout's files are deleted.
//!
//! Nothing acknowledged is lost and nothing deleted comes back at any
//! step; a kill at any point leaves files from which opening picks up:
//! before the commit the copy is simply run again (copies are idempotent),
//! after it the flip is completed. Jump hash moves only the rows that must
//! move, but every row is rewritten into its new shard's files here.

use fs_err as fs;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use engram_core::CollectionSpec;
use engram_core::collection::MAX_SHARDS;
use engram_core::config::IndexParams;
use engram_core::shard::shard_of;
use engram_index::SegmentCache;
use engram_store::checksummed;

use super::HostedCollection;
use super::layout::{Layout, current_dir, remove_other_layouts, resharded_dir};
use crate::error::{Result, WorkerError};
use crate::shard::ScannedItem;

const MARKER: &str = "reshard.json";

/// What `reshard.json` records while a resharding is under way.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Marker {
    target: u32,
}

/// What a resharding reports to its caller as it runs.
pub trait ReshardHooks: Sync {
    /// Rows copied (or found newer in the target) so far, of `total`.
    fn progress(&self, done: u64, total: u64);
    /// Whether to stop (the target is then dropped).
    fn cancelled(&self) -> bool;
    /// Makes the new shard count durable where the collection is listed:
    /// the commit point of the flip. Called between two writes.
    fn commit(&self, spec: &CollectionSpec) -> Result<()>;
}

/// What a finished resharding did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReshardReport {
    pub from_shards: u32,
    pub to_shards: u32,
    /// Rows read from the old layout.
    pub rows_read: u64,
    /// Rows written into the target by the copy.
    pub rows_copied: u64,
    /// Rows the target already held newer (written or deleted meanwhile).
    pub rows_skipped: u64,
    pub seconds: f64,
}

fn read_marker(dir: &Path) -> Result<Option<Marker>> {
    let path = dir.join(MARKER);
    if !path.exists() {
        return Ok(None);
    }
    let bytes = checksummed::read_verified(&path)?;
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        WorkerError::Store(engram_store::StoreError::Corrupted {
            path,
            offset: 0,
            reason: e.to_string(),
        })
    })
}

fn write_marker(dir: &Path, marker: Marker) -> Result<()> {
    checksummed::write_atomic(
        &dir.join(MARKER),
        &serde_json::to_vec(&marker).expect("serialisable"),
    )?;
    Ok(())
}

fn remove_marker(dir: &Path) -> Result<()> {
    let path = dir.join(MARKER);
    if path.exists() {
        fs::remove_file(&path)?;
        checksummed::sync_dir(dir)?;
    }
    Ok(())
}

/// Opens a collection's layouts as its files left them: the current one,
/// and the target of a resharding under way. A resharding whose flip was
/// committed (the catalog names the target's count) is completed here.
pub(super) fn open_layouts(
    dir: &Path,
    spec: CollectionSpec,
    params: &IndexParams,
    cache: &Arc<SegmentCache>,
) -> Result<(Layout, Option<Layout>)> {
    let marker = read_marker(dir)?;
    let current_path = current_dir(dir, spec.shards);
    let current = Layout::open(current_path.clone(), spec.clone(), params, cache)?;
    match marker {
        Some(marker) if marker.target == spec.shards => {
            // The flip was committed; finish it.
            for shard in &current.shards {
                shard.finish_receiving()?;
            }
            remove_marker(dir)?;
            remove_other_layouts(dir, &[&current_path])?;
            Ok((current, None))
        }
        Some(marker) => {
            let target_path = resharded_dir(dir, marker.target);
            remove_other_layouts(dir, &[&current_path, &target_path])?;
            let target_spec = CollectionSpec {
                shards: marker.target,
                ..spec
            };
            let target = Layout::open(target_path, target_spec, params, cache)?;
            for shard in &target.shards {
                shard.start_receiving()?;
            }
            tracing::info!(collection = %current.spec.name, from = current.spec.shards, to = marker.target, "a resharding was under way; its target takes writes again");
            Ok((current, Some(target)))
        }
        None => {
            remove_other_layouts(dir, &[&current_path])?;
            Ok((current, None))
        }
    }
}

/// Deletes `ids` in the target layout whether or not it holds them yet.
pub(super) fn delete_in_target(target: &Layout, ids: &[u64]) -> Result<()> {
    let mut per_shard: Vec<Vec<u64>> = vec![Vec::new(); target.shards.len()];
    for id in ids {
        per_shard[shard_of(*id, target.spec.shards) as usize].push(*id);
    }
    for (shard, ids) in target.shards.iter().zip(per_shard) {
        if !ids.is_empty() {
            shard.delete_receiving(&ids)?;
        }
    }
    Ok(())
}

impl HostedCollection {
    /// The shard count a resharding under way goes to.
    pub fn reshard_target(&self) -> Option<u32> {
        self.target().map(|t| t.spec.shards)
    }

    /// Reshards the collection to `shards` shards online (see the module
    /// docs), or finishes the resharding to `shards` that a restart
    /// interrupted. Blocking; long.
    pub fn reshard(&self, shards: u32, hooks: &dyn ReshardHooks) -> Result<ReshardReport> {
        let _one = self.resharding.try_lock().ok_or_else(|| {
            WorkerError::Invalid(format!(
                "collection `{}` is already being resharded",
                self.layout().spec.name
            ))
        })?;
        let started = Instant::now();
        let target = self.begin(shards)?;
        let from = self.layout().spec.shards;
        let copied = match self.copy_into(&target, hooks) {
            Ok(counts) => counts,
            Err(error) => {
                if hooks.cancelled() {
                    self.abandon()?;
                }
                return Err(error);
            }
        };
        self.flip(&target, hooks)?;
        Ok(ReshardReport {
            from_shards: from,
            to_shards: shards,
            rows_read: copied.0,
            rows_copied: copied.1,
            rows_skipped: copied.0 - copied.1,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// Step 1: the target layout, taking writes from here on.
    fn begin(&self, shards: u32) -> Result<Arc<Layout>> {
        if let Some(target) = self.target() {
            if target.spec.shards == shards {
                return Ok(target);
            }
            return Err(WorkerError::Invalid(format!(
                "collection `{}` is being resharded to {} shards; wait for it or cancel its job",
                target.spec.name, target.spec.shards
            )));
        }
        let spec = self.layout().spec.clone();
        if shards == 0 || shards > MAX_SHARDS {
            return Err(WorkerError::Invalid(format!(
                "shards must be between 1 and {MAX_SHARDS}, got {shards}"
            )));
        }
        if shards == spec.shards {
            return Err(WorkerError::Invalid(format!(
                "collection `{}` already has {shards} shards",
                spec.name
            )));
        }
        let path = resharded_dir(&self.dir, shards);
        if path.exists() {
            fs::remove_dir_all(&path)?;
        }
        let target = Layout::open(
            path,
            CollectionSpec { shards, ..spec },
            &self.params,
            &self.cache,
        )?;
        for shard in &target.shards {
            shard.start_receiving()?;
        }
        write_marker(&self.dir, Marker { target: shards })?;
        let target = Arc::new(target);
        let _writes = self.gate.write();
        *self.target.write() = Some(target.clone());
        tracing::info!(collection = %target.spec.name, to = shards, "resharding: writes reach the target layout");
        Ok(target)
    }

    /// Step 2: every row of the current layout copied into the target;
    /// returns (rows read, rows copied).
    fn copy_into(&self, target: &Layout, hooks: &dyn ReshardHooks) -> Result<(u64, u64)> {
        let current = self.layout();
        let total = current.items();
        let (mut read, mut copied) = (0u64, 0u64);
        hooks.progress(0, total);
        for shard in &current.shards {
            shard.scan(&mut |rows: Vec<ScannedItem>| {
                if hooks.cancelled() {
                    return Err(WorkerError::Invalid("resharding cancelled".into()));
                }
                read += rows.len() as u64;
                let mut per_target: Vec<Vec<ScannedItem>> = vec![Vec::new(); target.shards.len()];
                for row in rows {
                    per_target[shard_of(row.id, target.spec.shards) as usize].push(row);
                }
                for (shard, rows) in target.shards.iter().zip(per_target) {
                    if !rows.is_empty() {
                        copied += shard.copy_in(rows)?.len() as u64;
                    }
                }
                hooks.progress(read, total.max(read));
                Ok(())
            })?;
        }
        Ok((read, copied))
    }

    /// Step 3: the target becomes the current layout.
    fn flip(&self, target: &Arc<Layout>, hooks: &dyn ReshardHooks) -> Result<()> {
        let old = {
            let _writes = self.gate.write();
            hooks.commit(&target.spec)?;
            let old = std::mem::replace(&mut *self.current.write(), target.clone());
            *self.target.write() = None;
            old
        };
        for shard in &target.shards {
            shard.finish_receiving()?;
        }
        remove_marker(&self.dir)?;
        let keep = target.dir.clone();
        drop(old);
        remove_other_layouts(&self.dir, &[&keep])?;
        self.cache.rebalance();
        tracing::info!(collection = %target.spec.name, shards = target.spec.shards, "resharding finished");
        Ok(())
    }

    /// Drops a resharding's target: writes reach the current layout only.
    pub fn abandon(&self) -> Result<()> {
        let target = {
            let _writes = self.gate.write();
            self.target.write().take()
        };
        remove_marker(&self.dir)?;
        if let Some(target) = target {
            let path = target.dir.clone();
            drop(target);
            if path.exists() {
                fs::remove_dir_all(&path)?;
            }
            tracing::info!(collection = %self.layout().spec.name, "resharding abandoned; its target layout is deleted");
        }
        self.cache.rebalance();
        Ok(())
    }
}
