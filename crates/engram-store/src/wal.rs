//! The shard's write-ahead log.
//!
//! Every write is appended as one record and fsynced before it is
//! acknowledged, so an acknowledged write survives `kill -9` (and power loss,
//! as far as the disk honours fsync). A record holds a whole request's
//! operations on one shard, so a request is applied all or nothing.
//!
//! File: `ENGRWAL1`, then records
//! `len u32 LE | crc32(payload) u32 LE | crc32(first 8 header bytes) u32 LE | payload`.
//! On replay a record cut short at the end of the file is a write that was
//! never acknowledged (the process died mid-append) and is cut off. A header
//! or payload whose checksum fails is corruption and the log is refused: the
//! header's own checksum keeps a flipped length from passing for a short tail.
//!
//! Payload: `count u32`, then per operation a tag: 1 upsert (`id u64 |
//! weight f32 | label | source flag (+ source) | dim u32 | floats`), 3 the
//! same followed by a thumbnail (`len u32 | bytes`), 2 delete (`id u64`).
//! A record may start with its write's place in the shard's history, tag 4
//! (`epoch u64 | seq u64`, counted in `count`; see [`WritePosition`]).
//! Records written before positions existed have none and still read.

use fs_err as fs;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Result, StoreError};

const MAGIC: &[u8; 8] = b"ENGRWAL1";
const RECORD_HEADER: usize = 12;
/// Upper bound on one record; larger lengths can only come from corruption.
const MAX_RECORD_BYTES: usize = 1 << 30;

const TAG_UPSERT: u8 = 1;
const TAG_DELETE: u8 = 2;
/// An upsert followed by its thumbnail (`len u32 | bytes`). A tag of its
/// own keeps every log written before thumbnails readable as it was.
const TAG_UPSERT_THUMBNAIL: u8 = 3;
/// The record's [`WritePosition`] (`epoch u64 | seq u64`); first if present.
const TAG_POSITION: u8 = 4;
/// Upper bound on one thumbnail; larger lengths can only come from corruption.
pub const MAX_THUMBNAIL_BYTES: usize = 1 << 20;

/// Where a write sits in its shard's history: the placement epoch of the
/// primary that ordered it and its sequence number in the shard (one per
/// replicated write, counted by the primary). Every copy logs a write at
/// the position its primary gave it, so two copies holding a write at the
/// same position hold the same history up to it (one primary per epoch,
/// and copies take writes in order): a copy that fell behind needs only
/// the writes after its position, which is what delta catch-up sends.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct WritePosition {
    pub epoch: u64,
    pub seq: u64,
}

impl WritePosition {
    /// The position after this one, ordered under `epoch`.
    pub fn next(self, epoch: u64) -> WritePosition {
        WritePosition {
            epoch,
            seq: self.seq + 1,
        }
    }
}

impl std::fmt::Display for WritePosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.seq, self.epoch)
    }
}

/// One record of the log as read back: its operations and the position of
/// the write it belongs to (`None`: a write outside the shard's history,
/// such as a chunk of a full transfer, or a record from before positions).
#[derive(Debug, Clone, PartialEq)]
pub struct LoggedRecord {
    pub position: Option<WritePosition>,
    pub ops: WalRecord,
}

/// One operation on a shard.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum WalOp {
    Upsert {
        id: u64,
        label: Arc<str>,
        weight: f32,
        source: Option<Arc<str>>,
        vector: Vec<f32>,
        /// A small JPEG of the image the item was added as (the decision
        /// page shows it), `None` for items added as vectors. It lives and
        /// dies with the row: in this log, then in the sealed segment that
        /// holds the row (`thumbnails.bin`).
        thumbnail: Option<Arc<[u8]>>,
    },
    Delete {
        id: u64,
    },
}

/// The operations of one acknowledged write, applied together.
pub type WalRecord = Vec<WalOp>;

/// An open log, positioned at its end.
pub struct Wal {
    path: PathBuf,
    file: fs::File,
    bytes: u64,
    /// Where each record with a position ends, in log order: what a delta
    /// after a position reads from (see [`Wal::read_after`]) without
    /// reading the log before it.
    positions: Vec<(WritePosition, u64)>,
}

impl Wal {
    /// Opens (or creates) the log at `path` and returns it with every record
    /// it holds, oldest first.
    pub fn open(path: &Path) -> Result<(Wal, Vec<LoggedRecord>)> {
        let existing = match fs::read(path) {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e.into()),
        };
        let (framed, valid_len) = match &existing {
            Some(bytes) => replay_framed(path, bytes)?,
            None => (Vec::new(), 0),
        };
        let positions = framed
            .iter()
            .filter_map(|(end, record)| Some((record.position?, *end)))
            .collect();
        let records = framed.into_iter().map(|(_, record)| record).collect();
        let mut file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)?;
        if valid_len == 0 {
            file.set_len(0)?;
            file.write_all(MAGIC)?;
            file.sync_all()?;
            if let Some(dir) = path.parent() {
                crate::checksummed::sync_dir(dir)?;
            }
        } else if existing
            .as_ref()
            .is_some_and(|b| b.len() as u64 > valid_len)
        {
            tracing::warn!(path = %path.display(), kept_bytes = valid_len, "cutting off an unacknowledged partial record at the end of the WAL");
            file.set_len(valid_len)?;
            file.sync_all()?;
        }
        let bytes = valid_len.max(MAGIC.len() as u64);
        use std::io::Seek;
        file.seek(std::io::SeekFrom::Start(bytes))?;
        Ok((
            Wal {
                path: path.to_path_buf(),
                file,
                bytes,
                positions,
            },
            records,
        ))
    }

    /// Appends one record and makes it durable. Only after this returns may
    /// the write be acknowledged.
    pub fn append(&mut self, position: Option<WritePosition>, record: &WalRecord) -> Result<()> {
        let payload = encode_positioned(position, record);
        let mut frame = Vec::with_capacity(RECORD_HEADER + payload.len());
        frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        frame.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        let header_crc = crc32fast::hash(&frame[0..8]);
        frame.extend_from_slice(&header_crc.to_le_bytes());
        frame.extend_from_slice(&payload);
        if let Err(e) = crate::fault::check_disk_writable()
            .and_then(|_| self.file.write_all(&frame))
            .and_then(|_| self.file.sync_data())
        {
            // Leave no half record behind for the next append to follow.
            let _ = self.file.set_len(self.bytes);
            use std::io::Seek;
            let _ = self.file.seek(std::io::SeekFrom::Start(self.bytes));
            return Err(e.into());
        }
        self.bytes += frame.len() as u64;
        if let Some(position) = position {
            self.positions.push((position, self.bytes));
        }
        Ok(())
    }

    /// The records after the last one logged at `after` (`None`: every
    /// record), read back from the file; `None` if no record is at `after`.
    /// Reads only the log after that record.
    pub fn read_after(&self, after: Option<WritePosition>) -> Result<Option<Vec<LoggedRecord>>> {
        let start = match after {
            None => MAGIC.len() as u64,
            Some(after) => match self.positions.iter().rev().find(|(p, _)| *p == after) {
                Some((_, end)) => *end,
                None => return Ok(None),
            },
        };
        let mut tail = vec![0u8; (self.bytes - start) as usize];
        use std::os::unix::fs::FileExt;
        self.file.file().read_exact_at(&mut tail, start)?;
        let (framed, _) = frames(&self.path, &tail, 0, start)?;
        Ok(Some(framed.into_iter().map(|(_, record)| record).collect()))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size of the log in bytes.
    pub fn len_bytes(&self) -> u64 {
        self.bytes
    }
}

/// Decodes a WAL's bytes: the intact records and the length of the prefix
/// that holds them; a torn last record is left out, a bad record followed
/// by more data is corruption (`path` names the file in errors). Public
/// for the fuzz target.
pub fn replay(path: &Path, bytes: &[u8]) -> Result<(Vec<LoggedRecord>, u64)> {
    let (framed, valid) = replay_framed(path, bytes)?;
    Ok((
        framed.into_iter().map(|(_, record)| record).collect(),
        valid,
    ))
}

/// [`replay`] with the offset each record ends at.
fn replay_framed(path: &Path, bytes: &[u8]) -> Result<(Vec<(u64, LoggedRecord)>, u64)> {
    if bytes.is_empty() {
        return Ok((Vec::new(), 0));
    }
    if bytes.len() < MAGIC.len() {
        if MAGIC.starts_with(bytes) {
            return Ok((Vec::new(), 0));
        }
        return Err(StoreError::corrupted(path, 0, "not a WAL file"));
    }
    if &bytes[..MAGIC.len()] != MAGIC {
        return Err(StoreError::corrupted(path, 0, "not a WAL file (bad magic)"));
    }
    frames(path, bytes, MAGIC.len(), 0)
}

/// Decodes the records of `bytes` from `offset` on, each with the offset
/// it ends at plus `base` (where `bytes` starts in the file, for offsets
/// and errors); returns them and where the intact records end.
fn frames(
    path: &Path,
    bytes: &[u8],
    mut offset: usize,
    base: u64,
) -> Result<(Vec<(u64, LoggedRecord)>, u64)> {
    let mut records = Vec::new();
    while offset < bytes.len() {
        let at = base + offset as u64;
        let rest = &bytes[offset..];
        if rest.iter().all(|b| *b == 0) {
            // Space the file system extended but the crash left unwritten.
            break;
        }
        if rest.len() < RECORD_HEADER {
            break;
        }
        let len = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
        let header_crc = u32::from_le_bytes(rest[8..12].try_into().expect("4 bytes"));
        if crc32fast::hash(&rest[0..8]) != header_crc {
            return Err(StoreError::corrupted(
                path,
                at,
                "WAL record header checksum mismatch",
            ));
        }
        if len > MAX_RECORD_BYTES {
            return Err(StoreError::corrupted(
                path,
                at,
                format!("record length {len} is impossible"),
            ));
        }
        if rest.len() < RECORD_HEADER + len {
            // Cut short by a crash before the append was acknowledged.
            break;
        }
        let payload = &rest[RECORD_HEADER..RECORD_HEADER + len];
        if crc32fast::hash(payload) != crc {
            return Err(StoreError::corrupted(
                path,
                at,
                "WAL record checksum mismatch",
            ));
        }
        let record =
            decode_positioned(payload).map_err(|reason| StoreError::corrupted(path, at, reason))?;
        offset += RECORD_HEADER + len;
        records.push((base + offset as u64, record));
    }
    Ok((records, base + offset as u64))
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// A WAL record's payload: [`encode`] with the write's position first.
fn encode_positioned(position: Option<WritePosition>, record: &WalRecord) -> Vec<u8> {
    let Some(position) = position else {
        return encode(record);
    };
    let mut out = Vec::with_capacity(21);
    out.extend_from_slice(&(record.len() as u32 + 1).to_le_bytes());
    out.push(TAG_POSITION);
    out.extend_from_slice(&position.epoch.to_le_bytes());
    out.extend_from_slice(&position.seq.to_le_bytes());
    encode_ops(&mut out, record);
    out
}

pub(crate) fn encode(record: &WalRecord) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(record.len() as u32).to_le_bytes());
    encode_ops(&mut out, record);
    out
}

fn encode_ops(out: &mut Vec<u8>, record: &WalRecord) {
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
                out.reserve(32 + label.len() + vector.len() * 4);
                out.push(if thumbnail.is_some() {
                    TAG_UPSERT_THUMBNAIL
                } else {
                    TAG_UPSERT
                });
                out.extend_from_slice(&id.to_le_bytes());
                out.extend_from_slice(&weight.to_le_bytes());
                put_str(out, label);
                match source {
                    Some(s) => {
                        out.push(1);
                        put_str(out, s);
                    }
                    None => out.push(0),
                }
                out.extend_from_slice(&(vector.len() as u32).to_le_bytes());
                for x in vector {
                    out.extend_from_slice(&x.to_le_bytes());
                }
                if let Some(thumbnail) = thumbnail {
                    out.extend_from_slice(&(thumbnail.len() as u32).to_le_bytes());
                    out.extend_from_slice(thumbnail);
                }
            }
            WalOp::Delete { id } => {
                out.push(TAG_DELETE);
                out.extend_from_slice(&id.to_le_bytes());
            }
        }
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    /// Labels and sources decoded so far, shared instead of allocated
    /// again: a record of a million items usually names a few hundred
    /// labels (one allocation each, not one per item). Only for records
    /// of several operations (see [`decode_ops`]): replaying a WAL of
    /// single writes would build a map per record for nothing.
    strings: Option<HashMap<&'a [u8], Arc<str>, foldhash::fast::RandomState>>,
}

/// Most distinct strings a [`Reader`] shares (sources may all differ).
const SHARED_STRINGS: usize = 4096;

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader {
            bytes,
            at: 0,
            strings: None,
        }
    }
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.bytes.len())
            .ok_or("record ends early")?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> std::result::Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn f32(&mut self) -> std::result::Result<f32, String> {
        Ok(f32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn str(&mut self) -> std::result::Result<Arc<str>, String> {
        let len = self.u32()? as usize;
        let bytes = self.take(len)?;
        if let Some(shared) = self.strings.as_ref().and_then(|s| s.get(bytes)) {
            return Ok(shared.clone());
        }
        let decoded: Arc<str> = std::str::from_utf8(bytes)
            .map(Arc::from)
            .map_err(|_| "label or source is not UTF-8".to_string())?;
        if let Some(strings) = self.strings.as_mut().filter(|s| s.len() < SHARED_STRINGS) {
            strings.insert(bytes, decoded.clone());
        }
        Ok(decoded)
    }
}

/// Decodes one WAL record's payload, its position included. Public for
/// the fuzz target.
pub fn decode_positioned(payload: &[u8]) -> std::result::Result<LoggedRecord, String> {
    let mut r = Reader::new(payload);
    let mut count = r.u32()? as usize;
    let mut position = None;
    if count > 0 && payload.get(4) == Some(&TAG_POSITION) {
        r.u8()?;
        position = Some(WritePosition {
            epoch: r.u64()?,
            seq: r.u64()?,
        });
        count -= 1;
    }
    let ops = decode_ops(&mut r, count)?;
    Ok(LoggedRecord { position, ops })
}

/// Decodes a payload of operations only (item tables, spills). Public for
/// the fuzz target.
pub fn decode(payload: &[u8]) -> std::result::Result<WalRecord, String> {
    let mut r = Reader::new(payload);
    let count = r.u32()? as usize;
    decode_ops(&mut r, count)
}

fn decode_ops(r: &mut Reader<'_>, count: usize) -> std::result::Result<WalRecord, String> {
    let payload = r.bytes;
    if count > 1 {
        r.strings = Some(HashMap::default());
    }
    let mut ops = Vec::with_capacity(count.min(payload.len()));
    for _ in 0..count {
        match r.u8()? {
            tag @ (TAG_UPSERT | TAG_UPSERT_THUMBNAIL) => {
                let id = r.u64()?;
                let weight = r.f32()?;
                let label = r.str()?;
                let source = match r.u8()? {
                    0 => None,
                    1 => Some(r.str()?),
                    other => return Err(format!("bad source flag {other}")),
                };
                let dim = r.u32()? as usize;
                let raw = r.take(dim.checked_mul(4).ok_or("dimension overflows")?)?;
                let vector = raw
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                    .collect();
                let thumbnail = if tag == TAG_UPSERT_THUMBNAIL {
                    let len = r.u32()? as usize;
                    if len > MAX_THUMBNAIL_BYTES {
                        return Err(format!("thumbnail of {len} bytes"));
                    }
                    Some(Arc::from(r.take(len)?))
                } else {
                    None
                };
                ops.push(WalOp::Upsert {
                    id,
                    label,
                    weight,
                    source,
                    vector,
                    thumbnail,
                });
            }
            TAG_DELETE => ops.push(WalOp::Delete { id: r.u64()? }),
            other => return Err(format!("unknown operation tag {other}")),
        }
    }
    if r.at != payload.len() {
        return Err("trailing bytes after the last operation".into());
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn upsert(id: u64, label: &str, vector: Vec<f32>) -> WalOp {
        WalOp::Upsert {
            id,
            label: label.into(),
            weight: 1.5,
            source: Some("s3://bucket/file.parquet#3".into()),
            vector,
            thumbnail: None,
        }
    }

    fn arb_record() -> impl Strategy<Value = WalRecord> {
        prop::collection::vec(
            prop_oneof![
                (
                    any::<u64>(),
                    "[a-z]{0,8}",
                    prop::option::of("[ -~]{0,12}"),
                    prop::collection::vec(-1e3f32..1e3, 0..6),
                    0f32..5.0,
                    prop::option::of(prop::collection::vec(any::<u8>(), 0..40)),
                )
                    .prop_map(|(id, label, source, vector, weight, thumbnail)| {
                        WalOp::Upsert {
                            id,
                            label: label.into(),
                            weight,
                            source: source.map(Into::into),
                            vector,
                            thumbnail: thumbnail.map(Into::into),
                        }
                    }),
                any::<u64>().prop_map(|id| WalOp::Delete { id }),
            ],
            0..5,
        )
    }

    fn ops_of(records: Vec<LoggedRecord>) -> Vec<WalRecord> {
        records.into_iter().map(|r| r.ops).collect()
    }

    proptest! {
        #[test]
        fn encode_decode_round_trip(record in arb_record()) {
            prop_assert_eq!(decode(&encode(&record)).unwrap(), record);
        }

        #[test]
        fn positioned_records_round_trip(
            record in arb_record(),
            position in prop::option::of((any::<u64>(), any::<u64>())),
        ) {
            let position = position.map(|(epoch, seq)| WritePosition { epoch, seq });
            let logged = decode_positioned(&encode_positioned(position, &record)).unwrap();
            prop_assert_eq!(logged, LoggedRecord { position, ops: record });
        }
    }

    #[test]
    fn records_after_a_position_are_read_from_where_it_ends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.log");
        let (mut wal, _) = Wal::open(&path).unwrap();
        let at = |seq| Some(WritePosition { epoch: 2, seq });
        let op = |id| vec![WalOp::Delete { id }];
        wal.append(at(1), &op(1)).unwrap();
        wal.append(at(2), &op(2)).unwrap();
        wal.append(at(2), &op(3)).unwrap();
        wal.append(None, &op(4)).unwrap();
        wal.append(at(3), &op(5)).unwrap();
        let ids = |records: Option<Vec<LoggedRecord>>| -> Vec<WalRecord> {
            ops_of(records.expect("a record at that position"))
        };
        assert_eq!(ids(wal.read_after(None).unwrap()).len(), 5);
        // After the last record of a write logged in parts.
        assert_eq!(ids(wal.read_after(at(2)).unwrap()), vec![op(4), op(5)]);
        assert_eq!(ids(wal.read_after(at(3)).unwrap()), Vec::<WalRecord>::new());
        assert_eq!(wal.read_after(at(9)).unwrap(), None);
        // The same once reopened (the index is rebuilt from the file).
        drop(wal);
        let (wal, _) = Wal::open(&path).unwrap();
        assert_eq!(ids(wal.read_after(at(1)).unwrap()).len(), 4);
        assert_eq!(ids(wal.read_after(at(2)).unwrap()), vec![op(4), op(5)]);
    }

    #[test]
    fn positions_are_logged_with_records_and_older_records_read_without() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.log");
        let (mut wal, _) = Wal::open(&path).unwrap();
        let at = |seq| Some(WritePosition { epoch: 3, seq });
        let a = vec![upsert(1, "cat", vec![1.0, 2.0])];
        let b = vec![WalOp::Delete { id: 1 }];
        wal.append(None, &a).unwrap();
        wal.append(at(7), &b).unwrap();
        // A position with no operations: a transfer's end.
        wal.append(at(8), &Vec::new()).unwrap();
        drop(wal);
        let records = Wal::open(&path).unwrap().1;
        let positions: Vec<_> = records.iter().map(|r| r.position).collect();
        assert_eq!(positions, vec![None, at(7), at(8)]);
        assert_eq!(ops_of(records), vec![a.clone(), b, Vec::new()]);
        // A record without a position is byte for byte what was written
        // before positions existed (and what item tables and spills hold).
        assert_eq!(encode_positioned(None, &a), encode(&a));
        // Item tables and spills never hold positions.
        assert!(decode(&encode_positioned(at(1), &a)).is_err());
    }

    #[test]
    fn replays_appended_records_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.log");
        let (mut wal, records) = Wal::open(&path).unwrap();
        assert!(records.is_empty());
        let a = vec![
            upsert(1, "cat", vec![1.0, 2.0]),
            upsert(2, "dog", vec![3.0, 4.0]),
        ];
        let b = vec![WalOp::Delete { id: 1 }];
        wal.append(None, &a).unwrap();
        wal.append(None, &b).unwrap();
        drop(wal);
        let (mut wal, records) = Wal::open(&path).unwrap();
        assert_eq!(ops_of(records), vec![a.clone(), b.clone()]);
        let c = vec![upsert(3, "emu", vec![0.0, 0.5])];
        wal.append(None, &c).unwrap();
        drop(wal);
        assert_eq!(ops_of(Wal::open(&path).unwrap().1), vec![a, b, c]);
    }

    #[test]
    fn cuts_off_a_partial_tail_but_refuses_a_corrupted_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.log");
        let (mut wal, _) = Wal::open(&path).unwrap();
        let a = vec![upsert(1, "cat", vec![1.0, 2.0])];
        let b = vec![upsert(2, "dog", vec![3.0, 4.0])];
        wal.append(None, &a).unwrap();
        wal.append(None, &b).unwrap();
        drop(wal);
        let full = std::fs::read(&path).unwrap();

        // Every possible crash point inside the last record loses only that
        // record, and the log stays appendable.
        let first_end = MAGIC.len() + RECORD_HEADER + encode(&a).len();
        for cut in first_end..full.len() {
            std::fs::write(&path, &full[..cut]).unwrap();
            let (mut wal, records) = Wal::open(&path).unwrap();
            assert_eq!(ops_of(records), vec![a.clone()], "cut at {cut}");
            wal.append(None, &b).unwrap();
            drop(wal);
            assert_eq!(
                ops_of(Wal::open(&path).unwrap().1),
                vec![a.clone(), b.clone()]
            );
        }

        // Zeroes after the last record (extended but unwritten) are ignored.
        let mut padded = full.clone();
        padded.extend_from_slice(&[0u8; 100]);
        std::fs::write(&path, &padded).unwrap();
        assert_eq!(Wal::open(&path).unwrap().1.len(), 2);

        // A flipped bit anywhere in a complete record, header included, is refused.
        for i in MAGIC.len()..first_end {
            let mut bad = full.clone();
            bad[i] ^= 0x01;
            std::fs::write(&path, &bad).unwrap();
            assert!(
                matches!(Wal::open(&path), Err(StoreError::Corrupted { .. })),
                "flip at {i} accepted"
            );
        }
        std::fs::write(&path, b"NOTAWAL!garbage").unwrap();
        assert!(matches!(
            Wal::open(&path),
            Err(StoreError::Corrupted { .. })
        ));
    }

    #[test]
    fn thumbnails_have_their_own_tag_and_old_records_still_read() {
        let plain = upsert(5, "a", vec![1.0]);
        let bytes = encode(&vec![plain.clone()]);
        assert_eq!(
            bytes[4], TAG_UPSERT,
            "a record without a thumbnail is written as before"
        );
        assert_eq!(decode(&bytes).unwrap(), vec![plain.clone()]);
        let WalOp::Upsert {
            id,
            label,
            weight,
            source,
            vector,
            ..
        } = plain
        else {
            unreachable!()
        };
        let with = WalOp::Upsert {
            id,
            label,
            weight,
            source,
            vector,
            thumbnail: Some(Arc::from(&b"jpeg"[..])),
        };
        let bytes = encode(&vec![with.clone()]);
        assert_eq!(bytes[4], TAG_UPSERT_THUMBNAIL);
        assert_eq!(decode(&bytes).unwrap(), vec![with]);
        // A length no thumbnail has is corruption, not an allocation.
        let mut huge = bytes.clone();
        let at = huge.len() - 4 - 4;
        huge[at..at + 4].copy_from_slice(&(u32::MAX).to_le_bytes());
        assert!(decode(&huge).unwrap_err().contains("thumbnail"));
    }
}
