use super::tests::{bytes, files_contain, rows, small_params, upsert};
use super::*;
use engram_core::merge_policy::{CompactOptions, SealGrowing};

/// Erasing an unlearning receipt's rows rewrites the segments that hold
/// them and the WAL, and nothing else: another segment's deleted row (not
/// this receipt's) stays for the merge policy.
#[test]
fn erase_rewrites_only_what_holds_the_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shard");
    let dim = 8;
    let params = IndexParams {
        merge_floor_rows: 1_000_000,
        ..small_params(40)
    };
    let data = rows(130, dim);
    let shard = Shard::open(&dir, 0, dim, Metric::L2, &params).unwrap();
    for chunk in (0..120u64).collect::<Vec<_>>().chunks(40) {
        shard
            .write(
                chunk
                    .iter()
                    .map(|id| upsert(*id, "x", &data[*id as usize]))
                    .collect(),
            )
            .unwrap();
    }
    assert_eq!(shard.sealed_segments(), 3);
    shard
        .write(
            (120..130u64)
                .map(|id| upsert(id, "y", &data[id as usize]))
                .collect(),
        )
        .unwrap();
    // Receipt: 3 (first segment) and 125 (growing, so in the WAL); an
    // unrelated delete of 50 (second segment).
    shard.delete_ids(&[50]).unwrap();
    let deletion = shard.delete_traced(|_| vec![3, 125]).unwrap().unwrap();
    let before = shard.presence(&deletion).unwrap();
    assert!(before.wal);
    assert_eq!(before.segments.len(), 1, "{before:?}");
    assert_eq!(before.segment_keys.len(), 1);
    assert!(before.segment_keys[0].starts_with(&before.segments[0]));
    assert!(before.holds_any());
    for id in [3usize, 125, 50] {
        assert!(
            files_contain(&dir, &bytes(&data[id])),
            "row {id} on disk before"
        );
    }
    let untouched: Vec<String> = shard
        .sealed()
        .iter()
        .map(|s| s.name())
        .filter(|n| *n != before.segments[0])
        .collect();

    let done = shard.erase(&deletion.ids).unwrap();
    assert_eq!(
        (
            done.segments_rewritten,
            done.segments_written,
            done.wals_rewritten
        ),
        (1, 1, 1)
    );
    let after = shard.presence(&deletion).unwrap();
    assert!(!after.holds_any(), "{after:?}");
    for id in [3usize, 125] {
        assert!(
            !files_contain(&dir, &bytes(&data[id])),
            "row {id} still on disk"
        );
    }
    assert!(
        files_contain(&dir, &bytes(&data[50])),
        "another segment's delete is left to the merge policy"
    );
    let names: Vec<String> = shard.sealed().iter().map(|s| s.name()).collect();
    for name in &untouched {
        assert!(names.contains(name), "{name} was rewritten: {names:?}");
    }
    assert_eq!(shard.len(), 130 - 3);
    // Nothing more to do: a second call rewrites nothing.
    assert_eq!(shard.erase(&deletion.ids).unwrap(), Compaction::default());
    // The compaction by policy still finds 50.
    shard
        .compact(CompactOptions {
            min_deleted_fraction: 0.0,
            seal: SealGrowing::Never,
            retrain_codebook: false,
        })
        .unwrap();
    assert!(!files_contain(&dir, &bytes(&data[50])));
}

/// A transfer's linked files are a place of their own until it ends.
#[test]
fn linked_transfer_files_count_as_presence() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shard");
    let params = small_params(40);
    let data = rows(40, 8);
    let shard = Shard::open(&dir, 0, 8, Metric::L2, &params).unwrap();
    shard
        .write(
            (0..40u64)
                .map(|id| upsert(id, "x", &data[id as usize]))
                .collect(),
        )
        .unwrap();
    let snapshot = shard.link_segments_for_upload("t1", &|_| true).unwrap();
    let deletion = shard.delete_traced(|_| vec![7]).unwrap().unwrap();
    let presence = shard.presence(&deletion).unwrap();
    assert_eq!(presence.staged, vec!["outgoing/t1".to_string()]);
    shard.erase(&deletion.ids).unwrap();
    // The segment was rewritten, but the transfer's link keeps its old files.
    let presence = shard.presence(&deletion).unwrap();
    assert!(
        presence.segments.is_empty() && presence.staged.len() == 1,
        "{presence:?}"
    );
    assert!(files_contain(&dir, &bytes(&data[7])));
    drop(snapshot);
    let presence = shard.presence(&deletion).unwrap();
    assert!(!presence.holds_any(), "{presence:?}");
    assert!(!files_contain(&dir, &bytes(&data[7])));
}
