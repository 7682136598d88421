//! The Raft state machine: [`ClusterState`] in memory, its last snapshot on
//! disk in a checksummed file. After a restart the snapshot is loaded and
//! openraft re-applies the committed entries logged since.

use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder, SnapshotMeta,
    StorageIOError,
};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::watch;

use engram_store::checksummed;

use crate::state::ClusterState;
use crate::types::{
    CommandResult, Entry, LogId, NodeId, Snapshot, StorageError, StoredMembership, TypeConfig,
};

const SNAPSHOT_FILE: &str = "snapshot.bin";

#[derive(Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, openraft::BasicNode>,
    /// bincode of [`ClusterState`].
    data: Vec<u8>,
}

struct Machine {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    state: Arc<ClusterState>,
    snapshot: Option<StoredSnapshot>,
    snapshots_built: u64,
}

/// The state machine; clones share it (the snapshot builder is a clone).
#[derive(Clone)]
pub struct StateMachineStore {
    dir: PathBuf,
    machine: Arc<RwLock<Machine>>,
    /// The index of the last applied entry, for callers waiting to read
    /// their own writes.
    applied: Arc<watch::Sender<u64>>,
}

fn sm_error(verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError {
    StorageIOError::new(
        ErrorSubject::StateMachine,
        verb,
        AnyError::error(e.to_string()),
    )
    .into()
}

impl StateMachineStore {
    /// Opens the state machine kept in `dir`, loading its last snapshot.
    pub fn open(dir: &Path) -> Result<StateMachineStore, crate::MetaError> {
        fs_err::create_dir_all(dir)?;
        let path = dir.join(SNAPSHOT_FILE);
        let mut machine = Machine {
            last_applied: None,
            membership: StoredMembership::default(),
            state: Arc::new(ClusterState::default()),
            snapshot: None,
            snapshots_built: 0,
        };
        if path.exists() {
            let bytes = checksummed::read_verified(&path)
                .map_err(|e| crate::MetaError::Corrupted(e.to_string()))?;
            let snapshot: StoredSnapshot = bincode::deserialize(&bytes)
                .map_err(|e| crate::MetaError::Corrupted(format!("raft snapshot: {e}")))?;
            let state: ClusterState = ClusterState::decode(&snapshot.data)
                .map_err(|e| crate::MetaError::Corrupted(format!("raft snapshot state: {e}")))?;
            machine.last_applied = snapshot.meta.last_log_id;
            machine.membership = snapshot.meta.last_membership.clone();
            machine.state = Arc::new(state);
            machine.snapshot = Some(snapshot);
        }
        let applied = machine.last_applied.map_or(0, |l| l.index);
        Ok(StateMachineStore {
            dir: dir.to_path_buf(),
            machine: Arc::new(RwLock::new(machine)),
            applied: Arc::new(watch::channel(applied).0),
        })
    }

    /// The current cluster state (cheap: shared until the next change).
    pub fn state(&self) -> Arc<ClusterState> {
        self.machine.read().state.clone()
    }

    /// Follows the index of the last applied entry.
    pub fn applied(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    fn save(&self, snapshot: &StoredSnapshot) -> Result<(), StorageError> {
        let bytes = bincode::serialize(snapshot).map_err(|e| sm_error(ErrorVerb::Write, e))?;
        checksummed::write_atomic(&self.dir.join(SNAPSHOT_FILE), &bytes)
            .map_err(|e| sm_error(ErrorVerb::Write, e))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let snapshot = {
            let mut m = self.machine.write();
            m.snapshots_built += 1;
            let data =
                bincode::serialize(m.state.as_ref()).map_err(|e| sm_error(ErrorVerb::Read, e))?;
            let snapshot_id = match m.last_applied {
                Some(l) => format!("{}-{}-{}", l.leader_id, l.index, m.snapshots_built),
                None => format!("--{}", m.snapshots_built),
            };
            StoredSnapshot {
                meta: SnapshotMeta {
                    last_log_id: m.last_applied,
                    last_membership: m.membership.clone(),
                    snapshot_id,
                },
                data,
            }
        };
        self.save(&snapshot)?;
        self.machine.write().snapshot = Some(snapshot.clone());
        Ok(Snapshot {
            meta: snapshot.meta,
            snapshot: Box::new(Cursor::new(snapshot.data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let m = self.machine.read();
        Ok((m.last_applied, m.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut results = Vec::new();
        let last = {
            let mut m = self.machine.write();
            for entry in entries {
                m.last_applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => results.push(CommandResult::Done),
                    EntryPayload::Normal(command) => {
                        let result = Arc::make_mut(&mut m.state).apply(&command);
                        results.push(result);
                    }
                    EntryPayload::Membership(membership) => {
                        m.membership = StoredMembership::new(Some(entry.log_id), membership);
                        results.push(CommandResult::Done);
                    }
                }
            }
            m.last_applied.map_or(0, |l| l.index)
        };
        self.applied.send_replace(last);
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let state: ClusterState = ClusterState::decode(&data).map_err(|e| {
            StorageError::from(StorageIOError::new(
                ErrorSubject::Snapshot(Some(meta.signature())),
                ErrorVerb::Read,
                AnyError::error(e.to_string()),
            ))
        })?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        self.save(&stored)?;
        let last = {
            let mut m = self.machine.write();
            m.last_applied = meta.last_log_id;
            m.membership = meta.last_membership.clone();
            m.state = Arc::new(state);
            m.snapshot = Some(stored);
            m.last_applied.map_or(0, |l| l.index)
        };
        self.applied.send_replace(last);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let m = self.machine.read();
        Ok(m.snapshot.as_ref().map(|s| Snapshot {
            meta: s.meta.clone(),
            snapshot: Box::new(Cursor::new(s.data.clone())),
        }))
    }
}
