//! A shard's in-memory state and how a WAL record changes it (the same
//! code applies a write and replays it at open).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use engram_core::{Neighbor, ScoredId};
use engram_index::{GrowingSegment, MutableSegmentIndex, SealedSegment, SegmentIndex};
use engram_store::{ItemTable, StoredItem, WalOp, WalRecord};

use crate::error::Result;

pub(super) struct ShardState {
    pub(super) growing: GrowingSegment,
    pub(super) sealed: Vec<Arc<SealedSegment>>,
    pub(super) items: ItemTable,
    /// Thumbnails of the growing segment's rows (those added as images):
    /// they are in the WAL with their rows, and move into the sealed
    /// segment's `thumbnails.bin` when it is sealed.
    pub(super) thumbnails: HashMap<u64, Arc<[u8]>>,
    /// Ids whose rows the growing segment dropped (deleted or replaced)
    /// since the current WAL began: their old vectors are still in it
    /// until it is rewritten or retired.
    pub(super) wal_dead: HashSet<u64>,
    /// `Some` while the shard is a resharding target being filled: the ids
    /// deleted meanwhile, which rows copied in must not bring back.
    pub(super) receiving: Option<HashSet<u64>>,
}

impl ShardState {
    pub(super) fn apply(&mut self, record: &WalRecord) -> Result<()> {
        for op in record {
            match op {
                WalOp::Upsert {
                    id,
                    label,
                    weight,
                    source,
                    vector,
                    thumbnail,
                } => {
                    for segment in &self.sealed {
                        segment.delete(*id);
                    }
                    if self.growing.contains(*id) {
                        self.wal_dead.insert(*id);
                    }
                    self.growing.upsert(*id, vector)?;
                    self.items.upsert(*id, label, *weight, source.clone());
                    // The newest version's picture, or none: an older
                    // version's must not show for it.
                    match thumbnail {
                        Some(t) => self.thumbnails.insert(*id, t.clone()),
                        None => self.thumbnails.remove(id),
                    };
                    if let Some(tombstones) = &mut self.receiving {
                        tombstones.remove(id);
                    }
                }
                WalOp::Delete { id } => {
                    self.thumbnails.remove(id);
                    if self.growing.remove(*id) {
                        self.wal_dead.insert(*id);
                    } else {
                        for segment in &self.sealed {
                            segment.delete(*id);
                        }
                    }
                    self.items.remove(*id);
                    if let Some(tombstones) = &mut self.receiving {
                        tombstones.insert(*id);
                    }
                }
            }
        }
        Ok(())
    }

    /// Adds a sealed segment after every one held (opening the shard, or
    /// shipped segments): its live rows supersede older versions of their
    /// ids in the older segments, whether or not their delete bitmaps were
    /// written. Returns its live rows and whether an older segment lost
    /// one (its bitmap then needs persisting).
    pub(super) fn add_sealed(
        &mut self,
        segment: Arc<SealedSegment>,
        items: Vec<StoredItem>,
    ) -> (usize, bool) {
        let (mut added, mut superseded) = (0, false);
        let live = segment.live_flags(items.iter().map(|i| i.id));
        for (item, is_live) in items.into_iter().zip(live) {
            if !is_live {
                continue;
            }
            if self.items.contains(item.id) {
                for older in &self.sealed {
                    superseded |= older.delete(item.id);
                }
            }
            self.items
                .upsert(item.id, &item.label, item.weight, item.source);
            added += 1;
        }
        self.sealed.push(segment);
        (added, superseded)
    }

    pub(super) fn stored_items(&self, ids: &[u64]) -> Vec<StoredItem> {
        ids.iter()
            .filter_map(|id| {
                let record = self.items.get(*id)?;
                Some(StoredItem {
                    id: *id,
                    label: self.items.label_of(record).clone(),
                    weight: record.weight,
                    source: record.source.clone(),
                })
            })
            .collect()
    }

    /// Upserts re-creating the growing segment's live rows, for a new WAL
    /// that must hold them (a rewrite without dead vectors, an attach).
    pub(super) fn growing_rows_except(&self, skip: &HashSet<u64>, dim: usize) -> WalRecord {
        let (ids, vectors) = self.growing.live_rows();
        ids.iter()
            .zip(vectors.chunks_exact(dim.max(1)))
            .filter(|(id, _)| !skip.contains(id))
            .filter_map(|(id, vector)| {
                let record = self.items.get(*id)?;
                Some(WalOp::Upsert {
                    id: *id,
                    label: self.items.label_of(record).clone(),
                    weight: record.weight,
                    source: record.source.clone(),
                    vector: vector.to_vec(),
                    thumbnail: self.thumbnails.get(id).cloned(),
                })
            })
            .collect()
    }
}

pub(super) fn neighbor(items: &ItemTable, hit: ScoredId) -> Option<Neighbor> {
    let record = items.get(hit.id)?;
    Some(Neighbor {
        id: hit.id,
        label: items.label_of(record).to_string(),
        distance: hit.distance,
        weight: record.weight,
        source: record.source.as_deref().map(str::to_string),
    })
}
