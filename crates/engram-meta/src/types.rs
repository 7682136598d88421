//! The Raft type configuration: what the log carries and what applying an
//! entry answers.

use serde::{Deserialize, Serialize};
use std::io::Cursor;

use engram_core::placement::{ShardPlacement, WorkerId};
use engram_core::{
    AuditEntry, CollectionSpec, Curation, Intervention, PruningWeights, Receipt, Selector,
    ShardDeletion, SnapshotRecord, TrainedHead,
};

use crate::shared::Shared;
use crate::state::SegmentRecord;

/// A coordinator's Raft node id.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// Engram's metadata Raft: metadata commands, never vectors.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        SnapshotData = Cursor<Vec<u8>>,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, openraft::BasicNode>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;

/// A change to the cluster metadata. Applying one is deterministic: the
/// placement planners run inside the state machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// A worker announces itself (at start, or back after being found dead).
    RegisterWorker {
        id: WorkerId,
        addr: String,
    },
    /// The leader found a worker dead: its replicas fall out of sync and
    /// replicas take over the shards it led.
    WorkerFailed {
        id: WorkerId,
    },
    /// Places the shards over the live workers.
    CreateCollection {
        spec: CollectionSpec,
    },
    DropCollection {
        name: String,
    },
    /// A primary could not replicate to `worker`, which stops counting as
    /// in sync (so the write can be acknowledged without it).
    ReplicaOutOfSync {
        collection: String,
        shard: u32,
        worker: WorkerId,
        epoch: u64,
    },
    /// `worker` caught up by transfer while the primary held writes back.
    ReplicaInSync {
        collection: String,
        shard: u32,
        worker: WorkerId,
        epoch: u64,
    },
    /// Rebalancing, first step: `worker` starts hosting the shard as an
    /// out-of-sync copy and catches up from the primary.
    AddHost {
        collection: String,
        shard: u32,
        worker: WorkerId,
        epoch: u64,
    },
    /// Rebalancing, last step (once the new copy is in sync): `worker`
    /// stops hosting the shard; a primary hands over to an in-sync replica.
    RemoveHost {
        collection: String,
        shard: u32,
        worker: WorkerId,
        epoch: u64,
    },
    /// A curator's intervention, stamped by the coordinator that took it
    /// (`at`), so applying it is deterministic.
    Intervene {
        collection: String,
        intervention: Shared<Intervention>,
        reason: String,
        at: String,
    },
    /// Replaces the soft-pruning weights (`None` removes them).
    SetPruning {
        collection: String,
        weights: Option<Shared<PruningWeights>>,
    },
    /// Records an unlearning request whose deletes are durable on the
    /// shards; pruning weights those items had counted towards go stale.
    RecordDeletion {
        collection: String,
        selector: Shared<Selector>,
        log: Vec<ShardDeletion>,
        at: String,
    },
    /// A worker reports the sealed segments of its copy of a shard (after
    /// it sealed or compacted, or deletes changed their counts).
    ReportSegments {
        collection: String,
        shard: u32,
        worker: WorkerId,
        segments: Vec<SegmentRecord>,
    },
    /// A restored snapshot's curation replaces the collection's.
    RestoreCuration {
        collection: String,
        curation: Shared<Curation>,
        pruning: Option<Shared<PruningWeights>>,
    },
    /// Registers a job run by coordinator `owner`; the state machine picks
    /// its id (unique in the cluster) and writes it into `status.id`.
    CreateJob {
        collection: String,
        kind: String,
        owner: NodeId,
        status: Shared<serde_json::Value>,
    },
    /// The owner publishes the job's progress or outcome (anyone else is
    /// refused: a job has one writer), and with it, when given, the point
    /// another coordinator would resume it from. Every update moves the
    /// job's beat.
    UpdateJob {
        id: u64,
        owner: NodeId,
        status: Shared<serde_json::Value>,
        resume: Option<Shared<serde_json::Value>>,
    },
    /// Asks the job's owner to stop it.
    CancelJob {
        id: u64,
    },
    /// `worker` found its copy of the shard corrupted on disk and set it
    /// aside (see `placement::lose_copy`). Appended last: commands are
    /// encoded by variant index in the Raft log.
    CopyLost {
        collection: String,
        shard: u32,
        worker: WorkerId,
        epoch: u64,
    },
    /// Starts resharding `collection` (public name) to `shards` shards: a
    /// target layout is placed and every current shard moves to a new
    /// epoch (see `ClusterState::begin_reshard`).
    BeginReshard {
        collection: String,
        shards: u32,
    },
    /// The target layout of `collection` becomes its layout (the flip).
    FinishReshard {
        collection: String,
    },
    /// Drops the target layout of a resharding of `collection`.
    AbortReshard {
        collection: String,
    },
    /// Coordinator `to` takes over running job `id` from `from`, whose
    /// beat has not moved from `beat` for the takeover timeout
    /// (compare-and-set: a publication by `from` meanwhile refuses it, and
    /// after it `from`'s publications are refused).
    TakeOverJob {
        id: u64,
        from: NodeId,
        to: NodeId,
        beat: u64,
    },
    /// [`Command::RecordDeletion`] with an erasure deadline (RFC 3339), by
    /// which every byte of the deleted items must be gone. Appended last
    /// (variant index); the older command still applies, without one.
    RecordUnlearning {
        collection: String,
        selector: Shared<Selector>,
        log: Vec<ShardDeletion>,
        at: String,
        erase_by: Option<String>,
    },
    /// The deployment wrote a snapshot (see `engram_core::deletion_log`).
    RecordSnapshot {
        snapshot: Shared<SnapshotRecord>,
    },
    /// A recorded snapshot was deleted or found gone.
    ForgetSnapshot {
        uri: String,
        id: String,
    },
    /// A head re-ranker trained from `collection` (or `None`: removed).
    /// Replacing one drops the old weights from the state.
    SetHead {
        collection: String,
        reranker: String,
        head: Option<Shared<TrainedHead>>,
    },
}

/// The outcome of applying a [`Command`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CommandResult {
    Done,
    /// The shard's placement after the change.
    Placement(ShardPlacement),
    /// The audit entry of an applied intervention.
    Audit(Shared<AuditEntry>),
    /// The receipt of a recorded deletion.
    Receipt(Shared<Receipt>),
    /// The id of a created job.
    Job(u64),
    /// Not applied: the reason, for the caller (e.g. a stale epoch).
    Refused(String),
}
