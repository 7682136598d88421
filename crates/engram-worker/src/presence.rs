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
    /// Shard directories of the collection no hosted copy owns (an old
    /// layout's after a resharding, a copy being dropped): (worker, path).
    /// Their contents are not known, so they count until they are gone.
    pub leftovers: Vec<(Option<WorkerId>, String)>,
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
            leftovers: vec![(Some(3), "/d/collections/c@2/shards/0001".into())],
        };
        let bytes = bincode::serialize(&report).unwrap();
        assert_eq!(
            bincode::deserialize::<PresenceReport>(&bytes).unwrap(),
            report
        );
    }
}
