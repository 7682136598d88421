//! Small files written atomically with a CRC32 so that a torn or corrupted
//! file is refused on read instead of being trusted.
//!
//! Layout: `ENGRCHK1` | crc32(payload) u32 LE | payload length u64 LE | payload.

use fs_err as fs;
use std::io::Write;
use std::path::Path;

use crate::error::{Result, StoreError};

const MAGIC: &[u8; 8] = b"ENGRCHK1";
const HEADER: usize = 8 + 4 + 8;

/// Writes `payload` to `path` via a temporary file, fsync and rename, then
/// fsyncs the directory so that the rename itself is durable.
pub fn write_atomic(path: &Path, payload: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    crate::fault::check_disk_writable()?;
    {
        let mut file = fs::File::create(&tmp)?;
        let mut header = Vec::with_capacity(HEADER);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
        header.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        file.write_all(&header)?;
        file.write_all(payload)?;
        file.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Reads a file written by [`write_atomic`], verifying magic, length and CRC.
pub fn read_verified(path: &Path) -> Result<Vec<u8>> {
    let bytes = fs::read(path)?;
    if bytes.len() < HEADER || &bytes[..8] != MAGIC {
        return Err(StoreError::corrupted(
            path,
            0,
            "missing checksummed-file header",
        ));
    }
    let crc = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    let len = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
    let payload = &bytes[HEADER..];
    if payload.len() as u64 != len {
        return Err(StoreError::corrupted(
            path,
            12,
            format!("length says {len} bytes, file has {}", payload.len()),
        ));
    }
    if crc32fast::hash(payload) != crc {
        return Err(StoreError::corrupted(
            path,
            HEADER as u64,
            "checksum mismatch",
        ));
    }
    Ok(payload.to_vec())
}

/// Makes directory entries (creations, renames) durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_detects_any_flipped_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.bin");
        write_atomic(&path, b"hello engram").unwrap();
        assert_eq!(read_verified(&path).unwrap(), b"hello engram");
        let good = std::fs::read(&path).unwrap();
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x10;
            std::fs::write(&path, &bad).unwrap();
            assert!(
                matches!(read_verified(&path), Err(StoreError::Corrupted { .. })),
                "flip at byte {i} not detected"
            );
        }
        std::fs::write(&path, &good[..good.len() - 1]).unwrap();
        assert!(read_verified(&path).is_err());
    }
}
