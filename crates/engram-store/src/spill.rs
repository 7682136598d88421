//! Spill files: a bulk ingestion job's rows for one shard, parked on local
//! disk until there are enough of them to build a sealed segment.
//!
//! A spill is scratch, not a log: nothing is fsynced (a job that dies
//! re-reads its input from its last checkpoint and writes new spills), but
//! every frame carries a CRC32 so that a damaged spill is refused rather
//! than built into a segment. Frames: `len u32 LE | crc32 u32 LE | payload`
//! with the payload encoded as WAL records are.

use fs_err as fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{Result, StoreError};
use crate::wal::{WalOp, WalRecord, decode, encode};

/// Appends records to one spill file.
pub struct SpillWriter {
    path: PathBuf,
    out: BufWriter<fs::File>,
    rows: u64,
    bytes: u64,
}

impl SpillWriter {
    /// Creates (or truncates) the spill at `path`.
    pub fn create(path: &Path) -> Result<SpillWriter> {
        Ok(SpillWriter {
            path: path.to_path_buf(),
            out: BufWriter::with_capacity(256 * 1024, fs::File::create(path)?),
            rows: 0,
            bytes: 0,
        })
    }

    pub fn append(&mut self, record: &WalRecord) -> Result<()> {
        if record.is_empty() {
            return Ok(());
        }
        let payload = encode(record);
        self.out.write_all(&(payload.len() as u32).to_le_bytes())?;
        self.out
            .write_all(&crc32fast::hash(&payload).to_le_bytes())?;
        self.out.write_all(&payload)?;
        self.rows += record.len() as u64;
        self.bytes += 8 + payload.len() as u64;
        Ok(())
    }

    /// Operations appended so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Flushes and closes the spill; returns its path.
    pub fn finish(mut self) -> Result<PathBuf> {
        self.out.flush()?;
        Ok(self.path)
    }
}

/// Every operation in the spill at `path`, in the order appended.
pub fn read_spill(path: &Path) -> Result<Vec<WalOp>> {
    let bytes = fs::read(path)?;
    let mut ops = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let corrupted = |reason: &str| StoreError::corrupted(path, at as u64, reason);
        let header = bytes
            .get(at..at + 8)
            .ok_or_else(|| corrupted("frame header cut short"))?;
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        let payload = bytes
            .get(at + 8..at + 8 + len)
            .ok_or_else(|| corrupted("frame cut short"))?;
        if crc32fast::hash(payload) != crc {
            return Err(corrupted("frame checksum mismatch"));
        }
        ops.extend(decode(payload).map_err(|reason| corrupted(&reason))?);
        at += 8 + len;
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upsert(id: u64) -> WalOp {
        WalOp::Upsert {
            id,
            label: format!("l{id}").into(),
            weight: 1.0,
            source: id.is_multiple_of(2).then(|| "s".into()),
            vector: vec![id as f32, 0.5],
            thumbnail: None,
        }
    }

    #[test]
    fn spilled_rows_read_back_in_order_and_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.spill");
        let mut spill = SpillWriter::create(&path).unwrap();
        spill.append(&vec![upsert(1), upsert(2)]).unwrap();
        spill.append(&vec![]).unwrap();
        spill.append(&vec![upsert(3)]).unwrap();
        assert_eq!(spill.rows(), 3);
        let path = spill.finish().unwrap();
        assert_eq!(
            read_spill(&path).unwrap(),
            vec![upsert(1), upsert(2), upsert(3)]
        );

        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 3;
        bytes[last] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            read_spill(&path),
            Err(StoreError::Corrupted { .. })
        ));
        bytes.truncate(bytes.len() - 2);
        std::fs::write(&path, &bytes).unwrap();
        assert!(read_spill(&path).is_err());
    }
}
