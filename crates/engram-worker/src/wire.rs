//! Messages of the worker's internal RPC (bincode bodies over HTTP), shared
//! by the worker's server and the coordinator's client.

use engram_core::merge_policy::SealGrowing;
use engram_core::placement::{ShardPlacement, WorkerId};
use engram_core::{Admission, CollectionSpec, Neighbor};
use engram_store::{WalOp, WritePosition};
use serde::{Deserialize, Serialize};

use crate::presence::PresenceReport;
use crate::shard::{Compaction, ShardDeletion};

/// Paths under the worker's internal address.
pub mod path {
    pub const WRITE: &str = "/internal/v1/write";
    pub const REPLICATE: &str = "/internal/v1/replicate";
    pub const SEARCH: &str = "/internal/v1/search";
    pub const GET: &str = "/internal/v1/get";
    pub const STATS: &str = "/internal/v1/stats";
    pub const PRESENCE: &str = "/internal/v1/presence";
    pub const ERASE: &str = "/internal/v1/erase";
    pub const CATCH_UP: &str = "/internal/v1/catch_up";
    pub const INSTALL: &str = "/internal/v1/install";
    pub const DELTA: &str = "/internal/v1/delta";
    pub const POSITION: &str = "/internal/v1/position";
    pub const SHIP_PLAN: &str = "/internal/v1/ship/plan";
    pub const SHIP_FILE: &str = "/internal/v1/ship/file";
    pub const SHIP_ATTACH: &str = "/internal/v1/ship/attach";
    pub const COMPACT: &str = "/internal/v1/compact";
    pub const SCAN: &str = "/internal/v1/scan";
    pub const SNAPSHOT: &str = "/internal/v1/snapshot";
    pub const HOST: &str = "/internal/v1/host";
    pub const DROP: &str = "/internal/v1/drop";
    pub const ATTACH: &str = "/internal/v1/attach";
    pub const ATTACH_REPLICA: &str = "/internal/v1/attach_replica";
}

/// Paths under a coordinator's internal address that workers call.
pub mod coordinator_path {
    pub const HEARTBEAT: &str = "/internal/v1/heartbeat";
    pub const COMMAND: &str = "/internal/v1/command";
}

/// One shard's part of a write, as the coordinator sends it to the primary.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ShardOp {
    Op(WalOp),
    DeleteIds(Vec<u64>),
    DeleteLabel(String),
    DeleteSource(String),
    /// Rows copied from the old layout into a resharding's target: applied
    /// only where the target has not seen their ids written or deleted.
    CopyIn(Vec<ItemReply>),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WriteRequest {
    pub collection: String,
    pub shard: u32,
    /// The placement the coordinator acted on; refused if older than the
    /// primary's.
    pub placement: ShardPlacement,
    pub ops: Vec<ShardOp>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WriteReply {
    /// What the deletes removed and where (for unlearning receipts).
    pub deletions: Vec<ShardDeletion>,
}

/// A primary's already-ordered operations for a replica.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplicateRequest {
    pub collection: String,
    pub shard: u32,
    pub placement: ShardPlacement,
    /// Where the primary logged the write: the replica refuses it unless it
    /// follows its own position (`shard/history.rs`).
    pub position: WritePosition,
    pub ops: Vec<WalOp>,
}

/// A primary asks a replica where its copy's history stands (before it
/// orders its first write, or after a replication failed), so that a copy
/// holding every write stays in sync and one that does not catches up.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PositionRequest {
    pub collection: String,
    pub shard: u32,
    pub placement: ShardPlacement,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SearchRequest {
    pub collection: String,
    pub shards: Vec<u32>,
    pub queries: Vec<Vec<f32>>,
    pub k: usize,
    pub exclude: Vec<u64>,
    pub list_size: Option<u32>,
    /// Curators' blocks, applied inside each shard's index search.
    pub admission: Option<Admission>,
}

/// `Neighbor` without its JSON-only serde attributes: bincode needs every
/// field present.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireNeighbor {
    pub id: u64,
    pub distance: f32,
    pub label: String,
    pub weight: f32,
    pub source: Option<String>,
}

impl From<&Neighbor> for WireNeighbor {
    fn from(n: &Neighbor) -> Self {
        WireNeighbor {
            id: n.id,
            distance: n.distance,
            label: n.label.clone(),
            weight: n.weight,
            source: n.source.clone(),
        }
    }
}

impl From<WireNeighbor> for Neighbor {
    fn from(n: WireNeighbor) -> Self {
        Neighbor {
            id: n.id,
            distance: n.distance,
            label: n.label,
            weight: n.weight,
            source: n.source,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SearchReply {
    /// One list per query, best first, merged over the requested shards.
    pub lists: Vec<Vec<WireNeighbor>>,
    /// Requested shards answered without some of their segments.
    pub incomplete_shards: Vec<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GetRequest {
    pub collection: String,
    pub shard: u32,
    pub id: u64,
    pub vector: bool,
    /// Also the item's thumbnail, if it has one.
    #[serde(default)]
    pub thumbnail: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ItemReply {
    pub id: u64,
    pub label: String,
    pub weight: f32,
    pub source: Option<String>,
    pub vector: Option<Vec<f32>>,
    #[serde(default)]
    pub thumbnail: Option<Vec<u8>>,
}

/// Largest internal request body (replication and transfer chunks carry
/// vectors; the public API enforces its own, smaller limit first).
pub const MAX_INTERNAL_BODY: usize = 1 << 30;

/// One page of a shard's live items with their vectors (a pruning job
/// reads the whole collection this way).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScanRequest {
    pub collection: String,
    pub shard: u32,
    pub after: Option<u64>,
    pub limit: u32,
}

/// One shard's live items at one instant (a snapshot's copy of it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotRequest {
    pub collection: String,
    pub shard: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScanReply {
    pub items: Vec<ItemReply>,
    /// Where the next page starts; `None` after the last.
    pub next: Option<u64>,
}

impl From<crate::shard::ScannedItem> for ItemReply {
    fn from(i: crate::shard::ScannedItem) -> ItemReply {
        ItemReply {
            id: i.id,
            label: i.label.to_string(),
            weight: i.weight,
            source: i.source.map(|s| s.to_string()),
            vector: Some(i.vector),
            thumbnail: i.thumbnail.map(|t| t.to_vec()),
        }
    }
}

impl ItemReply {
    /// The item with its vector (`None` if the reply carried none).
    pub fn into_scanned(self) -> Option<crate::shard::ScannedItem> {
        Some(crate::shard::ScannedItem {
            id: self.id,
            label: self.label.into(),
            weight: self.weight,
            source: self.source.map(Into::into),
            vector: self.vector?,
            thumbnail: self.thumbnail.map(Into::into),
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatsRequest {
    pub collection: String,
    pub shards: Vec<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ShardStats {
    pub shard: u32,
    pub items: u64,
    pub labels: Vec<(String, u64)>,
    pub tombstones: u64,
    pub sealed_rows: u64,
    pub sealed_segments: usize,
    /// Bytes of the sealed segments' files.
    pub sealed_bytes: u64,
    /// Rows in the growing segment (not sealed yet).
    pub growing_rows: u64,
    /// Every sealed segment, oldest first, and where it is served from.
    pub segments: Vec<crate::shard::SegmentStats>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PresenceRequest {
    pub collection: String,
    pub deletions: Vec<ShardDeletion>,
}

/// Every copy of the asked shards this worker hosts (or is receiving),
/// and its quarantined copies of them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PresenceReply {
    pub report: PresenceReport,
}

/// Rewrite what holds these deleted rows in every copy hosted here, and
/// delete quarantined copies of their shards.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EraseRequest {
    pub collection: String,
    pub deletions: Vec<ShardDeletion>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EraseReply {
    pub compaction: Compaction,
    pub quarantined_removed: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompactRequest {
    pub collection: String,
    pub shards: Vec<u32>,
    pub min_deleted_fraction: f64,
    /// Which of each copy's growing segments are sealed first.
    pub seal: SealGrowing,
    /// Each copy's next segment build trains a new PQ codebook.
    #[serde(default)]
    pub retrain_codebook: bool,
}

/// An out-of-sync host asks the shard's primary to bring it up to date.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CatchUpRequest {
    pub collection: String,
    pub shard: u32,
    pub worker: WorkerId,
    /// Where the asking copy's history stands (`None`: no copy, or an
    /// unknown position): the primary sends only the writes after it when
    /// its WAL still holds them.
    pub position: Option<WritePosition>,
}

/// One chunk of a delta catch-up: the writes after `delta.from`, each at
/// its position. A copy not at `delta.from` applies nothing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeltaRequest {
    pub collection: String,
    pub shard: u32,
    pub placement: ShardPlacement,
    /// The catch-up this chunk belongs to (as `InstallRequest::transfer`):
    /// the first chunk makes it the copy's newest, so a late chunk of an
    /// older transfer is refused.
    pub transfer: u64,
    pub first: bool,
    /// The last chunk: the copy then holds every write its primary holds.
    pub last: bool,
    pub from: WritePosition,
    pub writes: Vec<(WritePosition, Vec<WalOp>)>,
}

/// One chunk of a full shard transfer from a primary; the first chunk
/// (`reset`) replaces whatever the receiver held.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstallRequest {
    pub spec: CollectionSpec,
    pub shard: u32,
    pub placement: ShardPlacement,
    pub reset: bool,
    /// Which transfer this chunk belongs to (the primary's clock at its
    /// start, in ns). A copy takes chunks of its newest transfer only: a
    /// chunk of an earlier transfer that was abandoned (its receiver paused
    /// past the timeout) and delivered late must not reset, or add stale
    /// rows to, a copy that a later transfer rebuilt.
    pub transfer: u64,
    pub ops: Vec<WalOp>,
    /// A resharding target's tombstones (ids deleted while it is filled),
    /// sent with the first chunk: the rebuilt copy is receiving too, and
    /// must refuse copies of the same ids.
    pub tombstones: Option<Vec<u64>>,
    /// Set on the last chunk: the primary's position when the transfer was
    /// read, which the rebuilt copy now holds the history up to.
    pub position: Option<WritePosition>,
}

/// Which files of a full transfer's sealed segments are to come: the copy
/// answers, per segment and file, the bytes it already holds staged (an
/// earlier transfer of the same segments was cut off), and drops staged
/// segments not in the plan. Sent after the transfer's reset chunk.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShipPlanRequest {
    pub collection: String,
    pub shard: u32,
    pub placement: ShardPlacement,
    pub transfer: u64,
    pub segments: Vec<ShipPlanSegment>,
}

/// One segment of a [`ShipPlanRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShipPlanSegment {
    /// See `shard::ShippedSegment::key`.
    pub key: String,
    /// File names and sizes.
    pub files: Vec<(String, u64)>,
    /// Where the primary uploaded the segment (`segment_upload.rs`): the
    /// copy downloads it from there when it can, and the primary sends
    /// what it could not.
    pub object: Option<SegmentObject>,
}

/// The copy's answer to a [`ShipPlanRequest`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ShipPlanAnswer {
    /// Per segment and file, the bytes the copy holds now (staged by an
    /// earlier transfer, or downloaded for this one).
    pub held: Vec<Vec<u64>>,
    /// Bytes it downloaded from object storage for this plan.
    pub downloaded: u64,
}

/// The head of a [`path::SHIP_FILE`] request: the body that follows it
/// (see `ship_stream.rs` for the framing) is bytes `offset..size` of one
/// file of a shipped segment, as one stream. The copy appends them when it
/// holds exactly `offset` bytes of the file, keeps whatever arrived if the
/// stream is cut (the next transfer resumes there) and syncs the file once
/// it holds `size` bytes. The bytes are checked against the segment's own
/// checksums when it is attached.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShipFileRequest {
    pub collection: String,
    pub shard: u32,
    pub placement: ShardPlacement,
    pub transfer: u64,
    pub key: String,
    pub file: String,
    pub offset: u64,
    pub size: u64,
}

/// Adds the staged segments (keys in the primary's order, each with its
/// delete bitmap at the transfer's position) to the copy the transfer
/// reset; every file is verified against its checksum first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShipAttachRequest {
    pub collection: String,
    pub shard: u32,
    pub placement: ShardPlacement,
    pub transfer: u64,
    pub segments: Vec<(String, Vec<u64>)>,
}

/// A sealed segment in object storage: the store's URI, the key below it
/// and every file with its size and CRC32.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentObject {
    pub uri: String,
    pub key: String,
    pub files: Vec<engram_store::CheckedFile>,
}

/// Attach a bulk-built segment to one shard: sent to the primary, which
/// attaches it in write order and has every in-sync replica do the same;
/// `stage_only` asks a copy to download it ahead of the attach.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttachRequest {
    pub collection: String,
    pub shard: u32,
    pub placement: ShardPlacement,
    pub segment: SegmentObject,
    pub stage_only: bool,
    /// Where the primary logged the attach (sent to replicas; `None` from
    /// a coordinator and for staging).
    pub position: Option<WritePosition>,
}

/// Open these shards now (a coordinator creating a collection), as of
/// Raft log index `index`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostRequest {
    pub spec: CollectionSpec,
    pub shards: Vec<(u32, ShardPlacement)>,
    pub index: u64,
    /// The layout is a resharding's target (its copies are receiving).
    pub receiving: bool,
}

/// Stop hosting a dropped collection and delete its files.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DropRequest {
    pub collection: String,
    pub index: u64,
}

/// A coordinator's answer to a heartbeat: its applied cluster state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatReply {
    pub applied: u64,
    pub state: engram_meta::ClusterState,
    /// Whether the answering coordinator is the Raft leader: only its
    /// answers renew the worker's read lease (see [`crate::lease`]).
    pub leader: bool,
}

/// A worker's heartbeat to a coordinator.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Heartbeat {
    pub worker: WorkerId,
    pub addr: String,
}

/// Why an internal call was refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
pub enum RpcError {
    #[error("stale shard placement: epoch {sent} is older than {current}")]
    StaleEpoch { sent: u64, current: u64 },
    #[error("this worker is not the primary of shard {0}")]
    NotPrimary(u32),
    #[error("shard {shard} of collection `{collection}` is not hosted here")]
    NotHosted { collection: String, shard: u32 },
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("replication failed: {0}")]
    Replication(String),
    /// This copy cannot answer now; another copy may.
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

/// Every internal reply: the answer or why not.
pub type RpcResult<T> = Result<T, RpcError>;

#[cfg(test)]
mod tests {
    use super::*;
    use engram_core::residency::Residency;

    /// Everything the stats call carries crosses bincode (which cannot read
    /// serde's tagged or flattened forms).
    #[test]
    fn shard_stats_with_segments_cross_bincode() {
        let stats = ShardStats {
            shard: 3,
            items: 10,
            labels: vec![("a".into(), 10)],
            tombstones: 1,
            sealed_rows: 11,
            sealed_segments: 3,
            sealed_bytes: 4096,
            growing_rows: 2,
            segments: [
                Residency::Disk,
                Residency::NodeCache { nodes: 7 },
                Residency::Memory,
            ]
            .into_iter()
            .enumerate()
            .map(|(i, served_from)| crate::shard::SegmentStats {
                name: format!("{i:08}"),
                rows: 4,
                deleted: 1,
                bytes: 4096,
                served_from,
            })
            .collect(),
        };
        let bytes = bincode::serialize(&vec![stats.clone()]).unwrap();
        let back: Vec<ShardStats> = bincode::deserialize(&bytes).unwrap();
        assert_eq!(back[0].segments, stats.segments);
        assert_eq!(back[0].growing_rows, 2);
    }
}
