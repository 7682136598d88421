//! The worker: which collections' shards live on this node, and where.

use parking_lot::RwLock;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use engram_core::CollectionSpec;
use engram_core::config::IndexParams;
use engram_index::SegmentCache;

use crate::error::{Result, WorkerError};
use crate::hosted_collection::HostedCollection;

pub struct Worker {
    collections_dir: PathBuf,
    index_params: IndexParams,
    cache: Arc<SegmentCache>,
    collections: RwLock<HashMap<String, Arc<HostedCollection>>>,
}

impl Worker {
    /// A worker keeping its shards under `<data_dir>/collections`.
    pub fn new(data_dir: &Path, index_params: IndexParams) -> Result<Worker> {
        Self::with_cache(data_dir, index_params, SegmentCache::disk_only())
    }

    /// [`Self::new`] serving sealed segments within `cache`'s budget.
    pub fn with_cache(
        data_dir: &Path,
        index_params: IndexParams,
        cache: Arc<SegmentCache>,
    ) -> Result<Worker> {
        let collections_dir = data_dir.join("collections");
        fs_err::create_dir_all(&collections_dir)?;
        Ok(Worker {
            collections_dir,
            index_params,
            cache,
            collections: RwLock::new(HashMap::new()),
        })
    }

    /// Opens the shards of `spec`, creating them if new.
    pub fn host(&self, spec: CollectionSpec) -> Result<Arc<HostedCollection>> {
        if self.collections.read().contains_key(&spec.name) {
            return Err(WorkerError::CollectionExists(spec.name));
        }
        let name = spec.name.clone();
        let dir = self.collections_dir.join(&name);
        let hosted = Arc::new(HostedCollection::open_cached(
            &dir,
            spec,
            &self.index_params,
            self.cache.clone(),
        )?);
        engram_store::checksummed::sync_dir(&self.collections_dir)?;
        let mut collections = self.collections.write();
        if collections.contains_key(&name) {
            return Err(WorkerError::CollectionExists(name));
        }
        collections.insert(name, hosted.clone());
        Ok(hosted)
    }

    pub fn get(&self, name: &str) -> Result<Arc<HostedCollection>> {
        self.collections
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| WorkerError::UnknownCollection(name.to_string()))
    }

    /// The node's cache budget for sealed segments.
    pub fn cache(&self) -> &Arc<SegmentCache> {
        &self.cache
    }

    /// Stops hosting `name` and deletes its files.
    pub fn drop_collection(&self, name: &str) -> Result<()> {
        let removed = self.collections.write().remove(name);
        if removed.is_none() {
            return Err(WorkerError::UnknownCollection(name.to_string()));
        }
        let dir = self.collections_dir.join(name);
        if dir.exists() {
            fs_err::remove_dir_all(&dir)?;
        }
        Ok(())
    }

    /// Deletes the directories of collections not in `known`: leftovers of a
    /// creation or drop that a crash interrupted.
    pub fn remove_unknown(&self, known: &HashSet<String>) -> Result<Vec<String>> {
        let mut removed = Vec::new();
        for entry in fs_err::read_dir(&self.collections_dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().to_string();
            if !known.contains(&name) && entry.file_type()?.is_dir() {
                tracing::warn!(collection = %name, "removing files of a collection absent from the catalog");
                fs_err::remove_dir_all(entry.path())?;
                removed.push(name);
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use engram_core::{Metric, VotingRule};
    use engram_store::WalOp;

    fn spec(name: &str) -> CollectionSpec {
        CollectionSpec {
            name: name.into(),
            dim: 3,
            metric: Metric::Cosine,
            embedder: None,
            shards: 8,
            replication: 1,
            default_k: 10,
            default_rule: VotingRule::Rank,
        }
    }

    #[test]
    fn routes_writes_and_merges_searches_across_shards() {
        let dir = tempfile::tempdir().unwrap();
        let worker = Worker::new(dir.path(), IndexParams::default()).unwrap();
        let c = worker.host(spec("c")).unwrap();
        assert!(matches!(
            worker.host(spec("c")),
            Err(WorkerError::CollectionExists(_))
        ));
        let ops = (0..200u64)
            .map(|id| {
                let angle = id as f32 / 200.0;
                let mut vector = vec![angle.cos(), angle.sin(), 0.1];
                engram_core::vector::normalize_in_place(&mut vector).unwrap();
                WalOp::Upsert {
                    id,
                    label: if id < 100 {
                        "low".into()
                    } else {
                        "high".into()
                    },
                    weight: 1.0,
                    source: Some(format!("file#{}", id % 3).into()),
                    vector,
                    thumbnail: None,
                }
            })
            .collect();
        c.write(ops).unwrap();
        assert_eq!(c.stats().items, 200);
        let q = c.get_vector(150).unwrap().unwrap();
        let hits = &c
            .search_batch(&[&q], 5, &Default::default(), Default::default())
            .lists[0];
        assert_eq!(hits[0].id, 150);
        assert!(hits.windows(2).all(|w| w[0].distance <= w[1].distance));
        assert_eq!(c.delete_label("low").unwrap(), 100);
        // Of the ids 100..200 left, 102, 105, ..., 198 come from file#0.
        assert_eq!(c.delete_source("file#0").unwrap(), 33);
        assert_eq!(c.delete_ids(&[151, 151, 7]).unwrap(), 1);
        let stats = c.stats();
        assert_eq!(stats.items, 200 - 100 - 33 - 1);
        assert_eq!(stats.labels.get("low"), None);
        let all = &c
            .search_batch(&[&q], 1000, &Default::default(), Default::default())
            .lists[0];
        assert_eq!(all.len() as u64, stats.items);
        assert!(
            all.iter()
                .all(|n| n.label == "high" && n.id != 151 && n.source.as_deref() != Some("file#0"))
        );

        drop(c);
        worker
            .remove_unknown(&HashSet::from(["c".to_string()]))
            .unwrap();
        worker.drop_collection("c").unwrap();
        assert!(worker.get("c").is_err());
        assert!(!dir.path().join("collections/c").exists());
    }
}
