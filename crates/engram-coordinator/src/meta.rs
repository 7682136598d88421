//! Curation metadata of each collection: interventions with their audit
//! trail, soft-pruning weights and unlearning receipts.
//!
//! In a cluster these live in the Raft state machine; the embedded node
//! keeps them under `<data_dir>/meta/<collection>/` in checksummed files
//! (`curation.bin`, `pruning.bin`, `receipts/<n>.bin`), each rewritten
//! atomically before the change is acknowledged. Readers take an `Arc`
//! snapshot, so decisions never wait for a curator's write.

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use engram_core::{
    AuditEntry, Curation, DeletionLog, Intervention, PruningWeights, Receipt, Selector,
    ShardDeletion, TrainedHead,
};
use engram_store::checksummed;

use crate::error::{ApiError, Result};

const CURATION_FILE: &str = "curation.bin";
const PRUNING_FILE: &str = "pruning.bin";
const RECEIPTS_DIR: &str = "receipts";
const HEADS_DIR: &str = "heads";

/// The metadata of one collection.
pub struct CollectionMeta {
    dir: PathBuf,
    curation: RwLock<Arc<Curation>>,
    pruning: RwLock<Option<Arc<PruningWeights>>>,
    /// Trained head re-rankers by re-ranker name (`heads/<name>.bin`).
    heads: RwLock<BTreeMap<String, Arc<TrainedHead>>>,
    next_receipt: Mutex<u64>,
    /// Serialises writers (readers use the snapshots).
    write: Mutex<()>,
}

fn load<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>> {
    if !path.exists() {
        return Ok(None);
    }
    let bytes = checksummed::read_verified(path)?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| ApiError::internal(format!("{} is unreadable: {e}", path.display())))
}

fn save<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let bytes = serde_json::to_vec(value).map_err(|e| ApiError::internal(e.to_string()))?;
    checksummed::write_atomic(path, &bytes)?;
    Ok(())
}

fn io(e: std::io::Error) -> ApiError {
    ApiError::internal(e.to_string())
}

/// Now, as RFC 3339 UTC with seconds.
pub fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

impl CollectionMeta {
    /// Loads (creating where missing) the metadata in `dir`; a corrupted
    /// file is refused.
    pub fn open(dir: &Path) -> Result<CollectionMeta> {
        fs_err::create_dir_all(dir.join(RECEIPTS_DIR)).map_err(io)?;
        let curation: Curation = load(&dir.join(CURATION_FILE))?.unwrap_or_default();
        let pruning: Option<PruningWeights> = load(&dir.join(PRUNING_FILE))?;
        fs_err::create_dir_all(dir.join(HEADS_DIR)).map_err(io)?;
        let mut heads = BTreeMap::new();
        for entry in fs_err::read_dir(dir.join(HEADS_DIR)).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if path.extension().is_some_and(|e| e == "bin")
                && let Some(head) = load::<TrainedHead>(&path)?
            {
                heads.insert(head.reranker.clone(), Arc::new(head));
            }
        }
        let mut last = 0;
        for entry in fs_err::read_dir(dir.join(RECEIPTS_DIR)).map_err(io)? {
            let name = entry.map_err(io)?.file_name().to_string_lossy().to_string();
            if let Some(n) = name
                .strip_suffix(".bin")
                .and_then(|n| n.parse::<u64>().ok())
            {
                last = last.max(n);
            }
        }
        Ok(CollectionMeta {
            dir: dir.to_path_buf(),
            curation: RwLock::new(Arc::new(curation)),
            pruning: RwLock::new(pruning.map(Arc::new)),
            heads: RwLock::new(heads),
            next_receipt: Mutex::new(last + 1),
            write: Mutex::new(()),
        })
    }

    pub fn curation(&self) -> Arc<Curation> {
        self.curation.read().clone()
    }

    pub fn pruning(&self) -> Option<Arc<PruningWeights>> {
        self.pruning.read().clone()
    }

    /// Applies, persists, then publishes an intervention.
    pub fn intervene(&self, intervention: Intervention, reason: &str) -> Result<AuditEntry> {
        let _writer = self.write.lock();
        let mut next = (*self.curation()).clone();
        let entry = next.apply(intervention, reason, now())?;
        save(&self.dir.join(CURATION_FILE), &next)?;
        *self.curation.write() = Arc::new(next);
        Ok(entry)
    }

    pub fn heads(&self) -> BTreeMap<String, Arc<TrainedHead>> {
        self.heads.read().clone()
    }

    /// The newest receipt's number (0: none yet).
    pub fn newest_receipt(&self) -> u64 {
        *self.next_receipt.lock() - 1
    }

    /// Stores (replacing) or removes the head of re-ranker `name`; the old
    /// file is replaced atomically, so its weights are gone with it.
    pub fn set_head(&self, name: &str, head: Option<TrainedHead>) -> Result<()> {
        let _writer = self.write.lock();
        let path = self.dir.join(HEADS_DIR).join(format!("{name}.bin"));
        match head {
            Some(head) => {
                save(&path, &head)?;
                self.heads.write().insert(name.to_string(), Arc::new(head));
            }
            None => {
                if path.exists() {
                    fs_err::remove_file(&path).map_err(io)?;
                }
                self.heads.write().remove(name);
            }
        }
        Ok(())
    }

    /// Replaces the curation and pruning weights (a restored snapshot);
    /// the heads trained on the memory before go.
    pub fn restore(&self, curation: Curation, pruning: Option<PruningWeights>) -> Result<()> {
        for name in self.heads().into_keys() {
            self.set_head(&name, None)?;
        }
        {
            let _writer = self.write.lock();
            save(&self.dir.join(CURATION_FILE), &curation)?;
            *self.curation.write() = Arc::new(curation);
        }
        self.set_pruning(pruning)
    }

    /// Replaces the soft-pruning weights (`None` removes them).
    pub fn set_pruning(&self, weights: Option<PruningWeights>) -> Result<()> {
        let _writer = self.write.lock();
        match &weights {
            Some(w) => save(&self.dir.join(PRUNING_FILE), w)?,
            None => {
                let path = self.dir.join(PRUNING_FILE);
                if path.exists() {
                    fs_err::remove_file(path).map_err(io)?;
                }
            }
        }
        *self.pruning.write() = weights.map(Arc::new);
        Ok(())
    }

    /// Records an unlearning request: marks pruning weights its items had
    /// counted towards as stale, then writes the receipt.
    pub fn record_deletion(
        &self,
        selector: Selector,
        log: Vec<ShardDeletion>,
        erase_by: Option<String>,
    ) -> Result<Receipt> {
        let _writer = self.write.lock();
        let ids: Vec<u64> = log.iter().flat_map(|d| d.ids.iter().copied()).collect();
        let mut stale = 0;
        if let Some(current) = self.pruning() {
            let mut next = (*current).clone();
            stale = next.forget(&ids);
            if next != *current {
                save(&self.dir.join(PRUNING_FILE), &next)?;
                *self.pruning.write() = Some(Arc::new(next));
            }
        }
        let mut counter = self.next_receipt.lock();
        let receipt = Receipt {
            receipt: *counter,
            at: now(),
            selector,
            deleted: ids.len(),
            log,
            stale_pruning_weights: stale,
            erase_by,
        };
        save(&self.receipt_path(receipt.receipt), &receipt)?;
        *counter += 1;
        Ok(receipt)
    }

    pub fn receipt(&self, id: u64) -> Result<Option<Receipt>> {
        load(&self.receipt_path(id))
    }

    /// The numbers of every receipt kept, ascending.
    pub fn receipt_ids(&self) -> Result<Vec<u64>> {
        let mut ids = Vec::new();
        for entry in fs_err::read_dir(self.dir.join(RECEIPTS_DIR)).map_err(io)? {
            let name = entry.map_err(io)?.file_name();
            if let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".bin"))
                .and_then(|n| n.parse::<u64>().ok())
            {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        Ok(ids)
    }

    fn receipt_path(&self, id: u64) -> PathBuf {
        self.dir.join(RECEIPTS_DIR).join(format!("{id:016}.bin"))
    }
}

/// The metadata of every collection on this node, and its deletion log.
pub struct MetaStore {
    root: PathBuf,
    collections: Mutex<HashMap<String, Arc<CollectionMeta>>>,
    /// `<data_dir>/deletion_log.bin` (checksummed JSON), beside the
    /// collections' metadata: it outlives a dropped collection.
    log_path: PathBuf,
    /// Loaded on first use; changes are written before they are adopted.
    log: Mutex<Option<Arc<DeletionLog>>>,
}

impl MetaStore {
    pub fn new(data_dir: &Path) -> MetaStore {
        MetaStore {
            root: data_dir.join("meta"),
            collections: Mutex::new(HashMap::new()),
            log_path: data_dir.join(DELETION_LOG_FILE),
            log: Mutex::new(None),
        }
    }

    /// The deletion log (`engram_core::deletion_log`).
    pub fn deletion_log(&self) -> Result<Arc<DeletionLog>> {
        let mut log = self.log.lock();
        Self::loaded(&self.log_path, &mut log)
    }

    /// Changes the deletion log durably (written, then adopted).
    pub fn change_deletion_log(&self, change: impl FnOnce(&mut DeletionLog)) -> Result<()> {
        let mut log = self.log.lock();
        let mut next = (*Self::loaded(&self.log_path, &mut log)?).clone();
        change(&mut next);
        save(&self.log_path, &next)?;
        *log = Some(Arc::new(next));
        Ok(())
    }

    fn loaded(path: &Path, log: &mut Option<Arc<DeletionLog>>) -> Result<Arc<DeletionLog>> {
        if let Some(log) = log {
            return Ok(log.clone());
        }
        let loaded = Arc::new(load::<DeletionLog>(path)?.unwrap_or_default());
        *log = Some(loaded.clone());
        Ok(loaded)
    }

    /// The metadata of `collection`, loaded on first use.
    pub fn get(&self, collection: &str) -> Result<Arc<CollectionMeta>> {
        let mut map = self.collections.lock();
        if let Some(meta) = map.get(collection) {
            return Ok(meta.clone());
        }
        let meta = Arc::new(CollectionMeta::open(&self.root.join(collection))?);
        map.insert(collection.to_string(), meta.clone());
        Ok(meta)
    }

    /// Forgets `collection` and removes its files (collection deleted, or
    /// leftovers found when a collection of that name is created).
    pub fn remove(&self, collection: &str) -> Result<()> {
        self.collections.lock().remove(collection);
        let dir = self.root.join(collection);
        if dir.exists() {
            fs_err::remove_dir_all(dir).map_err(io)?;
        }
        Ok(())
    }
}

/// The embedded node's deletion log, in its data directory.
const DELETION_LOG_FILE: &str = "deletion_log.bin";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deletion_log_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetaStore::new(dir.path());
        assert_eq!(*store.deletion_log().unwrap(), DeletionLog::default());
        store
            .change_deletion_log(|log| {
                log.record_snapshot(engram_core::SnapshotRecord {
                    uri: "/snaps".into(),
                    id: "s".into(),
                    created_at: "2026-01-01T00:00:00Z".into(),
                    collections: vec!["c".into()],
                });
                log.record_deletion("c", "2026-01-02T00:00:00Z", vec![4]);
            })
            .unwrap();
        let again = MetaStore::new(dir.path());
        assert_eq!(
            again
                .deletion_log()
                .unwrap()
                .deleted_since("c", "2026-01-01T00:00:00Z"),
            vec![4]
        );
    }

    #[test]
    fn interventions_pruning_and_receipts_survive_reopen_and_corruption_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c");
        {
            let meta = CollectionMeta::open(&path).unwrap();
            meta.intervene(Intervention::BlockClass { label: "x".into() }, "test")
                .unwrap();
            let mut scores = engram_core::PruningScores::default();
            scores.add_query(1, "a", &[(2, "b")]);
            meta.set_pruning(Some(PruningWeights::new(7, now(), 10, scores)))
                .unwrap();
            let deletion = ShardDeletion {
                shard: 0,
                ids: vec![1],
                wal_generation: 0,
                wal_offset: 100,
                vectors_in_wal: true,
                segments: vec![],
            };
            let receipt = meta
                .record_deletion(
                    Selector {
                        ids: Some(1),
                        ..Selector::default()
                    },
                    vec![deletion],
                    Some("2026-12-06T00:00:00Z".into()),
                )
                .unwrap();
            assert_eq!((receipt.receipt, receipt.stale_pruning_weights), (1, 1));
        }
        let meta = CollectionMeta::open(&path).unwrap();
        assert!(meta.curation().blocked_classes.contains_key("x"));
        assert!(meta.pruning().unwrap().stale.contains(&2));
        assert_eq!(meta.receipt(1).unwrap().unwrap().deleted, 1);
        assert_eq!(
            meta.receipt(1).unwrap().unwrap().erase_by.as_deref(),
            Some("2026-12-06T00:00:00Z")
        );
        assert!(meta.receipt(2).unwrap().is_none());
        let next = meta
            .record_deletion(Selector::default(), vec![], None)
            .unwrap();
        assert_eq!(next.receipt, 2, "receipt numbers continue after a restart");
        drop(meta);

        let file = path.join(CURATION_FILE);
        let mut bytes = std::fs::read(&file).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&file, bytes).unwrap();
        assert!(CollectionMeta::open(&path).is_err());
    }
}
