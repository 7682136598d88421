//! Reading a shard's live items with their vectors: full scans (pruning,
//! resharding), consistent snapshots, and pages by id.

use std::collections::HashMap;
use std::sync::Arc;

use engram_index::SealedSegment;

use super::{ScannedItem, Shard};
use crate::error::Result;

/// The thumbnails a sealed segment holds (none when it has no file).
fn segment_thumbnails(segment: &SealedSegment) -> Result<HashMap<u64, Arc<[u8]>>> {
    let path = segment.dir().join(engram_store::THUMBNAILS_FILE);
    Ok(match engram_store::ThumbnailFile::open(&path)? {
        Some(file) => file.read_where(|_| true)?.into_iter().collect(),
        None => HashMap::new(),
    })
}

impl Shard {
    /// Every live item with its vector, one segment at a time (sealed rows
    /// are read back from their sectors). `f` is called once per segment.
    pub fn scan(&self, f: &mut dyn FnMut(Vec<ScannedItem>) -> Result<()>) -> Result<()> {
        let (growing, thumbnails, sealed) = {
            let state = self.state.read();
            (
                state.growing.live_rows(),
                state.thumbnails.clone(),
                state.sealed.clone(),
            )
        };
        self.scan_rows(growing, &thumbnails, f)?;
        for segment in sealed {
            let thumbnails = segment_thumbnails(&segment)?;
            self.scan_rows(segment.live_rows()?, &thumbnails, f)?;
        }
        Ok(())
    }

    /// Every live item with its vector at one instant: writes to this shard
    /// wait meanwhile (a snapshot's copy of it).
    pub fn snapshot(&self) -> Result<Vec<ScannedItem>> {
        let _writes = self.wal.lock();
        let mut all = Vec::with_capacity(self.len());
        self.scan(&mut |items| {
            all.extend(items);
            Ok(())
        })?;
        Ok(all)
    }

    /// One page of live items with their vectors: the `limit` smallest ids
    /// above `after`, and the cursor of the next page (`None` after the
    /// last). Items written or deleted between pages may be missed or
    /// included; each id is returned at most once over a whole scan.
    pub fn scan_page(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<(Vec<ScannedItem>, Option<u64>)> {
        let ids = self.state.read().items.ids_after(after, limit);
        let next = if ids.len() == limit {
            ids.last().copied()
        } else {
            None
        };
        let mut items = Vec::with_capacity(ids.len());
        for id in ids {
            let (Some(item), Some(vector)) = (self.get(id), self.get_vector(id)?) else {
                continue; // deleted meanwhile
            };
            items.push(ScannedItem {
                id,
                label: item.label,
                weight: item.weight,
                source: item.source,
                vector,
                thumbnail: self.thumbnail(id)?,
            });
        }
        Ok((items, next))
    }

    fn scan_rows(
        &self,
        (ids, vectors): (Vec<u64>, Vec<f32>),
        thumbnails: &HashMap<u64, Arc<[u8]>>,
        f: &mut dyn FnMut(Vec<ScannedItem>) -> Result<()>,
    ) -> Result<()> {
        let items: Vec<ScannedItem> = {
            let state = self.state.read();
            ids.iter()
                .zip(vectors.chunks_exact(self.dim.max(1)))
                .filter_map(|(id, v)| {
                    let record = state.items.get(*id)?;
                    Some(ScannedItem {
                        id: *id,
                        label: state.items.label_of(record).clone(),
                        weight: record.weight,
                        source: record.source.clone(),
                        vector: v.to_vec(),
                        thumbnail: thumbnails.get(id).cloned(),
                    })
                })
                .collect()
        };
        if items.is_empty() {
            return Ok(());
        }
        f(items)
    }
}
