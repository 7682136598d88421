//! Raft log storage on a [`Journal`]: entries, vote and commit point are
//! records appended and fsynced before openraft is told they are durable.
//! The whole log is also kept in memory (metadata only, and purged after
//! each snapshot), and the journal is rewritten when it grows well past
//! what it holds.

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, ErrorSubject, ErrorVerb, RaftLogReader, StorageIOError};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::Arc;

use crate::journal::Journal;
use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote};

/// Rewrite the journal once it is this much larger than its live records.
const REWRITE_SLACK_BYTES: u64 = 4 << 20;

#[derive(Serialize, Deserialize)]
enum Record {
    Append(Vec<Entry>),
    /// Remove entries from this index on.
    Truncate(u64),
    /// Remove entries up to and including this log id.
    Purge(LogId),
    Vote(Vote),
    Committed(Option<LogId>),
}

struct Log {
    journal: Journal,
    entries: BTreeMap<u64, Entry>,
    last_purged: Option<LogId>,
    vote: Option<Vote>,
    committed: Option<LogId>,
}

/// The log store; clones share it (the reader openraft asks for is a clone).
#[derive(Clone)]
pub struct LogStore {
    log: Arc<Mutex<Log>>,
}

fn io_error(verb: ErrorVerb, e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::new(ErrorSubject::Logs, verb, AnyError::new(&e)).into()
}

fn encode(record: &Record) -> Result<Vec<u8>, StorageError> {
    bincode::serialize(record).map_err(|e| io_error(ErrorVerb::Write, e))
}

impl LogStore {
    /// Opens the log kept in `dir/raft-log.journal`, replaying it.
    pub fn open(dir: &Path) -> Result<LogStore, crate::MetaError> {
        fs_err::create_dir_all(dir)?;
        let (journal, records) = Journal::open(&dir.join("raft-log.journal"))?;
        let mut log = Log {
            journal,
            entries: BTreeMap::new(),
            last_purged: None,
            vote: None,
            committed: None,
        };
        for payload in records {
            log.replay(decode_record(&payload)?);
        }
        Ok(LogStore {
            log: Arc::new(Mutex::new(log)),
        })
    }
}

fn decode_record(payload: &[u8]) -> Result<Record, crate::MetaError> {
    bincode::deserialize(payload)
        .map_err(|e| crate::MetaError::Corrupted(format!("raft log record: {e}")))
}

/// Decodes a Raft log journal's bytes as opening the store does, without
/// touching a file: the number of intact records, or why it is refused.
/// Public for the fuzz target.
pub fn decode_journal(path: &Path, bytes: &[u8]) -> Result<usize, crate::MetaError> {
    let (payloads, _) = crate::journal::parse(path, bytes)?;
    for payload in &payloads {
        decode_record(payload)?;
    }
    Ok(payloads.len())
}

impl Log {
    fn replay(&mut self, record: Record) {
        match record {
            Record::Append(entries) => {
                for entry in entries {
                    self.entries.insert(entry.log_id.index, entry);
                }
            }
            Record::Truncate(from) => {
                self.entries.split_off(&from);
            }
            Record::Purge(log_id) => {
                self.entries = self.entries.split_off(&(log_id.index + 1));
                self.last_purged = Some(log_id);
            }
            Record::Vote(vote) => self.vote = Some(vote),
            Record::Committed(committed) => self.committed = committed,
        }
    }

    fn write(&mut self, record: Record) -> Result<(), StorageError> {
        let payload = encode(&record)?;
        self.journal
            .append(&[payload])
            .map_err(|e| io_error(ErrorVerb::Write, e))?;
        self.replay(record);
        Ok(())
    }

    /// The journal's live contents as fresh records.
    fn live_records(&self) -> Result<Vec<Vec<u8>>, StorageError> {
        let mut records = Vec::new();
        if let Some(vote) = self.vote {
            records.push(encode(&Record::Vote(vote))?);
        }
        records.push(encode(&Record::Committed(self.committed))?);
        if let Some(purged) = self.last_purged {
            records.push(encode(&Record::Purge(purged))?);
        }
        records.push(encode(&Record::Append(
            self.entries.values().cloned().collect(),
        ))?);
        Ok(records)
    }

    fn maybe_rewrite(&mut self) -> Result<(), StorageError> {
        let live = self.live_records()?;
        let live_bytes: u64 = live.iter().map(|r| r.len() as u64 + 8).sum();
        if self.journal.len() > live_bytes + REWRITE_SLACK_BYTES {
            self.journal
                .rewrite(&live)
                .map_err(|e| io_error(ErrorVerb::Write, e))?;
        }
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let log = self.log.lock();
        Ok(log.entries.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let log = self.log.lock();
        let last = log
            .entries
            .values()
            .next_back()
            .map(|e| e.log_id)
            .or(log.last_purged);
        Ok(LogState {
            last_purged_log_id: log.last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.log.lock().write(Record::Vote(*vote))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.log.lock().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.log.lock().write(Record::Committed(committed))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.log.lock().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let result = self.log.lock().write(Record::Append(entries));
        match result {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.log.lock().write(Record::Truncate(log_id.index))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut log = self.log.lock();
        log.write(Record::Purge(log_id))?;
        log.maybe_rewrite()
    }
}
