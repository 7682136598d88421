//! The shard replicas a cluster worker hosts, whatever their role: the
//! placement in the Raft shard map says which one is primary.

use parking_lot::{Mutex, RwLock};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use engram_core::CollectionSpec;
use engram_core::config::IndexParams;
use engram_core::placement::ShardPlacement;

use crate::error::Result;
use crate::shard::{Compaction, Shard};
use crate::wire::RpcError;

/// One hosted copy of a shard.
pub struct Replica {
    pub spec: CollectionSpec,
    pub shard: Shard,
    /// Held by a primary from its local write until every in-sync replica
    /// has the write (and during a full transfer), so that replicas apply
    /// writes in the primary's order and a transfer misses none.
    pub order: tokio::sync::Mutex<()>,
    /// The newest placement seen for this shard.
    placement: Mutex<ShardPlacement>,
    /// Held while the shard's files are rewritten (compaction) or the copy
    /// is replaced by a transfer; `true` once replaced, after which this
    /// object's directory belongs to its successor and must not be touched.
    retired: Mutex<bool>,
    /// Set when this copy failed to apply a write its primary sent: it
    /// lacks a write that may have been acknowledged (the primary marks it
    /// out of sync), so it answers no reads until a transfer replaces it.
    missed_write: AtomicBool,
}

impl Replica {
    /// Refuses reads from a copy that may lack acknowledged writes: one
    /// that failed to apply a replicated write, or one the newest placement
    /// it knows lists as out of sync. A coordinator whose shard map lags
    /// behind the Raft log could still route a read here; this is what
    /// stops it seeing a deleted item again (the coordinator tries another
    /// copy).
    pub fn check_readable(&self, me: u64) -> std::result::Result<(), RpcError> {
        if self.missed_write.load(Ordering::SeqCst) {
            return Err(RpcError::Unavailable(format!(
                "this copy of shard {} missed a replicated write and waits for a transfer",
                self.shard.number()
            )));
        }
        let placement = self.placement.lock();
        if placement.primary != me && !placement.replicas.contains(&me) {
            return Err(RpcError::Unavailable(format!(
                "this copy of shard {} is out of sync at epoch {}",
                self.shard.number(),
                placement.epoch
            )));
        }
        Ok(())
    }

    /// Records that a replicated write failed here (see `check_readable`).
    pub fn mark_missed_write(&self) {
        self.missed_write.store(true, Ordering::SeqCst);
    }

    /// Compacts this copy unless a transfer replaced it meanwhile (then
    /// there is nothing to do: the successor starts without tombstones).
    pub fn compact(&self, min_deleted_fraction: f64) -> Result<Compaction> {
        let retired = self.retired.lock();
        if *retired {
            return Ok(Compaction::default());
        }
        self.shard.compact(min_deleted_fraction)
    }

    pub fn placement(&self) -> ShardPlacement {
        self.placement.lock().clone()
    }

    /// Adopts `placement` unless it is older than the one known: callers
    /// acting on an old shard map are refused with the current epoch.
    pub fn check_epoch(&self, placement: &ShardPlacement) -> std::result::Result<(), RpcError> {
        let mut known = self.placement.lock();
        if placement.epoch < known.epoch {
            return Err(RpcError::StaleEpoch {
                sent: placement.epoch,
                current: known.epoch,
            });
        }
        *known = placement.clone();
        Ok(())
    }

    /// Records a newer placement (from the Raft state or a command result).
    pub fn observe(&self, placement: &ShardPlacement) {
        let mut known = self.placement.lock();
        if placement.epoch > known.epoch {
            *known = placement.clone();
        }
    }
}

pub struct ReplicaHost {
    dir: PathBuf,
    params: IndexParams,
    replicas: RwLock<BTreeMap<(String, u32), Arc<Replica>>>,
    /// Held while a shard directory is opened or replaced, so that two
    /// callers (the agent and a transfer) never open the same one at once.
    opening: Mutex<()>,
}

fn shard_dir(dir: &Path, collection: &str, shard: u32) -> PathBuf {
    dir.join(collection)
        .join("shards")
        .join(format!("{shard:04}"))
}

impl ReplicaHost {
    /// Replicas live under `<data_dir>/collections/<c>/shards/<nnnn>`, the
    /// embedded node's layout.
    pub fn new(data_dir: &Path, params: IndexParams) -> Result<ReplicaHost> {
        let dir = data_dir.join("collections");
        fs_err::create_dir_all(&dir)?;
        Ok(ReplicaHost {
            dir,
            params,
            replicas: RwLock::new(BTreeMap::new()),
            opening: Mutex::new(()),
        })
    }

    pub fn get(&self, collection: &str, shard: u32) -> std::result::Result<Arc<Replica>, RpcError> {
        self.replicas
            .read()
            .get(&(collection.to_string(), shard))
            .cloned()
            .ok_or_else(|| RpcError::NotHosted {
                collection: collection.to_string(),
                shard,
            })
    }

    /// Opens (creating if new) the replica of `shard`; blocking I/O.
    pub fn ensure(
        &self,
        spec: &CollectionSpec,
        shard: u32,
        placement: &ShardPlacement,
    ) -> Result<Arc<Replica>> {
        if let Ok(replica) = self.get(&spec.name, shard) {
            replica.observe(placement);
            return Ok(replica);
        }
        let _opening = self.opening.lock();
        if let Ok(replica) = self.get(&spec.name, shard) {
            replica.observe(placement);
            return Ok(replica);
        }
        let opened = self.open(spec, shard, placement)?;
        self.replicas
            .write()
            .insert((spec.name.clone(), shard), opened.clone());
        Ok(opened)
    }

    fn open(
        &self,
        spec: &CollectionSpec,
        shard: u32,
        placement: &ShardPlacement,
    ) -> Result<Arc<Replica>> {
        let shard_store = Shard::open(
            &shard_dir(&self.dir, &spec.name, shard),
            shard,
            spec.dim,
            spec.metric,
            &self.params,
        )?;
        Ok(Arc::new(Replica {
            spec: spec.clone(),
            shard: shard_store,
            order: tokio::sync::Mutex::new(()),
            placement: Mutex::new(placement.clone()),
            retired: Mutex::new(false),
            missed_write: AtomicBool::new(false),
        }))
    }

    /// Replaces the replica of `shard` by an empty one (the start of a full
    /// transfer); the old files are removed.
    pub fn reset(
        &self,
        spec: &CollectionSpec,
        shard: u32,
        placement: &ShardPlacement,
    ) -> Result<Arc<Replica>> {
        let _opening = self.opening.lock();
        self.retire(&spec.name, shard)?;
        let key = (spec.name.clone(), shard);
        let fresh = self.open(spec, shard, placement)?;
        self.replicas.write().insert(key, fresh.clone());
        Ok(fresh)
    }

    /// Moves the files of an unopened copy of `shard` (corrupted) to
    /// `<data_dir>/quarantine/<collection>-<shard>-<unix ms>`; returns where.
    pub fn quarantine(&self, collection: &str, shard: u32) -> Result<PathBuf> {
        let _opening = self.opening.lock();
        self.replicas
            .write()
            .remove(&(collection.to_string(), shard));
        let from = shard_dir(&self.dir, collection, shard);
        let root = self.dir.parent().unwrap_or(&self.dir).join("quarantine");
        fs_err::create_dir_all(&root)?;
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let to = root.join(format!("{collection}-{shard:04}-{millis}"));
        fs_err::rename(&from, &to)?;
        Ok(to)
    }

    /// Every hosted replica.
    /// Stops hosting one shard (its copy moved elsewhere) and deletes its
    /// files, after any compaction of it finished.
    pub fn drop_shard(&self, collection: &str, shard: u32) -> Result<()> {
        let _opening = self.opening.lock();
        self.retire(collection, shard)
    }

    /// Forgets one shard copy and deletes its files, once any compaction
    /// of it has finished; the old object is marked retired first, since
    /// its directory path may soon belong to a successor. The caller holds
    /// `opening`.
    fn retire(&self, collection: &str, shard: u32) -> Result<()> {
        let old = self
            .replicas
            .write()
            .remove(&(collection.to_string(), shard));
        let _retired = old.as_ref().map(|r| {
            let mut retired = r.retired.lock();
            *retired = true;
            retired
        });
        let dir = shard_dir(&self.dir, collection, shard);
        if dir.exists() {
            let trash = dir.with_extension(format!("old-{}", std::process::id()));
            fs_err::rename(&dir, &trash)?;
            fs_err::remove_dir_all(&trash)?;
        }
        Ok(())
    }

    pub fn all(&self) -> Vec<Arc<Replica>> {
        self.replicas.read().values().cloned().collect()
    }

    /// Hosted shards of `collection`.
    pub fn shards_of(&self, collection: &str) -> BTreeSet<u32> {
        self.replicas
            .read()
            .keys()
            .filter(|(c, _)| c == collection)
            .map(|(_, s)| *s)
            .collect()
    }

    /// Stops hosting `collection` and deletes its files.
    pub fn drop_collection(&self, collection: &str) -> Result<()> {
        let _opening = self.opening.lock();
        self.replicas.write().retain(|(c, _), _| c != collection);
        let dir = self.dir.join(collection);
        if dir.exists() {
            fs_err::remove_dir_all(&dir)?;
        }
        Ok(())
    }

    /// Names of collections with files on disk.
    pub fn collections_on_disk(&self) -> Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs_err::read_dir(&self.dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                names.push(entry.file_name().to_string_lossy().to_string());
            }
        }
        Ok(names)
    }
}
