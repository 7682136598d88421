//! The deployment's deletion log: the snapshots it wrote, and the ids
//! deleted after each was taken, so that restoring a snapshot never brings
//! a deleted item back (its rows are left out as they are read) and a
//! receipt knows which snapshots may still hold its rows.
//!
//! A deletion is kept exactly as long as some snapshot of its collection
//! older than it is recorded: once the last such snapshot is forgotten
//! (deleted, or found gone), nothing could bring its ids back. The log
//! lives beside the collections' metadata, not inside any one, so it
//! outlives a dropped collection (restoring needs an empty deployment).
//!
//! Times are RFC 3339 UTC with seconds (`2026-12-05T06:37:00Z`), which
//! order as strings. A deletion in the same second as a snapshot counts
//! as after it: re-applying a delete the snapshot already reflects is
//! harmless, missing one is not.

use serde::{Deserialize, Serialize};

/// A snapshot this deployment wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    /// Where: the URI given when it was taken.
    pub uri: String,
    pub id: String,
    pub created_at: String,
    /// The collections it holds.
    pub collections: Vec<String>,
}

/// Ids deleted from a collection at one time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoggedDeletion {
    pub collection: String,
    pub at: String,
    pub ids: Vec<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletionLog {
    pub snapshots: Vec<SnapshotRecord>,
    pub deletions: Vec<LoggedDeletion>,
}

impl SnapshotRecord {
    /// Whether this snapshot of `collection` was taken no later than `at`
    /// (so it may hold rows deleted at `at`).
    pub fn predates(&self, collection: &str, at: &str) -> bool {
        self.created_at.as_str() <= at && self.collections.iter().any(|c| c == collection)
    }
}

impl DeletionLog {
    /// Records a snapshot (again: replaced).
    pub fn record_snapshot(&mut self, snapshot: SnapshotRecord) {
        self.snapshots
            .retain(|s| !(s.uri == snapshot.uri && s.id == snapshot.id));
        self.snapshots.push(snapshot);
    }

    /// Forgets a snapshot (deleted, or found gone) and the deletions no
    /// other snapshot needs any more.
    pub fn forget_snapshot(&mut self, uri: &str, id: &str) {
        self.snapshots.retain(|s| !(s.uri == uri && s.id == id));
        self.prune();
    }

    /// Logs `ids` deleted from `collection` at `at`, if some recorded
    /// snapshot may hold them.
    pub fn record_deletion(&mut self, collection: &str, at: &str, ids: Vec<u64>) {
        if ids.is_empty() || !self.snapshots.iter().any(|s| s.predates(collection, at)) {
            return;
        }
        self.deletions.push(LoggedDeletion {
            collection: collection.to_string(),
            at: at.to_string(),
            ids,
        });
    }

    /// The ids deleted from `collection` since a snapshot taken at
    /// `created_at` (what restoring it must leave out).
    pub fn deleted_since(&self, collection: &str, created_at: &str) -> Vec<u64> {
        let mut ids: Vec<u64> = self
            .deletions
            .iter()
            .filter(|d| d.collection == collection && d.at.as_str() >= created_at)
            .flat_map(|d| d.ids.iter().copied())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// The recorded snapshots that may hold rows of `collection` deleted
    /// at `at`.
    pub fn snapshots_before<'a>(
        &'a self,
        collection: &'a str,
        at: &'a str,
    ) -> impl Iterator<Item = &'a SnapshotRecord> + 'a {
        self.snapshots
            .iter()
            .filter(move |s| s.predates(collection, at))
    }

    /// Drops deletions no recorded snapshot predates.
    fn prune(&mut self) {
        let snapshots = &self.snapshots;
        self.deletions
            .retain(|d| snapshots.iter().any(|s| s.predates(&d.collection, &d.at)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn snapshot(id: &str, at: &str, collections: &[&str]) -> SnapshotRecord {
        SnapshotRecord {
            uri: "s3://b/snaps".into(),
            id: id.into(),
            created_at: at.into(),
            collections: collections.iter().map(|c| c.to_string()).collect(),
        }
    }

    #[test]
    fn deletions_are_kept_while_an_older_snapshot_exists() {
        let mut log = DeletionLog::default();
        log.record_deletion("c", "2026-01-01T00:00:00Z", vec![1]);
        assert!(log.deletions.is_empty(), "no snapshot to protect");
        log.record_snapshot(snapshot("s1", "2026-01-02T00:00:00Z", &["c"]));
        log.record_deletion("c", "2026-01-03T00:00:00Z", vec![2, 3]);
        log.record_deletion("d", "2026-01-03T00:00:00Z", vec![4]);
        log.record_snapshot(snapshot("s2", "2026-01-04T00:00:00Z", &["c", "d"]));
        log.record_deletion("c", "2026-01-04T00:00:00Z", vec![5]);
        log.record_deletion("d", "2026-01-05T00:00:00Z", vec![6]);
        assert_eq!(
            log.deleted_since("c", "2026-01-02T00:00:00Z"),
            vec![2, 3, 5]
        );
        assert_eq!(
            log.deleted_since("c", "2026-01-04T00:00:00Z"),
            vec![5],
            "same second counts"
        );
        assert_eq!(log.deleted_since("d", "2026-01-04T00:00:00Z"), vec![6]);
        let before: Vec<&str> = log
            .snapshots_before("c", "2026-01-03T00:00:00Z")
            .map(|s| s.id.as_str())
            .collect();
        assert_eq!(before, vec!["s1"]);
        log.forget_snapshot("s3://b/snaps", "s1");
        assert_eq!(log.deleted_since("c", "2026-01-01T00:00:00Z"), vec![5]);
        log.forget_snapshot("s3://b/snaps", "s2");
        assert!(log.deletions.is_empty() && log.snapshots.is_empty());
    }

    proptest! {
        /// Whatever happens, a restore of any snapshot still recorded
        /// leaves out every deletion logged after the snapshot was
        /// recorded whose time is no earlier than the snapshot's.
        #[test]
        fn a_restore_always_sees_every_later_deletion(
            ops in proptest::collection::vec((0u8..3, 0u32..20, 0u8..2), 1..60)
        ) {
            let mut log = DeletionLog::default();
            // (operation index, time, collection, id)
            let mut deleted: Vec<(usize, String, &str, u64)> = Vec::new();
            for (n, (op, t, c)) in ops.into_iter().enumerate() {
                let at = format!("2026-01-01T00:00:{t:02}Z");
                let collection = if c == 0 { "a" } else { "b" };
                match op {
                    0 => log.record_snapshot(snapshot(&n.to_string(), &at, &[collection])),
                    1 => {
                        log.record_deletion(collection, &at, vec![n as u64]);
                        deleted.push((n, at, collection, n as u64));
                    }
                    _ => {
                        if let Some(s) = log.snapshots.first().cloned() {
                            log.forget_snapshot(&s.uri, &s.id);
                        }
                    }
                }
            }
            for s in &log.snapshots {
                let recorded: usize = s.id.parse().unwrap();
                let c = s.collections[0].as_str();
                let left_out = log.deleted_since(c, &s.created_at);
                for (n, at, collection, id) in &deleted {
                    if *n > recorded && *collection == c && *at >= s.created_at {
                        prop_assert!(left_out.contains(id), "{id} missing for snapshot {s:?}");
                    }
                }
            }
        }
    }
}
