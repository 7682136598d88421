//! A shard as a resharding target: it is filled with rows copied from the
//! old layout while the writes that reach the old layout also reach it.
//!
//! A copied row is an old version by the time it arrives: any write the
//! target took since (an upsert, or a delete) is newer. So a copied row is
//! applied only if its id is neither live here nor deleted here since
//! receiving began, and deletes are remembered as tombstones until the
//! resharding finishes. Whatever order copies and writes arrive in, the
//! target ends holding the newest version of every row, and no deleted row
//! comes back. Tombstones survive restarts: the WAL's delete records are
//! replayed into them, and a rotation moves them into `shard.bin`.

use std::collections::HashSet;

use engram_index::SegmentIndex;
use engram_store::{WalOp, WalRecord};

use super::{ScannedItem, Shard, Stamp};
use crate::error::Result;

impl Shard {
    /// Whether this shard is a resharding target being filled.
    pub fn is_receiving(&self) -> bool {
        self.state.read().receiving.is_some()
    }

    /// The tombstones of a receiving shard (`None` if it is not receiving),
    /// for a transfer that rebuilds another copy of it.
    pub fn tombstones_if_receiving(&self) -> Option<Vec<u64>> {
        let _writes = self.wal.lock();
        let state = self.state.read();
        state.receiving.as_ref().map(|t| {
            let mut ids: Vec<u64> = t.iter().copied().collect();
            ids.sort_unstable();
            ids
        })
    }

    /// Makes this shard a resharding target (no-op if it is one). Called
    /// before it takes its first write.
    pub fn start_receiving(&self) -> Result<()> {
        let mut wal = self.wal.lock();
        if self.state.read().receiving.is_some() {
            return Ok(());
        }
        self.state.write().receiving = Some(HashSet::new());
        let mut manifest = wal.manifest.clone();
        manifest.receiving = true;
        self.commit_manifest(&mut wal, manifest)
    }

    /// Ends the receiving mode: the resharding is complete and this shard
    /// now serves on its own; its tombstones are forgotten.
    pub fn finish_receiving(&self) -> Result<()> {
        let mut wal = self.wal.lock();
        if self.state.read().receiving.is_none() {
            return Ok(());
        }
        self.state.write().receiving = None;
        let mut manifest = wal.manifest.clone();
        manifest.receiving = false;
        self.commit_manifest(&mut wal, manifest)
    }

    /// Applies the copied `rows` whose ids are neither live here nor
    /// deleted since receiving began; returns the upserts it logged (what
    /// a primary replicates: its replicas apply them as they are).
    /// Refused once the shard no longer receives (its resharding finished
    /// or was dropped): a late copy must not bring back a row deleted since.
    pub fn copy_in(&self, rows: Vec<ScannedItem>) -> Result<WalRecord> {
        self.copy_in_at(rows, Stamp::Next)
    }

    /// [`Self::copy_in`] at the history position `stamp` gives.
    pub fn copy_in_at(&self, rows: Vec<ScannedItem>, stamp: Stamp) -> Result<WalRecord> {
        let mut wal = self.wal.lock();
        let ops: WalRecord = {
            let state = self.state.read();
            let Some(tombstones) = state.receiving.as_ref() else {
                return Err(crate::WorkerError::Invalid(format!(
                    "shard {} is not a resharding target being filled; copied rows refused",
                    self.number
                )));
            };
            rows.into_iter()
                .filter(|row| !state.items.contains(row.id) && !tombstones.contains(&row.id))
                .map(|row| WalOp::Upsert {
                    id: row.id,
                    label: row.label,
                    weight: row.weight,
                    source: row.source,
                    vector: row.vector,
                    thumbnail: row.thumbnail,
                })
                .collect()
        };
        if ops.is_empty() {
            return Ok(ops);
        }
        self.check_dimensions(&ops)?;
        self.append_locked(&mut wal, stamp, &ops)?;
        self.state.write().apply(&ops)?;
        let full = self.state.read().growing.len() >= self.params.seal_threshold;
        if full && let Err(error) = self.seal_locked(&mut wal) {
            tracing::error!(shard = self.number, %error, "sealing a resharding target failed; its rows stay in the WAL");
        }
        Ok(ops)
    }

    /// Deletes `ids` whether or not they are live here, so that a copy
    /// arriving later cannot bring them back; returns the deletes logged.
    pub fn delete_receiving(&self, ids: &[u64]) -> Result<WalRecord> {
        self.delete_receiving_at(ids, Stamp::Next)
    }

    /// [`Self::delete_receiving`] at the history position `stamp` gives.
    pub fn delete_receiving_at(&self, ids: &[u64], stamp: Stamp) -> Result<WalRecord> {
        let mut wal = self.wal.lock();
        let unique: HashSet<u64> = ids.iter().copied().collect();
        let mut ids: Vec<u64> = unique.into_iter().collect();
        ids.sort_unstable();
        let ops: WalRecord = ids.iter().map(|id| WalOp::Delete { id: *id }).collect();
        if ops.is_empty() {
            return Ok(ops);
        }
        self.append_locked(&mut wal, stamp, &ops)?;
        self.state.write().apply(&ops)?;
        Ok(ops)
    }
}
