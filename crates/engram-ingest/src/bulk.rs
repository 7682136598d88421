//! The bulk path of ingestion: rows routed to their shards are parked in
//! per-shard spill files on local disk ([`ShardSpills`]), and each spill
//! becomes one sealed DiskANN segment with its item table
//! ([`build_segment`]), to be uploaded to object storage and attached to
//! its shard. Nothing goes through a WAL or an in-memory graph, and memory
//! is bounded by one segment's rows, whatever the size of the data set.

use fs_err as fs;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use engram_core::Metric;
use engram_core::config::IndexParams;
use engram_core::shard::shard_of;
use engram_index::SealedSegment;
use engram_index::disk::codebook::CodebookStore;
use engram_store::{CheckedFile, SpillWriter, StoredItem, WalOp, read_spill};

use crate::error::Result;
use crate::items::Item;

/// One generation of per-shard spills.
pub struct ShardSpills {
    dir: PathBuf,
    shards: u32,
    writers: Vec<Option<SpillWriter>>,
}

/// A finished spill: the rows of one shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spill {
    pub shard: u32,
    pub path: PathBuf,
    pub rows: u64,
}

impl ShardSpills {
    /// Spills for `shards` shards in `dir` (created; emptied if present).
    pub fn create(dir: &Path, shards: u32) -> Result<ShardSpills> {
        if dir.exists() {
            fs::remove_dir_all(dir)?;
        }
        fs::create_dir_all(dir)?;
        Ok(ShardSpills {
            dir: dir.to_path_buf(),
            shards,
            writers: (0..shards).map(|_| None).collect(),
        })
    }

    /// Appends `items`, each to the spill of the shard its id routes to.
    pub fn append(&mut self, items: &[Item]) -> Result<()> {
        let mut per_shard: HashMap<u32, Vec<WalOp>> = HashMap::new();
        for item in items {
            per_shard
                .entry(shard_of(item.id, self.shards))
                .or_default()
                .push(item.to_upsert());
        }
        for (shard, ops) in per_shard {
            let slot = &mut self.writers[shard as usize];
            if slot.is_none() {
                *slot = Some(SpillWriter::create(
                    &self.dir.join(format!("{shard:05}.spill")),
                )?);
            }
            slot.as_mut().expect("just created").append(&ops)?;
        }
        Ok(())
    }

    /// Rows in the fullest shard's spill.
    pub fn max_rows(&self) -> u64 {
        self.writers
            .iter()
            .flatten()
            .map(|w| w.rows())
            .max()
            .unwrap_or(0)
    }

    /// Bytes spilled over every shard.
    pub fn bytes(&self) -> u64 {
        self.writers.iter().flatten().map(|w| w.bytes()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.writers.iter().all(Option::is_none)
    }

    /// Closes every spill; returns the non-empty ones by shard.
    pub fn finish(self) -> Result<Vec<Spill>> {
        let mut spills = Vec::new();
        for (shard, writer) in self.writers.into_iter().enumerate() {
            if let Some(writer) = writer {
                let rows = writer.rows();
                spills.push(Spill {
                    shard: shard as u32,
                    path: writer.finish()?,
                    rows,
                });
            }
        }
        Ok(spills)
    }
}

/// A segment built from a spill, ready to upload and attach.
#[derive(Debug, Clone, PartialEq)]
pub struct BuiltSegment {
    pub dir: PathBuf,
    /// Distinct ids (the last row of an id that appeared twice wins).
    pub rows: usize,
    /// Every file of the segment's directory with its size and CRC32.
    pub files: Vec<CheckedFile>,
}

/// Builds the sealed segment (DiskANN disk index, ids, delete bitmap,
/// manifest, item table) of the rows in `spill` into `dir`, which must not
/// exist, encoding its rows with the job's codebook (trained from these
/// rows if the job has none yet, or if they drifted from it). Blocking and
/// CPU-heavy: call it from a blocking thread.
pub fn build_segment(
    spill: &Path,
    dir: &Path,
    dim: usize,
    metric: Metric,
    params: &IndexParams,
    codebooks: &CodebookStore,
) -> Result<BuiltSegment> {
    let ops = read_spill(spill)?;
    let mut last: HashMap<u64, usize> = HashMap::with_capacity(ops.len());
    for (at, op) in ops.iter().enumerate() {
        if let WalOp::Upsert { id, .. } = op {
            last.insert(*id, at);
        }
    }
    let mut ids = Vec::with_capacity(last.len());
    let mut vectors = Vec::with_capacity(last.len() * dim);
    let mut items = Vec::with_capacity(last.len());
    let mut thumbnails = Vec::new();
    for (at, op) in ops.into_iter().enumerate() {
        let WalOp::Upsert {
            id,
            label,
            weight,
            source,
            vector,
            thumbnail,
        } = op
        else {
            continue;
        };
        if last.get(&id) != Some(&at) {
            continue;
        }
        ids.push(id);
        vectors.extend_from_slice(&vector);
        if let Some(thumbnail) = thumbnail {
            thumbnails.push((id, thumbnail));
        }
        items.push(StoredItem {
            id,
            label,
            weight,
            source,
        });
    }
    engram_index::activity::timed(engram_index::activity::BuildKind::Bulk, ids.len(), || {
        let codebook = codebooks.for_rows(&vectors, dim, params)?;
        SealedSegment::build_with(dir, &ids, &vectors, dim, metric, params, &codebook)
    })?;
    drop(vectors);
    engram_store::write_row_tables(dir, &items, &mut thumbnails)?;
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().to_string();
        let (bytes, crc32) = engram_index::disk::manifest::file_crc32(&entry.path())?;
        files.push(CheckedFile { name, bytes, crc32 });
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    drop(items);
    release_free_memory();
    Ok(BuiltSegment {
        dir: dir.to_path_buf(),
        rows: ids.len(),
        files,
    })
}

/// Hands memory freed by a segment build back to the operating system.
/// Builds run on whichever blocking thread is free, and glibc keeps each
/// thread's freed memory in that thread's arena: without this, the
/// transient buffers of successive builds pile up in several arenas and
/// the process's footprint grows with the number of segments built.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of the allocator's own
    // arenas to the kernel; it touches no live allocation.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: u64, label: &str, x: f32) -> Item {
        Item {
            id,
            label: label.into(),
            weight: 1.0,
            source: Some(format!("file#{id}")),
            vector: vec![x, x * 0.5, 1.0 - x, 0.25],
            thumbnail: id
                .is_multiple_of(2)
                .then(|| format!("jpeg of {id}").into_bytes().into()),
        }
    }

    #[test]
    fn rows_are_routed_to_their_shard_and_built_into_segments() {
        let root = tempfile::tempdir().unwrap();
        let mut spills = ShardSpills::create(&root.path().join("spill"), 3).unwrap();
        let items: Vec<Item> = (0..300).map(|i| item(i, "a", i as f32 / 300.0)).collect();
        spills.append(&items[..200]).unwrap();
        spills.append(&items[200..]).unwrap();
        // Id 7 again with a new label: the later row wins.
        spills.append(&[item(7, "b", 0.9)]).unwrap();
        assert!(spills.max_rows() > 100);
        let finished = spills.finish().unwrap();
        assert_eq!(finished.iter().map(|s| s.rows).sum::<u64>(), 301);
        let params = IndexParams {
            pq_bytes: 4,
            build_threads: 1,
            ..IndexParams::default()
        };
        let codebooks = CodebookStore::open(&root.path().join("codebooks")).unwrap();
        let mut total = 0;
        for spill in &finished {
            let ops = read_spill(&spill.path).unwrap();
            assert!(ops.iter().all(
                |op| matches!(op, WalOp::Upsert { id, .. } if shard_of(*id, 3) == spill.shard)
            ));
            let dir = root.path().join(format!("seg-{}", spill.shard));
            let built =
                build_segment(&spill.path, &dir, 4, Metric::L2, &params, &codebooks).unwrap();
            total += built.rows;
            let items =
                engram_store::read_items(&dir.join(engram_store::SEGMENT_ITEMS_FILE)).unwrap();
            assert_eq!(items.len(), built.rows);
            if let Some(seven) = items.iter().find(|i| i.id == 7) {
                assert_eq!(&*seven.label, "b");
            }
            // The even rows came with thumbnails: the segment keeps them.
            let file = engram_store::ThumbnailFile::open(&dir.join(engram_store::THUMBNAILS_FILE))
                .unwrap()
                .unwrap();
            for item in &items {
                let got = file.get(item.id).unwrap();
                let want = item
                    .id
                    .is_multiple_of(2)
                    .then(|| format!("jpeg of {}", item.id).into_bytes());
                assert_eq!(got.map(|t| t.to_vec()), want, "item {}", item.id);
            }
            let names: Vec<&str> = built.files.iter().map(|f| f.name.as_str()).collect();
            assert!(
                names.contains(&engram_store::SEGMENT_ITEMS_FILE)
                    && names.contains(&engram_store::THUMBNAILS_FILE),
                "{names:?}"
            );
            let segment = SealedSegment::open(&dir, &params, true).unwrap();
            assert_eq!(segment.rows(), built.rows);
            assert_eq!(
                segment.manifest().codebook,
                Some(1),
                "one codebook, trained once, encodes every segment of the job"
            );
        }
        assert_eq!(total, 300);
    }
}
