//! The embedded node's list of collections, kept in one checksummed file.
//!
//! In a cluster this metadata lives in the Raft state machine; the embedded
//! default keeps the same facts in `<data_dir>/catalog.bin`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use engram_core::CollectionSpec;
use engram_store::checksummed;

use crate::error::{ApiError, Result};

pub struct Catalog {
    path: PathBuf,
    collections: BTreeMap<String, CollectionSpec>,
}

impl Catalog {
    /// Loads the catalog, or starts an empty one if the file does not exist.
    /// A corrupted catalog is refused.
    pub fn open(data_dir: &Path) -> Result<Catalog> {
        let path = data_dir.join("catalog.bin");
        let collections = if path.exists() {
            let bytes = checksummed::read_verified(&path)?;
            let specs: Vec<CollectionSpec> = serde_json::from_slice(&bytes).map_err(|e| {
                ApiError::internal(format!("catalog {} is unreadable: {e}", path.display()))
            })?;
            specs.into_iter().map(|s| (s.name.clone(), s)).collect()
        } else {
            BTreeMap::new()
        };
        Ok(Catalog { path, collections })
    }

    pub fn get(&self, name: &str) -> Option<&CollectionSpec> {
        self.collections.get(name)
    }

    pub fn specs(&self) -> impl Iterator<Item = &CollectionSpec> {
        self.collections.values()
    }

    pub fn insert(&mut self, spec: CollectionSpec) -> Result<()> {
        self.collections.insert(spec.name.clone(), spec);
        self.persist()
    }

    pub fn remove(&mut self, name: &str) -> Result<Option<CollectionSpec>> {
        let removed = self.collections.remove(name);
        if removed.is_some() {
            self.persist()?;
        }
        Ok(removed)
    }

    fn persist(&self) -> Result<()> {
        let specs: Vec<&CollectionSpec> = self.collections.values().collect();
        let bytes = serde_json::to_vec(&specs).map_err(|e| ApiError::internal(e.to_string()))?;
        checksummed::write_atomic(&self.path, &bytes)?;
        Ok(())
    }
}
