//! What an unlearning receipt is checked against: for every copy of the
//! shards a deletion touched, where that copy still holds the deleted rows
//! (its own files, see `Shard::presence_of`), plus the quarantined copies
//! set aside on the workers' disks. A copy that could not be asked is
//! listed as unchecked, never as clean.

use engram_core::placement::WorkerId;
use serde::{Deserialize, Serialize};

use crate::shard::Presence;

/// One copy of a shard, as its host answered (or did not).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CopyPresence {
    /// The worker holding the copy (`None` on the embedded node).
    pub worker: Option<WorkerId>,
    /// The layout the copy belongs to (the collection's name, or
    /// `<name>@<generation>` once resharded): uploads are kept by it.
    pub layout: String,
    pub shard: u32,
    /// `None`: the copy could not be checked (see `unchecked`).
    pub presence: Option<Presence>,
    /// Why the copy could not be checked. (Never skipped when empty: the
    /// report travels as bincode, which has no optional fields.)
    pub unchecked: Option<String>,
    /// The content keys of every sealed segment the copy holds: uploaded
    /// segment objects named by none of a shard's copies are no longer
    /// referenced (and may hold anything the shard once held).
    pub held_keys: Vec<String>,
}

/// A corrupted copy set aside on a worker's disk (never served).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuarantinedCopy {
    pub worker: Option<WorkerId>,
    pub shard: u32,
    /// Its directory on that worker.
    pub path: String,
}

/// Every copy's answer for one receipt's shards.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PresenceReport {
    pub copies: Vec<CopyPresence>,
    pub quarantined: Vec<QuarantinedCopy>,
    /// Shard directories of the collection's other layouts, or of none:
    /// their contents were not checked, so they count until they are gone
    /// (unless the coordinator asked about their layout too).
    pub leftovers: Vec<Leftover>,
}

/// A shard directory on a worker's disk that the request did not check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Leftover {
    pub worker: Option<WorkerId>,
    /// Its layout key.
    pub layout: String,
    pub path: String,
    /// Hosted: a live copy of another layout (checked when the coordinator
    /// asks about that layout too). Not hosted: no copy owns it (an old
    /// layout's after a resharding, a copy being dropped or opened).
    pub hosted: bool,
}

impl PresenceReport {
    /// Adds `other`'s copies and quarantined copies.
    pub fn extend(&mut self, other: PresenceReport) {
        self.copies.extend(other.copies);
        self.quarantined.extend(other.quarantined);
        self.leftovers.extend(other.leftovers);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The report crosses the internal RPC as bincode.
    #[test]
    fn reports_round_trip_through_bincode() {
        let report = PresenceReport {
            copies: vec![
                CopyPresence {
                    worker: Some(2),
                    layout: "c@2".into(),
                    shard: 1,
                    presence: Some(Presence {
                        wal: true,
                        wal_generation: 3,
                        segments: vec!["00000001".into()],
                        segment_keys: vec!["00000001-abcd".into()],
                        staged: vec![],
                    }),
                    unchecked: None,
                    held_keys: vec!["00000001-abcd".into()],
                },
                CopyPresence {
                    worker: None,
                    layout: "c".into(),
                    shard: 0,
                    presence: None,
                    unchecked: Some("timed out".into()),
                    held_keys: vec![],
                },
            ],
            quarantined: vec![QuarantinedCopy {
                worker: Some(1),
                shard: 0,
                path: "/d/quarantine/c-0000-1".into(),
            }],
            leftovers: vec![Leftover {
                worker: Some(3),
                layout: "c@2".into(),
                path: "/d/collections/c@2/shards/0001".into(),
                hosted: false,
            }],
        };
        let bytes = bincode::serialize(&report).unwrap();
        assert_eq!(
            bincode::deserialize::<PresenceReport>(&bytes).unwrap(),
            report
        );
    }
}
