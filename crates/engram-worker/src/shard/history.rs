//! A shard's place in its history: every write is logged at a
//! [`WritePosition`] (the epoch its primary ordered it under and its
//! sequence number), so a copy knows exactly which writes it holds, and a
//! primary can send a copy that fell behind only the writes after its
//! position, read back from its own WAL (a delta), instead of the whole
//! shard.
//!
//! Two copies at the same position hold the same history up to it: one
//! primary orders writes per epoch, a copy takes them in order (a write
//! that does not follow its position is refused, see [`Stamp::At`]), and
//! a copy rebuilt by a full transfer takes the position its primary had
//! when the transfer was read. A copy whose position is unknown (being
//! rebuilt, or written before positions existed) never matches.
//!
//! The current WAL holds the history since its start (`shard.bin` records
//! that start: seals and compactions rotate the WAL, an attached segment
//! starts a new one at its own position since its rows are in no record).
//! A copy behind that start, or on another branch of the history (it took
//! a write from a primary that was deposed before replicating it), gets
//! no delta and is rebuilt by a full transfer.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use engram_store::{WalRecord, WritePosition};

use super::{Shard, WalState};
use crate::error::{Result, WorkerError};

/// Which position a write is logged at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stamp {
    /// The next sequence number in the current epoch: a shard that orders
    /// its own writes (the embedded node, tests).
    Next,
    /// The position a primary gave the write. Refused unless it follows
    /// this copy's position (or is that position: a primary logs one
    /// write's parts, split by its deletes, as several records).
    At(WritePosition),
    /// A write outside the shard's history (a chunk of a full transfer):
    /// the position becomes unknown until the transfer ends.
    Unordered,
}

impl Stamp {
    /// The position a write stamped so is logged at, given the shard's.
    pub(super) fn resolve(
        self,
        shard: u32,
        held: Option<WritePosition>,
    ) -> Result<Option<WritePosition>> {
        match self {
            Stamp::Next => Ok(held.map(|p| p.next(p.epoch))),
            Stamp::Unordered => Ok(None),
            Stamp::At(sent) => match held {
                Some(held) if sent != held && sent.seq != held.seq + 1 => {
                    Err(WorkerError::OutOfOrder { shard, sent, held })
                }
                _ => Ok(Some(sent)),
            },
        }
    }
}

/// The writes a copy at `from` lacks, oldest first, each as one record of
/// operations at its position (what the primary replicated for it).
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryDelta {
    pub from: WritePosition,
    pub writes: Vec<(WritePosition, WalRecord)>,
}

impl HistoryDelta {
    /// Operations in the delta.
    pub fn ops(&self) -> usize {
        self.writes.iter().map(|(_, ops)| ops.len()).sum()
    }
}

/// Keeps the shard's WAL from rotating while it lives (see
/// [`Shard::pin_history`]).
pub struct HistoryPin(Arc<AtomicUsize>);

impl Drop for HistoryPin {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How far past the seal threshold the growing segment may grow while the
/// history is pinned before a seal happens anyway (and the transfer that
/// pinned it falls back to holding the writes).
const PINNED_GROWTH: usize = 4;

impl Shard {
    /// Defers seals and WAL rewrites (every WAL rotation but an attach's)
    /// until the pin is dropped, so that the writes after a position read
    /// now stay in the WAL: a full transfer sends the rows it read while
    /// writes go on, then those writes as a delta. Past
    /// [`PINNED_GROWTH`] times the seal threshold the growing segment is
    /// sealed anyway.
    pub fn pin_history(&self) -> HistoryPin {
        self.history_pins.fetch_add(1, Ordering::SeqCst);
        HistoryPin(self.history_pins.clone())
    }

    /// Whether a transfer has pinned the history: the WAL is not rewritten.
    pub(super) fn history_pinned(&self) -> bool {
        self.history_pins.load(Ordering::SeqCst) > 0
    }

    /// Whether sealing a growing segment of `growing` rows waits for a pin
    /// to go (up to [`PINNED_GROWTH`] times the threshold).
    pub(super) fn seal_deferred(&self, growing: usize) -> bool {
        self.history_pinned() && growing < PINNED_GROWTH * self.params.seal_threshold.max(1)
    }

    /// The position of the last write this copy applied (`None`: unknown).
    pub fn position(&self) -> Option<WritePosition> {
        self.wal.lock().position
    }

    /// Appends `ops` at the position `stamp` gives and adopts it; the
    /// caller holds the WAL lock and applies `ops` next.
    pub(super) fn append_locked(
        &self,
        wal: &mut WalState,
        stamp: Stamp,
        ops: &WalRecord,
    ) -> Result<()> {
        let position = stamp.resolve(self.number, wal.position)?;
        wal.wal.append(position, ops)?;
        wal.position = position;
        Ok(())
    }

    /// Records that this copy now holds the history up to `position` (the
    /// end of a full transfer read at that position), durably.
    pub fn set_position(&self, position: WritePosition) -> Result<()> {
        let mut wal = self.wal.lock();
        wal.wal.append(Some(position), &Vec::new())?;
        wal.position = Some(position);
        Ok(())
    }

    /// The writes after `from` as the current WAL holds them, or `None`
    /// when it cannot tell them: `from` is not a position of this copy's
    /// history that the WAL still covers (before its start, ahead of this
    /// copy, on another branch), or this copy's own position is unknown.
    pub fn history_since(&self, from: WritePosition) -> Result<Option<HistoryDelta>> {
        let (records, held) = {
            let wal = self.wal.lock();
            let Some(held) = wal.position else {
                return Ok(None);
            };
            if from == held {
                return Ok(Some(HistoryDelta {
                    from,
                    writes: Vec::new(),
                }));
            }
            if from.seq > held.seq {
                return Ok(None);
            }
            // Only the log after `from` is read (or all of it when the WAL
            // starts there).
            let after = (wal.manifest.position != Some(from)).then_some(from);
            match wal.wal.read_after(after)? {
                Some(records) => (records, held),
                None => return Ok(None),
            }
        };
        let mut last = from;
        let mut writes: Vec<(WritePosition, WalRecord)> = Vec::new();
        for record in records {
            let Some(position) = record.position else {
                // A write outside the history after `from`.
                return Ok(None);
            };
            if position == last {
                // The rest of a write logged as several records (or, at
                // `from` itself, what the copy already holds).
                if let Some((_, ops)) = writes.last_mut() {
                    ops.extend(record.ops);
                }
            } else if position.seq == last.seq + 1 {
                writes.push((position, record.ops));
                last = position;
            } else {
                return Ok(None);
            }
        }
        if last != held {
            return Ok(None);
        }
        Ok(Some(HistoryDelta { from, writes }))
    }

    /// Applies a primary's `delta` to this copy, which must stand at its
    /// start (else nothing is applied); seals afterwards if the growing
    /// segment reached its threshold.
    pub fn apply_history(&self, delta: HistoryDelta) -> Result<()> {
        let held = self.position();
        if held != Some(delta.from) {
            return Err(WorkerError::Invalid(format!(
                "shard {}: a delta from {} reached a copy at {}",
                self.number,
                delta.from,
                held.map_or("an unknown position".to_string(), |p| p.to_string())
            )));
        }
        let mut full = false;
        for (position, ops) in delta.writes {
            if ops.is_empty() {
                self.set_position(position)?;
            } else {
                full |= self.write_unsealed_at(ops, Stamp::At(position))?;
            }
        }
        if full {
            self.seal()?;
        }
        Ok(())
    }
}
