//! A sealed segment's thumbnails: `thumbnails.bin` beside its item table,
//! holding the small JPEG of every row that was added as an image. Written
//! once when the segment is sealed or merged, removed with the segment, so
//! a thumbnail lives exactly as long as its row's vector does.
//!
//! Read one at a time (the decision page asks for the dozen neighbours it
//! shows), so nothing of it is held in RAM: a binary search over the
//! sorted index with positioned reads, then the one blob.
//!
//! File: `ENGRTHM1`, `count u64 LE`, `count` index entries sorted by id
//! (`id u64 | offset u64 | len u32 | crc32 u32`), then the blobs. Each
//! entry's CRC covers its id, offset, length and blob, so a flipped bit in
//! either is refused when that thumbnail is read, and never returns another
//! row's picture.

use fs_err as fs;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Result, StoreError};

/// The file's name inside a sealed segment's directory.
pub const THUMBNAILS_FILE: &str = "thumbnails.bin";

const MAGIC: &[u8; 8] = b"ENGRTHM1";
const HEADER: u64 = 16;
const ENTRY: u64 = 24;

fn entry_crc(id: u64, offset: u64, len: u32, blob: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&id.to_le_bytes());
    hasher.update(&offset.to_le_bytes());
    hasher.update(&len.to_le_bytes());
    hasher.update(blob);
    hasher.finalize()
}

fn corrupted(path: &Path, offset: u64, reason: impl Into<String>) -> StoreError {
    StoreError::Corrupted {
        path: path.to_path_buf(),
        offset,
        reason: reason.into(),
    }
}

/// Writes `thumbnails` (any order, ids unique) to `path` via a temporary
/// file, fsynced before the rename. Writes nothing when there are none.
pub fn write_thumbnails(path: &Path, thumbnails: &mut [(u64, Arc<[u8]>)]) -> Result<()> {
    if thumbnails.is_empty() {
        return Ok(());
    }
    crate::fault::check_disk_writable()?;
    thumbnails.sort_unstable_by_key(|(id, _)| *id);
    let count = thumbnails.len() as u64;
    let mut index = Vec::with_capacity((count * ENTRY) as usize + HEADER as usize);
    index.extend_from_slice(MAGIC);
    index.extend_from_slice(&count.to_le_bytes());
    let mut offset = HEADER + count * ENTRY;
    for (id, blob) in thumbnails.iter() {
        let len = blob.len() as u32;
        index.extend_from_slice(&id.to_le_bytes());
        index.extend_from_slice(&offset.to_le_bytes());
        index.extend_from_slice(&len.to_le_bytes());
        index.extend_from_slice(&entry_crc(*id, offset, len, blob).to_le_bytes());
        offset += u64::from(len);
    }
    let tmp = path.with_extension("tmp");
    {
        let mut file = std::io::BufWriter::new(fs::File::create(&tmp)?);
        file.write_all(&index)?;
        for (_, blob) in thumbnails.iter() {
            file.write_all(blob)?;
        }
        file.into_inner()
            .map_err(|e| StoreError::Io(e.into_error()))?
            .sync_all()?;
    }
    fs::rename(&tmp, path)?;
    Ok(())
}

/// A segment's thumbnail file, opened for reading.
pub struct ThumbnailFile {
    path: PathBuf,
    file: std::fs::File,
    count: u64,
}

impl ThumbnailFile {
    /// `None` when the segment has no thumbnails (no file).
    pub fn open(path: &Path) -> Result<Option<ThumbnailFile>> {
        let file = match std::fs::File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mut header = [0u8; HEADER as usize];
        file.read_exact_at(&mut header, 0)
            .map_err(|_| corrupted(path, 0, "shorter than its header"))?;
        if &header[..8] != MAGIC {
            return Err(corrupted(path, 0, "not a thumbnail file"));
        }
        let count = u64::from_le_bytes(header[8..].try_into().expect("8 bytes"));
        let length = file.metadata()?.len();
        if HEADER + count.saturating_mul(ENTRY) > length {
            return Err(corrupted(path, 8, "index longer than the file"));
        }
        Ok(Some(ThumbnailFile {
            path: path.to_path_buf(),
            file,
            count,
        }))
    }

    pub fn len(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn entry(&self, at: u64) -> Result<(u64, u64, u32, u32)> {
        let mut raw = [0u8; ENTRY as usize];
        let offset = HEADER + at * ENTRY;
        self.file
            .read_exact_at(&mut raw, offset)
            .map_err(|_| corrupted(&self.path, offset, "index entry cut short"))?;
        Ok((
            u64::from_le_bytes(raw[..8].try_into().expect("8 bytes")),
            u64::from_le_bytes(raw[8..16].try_into().expect("8 bytes")),
            u32::from_le_bytes(raw[16..20].try_into().expect("4 bytes")),
            u32::from_le_bytes(raw[20..].try_into().expect("4 bytes")),
        ))
    }

    fn blob(&self, id: u64, offset: u64, len: u32, crc: u32) -> Result<Arc<[u8]>> {
        if len as usize > crate::wal::MAX_THUMBNAIL_BYTES {
            return Err(corrupted(
                &self.path,
                offset,
                "thumbnail length out of range",
            ));
        }
        let mut blob = vec![0u8; len as usize];
        self.file
            .read_exact_at(&mut blob, offset)
            .map_err(|_| corrupted(&self.path, offset, "thumbnail cut short"))?;
        if entry_crc(id, offset, len, &blob) != crc {
            return Err(corrupted(
                &self.path,
                offset,
                format!("thumbnail of item {id} fails its checksum"),
            ));
        }
        Ok(blob.into())
    }

    /// The thumbnail of `id`, if the segment holds one.
    pub fn get(&self, id: u64) -> Result<Option<Arc<[u8]>>> {
        let (mut low, mut high) = (0u64, self.count);
        while low < high {
            let mid = low + (high - low) / 2;
            let (at, offset, len, crc) = self.entry(mid)?;
            match at.cmp(&id) {
                std::cmp::Ordering::Less => low = mid + 1,
                std::cmp::Ordering::Greater => high = mid,
                std::cmp::Ordering::Equal => return self.blob(id, offset, len, crc).map(Some),
            }
        }
        Ok(None)
    }

    /// Every thumbnail whose id `keep` accepts, in id order (a merge
    /// carrying the live rows' thumbnails into its new segment, a scan).
    pub fn read_where(&self, keep: impl Fn(u64) -> bool) -> Result<Vec<(u64, Arc<[u8]>)>> {
        let mut out = Vec::new();
        for at in 0..self.count {
            let (id, offset, len, crc) = self.entry(at)?;
            if keep(id) {
                out.push((id, self.blob(id, offset, len, crc)?));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn every_thumbnail_reads_back_and_absent_ids_are_none(
            blobs in prop::collection::btree_map(any::<u64>(), prop::collection::vec(any::<u8>(), 0..64), 0..40),
            probe in any::<u64>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(THUMBNAILS_FILE);
            let mut rows: Vec<(u64, Arc<[u8]>)> = blobs.iter().map(|(id, b)| (*id, Arc::from(b.as_slice()))).collect();
            rows.reverse();
            write_thumbnails(&path, &mut rows).unwrap();
            let Some(file) = ThumbnailFile::open(&path).unwrap() else {
                prop_assert!(blobs.is_empty());
                return Ok(());
            };
            prop_assert_eq!(file.len(), blobs.len() as u64);
            for (id, blob) in &blobs {
                let got = file.get(*id).unwrap();
                prop_assert_eq!(got.as_deref(), Some(blob.as_slice()));
            }
            prop_assert_eq!(file.get(probe).unwrap().map(|b| b.to_vec()), blobs.get(&probe).cloned());
            let odd = file.read_where(|id| id % 2 == 1).unwrap();
            let expected: Vec<u64> = blobs.keys().copied().filter(|id| id % 2 == 1).collect();
            prop_assert_eq!(odd.iter().map(|(id, _)| *id).collect::<Vec<_>>(), expected);
        }
    }

    #[test]
    fn a_flipped_bit_is_refused_not_shown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(THUMBNAILS_FILE);
        let mut rows: Vec<(u64, Arc<[u8]>)> =
            vec![(7, Arc::from(&b"seven"[..])), (9, Arc::from(&b"nine!"[..]))];
        write_thumbnails(&path, &mut rows).unwrap();
        let clean = std::fs::read(&path).unwrap();
        for at in [HEADER as usize + 2, HEADER as usize + 30, clean.len() - 1] {
            let mut bytes = clean.clone();
            bytes[at] ^= 0x10;
            std::fs::write(&path, &bytes).unwrap();
            let file = ThumbnailFile::open(&path).unwrap().unwrap();
            let seven = file.get(7);
            let nine = file.get(9);
            // Whichever entry the bit hit fails its checksum (or is no
            // longer found); neither returns bytes that are not its own.
            for (id, got, want) in [(7, seven, &b"seven"[..]), (9, nine, &b"nine!"[..])] {
                match got {
                    Ok(Some(b)) => assert_eq!(&*b, want, "item {id}, bit at {at}"),
                    Ok(None) | Err(StoreError::Corrupted { .. }) => {}
                    Err(e) => panic!("{e}"),
                }
            }
            assert!(
                file.get(7).is_err()
                    || file.get(9).is_err()
                    || file.get(7).unwrap().is_none()
                    || file.get(9).unwrap().is_none(),
                "bit at {at} went unnoticed"
            );
        }
        assert!(
            ThumbnailFile::open(&dir.path().join("none.bin"))
                .unwrap()
                .is_none()
        );
    }
}
