//! A sealed segment's delete bitmap file: one bit per row, then a CRC32,
//! replaced atomically (write, fsync, rename, fsync the directory).

use fs_err as fs;
use std::io::Write;
use std::path::Path;

use crate::error::{IndexError, Result};

pub(super) const DELETED_FILE: &str = "deleted.bin";

pub(super) fn write_deleted(dir: &Path, words: &[u64]) -> Result<()> {
    let mut body = Vec::with_capacity(words.len() * 8 + 4);
    for w in words {
        body.extend_from_slice(&w.to_le_bytes());
    }
    let crc = crc32fast::hash(&body);
    body.extend_from_slice(&crc.to_le_bytes());
    let tmp = dir.join("deleted.bin.tmp");
    {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(&body)?;
        file.sync_all()?;
    }
    fs::rename(&tmp, dir.join(DELETED_FILE))?;
    fs::File::open(dir)?.sync_all()?;
    Ok(())
}

pub(super) fn read_deleted(dir: &Path, rows: usize) -> Result<Vec<u64>> {
    let path = dir.join(DELETED_FILE);
    let bytes = fs::read(&path)?;
    let words = rows.div_ceil(64);
    let corrupted = |reason: &str| IndexError::Corrupted {
        file: path.clone(),
        reason: reason.to_string(),
    };
    if bytes.len() != words * 8 + 4 {
        return Err(corrupted("wrong length for the segment's rows"));
    }
    let (body, crc) = bytes.split_at(words * 8);
    if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
        return Err(corrupted("delete bitmap checksum mismatch"));
    }
    Ok(body
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect())
}

/// Whether `slot` is marked in `words`.
pub(super) fn is_deleted(words: &[u64], slot: u32) -> bool {
    words[slot as usize / 64] & (1 << (slot % 64)) != 0
}
