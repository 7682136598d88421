//! Where an unlearning receipt's deleted bytes may still be: a pure plan
//! from what was found (every copy's own answer, the object listing, the
//! running jobs), and which of those places the node may delete itself.
//!
//! The rules lean one way: a place whose contents are not known (a copy
//! that did not answer, an uploaded segment no copy holds any more, a
//! running bulk job's spill files) counts as holding the rows. `erased`
//! means that no place is left, so a wrong guess can only keep a receipt
//! `deleted` longer, never call bytes gone that are not.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

use engram_core::collection::is_layout_of;
use engram_core::placement::WorkerId;
use engram_worker::PresenceReport;

/// One place where deleted bytes may still be.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Place {
    /// A copy's current WAL still carries a deleted vector.
    Wal {
        #[serde(skip_serializing_if = "Option::is_none", default)]
        worker: Option<WorkerId>,
        shard: u32,
        wal_generation: u64,
    },
    /// A copy's sealed segment still holds a deleted row.
    Segment {
        #[serde(skip_serializing_if = "Option::is_none", default)]
        worker: Option<WorkerId>,
        shard: u32,
        segment: String,
        key: String,
    },
    /// Segment files linked or staged for a transfer on that worker (gone
    /// when the transfer ends).
    Staged {
        #[serde(skip_serializing_if = "Option::is_none", default)]
        worker: Option<WorkerId>,
        shard: u32,
        path: String,
    },
    /// A corrupted copy set aside on that worker's disk.
    Quarantined {
        #[serde(skip_serializing_if = "Option::is_none", default)]
        worker: Option<WorkerId>,
        shard: u32,
        path: String,
    },
    /// A shard directory of the collection no hosted copy owns on that
    /// worker (an old layout's after a resharding, a copy being dropped):
    /// gone once the worker finishes removing it.
    Leftover {
        #[serde(skip_serializing_if = "Option::is_none", default)]
        worker: Option<WorkerId>,
        path: String,
    },
    /// A copy that could not be asked: counted as holding the rows.
    Unchecked {
        #[serde(skip_serializing_if = "Option::is_none", default)]
        worker: Option<WorkerId>,
        shard: u32,
        reason: String,
    },
    /// A sealed segment uploaded to `storage.segments_uri`: one a copy
    /// holds with a deleted row (`referenced`), or one no copy holds any
    /// more, whose contents are not known.
    SegmentObject {
        shard: u32,
        /// The segment's prefix in the bucket.
        key: String,
        referenced: bool,
    },
    /// A segment a bulk ingestion job uploaded for its copies to download.
    JobObject { job: u64, key: String },
    /// The spill files of a bulk ingestion job that was running when the
    /// rows were deleted (they go when it ends).
    Job { job: u64 },
    /// A snapshot taken before the delete that still holds the rows.
    Snapshot { uri: String, id: String },
    /// A head re-ranker trained on the memory before the delete: what it
    /// learned from the rows stays in its weights until a head is trained
    /// again without them (the node starts that training when the
    /// receipt is due).
    Head {
        reranker: String,
        job: u64,
        trained_at: String,
    },
}

/// A trained head as the plan sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadFound {
    pub reranker: String,
    pub job: u64,
    pub trained_at: String,
    /// The newest receipt that was durable when its training began.
    pub trained_after_receipt: u64,
}

/// An object (relative key below `storage.segments_uri`) and when it was
/// last modified (Unix seconds).
pub type Listed = (String, i64);

/// What the plan starts from.
#[derive(Debug, Default)]
pub struct Found<'a> {
    pub collection: &'a str,
    /// The shards the receipt's ids route to now.
    pub touched: BTreeSet<u32>,
    pub report: PresenceReport,
    /// Objects below `shards/<layout>/` of each of the collection's layouts.
    pub shard_objects: Vec<Listed>,
    /// Objects below `<collection>/` (bulk jobs' segments).
    pub job_objects: Vec<Listed>,
    /// Running bulk ingestion jobs started before the delete.
    pub running_jobs: BTreeSet<u64>,
    /// Snapshots (uri, id) that still hold a deleted row.
    pub snapshots: Vec<(String, String)>,
    /// The receipt's number and the collection's trained heads.
    pub receipt: u64,
    pub heads: Vec<HeadFound>,
    /// Objects last modified before this (Unix seconds) may be deleted by
    /// the node: no copy can have started to hold them since the copies
    /// were asked.
    pub deletable_before: i64,
}

/// The places, and the objects among them the node may delete.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    pub places: Vec<Place>,
    /// Every object (relative key) of the deletable segment objects.
    pub deletable_objects: Vec<String>,
}

/// The places of `found` (see the module comment for the rules).
pub fn plan(found: &Found) -> Plan {
    let mut places = BTreeSet::new();
    let mut deletable = Vec::new();
    let mut held: BTreeMap<(&str, u32), BTreeSet<&str>> = BTreeMap::new();
    let mut holding: BTreeMap<(&str, u32), BTreeSet<&str>> = BTreeMap::new();
    for copy in &found.report.copies {
        held.entry((copy.layout.as_str(), copy.shard))
            .or_default()
            .extend(copy.held_keys.iter().map(String::as_str));
        let Some(p) = &copy.presence else {
            if found.touched.contains(&copy.shard) {
                places.insert(Place::Unchecked {
                    worker: copy.worker,
                    shard: copy.shard,
                    reason: copy.unchecked.clone().unwrap_or_default(),
                });
            }
            continue;
        };
        if p.wal {
            places.insert(Place::Wal {
                worker: copy.worker,
                shard: copy.shard,
                wal_generation: p.wal_generation,
            });
        }
        for (segment, key) in p.segments.iter().zip(&p.segment_keys) {
            holding
                .entry((copy.layout.as_str(), copy.shard))
                .or_default()
                .insert(key);
            places.insert(Place::Segment {
                worker: copy.worker,
                shard: copy.shard,
                segment: segment.clone(),
                key: key.clone(),
            });
        }
        if !found.touched.contains(&copy.shard) {
            continue;
        }
        for path in &p.staged {
            places.insert(Place::Staged {
                worker: copy.worker,
                shard: copy.shard,
                path: path.clone(),
            });
        }
    }
    for q in found
        .report
        .quarantined
        .iter()
        .filter(|q| found.touched.contains(&q.shard))
    {
        places.insert(Place::Quarantined {
            worker: q.worker,
            shard: q.shard,
            path: q.path.clone(),
        });
    }
    // Directories the copies' answers did not cover: any no copy owns,
    // and live copies of a layout nobody asked about (one the cluster
    // state no longer names, whose worker has not dropped it yet).
    let asked: BTreeSet<&str> = found
        .report
        .copies
        .iter()
        .map(|c| c.layout.as_str())
        .collect();
    for leftover in &found.report.leftovers {
        if leftover.hosted && asked.contains(leftover.layout.as_str()) {
            continue;
        }
        places.insert(Place::Leftover {
            worker: leftover.worker,
            path: leftover.path.clone(),
        });
    }
    // Uploaded segments, grouped by their prefix
    // `shards/<layout>/<nnnn>/<key>`, the layout being the collection's
    // name or `<name>@<generation>` (one per resharding).
    let mut segments: BTreeMap<(&str, u32, &str), (i64, Vec<&str>)> = BTreeMap::new();
    for (object, modified) in &found.shard_objects {
        let Some(rest) = object.strip_prefix("shards/") else {
            continue;
        };
        let mut parts = rest.splitn(4, '/');
        let (Some(layout), Some(shard), Some(key), Some(_file)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let Ok(shard) = shard.parse::<u32>() else {
            continue;
        };
        if !is_layout_of(layout, found.collection) {
            continue;
        }
        let entry = segments
            .entry((layout, shard, key))
            .or_insert((i64::MIN, Vec::new()));
        entry.0 = entry.0.max(*modified);
        entry.1.push(object);
    }
    for ((layout, shard, key), (newest, objects)) in segments {
        let referenced = held.get(&(layout, shard)).is_some_and(|k| k.contains(key));
        let holds = holding
            .get(&(layout, shard))
            .is_some_and(|k| k.contains(key));
        if referenced && !holds {
            continue;
        }
        places.insert(Place::SegmentObject {
            shard,
            key: format!("shards/{layout}/{shard:04}/{key}"),
            referenced,
        });
        if !referenced && newest < found.deletable_before {
            deletable.extend(objects.iter().map(|o| o.to_string()));
        }
    }
    // Bulk jobs' segments: `<collection>/job-<id>/run-<ms>/<segment>/<file>`.
    let job_root = format!("{}/", found.collection);
    let mut job_segments: BTreeMap<(u64, String), (i64, Vec<&str>)> = BTreeMap::new();
    for (object, modified) in &found.job_objects {
        let Some((job, segment)) = job_segment(object, &job_root) else {
            continue;
        };
        let entry = job_segments
            .entry((job, segment))
            .or_insert((i64::MIN, Vec::new()));
        entry.0 = entry.0.max(*modified);
        entry.1.push(object);
    }
    for ((job, key), (newest, objects)) in job_segments {
        places.insert(Place::JobObject { job, key });
        if !found.running_jobs.contains(&job) && newest < found.deletable_before {
            deletable.extend(objects.iter().map(|o| o.to_string()));
        }
    }
    for job in &found.running_jobs {
        places.insert(Place::Job { job: *job });
    }
    for (uri, id) in &found.snapshots {
        places.insert(Place::Snapshot {
            uri: uri.clone(),
            id: id.clone(),
        });
    }
    for head in &found.heads {
        if head.trained_after_receipt < found.receipt {
            places.insert(Place::Head {
                reranker: head.reranker.clone(),
                job: head.job,
                trained_at: head.trained_at.clone(),
            });
        }
    }
    deletable.sort();
    Plan {
        places: places.into_iter().collect(),
        deletable_objects: deletable,
    }
}

/// The job and segment prefix of a bulk job's object, parsed strictly (a
/// collection named `shards` lists other collections' objects too).
fn job_segment(object: &str, root: &str) -> Option<(u64, String)> {
    let rest = object.strip_prefix(root)?;
    let mut parts = rest.splitn(4, '/');
    let job = parts.next()?.strip_prefix("job-")?.parse::<u64>().ok()?;
    let run = parts.next()?;
    let segment = parts.next()?;
    parts.next()?;
    if !run.starts_with("run-") || !segment.starts_with('g') {
        return None;
    }
    Some((job, format!("{root}job-{job}/{run}/{segment}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use engram_worker::{CopyPresence, Presence, QuarantinedCopy};

    fn copy(worker: u64, shard: u32, presence: Option<Presence>, held: &[&str]) -> CopyPresence {
        CopyPresence {
            worker: Some(worker),
            layout: "c".into(),
            shard,
            unchecked: presence.is_none().then(|| "timed out".to_string()),
            presence,
            held_keys: held.iter().map(|k| k.to_string()).collect(),
        }
    }

    fn holding(segment: &str, key: &str) -> Presence {
        Presence {
            segments: vec![segment.into()],
            segment_keys: vec![key.into()],
            ..Presence::default()
        }
    }

    #[test]
    fn nothing_found_is_erased() {
        let found = Found {
            collection: "c",
            touched: BTreeSet::from([0]),
            report: PresenceReport {
                copies: vec![
                    copy(1, 0, Some(Presence::default()), &["00000001-aa"]),
                    copy(2, 0, Some(Presence::default()), &["00000001-aa"]),
                ],
                quarantined: vec![],
                leftovers: vec![],
            },
            shard_objects: vec![("shards/c/0000/00000001-aa/index.bin".into(), 10)],
            deletable_before: 100,
            ..Found::default()
        };
        assert_eq!(plan(&found), Plan::default());
    }

    #[test]
    fn each_copy_is_a_place_of_its_own() {
        let found = Found {
            collection: "c",
            touched: BTreeSet::from([0, 1]),
            report: PresenceReport {
                copies: vec![
                    copy(
                        1,
                        0,
                        Some(holding("00000003", "00000003-aa")),
                        &["00000003-aa"],
                    ),
                    // The rebuilt copy numbers its segment differently.
                    copy(
                        2,
                        0,
                        Some(holding("00000001", "00000001-bb")),
                        &["00000001-bb"],
                    ),
                    copy(3, 1, None, &[]),
                    copy(
                        4,
                        1,
                        Some(Presence {
                            wal: true,
                            wal_generation: 7,
                            staged: vec!["outgoing/t".into()],
                            ..Presence::default()
                        }),
                        &[],
                    ),
                    // An untouched shard's silence, transfers and
                    // quarantined copies block nothing.
                    copy(5, 2, None, &[]),
                    copy(
                        6,
                        2,
                        Some(Presence {
                            staged: vec!["incoming/x".into()],
                            ..Presence::default()
                        }),
                        &[],
                    ),
                ],
                quarantined: vec![
                    QuarantinedCopy {
                        worker: Some(2),
                        shard: 1,
                        path: "/d/quarantine/c-0001-5".into(),
                    },
                    QuarantinedCopy {
                        worker: Some(2),
                        shard: 2,
                        path: "/d/quarantine/c-0002-5".into(),
                    },
                ],
                leftovers: vec![
                    engram_worker::Leftover {
                        worker: Some(1),
                        layout: "c".into(),
                        path: "/d/collections/c/shards/0002".into(),
                        hosted: false,
                    },
                    // A live copy of a layout that was asked about too.
                    engram_worker::Leftover {
                        worker: Some(1),
                        layout: "c".into(),
                        path: "/d/collections/c/shards/0003".into(),
                        hosted: true,
                    },
                    // One of a layout nobody asked about.
                    engram_worker::Leftover {
                        worker: Some(2),
                        layout: "c@7".into(),
                        path: "/d/collections/c@7/shards/0000".into(),
                        hosted: true,
                    },
                ],
            },
            ..Found::default()
        };
        let places = plan(&found).places;
        assert_eq!(places.len(), 8, "{places:#?}");
        assert!(places.iter().any(|p| matches!(
            p,
            Place::Leftover {
                worker: Some(2),
                ..
            }
        )));
        assert!(places.iter().any(|p| matches!(
            p,
            Place::Leftover {
                worker: Some(1),
                ..
            }
        )));
        assert!(places.contains(&Place::Segment {
            worker: Some(2),
            shard: 0,
            segment: "00000001".into(),
            key: "00000001-bb".into()
        }));
        assert!(places.contains(&Place::Wal {
            worker: Some(4),
            shard: 1,
            wal_generation: 7
        }));
        assert!(places.iter().any(|p| matches!(
            p,
            Place::Unchecked {
                worker: Some(3),
                shard: 1,
                ..
            }
        )));
        assert!(places.iter().any(|p| matches!(
            p,
            Place::Staged {
                worker: Some(4),
                ..
            }
        )));
        assert!(places.iter().any(|p| matches!(
            p,
            Place::Quarantined {
                worker: Some(2),
                ..
            }
        )));
    }

    #[test]
    fn uploaded_segments_count_when_they_hold_rows_or_no_copy_holds_them() {
        let objects = |key: &str, at: i64| -> Vec<Listed> {
            ["index.bin", "manifest.json"]
                .iter()
                .map(|f| (format!("shards/c/0000/{key}/{f}"), at))
                .collect()
        };
        let mut shard_objects = objects("00000001-aa", 10); // held, holds rows
        shard_objects.extend(objects("00000002-bb", 10)); // held, clean
        shard_objects.extend(objects("00000000-old", 10)); // no copy holds it
        shard_objects.extend(objects("00000009-new", 95)); // no copy, too new to delete
        // An old layout's upload no copy holds; another collection's.
        shard_objects.extend(
            objects("00000001-aa", 10)
                .into_iter()
                .map(|(k, t)| (k.replace("shards/c/", "shards/c@2/"), t)),
        );
        shard_objects.extend(
            objects("00000005-zz", 10)
                .into_iter()
                .map(|(k, t)| (k.replace("shards/c/", "shards/cat/"), t)),
        );
        shard_objects.push(("shards/c/notashard/x/y".into(), 1));
        shard_objects.push(("shards/c/0000/loose".into(), 1));
        let found = Found {
            collection: "c",
            touched: BTreeSet::from([0]),
            report: PresenceReport {
                copies: vec![copy(
                    1,
                    0,
                    Some(holding("00000001", "00000001-aa")),
                    &["00000001-aa", "00000002-bb"],
                )],
                quarantined: vec![],
                leftovers: vec![],
            },
            shard_objects,
            deletable_before: 90,
            ..Found::default()
        };
        let plan = plan(&found);
        let objects: Vec<(&str, bool)> = plan
            .places
            .iter()
            .filter_map(|p| match p {
                Place::SegmentObject {
                    key, referenced, ..
                } => Some((key.as_str(), *referenced)),
                _ => None,
            })
            .collect();
        assert_eq!(
            objects,
            vec![
                ("shards/c/0000/00000000-old", false),
                ("shards/c/0000/00000001-aa", true),
                ("shards/c/0000/00000009-new", false),
                ("shards/c@2/0000/00000001-aa", false),
            ]
        );
        // Only the old unreferenced one may go now; the held one goes once
        // its copy is rewritten (it is then no longer referenced).
        assert_eq!(
            plan.deletable_objects,
            vec![
                "shards/c/0000/00000000-old/index.bin".to_string(),
                "shards/c/0000/00000000-old/manifest.json".to_string(),
                "shards/c@2/0000/00000001-aa/index.bin".to_string(),
                "shards/c@2/0000/00000001-aa/manifest.json".to_string(),
            ]
        );
    }

    #[test]
    fn bulk_job_objects_stay_while_their_job_runs() {
        let found = Found {
            collection: "shards",
            job_objects: vec![
                ("shards/job-4/run-17/g000001-s00000/index.bin".into(), 10),
                ("shards/job-5/run-18/g000001-s00001/index.bin".into(), 10),
                // Another collection's uploads below `shards/`: not jobs.
                ("shards/job-4x/run-1/g1/f".into(), 10),
                ("shards/other/0000/00000001-aa/index.bin".into(), 10),
            ],
            running_jobs: BTreeSet::from([5]),
            deletable_before: 50,
            ..Found::default()
        };
        let plan = plan(&found);
        assert_eq!(
            plan.places,
            vec![
                Place::JobObject {
                    job: 4,
                    key: "shards/job-4/run-17/g000001-s00000".into()
                },
                Place::JobObject {
                    job: 5,
                    key: "shards/job-5/run-18/g000001-s00001".into()
                },
                Place::Job { job: 5 },
            ]
        );
        assert_eq!(
            plan.deletable_objects,
            vec!["shards/job-4/run-17/g000001-s00000/index.bin".to_string()]
        );
    }

    #[test]
    fn heads_trained_before_the_receipt_hold_its_rows() {
        let head = |reranker: &str, after| HeadFound {
            reranker: reranker.into(),
            job: 3,
            trained_at: "t".into(),
            trained_after_receipt: after,
        };
        let found = Found {
            collection: "c",
            receipt: 4,
            heads: vec![head("before", 3), head("after", 4), head("later", 9)],
            ..Found::default()
        };
        assert_eq!(
            plan(&found).places,
            vec![Place::Head {
                reranker: "before".into(),
                job: 3,
                trained_at: "t".into()
            }]
        );
    }
}
