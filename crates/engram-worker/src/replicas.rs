//! The shard replicas a cluster worker hosts, whatever their role: the
//! placement in the Raft shard map says which one is primary.

use parking_lot::{Mutex, RwLock};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use engram_core::CollectionSpec;
use engram_core::config::IndexParams;
use engram_core::merge_policy::CompactOptions;
use engram_core::placement::{ShardPlacement, in_sync_shrank};
use engram_index::SegmentCache;

use crate::error::Result;
use crate::lease::AckHold;
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
    /// A primary takes no writes while its known placement is older than
    /// this epoch: set when a placement change it asked Raft for has an
    /// unknown outcome (see [`Replica::fence_writes_until`]).
    write_fence: AtomicU64,
    /// When this copy, as primary, may acknowledge writes again (see
    /// [`crate::lease`]).
    pub ack_hold: AckHold,
    /// Replicas that may lack writes this copy applied as primary: a write
    /// applied here whose replication failed and whose replica could not be
    /// marked out of sync (no Raft leader, a stale epoch). They are marked
    /// out of sync before this copy orders another write.
    suspects: Mutex<BTreeSet<u64>>,
    /// Whether this copy has ordered a write as primary since it was
    /// opened from existing files or became primary (true for a new
    /// copy). A primary that crashed between applying a write and
    /// replicating it, or a replica promoted while its old primary
    /// replicated a write to some copies only, cannot tell which replicas
    /// got what: before its first write it suspects them all, and those
    /// not at its position are marked out of sync and catch up from it.
    led: AtomicBool,
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

    /// Replicas that must be marked out of sync before this copy, as
    /// primary, orders its next write (see the field docs); the first call
    /// after opening suspects every replica in sync.
    pub fn suspects(&self, me: u64) -> Vec<u64> {
        let placement = self.placement.lock().clone();
        let mut suspects = self.suspects.lock();
        if placement.primary == me && !self.led.swap(true, Ordering::SeqCst) {
            suspects.extend(placement.replicas.iter().copied());
        }
        // Only replicas the placement still counts in sync matter.
        suspects.retain(|w| placement.replicas.contains(w));
        suspects.iter().copied().collect()
    }

    /// Records that `worker` may lack a write applied here.
    pub fn suspect(&self, worker: u64) {
        self.suspects.lock().insert(worker);
    }

    /// Records that `worker` was marked out of sync.
    pub fn clear_suspect(&self, worker: u64) {
        self.suspects.lock().remove(&worker);
    }

    /// Records that a replicated write failed here (see `check_readable`).
    pub fn mark_missed_write(&self) {
        self.missed_write.store(true, Ordering::SeqCst);
    }

    /// A delta brought this copy to its primary's position: it no longer
    /// lacks a write.
    pub fn clear_missed_write(&self) {
        self.missed_write.store(false, Ordering::SeqCst);
    }

    /// Compacts this copy unless a transfer replaced it meanwhile (then
    /// there is nothing to do: the successor starts without tombstones).
    pub fn compact(&self, options: CompactOptions) -> Result<Compaction> {
        let retired = self.retired.lock();
        if *retired {
            return Ok(Compaction::default());
        }
        self.shard.compact(options)
    }

    /// Runs `f` on this copy's shard unless a transfer or a move replaced
    /// the copy meanwhile: a request that found this object before it was
    /// retired must not write (a seal would create files in the directory
    /// that now belongs to its successor).
    pub fn unless_retired<T>(
        &self,
        f: impl FnOnce(&Shard) -> std::result::Result<T, RpcError>,
    ) -> std::result::Result<T, RpcError> {
        let retired = self.retired.lock();
        if *retired {
            return Err(RpcError::Unavailable(format!(
                "this copy of shard {} was replaced meanwhile",
                self.shard.number()
            )));
        }
        let result = f(&self.shard);
        drop(retired);
        result
    }

    pub fn placement(&self) -> ShardPlacement {
        self.placement.lock().clone()
    }

    /// Refuses this copy's writes as primary until it has seen a placement
    /// of at least `epoch`. A primary that asked Raft to mark a caught-up
    /// copy in sync and got no clear answer (a coordinator died, the retry
    /// found the epoch moved on) may be the only one not to know that the
    /// copy now counts as in sync: acknowledging a write without sending
    /// it there would leave an in-sync copy without it, and that copy could
    /// become primary. The agent's next state (or a request carrying a
    /// newer placement) lifts the fence.
    pub fn fence_writes_until(&self, epoch: u64) {
        self.write_fence.fetch_max(epoch, Ordering::SeqCst);
    }

    /// See [`Replica::fence_writes_until`].
    pub fn check_writable(&self) -> std::result::Result<(), RpcError> {
        let fence = self.write_fence.load(Ordering::SeqCst);
        let epoch = self.placement.lock().epoch;
        if epoch < fence {
            return Err(RpcError::Unavailable(format!(
                "shard {} waits for its placement at epoch {fence} (knows {epoch}); retry shortly",
                self.shard.number()
            )));
        }
        Ok(())
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
        self.adopt(&mut known, placement);
        Ok(())
    }

    /// Records a newer placement (from the Raft state or a command result).
    pub fn observe(&self, placement: &ShardPlacement) {
        let mut known = self.placement.lock();
        if placement.epoch > known.epoch {
            self.adopt(&mut known, placement);
        }
    }

    fn adopt(&self, known: &mut ShardPlacement, placement: &ShardPlacement) {
        // A resharding target's copy learning a new epoch may be learning
        // that its layout just became the collection's (the flip bumps every
        // epoch): copies of the old layout on workers that have not seen it
        // yet may answer reads for one more lease, so acknowledgements wait
        // one lease out, as when the in-sync set shrinks.
        let newer = placement.epoch > known.epoch;
        if in_sync_shrank(known, placement) || (newer && self.shard.is_receiving()) {
            self.ack_hold.hold();
        }
        if placement.primary != known.primary {
            // A new primary (this copy, perhaps) must settle the replicas
            // before its first write.
            self.led.store(false, Ordering::SeqCst);
        }
        *known = placement.clone();
    }
}

/// The newest transfer (see `InstallRequest::transfer`) that reset one
/// shard copy; locked while one of its chunks is applied.
pub type TransferSlot = Arc<Mutex<u64>>;

/// Whether a chunk of `transfer` may be applied to a copy last reset by
/// transfer `current` (updated when admitted): a reset starts a transfer
/// and must be newer than every one seen, a later chunk must belong to the
/// transfer that reset the copy last. A late chunk of an abandoned
/// catch-up would otherwise add stale rows to, or wipe, a rebuilt copy.
pub fn admit_transfer(
    current: &mut u64,
    shard: u32,
    transfer: u64,
    reset: bool,
) -> std::result::Result<(), RpcError> {
    let fresh = if reset {
        transfer > *current
    } else {
        transfer == *current
    };
    if !fresh {
        return Err(RpcError::Unavailable(format!(
            "a chunk of transfer {transfer} of shard {shard} arrived after transfer {current} started; refused"
        )));
    }
    *current = transfer;
    Ok(())
}

pub struct ReplicaHost {
    dir: PathBuf,
    params: IndexParams,
    /// The node's cache budget for sealed segments.
    cache: Arc<SegmentCache>,
    replicas: RwLock<BTreeMap<(String, u32), Arc<Replica>>>,
    /// Held while a shard directory is opened or replaced, so that two
    /// callers (the agent and a transfer) never open the same one at once.
    opening: Mutex<()>,
    /// The newest transfer (see `InstallRequest::transfer`) each shard
    /// copy here was reset by.
    transfers: Mutex<BTreeMap<(String, u32), TransferSlot>>,
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
        Self::with_cache(data_dir, params, SegmentCache::disk_only())
    }

    /// [`Self::new`] serving sealed segments within `cache`'s budget.
    pub fn with_cache(
        data_dir: &Path,
        params: IndexParams,
        cache: Arc<SegmentCache>,
    ) -> Result<ReplicaHost> {
        let dir = data_dir.join("collections");
        fs_err::create_dir_all(&dir)?;
        Ok(ReplicaHost {
            dir,
            params,
            cache,
            replicas: RwLock::new(BTreeMap::new()),
            opening: Mutex::new(()),
            transfers: Mutex::new(BTreeMap::new()),
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

    /// Opens (creating if new) the replica of `shard`; blocking I/O. A copy
    /// of a resharding's target layout is `receiving` (see
    /// `shard/receiving.rs`) before any request can reach it.
    /// Whether files of `shard`'s copy are on this worker's disk.
    pub fn copy_on_disk(&self, collection: &str, shard: u32) -> bool {
        Shard::exists(&shard_dir(&self.dir, collection, shard))
    }

    pub fn ensure(
        &self,
        spec: &CollectionSpec,
        shard: u32,
        placement: &ShardPlacement,
        receiving: bool,
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
        let opened = self.open(spec, shard, placement, receiving)?;
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
        receiving: bool,
    ) -> Result<Arc<Replica>> {
        let dir = shard_dir(&self.dir, &spec.name, shard);
        // A copy with files was running before (a restart): as primary it
        // cannot tell which of its writes its replicas got, nor which read
        // leases dropped copies still hold. A new copy (a new collection, a
        // transfer's reset) has neither doubt.
        let restarted = Shard::exists(&dir);
        let shard_store = Shard::open_cached(
            &dir,
            shard,
            spec.dim,
            spec.metric,
            &self.params,
            self.cache.clone(),
        )?;
        if receiving {
            shard_store.start_receiving()?;
        }
        self.cache.rebalance();
        Ok(Arc::new(Replica {
            spec: spec.clone(),
            shard: shard_store,
            order: tokio::sync::Mutex::new(()),
            placement: Mutex::new(placement.clone()),
            retired: Mutex::new(false),
            missed_write: AtomicBool::new(false),
            write_fence: AtomicU64::new(0),
            ack_hold: if restarted {
                AckHold::new()
            } else {
                AckHold::released()
            },
            suspects: Mutex::new(BTreeSet::new()),
            led: AtomicBool::new(!restarted),
        }))
    }

    /// Replaces the replica of `shard` by an empty one (the start of a full
    /// transfer); the old files are removed.
    pub fn reset(
        &self,
        spec: &CollectionSpec,
        shard: u32,
        placement: &ShardPlacement,
        receiving: bool,
    ) -> Result<Arc<Replica>> {
        let _opening = self.opening.lock();
        self.retire(&spec.name, shard)?;
        let key = (spec.name.clone(), shard);
        let fresh = self.open(spec, shard, placement, receiving)?;
        self.replicas.write().insert(key, fresh.clone());
        Ok(fresh)
    }

    /// Where the segment files shipped to this worker's copy of a shard are
    /// staged: `<data_dir>/shipping/<collection>/<nnnn>`, outside the shard
    /// directory (which a transfer's reset replaces), so a transfer started
    /// again after a kill resumes them.
    pub fn shipping_dir(&self, collection: &str, shard: u32) -> PathBuf {
        self.shipping_root(collection).join(format!("{shard:04}"))
    }

    /// What is staged for every shard of `collection` (see
    /// [`Self::shipping_dir`]).
    fn shipping_root(&self, collection: &str) -> PathBuf {
        self.dir
            .parent()
            .unwrap_or(&self.dir)
            .join("shipping")
            .join(collection)
    }

    /// The transfer bookkeeping of one shard copy (see [`admit_transfer`]).
    pub fn transfer_slot(&self, collection: &str, shard: u32) -> TransferSlot {
        self.transfers
            .lock()
            .entry((collection.to_string(), shard))
            .or_default()
            .clone()
    }

    /// Moves the files of an unopened copy of `shard` (corrupted) to
    /// `<data_dir>/quarantine/<collection>-<shard>-<unix ms>`; returns where.
    pub fn quarantine(&self, collection: &str, shard: u32) -> Result<PathBuf> {
        let _opening = self.opening.lock();
        self.replicas
            .write()
            .remove(&(collection.to_string(), shard));
        let from = shard_dir(&self.dir, collection, shard);
        let root = self.quarantine_root();
        fs_err::create_dir_all(&root)?;
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let to = root.join(format!("{collection}-{shard:04}-{millis}"));
        fs_err::rename(&from, &to)?;
        Ok(to)
    }

    /// The quarantined copies of `collection` on this worker (see
    /// [`Self::quarantine`]): shard and directory, oldest first.
    pub fn quarantined(&self, collection: &str) -> Result<Vec<(u32, PathBuf)>> {
        let root = self.quarantine_root();
        let mut found = Vec::new();
        if !root.exists() {
            return Ok(found);
        }
        for entry in fs_err::read_dir(&root)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().to_string();
            if let Some(shard) = quarantined_shard(&name, collection) {
                found.push((shard, entry.path()));
            }
        }
        found.sort();
        Ok(found)
    }

    /// Deletes quarantined copies of `collection`'s `shards` (an erasure
    /// deadline outranks keeping them for inspection); returns how many.
    pub fn remove_quarantined(&self, collection: &str, shards: &BTreeSet<u32>) -> Result<usize> {
        let mut removed = 0;
        for (shard, dir) in self.quarantined(collection)? {
            if shards.contains(&shard) {
                fs_err::remove_dir_all(&dir)?;
                tracing::warn!(collection, shard, dir = %dir.display(), "deleted a quarantined copy: it may hold unlearned rows");
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Shard directories of `collection`'s layouts on this disk (named by
    /// any layout key of the same public collection, `<name>` or
    /// `<name>@<generation>`) that hold files: (layout, shard directory,
    /// whether a hosted copy owns it). What the caller did not ask about
    /// is for it to judge: another layout's copies, an old layout's after
    /// a resharding, a copy being dropped or opened.
    pub fn layout_dirs(&self, collection: &str) -> Result<Vec<(String, PathBuf, bool)>> {
        let public = collection.split('@').next().unwrap_or(collection);
        let hosted: BTreeSet<(String, u32)> = self.replicas.read().keys().cloned().collect();
        let mut found = Vec::new();
        for layout in fs_err::read_dir(&self.dir)? {
            let layout = layout?;
            let key = layout.file_name().to_string_lossy().to_string();
            if !engram_core::collection::is_layout_of(&key, public) {
                continue;
            }
            let shards = layout.path().join("shards");
            if !shards.is_dir() {
                continue;
            }
            for entry in fs_err::read_dir(&shards)? {
                let entry = entry?;
                let Ok(shard) = entry.file_name().to_string_lossy().parse::<u32>() else {
                    continue;
                };
                if crate::shard::holds_files(&entry.path()) {
                    let owned = hosted.contains(&(key.clone(), shard));
                    found.push((key.clone(), entry.path(), owned));
                }
            }
        }
        found.sort();
        Ok(found)
    }

    fn quarantine_root(&self) -> PathBuf {
        self.dir.parent().unwrap_or(&self.dir).join("quarantine")
    }

    /// Every hosted replica.
    /// Stops hosting one shard (its copy moved elsewhere) and deletes its
    /// files, after any compaction of it finished.
    pub fn drop_shard(&self, collection: &str, shard: u32) -> Result<()> {
        let _opening = self.opening.lock();
        let shipping = self.shipping_dir(collection, shard);
        if shipping.exists() {
            fs_err::remove_dir_all(&shipping)?;
        }
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

    /// The node's cache budget for sealed segments.
    pub fn cache(&self) -> &Arc<SegmentCache> {
        &self.cache
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
        for dir in [self.dir.join(collection), self.shipping_root(collection)] {
            if dir.exists() {
                fs_err::remove_dir_all(&dir)?;
            }
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

/// The shard of a quarantined copy's directory name
/// (`<collection>-<nnnn>-<unix ms>`) when it is one of `collection`'s.
fn quarantined_shard(name: &str, collection: &str) -> Option<u32> {
    let rest = name.strip_prefix(collection)?.strip_prefix('-')?;
    let (shard, millis) = rest.split_once('-')?;
    millis.parse::<u128>().ok()?;
    shard.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_chunks_of_the_newest_transfer_are_admitted() {
        let mut current = 0;
        let mut admitted =
            |transfer, reset| admit_transfer(&mut current, 0, transfer, reset).is_ok();
        assert!(admitted(5, true));
        assert!(admitted(5, false));
        // A late chunk or reset of an earlier transfer, or a chunk of one
        // that never reset this copy, is refused.
        assert!(!admitted(4, true));
        assert!(!admitted(4, false));
        assert!(!admitted(7, false));
        assert!(admitted(6, true));
        assert!(!admitted(5, false));
        assert!(admitted(6, false));
    }

    #[test]
    fn a_primary_settles_its_replicas_before_its_first_write_and_after_a_failed_one() {
        let dir = tempfile::tempdir().unwrap();
        let host = ReplicaHost::new(dir.path(), IndexParams::default()).unwrap();
        let spec = CollectionSpec {
            name: "c".into(),
            dim: 3,
            metric: engram_core::Metric::L2,
            embedder: None,
            shards: 3,
            replication: 2,
            default_k: 10,
            default_rule: engram_core::VotingRule::Rank,
        };
        // A new copy leading: nothing to doubt.
        let fresh = host
            .ensure(&spec, 2, &ShardPlacement::new(1, 1, &[2], &[]), false)
            .unwrap();
        assert!(fresh.suspects(1).is_empty());
        assert_eq!(fresh.ack_hold.remaining(), None);
        host.ensure(&spec, 0, &ShardPlacement::new(1, 1, &[2], &[]), false)
            .unwrap();
        host.ensure(&spec, 1, &ShardPlacement::new(1, 2, &[1], &[]), false)
            .unwrap();
        drop(host);
        // Restarted as primary: its replica may lack a write it applied
        // just before it stopped.
        let host = ReplicaHost::new(dir.path(), IndexParams::default()).unwrap();
        let led = host
            .ensure(&spec, 0, &ShardPlacement::new(4, 1, &[2], &[]), false)
            .unwrap();
        assert!(led.ack_hold.remaining().is_some());
        assert_eq!(led.suspects(1), vec![2]);
        led.observe(&ShardPlacement::new(5, 1, &[], &[2]));
        assert!(led.suspects(1).is_empty(), "marked out of sync");
        led.observe(&ShardPlacement::new(6, 1, &[2], &[]));
        assert!(led.suspects(1).is_empty(), "caught up from this copy");
        // A replication that failed without the replica being marked.
        led.suspect(2);
        assert_eq!(led.suspects(1), vec![2]);
        // A copy restarted as a replica suspects nobody while it is one,
        // and its replicas once it leads.
        let follower = host
            .ensure(&spec, 1, &ShardPlacement::new(4, 2, &[1], &[]), false)
            .unwrap();
        assert!(follower.suspects(1).is_empty());
        follower.observe(&ShardPlacement::new(5, 1, &[3], &[2]));
        assert_eq!(follower.suspects(1), vec![3]);
        // A new copy (never restarted) promoted: its old primary may have
        // replicated its last write to some replicas only.
        let promoted = host
            .ensure(&spec, 2, &ShardPlacement::new(1, 2, &[1, 3], &[]), false)
            .unwrap();
        assert!(promoted.suspects(1).is_empty(), "not primary");
        promoted.observe(&ShardPlacement::new(2, 1, &[3], &[]));
        assert_eq!(promoted.suspects(1), vec![3]);
        promoted.clear_suspect(3);
        assert!(promoted.suspects(1).is_empty(), "settled once");
    }

    #[test]
    fn each_shard_copy_has_its_own_transfer_slot() {
        let dir = tempfile::tempdir().unwrap();
        let host = ReplicaHost::new(dir.path(), IndexParams::default()).unwrap();
        let zero = host.transfer_slot("c", 0);
        *zero.lock() = 9;
        assert_eq!(*host.transfer_slot("c", 0).lock(), 9);
        assert_eq!(*host.transfer_slot("c", 1).lock(), 0);
        assert_eq!(*host.transfer_slot("d", 0).lock(), 0);
    }

    #[test]
    fn quarantined_copies_are_found_by_collection_and_shard_only() {
        assert_eq!(
            quarantined_shard("faces-0003-1764900000000", "faces"),
            Some(3)
        );
        // A collection whose name extends another's is not that one's.
        assert_eq!(
            quarantined_shard("faces-x-0003-1764900000000", "faces"),
            None
        );
        assert_eq!(
            quarantined_shard("faces-x-0003-1764900000000", "faces-x"),
            Some(3)
        );
        assert_eq!(quarantined_shard("faces-0003", "faces"), None);
        assert_eq!(quarantined_shard("face-0003-17", "faces"), None);
    }

    #[test]
    fn removing_quarantined_copies_touches_only_the_named_shards() {
        let dir = tempfile::tempdir().unwrap();
        let host = ReplicaHost::new(dir.path(), IndexParams::default()).unwrap();
        let root = dir.path().join("quarantine");
        for name in ["c-0001-10", "c-0002-11", "d-0001-12"] {
            std::fs::create_dir_all(root.join(name)).unwrap();
            std::fs::write(root.join(name).join("wal-00000001.log"), b"rows").unwrap();
        }
        let found: Vec<u32> = host
            .quarantined("c")
            .unwrap()
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(found, vec![1, 2]);
        assert_eq!(
            host.remove_quarantined("c", &BTreeSet::from([1])).unwrap(),
            1
        );
        assert!(!root.join("c-0001-10").exists());
        assert!(root.join("c-0002-11").exists() && root.join("d-0001-12").exists());
    }
}
