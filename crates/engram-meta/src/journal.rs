//! An append-only file of checksummed records: how the Raft log store keeps
//! its entries, vote and commit point on disk.
//!
//! Frame: payload length u32 LE | crc32(payload) u32 LE | payload. A frame
//! cut short or failing its checksum at the very end of the file is the
//! trace of a crash during an append that was never acknowledged, and is
//! cut off; a bad frame followed by more data is corruption and refused.

use fs_err as fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

const FRAME_HEADER: usize = 8;
/// Larger frames are corruption, not data: metadata records are small.
const MAX_FRAME: usize = 256 << 20;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("{path}: corrupted record at byte {offset}: {reason}")]
    Corrupted {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub struct Journal {
    path: PathBuf,
    file: fs::File,
    len: u64,
}

impl Journal {
    /// Opens (creating) the journal at `path` and returns every intact
    /// record's payload, in order.
    pub fn open(path: &Path) -> Result<(Journal, Vec<Vec<u8>>), JournalError> {
        let mut file = fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let (records, good) = parse(path, &bytes)?;
        if good < bytes.len() as u64 {
            tracing::warn!(path = %path.display(), kept = good, dropped = bytes.len() as u64 - good,
                "cutting off a torn record at the end of the journal");
            file.file().set_len(good)?;
            file.sync_all()?;
        }
        file.seek(SeekFrom::End(0))?;
        Ok((
            Journal {
                path: path.to_path_buf(),
                file,
                len: good,
            },
            records,
        ))
    }

    /// Appends `payloads` and fsyncs; durable when this returns.
    pub fn append(&mut self, payloads: &[Vec<u8>]) -> Result<(), JournalError> {
        let mut buf = Vec::new();
        for p in payloads {
            frame(&mut buf, p);
        }
        let written = engram_store::fault::check_disk_writable()
            .and_then(|_| self.file.write_all(&buf))
            .and_then(|_| self.file.sync_data());
        if let Err(e) = written {
            // Leave no partial frame behind: the next append would follow
            // it, and a bad frame with data after it reads as corruption.
            let _ = self.file.file().set_len(self.len);
            return Err(e.into());
        }
        self.len += buf.len() as u64;
        Ok(())
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Replaces the whole journal with `payloads` (write aside, fsync,
    /// rename, fsync the directory), so that it stops growing forever.
    pub fn rewrite(&mut self, payloads: &[Vec<u8>]) -> Result<(), JournalError> {
        let tmp = self.path.with_extension("rewrite");
        let mut buf = Vec::new();
        for p in payloads {
            frame(&mut buf, p);
        }
        {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&buf)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            fs::File::open(dir)?.sync_all()?;
        }
        self.file = fs::OpenOptions::new().append(true).open(&self.path)?;
        self.len = buf.len() as u64;
        Ok(())
    }
}

fn frame(buf: &mut Vec<u8>, payload: &[u8]) {
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    buf.extend_from_slice(payload);
}

/// The intact records and the length of the prefix that holds them
/// (`path` names the file in errors). Public for the fuzz target.
pub fn parse(path: &Path, bytes: &[u8]) -> Result<(Vec<Vec<u8>>, u64), JournalError> {
    let mut records = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        if bytes.len() - at < FRAME_HEADER {
            break; // torn header at the tail
        }
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes"));
        let end = at + FRAME_HEADER + len;
        if len > MAX_FRAME {
            return Err(corrupted(path, at, format!("frame of {len} bytes")));
        }
        if end > bytes.len() {
            break; // torn payload at the tail
        }
        let payload = &bytes[at + FRAME_HEADER..end];
        if crc32fast::hash(payload) != crc {
            if end == bytes.len() {
                break; // torn last record
            }
            return Err(corrupted(path, at, "checksum mismatch".into()));
        }
        records.push(payload.to_vec());
        at = end;
    }
    Ok((records, at as u64))
}

fn corrupted(path: &Path, offset: usize, reason: String) -> JournalError {
    JournalError::Corrupted {
        path: path.to_path_buf(),
        offset: offset as u64,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payloads(n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| vec![i as u8; 10 + i]).collect()
    }

    #[test]
    fn torn_tail_is_cut_and_inner_corruption_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let (mut j, records) = Journal::open(&path).unwrap();
        assert!(records.is_empty());
        j.append(&payloads(3)).unwrap();
        drop(j);
        // A crash mid-append leaves half a frame.
        let full = fs::read(&path).unwrap();
        let mut torn = full.clone();
        torn.extend_from_slice(&[40, 0, 0, 0, 1, 2, 3, 4, 5]);
        fs::write(&path, &torn).unwrap();
        let (mut j, records) = Journal::open(&path).unwrap();
        assert_eq!(records, payloads(3));
        assert_eq!(fs::read(&path).unwrap(), full, "tail cut off");
        j.append(&[b"more".to_vec()]).unwrap();
        drop(j);
        // A flipped byte in the first record, with records after it, is refused.
        let mut bad = fs::read(&path).unwrap();
        bad[FRAME_HEADER + 2] ^= 0xff;
        fs::write(&path, &bad).unwrap();
        assert!(matches!(
            Journal::open(&path),
            Err(JournalError::Corrupted { offset: 0, .. })
        ));
    }

    #[test]
    fn rewrite_replaces_the_contents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let (mut j, _) = Journal::open(&path).unwrap();
        j.append(&payloads(5)).unwrap();
        j.rewrite(&payloads(2)).unwrap();
        j.append(&[b"x".to_vec()]).unwrap();
        drop(j);
        let (_, records) = Journal::open(&path).unwrap();
        let mut expected = payloads(2);
        expected.push(b"x".to_vec());
        assert_eq!(records, expected);
    }
}
