//! What each item of a shard is, apart from its vector.

use std::collections::HashMap;
use std::sync::Arc;

use crate::vocabulary::Vocabulary;

/// An item's metadata as stored: label interned, source shared.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemRecord {
    pub label: u32,
    pub weight: f32,
    pub source: Option<Arc<str>>,
}

/// `id -> (label, weight, source)` for the live items of one shard.
///
/// Hashed with foldhash's quality hasher, seeded at random per process
/// (ids are chosen by users; SipHash made filling a 1M-item table on an
/// attach take twice as long).
#[derive(Debug, Default)]
pub struct ItemTable {
    items: HashMap<u64, ItemRecord, foldhash::quality::RandomState>,
    vocabulary: Vocabulary,
}

impl ItemTable {
    /// Inserts or replaces `id`, keeping label counts exact.
    pub fn upsert(&mut self, id: u64, label: &Arc<str>, weight: f32, source: Option<Arc<str>>) {
        let label = self.vocabulary.intern(label);
        self.vocabulary.add(label, 1);
        if let Some(old) = self.items.insert(
            id,
            ItemRecord {
                label,
                weight,
                source,
            },
        ) {
            self.vocabulary.add(old.label, -1);
        }
    }

    /// Room for `additional` more items without growing the table
    /// step by step (a whole segment's items are added at once).
    pub fn reserve(&mut self, additional: usize) {
        self.items.reserve(additional);
    }

    pub fn remove(&mut self, id: u64) -> Option<ItemRecord> {
        let old = self.items.remove(&id)?;
        self.vocabulary.add(old.label, -1);
        Some(old)
    }

    pub fn get(&self, id: u64) -> Option<&ItemRecord> {
        self.items.get(&id)
    }

    pub fn contains(&self, id: u64) -> bool {
        self.items.contains_key(&id)
    }

    pub fn label_of(&self, record: &ItemRecord) -> &Arc<str> {
        self.vocabulary.label(record.label)
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn vocabulary(&self) -> &Vocabulary {
        &self.vocabulary
    }

    /// The `limit` smallest live ids above `after` (all ids when `None`),
    /// ascending: one page of a scan that holds no lock between pages.
    /// O(items) per page, without sorting the whole table.
    pub fn ids_after(&self, after: Option<u64>, limit: usize) -> Vec<u64> {
        let mut ids: Vec<u64> = self
            .items
            .keys()
            .copied()
            .filter(|id| after.is_none_or(|a| *id > a))
            .collect();
        if limit < ids.len() {
            ids.select_nth_unstable(limit);
            ids.truncate(limit);
        }
        ids.sort_unstable();
        ids
    }

    /// Ids of the live items carrying `label`.
    pub fn ids_with_label(&self, label: &str) -> Vec<u64> {
        let Some(label) = self.vocabulary.id_of(label) else {
            return Vec::new();
        };
        self.items
            .iter()
            .filter(|(_, r)| r.label == label)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Ids of the live items whose source is exactly `source`.
    pub fn ids_with_source(&self, source: &str) -> Vec<u64> {
        self.items
            .iter()
            .filter(|(_, r)| r.source.as_deref() == Some(source))
            .map(|(id, _)| *id)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn pages_cover_every_id_once_in_order(ids in prop::collection::hash_set(any::<u64>(), 0..300), limit in 1usize..50) {
            let mut table = ItemTable::default();
            let label: Arc<str> = Arc::from("a");
            for id in &ids {
                table.upsert(*id, &label, 1.0, None);
            }
            let mut seen = Vec::new();
            let mut after = None;
            loop {
                let page = table.ids_after(after, limit);
                prop_assert!(page.len() <= limit);
                if page.is_empty() {
                    break;
                }
                after = page.last().copied();
                seen.extend(page);
            }
            let mut expected: Vec<u64> = ids.into_iter().collect();
            expected.sort_unstable();
            prop_assert_eq!(seen, expected);
        }

        #[test]
        fn label_counts_match_live_items(ops in prop::collection::vec((0u64..30, 0u8..4, any::<bool>()), 0..200)) {
            let mut table = ItemTable::default();
            let mut model: HashMap<u64, String> = HashMap::new();
            for (id, label, remove) in ops {
                if remove {
                    prop_assert_eq!(table.remove(id).is_some(), model.remove(&id).is_some());
                } else {
                    let label = format!("l{label}");
                    table.upsert(id, &Arc::from(label.as_str()), 1.0, None);
                    model.insert(id, label);
                }
            }
            let mut expected: HashMap<String, u64> = HashMap::new();
            for label in model.values() {
                *expected.entry(label.clone()).or_default() += 1;
            }
            let actual: HashMap<String, u64> = table.vocabulary().counts().map(|(l, c)| (l.to_string(), c)).collect();
            prop_assert_eq!(actual, expected);
            for (id, label) in &model {
                let r = table.get(*id).unwrap();
                prop_assert_eq!(table.label_of(r).as_ref(), label.as_str());
                prop_assert!(table.ids_with_label(label).contains(id));
            }
        }
    }

    #[test]
    fn finds_ids_by_source() {
        let mut table = ItemTable::default();
        let src: Arc<str> = Arc::from("s3://b/f.parquet");
        table.upsert(1, &Arc::from("a"), 1.0, Some(src.clone()));
        table.upsert(2, &Arc::from("a"), 1.0, None);
        assert_eq!(table.ids_with_source("s3://b/f.parquet"), vec![1]);
        assert!(table.ids_with_source("s3://b/other").is_empty());
    }
}

/// One item as a sealed segment's item file stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredItem {
    pub id: u64,
    pub label: Arc<str>,
    pub weight: f32,
    pub source: Option<Arc<str>>,
}

/// The item table's file name inside a sealed segment's directory.
pub const SEGMENT_ITEMS_FILE: &str = "items.bin";

/// Writes `items` to `path` as a checksummed file (the item table of a
/// sealed segment).
pub fn write_items(path: &std::path::Path, items: &[StoredItem]) -> crate::Result<()> {
    let ops: Vec<crate::WalOp> = items
        .iter()
        .map(|i| crate::WalOp::Upsert {
            id: i.id,
            label: i.label.clone(),
            weight: i.weight,
            source: i.source.clone(),
            vector: Vec::new(),
            thumbnail: None,
        })
        .collect();
    crate::checksummed::write_atomic(path, &crate::wal::encode(&ops))
}

/// Writes a sealed segment's per-row tables into its directory: the item
/// table and the thumbnails of the rows that have one (no file if none).
pub fn write_row_tables(
    dir: &std::path::Path,
    items: &[StoredItem],
    thumbnails: &mut [(u64, std::sync::Arc<[u8]>)],
) -> crate::Result<()> {
    write_items(&dir.join(SEGMENT_ITEMS_FILE), items)?;
    crate::thumbnail_file::write_thumbnails(&dir.join(crate::THUMBNAILS_FILE), thumbnails)
}

/// Reads an item file written by [`write_items`]; a damaged file is refused.
pub fn read_items(path: &std::path::Path) -> crate::Result<Vec<StoredItem>> {
    let bytes = crate::checksummed::read_verified(path)?;
    let ops = crate::wal::decode(&bytes).map_err(|reason| crate::StoreError::Corrupted {
        path: path.to_path_buf(),
        offset: 0,
        reason,
    })?;
    ops.into_iter()
        .map(|op| match op {
            crate::WalOp::Upsert {
                id,
                label,
                weight,
                source,
                ..
            } => Ok(StoredItem {
                id,
                label,
                weight,
                source,
            }),
            crate::WalOp::Delete { .. } => Err(crate::StoreError::Corrupted {
                path: path.to_path_buf(),
                offset: 0,
                reason: "a delete in an item file".into(),
            }),
        })
        .collect()
}
