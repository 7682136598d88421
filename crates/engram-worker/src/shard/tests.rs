use super::*;
use engram_core::merge_policy::{CompactOptions, SealGrowing};
use engram_index::FlatIndex;
use engram_store::StoredItem;
use std::collections::HashMap;

pub(super) fn rows(n: usize, dim: usize) -> Vec<Vec<f32>> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let centres: Vec<Vec<f32>> = (0..8)
        .map(|_| {
            (0..dim)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
                })
                .collect()
        })
        .collect();
    (0..n)
        .map(|i| {
            let mut v: Vec<f32> = centres[i % 8]
                .iter()
                .map(|c| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    c + ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
                })
                .collect();
            engram_core::vector::normalize_in_place(&mut v).unwrap();
            v
        })
        .collect()
}

pub(super) fn upsert(id: u64, label: &str, vector: &[f32]) -> WalOp {
    WalOp::Upsert {
        id,
        label: label.into(),
        weight: 1.0,
        source: Some(format!("src{}", id % 3).into()),
        vector: vector.to_vec(),
        thumbnail: None,
    }
}

pub(super) fn files_contain(dir: &Path, needle: &[u8]) -> bool {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if std::fs::read(&path)
                .unwrap()
                .windows(needle.len())
                .any(|w| w == needle)
            {
                return true;
            }
        }
    }
    false
}

/// A 4-d L2 shard in `dir`.
pub(super) fn open_l2_4d(dir: &Path, params: &IndexParams) -> Shard {
    Shard::open(dir, 0, 4, Metric::L2, params).unwrap()
}

/// Every live item with its label and vector, for comparing copies.
pub(super) fn contents(shard: &Shard) -> Vec<(u64, String, Vec<f32>)> {
    let mut all = Vec::new();
    shard
        .scan(&mut |items| {
            all.extend(
                items
                    .into_iter()
                    .map(|i| (i.id, i.label.to_string(), i.vector)),
            );
            Ok(())
        })
        .unwrap();
    all.sort_by_key(|(id, _, _)| *id);
    all
}

/// Small-graph settings that seal every 200 rows.
/// Small graphs for small test shards, sealing at `seal_threshold` rows.
pub(super) fn small_params(seal_threshold: usize) -> IndexParams {
    IndexParams {
        seal_threshold,
        max_degree: 16,
        build_list_size: 32,
        pq_bytes: 4,
        ..IndexParams::default()
    }
}

fn sealing_at_200() -> IndexParams {
    IndexParams {
        seal_threshold: 200,
        max_degree: 32,
        build_list_size: 64,
        pq_bytes: 8,
        search_list_size: 64,
        ..IndexParams::default()
    }
}

pub(super) fn bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn seals_survives_reopen_compacts_and_forgets_deleted_vectors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shard");
    let dim = 16;
    let params = sealing_at_200();
    let data = rows(500, dim);
    let shard = Shard::open(&dir, 0, dim, Metric::Cosine, &params).unwrap();
    for chunk in (0..500u64).collect::<Vec<_>>().chunks(50) {
        let ops = chunk
            .iter()
            .map(|id| upsert(*id, &format!("c{}", id % 5), &data[*id as usize]))
            .collect();
        shard.write(ops).unwrap();
    }
    assert_eq!(shard.sealed_segments(), 2, "sealed at 200 and 400 rows");
    assert_eq!(shard.len(), 500);

    // Deletes in sealed and growing segments, by id and by label; an
    // upsert moves a sealed row into the growing segment.
    assert_eq!(
        shard
            .delete_ids(&(0..30).chain(450..460).collect::<Vec<_>>())
            .unwrap(),
        40
    );
    let label_c4 = shard.delete_where(|t| t.ids_with_label("c4")).unwrap();
    assert_eq!(label_c4, 100 - 6 - 2);
    shard.write(vec![upsert(31, "moved", &data[31])]).unwrap();
    let mut live: HashMap<u64, String> =
        (0..500u64).map(|id| (id, format!("c{}", id % 5))).collect();
    live.retain(|id, label| !(*id < 30 || (450..460).contains(id) || label == "c4"));
    live.insert(31, "moved".into());
    let deleted: Vec<u64> = (0..500u64).filter(|id| !live.contains_key(id)).collect();

    let check = |shard: &Shard| {
        assert_eq!(shard.len(), live.len());
        assert_eq!(shard.get(31).unwrap().label.as_ref(), "moved");
        assert_eq!(shard.get(100).unwrap().label.as_ref(), "c0");
        assert_eq!(shard.get(100).unwrap().source.as_deref(), Some("src1"));
        assert!(shard.get(3).is_none());
        // Sealed rows are read back from their sectors, exactly.
        assert_eq!(shard.get_vector(100).unwrap().unwrap(), data[100]);
        assert_eq!(shard.get_vector(31).unwrap().unwrap(), data[31]);
        assert!(shard.get_vector(3).unwrap().is_none());
        let mut exact = FlatIndex::new(dim, Metric::Cosine);
        for id in live.keys() {
            exact.upsert(*id, &data[*id as usize]).unwrap();
        }
        let queries: Vec<&[f32]> = data.iter().step_by(7).map(Vec::as_slice).collect();
        let hits = shard.search_batch(
            &queries,
            10,
            &SearchFilter::default(),
            SearchTuning::default(),
        );
        assert_eq!(hits.failed_segments, 0);
        let results = hits.lists;
        let mut hits = 0;
        for (q, result) in queries.iter().zip(&results) {
            assert!(
                result.iter().all(|n| live.contains_key(&n.id)),
                "a deleted item was returned"
            );
            assert!(result.iter().all(|n| n.label == live[&n.id]));
            let truth: Vec<u64> = exact
                .search(q, 10, &|_| true)
                .iter()
                .map(|h| h.id)
                .collect();
            hits += result.iter().filter(|n| truth.contains(&n.id)).count();
        }
        let recall = hits as f64 / (queries.len() * 10) as f64;
        assert!(
            recall >= 0.9,
            "recall@10 over growing + sealed segments: {recall}"
        );
    };
    check(&shard);
    drop(shard);
    let shard = Shard::open(&dir, 0, dim, Metric::Cosine, &params).unwrap();
    check(&shard);

    // Before compaction the deleted vectors are still in some file.
    assert!(
        deleted
            .iter()
            .any(|id| files_contain(&dir, &bytes(&data[*id as usize])))
    );
    let done = shard
        .compact(CompactOptions {
            min_deleted_fraction: 0.0,
            seal: SealGrowing::Never,
            retrain_codebook: false,
        })
        .unwrap();
    assert_eq!(
        done.segments_rewritten, 2,
        "both sealed segments had deletions"
    );
    assert_eq!(
        done.wals_rewritten, 1,
        "the growing segment had deletions too"
    );
    assert_eq!(
        shard.sealed_segments(),
        2,
        "the small growing segment stays unsealed"
    );
    check(&shard);
    for id in &deleted {
        assert!(
            !files_contain(&dir, &bytes(&data[*id as usize])),
            "deleted row {id} still on disk after compaction"
        );
    }
    assert!(
        files_contain(&dir, &bytes(&data[100])),
        "live rows are still on disk"
    );
    drop(shard);
    let shard = Shard::open(&dir, 0, dim, Metric::Cosine, &params).unwrap();
    check(&shard);
    assert_eq!(
        shard.sealed_segments(),
        2,
        "two rewritten, the growing one from the WAL"
    );
    // Nothing left to do: a second compaction rewrites nothing.
    assert_eq!(
        shard
            .compact(CompactOptions {
                min_deleted_fraction: 0.0,
                seal: SealGrowing::Never,
                retrain_codebook: false
            })
            .unwrap(),
        Compaction::default()
    );
}

/// Builds a segment of `ids` with label `label` as bulk ingestion does.
pub(super) fn bulk_segment(
    dir: &Path,
    ids: &[u64],
    data: &[Vec<f32>],
    dim: usize,
    label: &str,
    params: &IndexParams,
) {
    let vectors: Vec<f32> = ids
        .iter()
        .flat_map(|id| data[*id as usize].clone())
        .collect();
    SealedSegment::build(dir, ids, &vectors, dim, Metric::L2, params).unwrap();
    let items: Vec<StoredItem> = ids
        .iter()
        .map(|id| StoredItem {
            id: *id,
            label: label.into(),
            weight: 2.0,
            source: None,
        })
        .collect();
    engram_store::write_items(&dir.join(ITEMS_FILE), &items).unwrap();
}

#[test]
fn attached_segments_supersede_older_rows_and_survive_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shard");
    let dim = 16;
    let params = sealing_at_200();
    let old = rows(300, dim);
    let new: Vec<Vec<f32>> = rows(301, dim).into_iter().skip(1).collect();
    let shard = Shard::open(&dir, 0, dim, Metric::L2, &params).unwrap();
    for chunk in (0..250u64).collect::<Vec<_>>().chunks(50) {
        let ops = chunk
            .iter()
            .map(|id| upsert(*id, "old", &old[*id as usize]))
            .collect();
        shard.write(ops).unwrap();
    }
    assert_eq!(
        shard.sealed_segments(),
        1,
        "ids 0..200 sealed, 200..250 growing"
    );

    // Ids 150..230 and 300..320 supersede sealed and growing rows.
    let ids: Vec<u64> = (150..230).chain(250..300).collect();
    let built = tmp.path().join("built");
    bulk_segment(&built, &ids, &new, dim, "new", &params);
    let attached = shard.attach(&built).unwrap();
    assert_eq!((attached.rows, attached.replaced), (130, 80));
    assert!(!built.exists(), "moved into the shard");

    let check = |shard: &Shard| {
        assert_eq!(shard.len(), 300);
        assert_eq!(&*shard.get(100).unwrap().label, "old");
        assert_eq!(&*shard.get(160).unwrap().label, "new");
        assert_eq!(&*shard.get(220).unwrap().label, "new");
        assert_eq!(
            &*shard.get(240).unwrap().label,
            "old",
            "growing rows carried over"
        );
        assert_eq!(shard.get_vector(220).unwrap().unwrap(), new[220]);
        assert_eq!(shard.get_vector(240).unwrap().unwrap(), old[240]);
        let hits = shard.search_batch(
            &[new[170].as_slice()],
            1,
            &SearchFilter::default(),
            SearchTuning::default(),
        );
        assert_eq!(hits.lists[0][0].id, 170);
        let mut seen = HashMap::new();
        shard
            .scan(&mut |items| {
                for item in items {
                    *seen.entry(item.id).or_insert(0) += 1;
                }
                Ok(())
            })
            .unwrap();
        assert_eq!(seen.len(), 300);
        assert!(seen.values().all(|n| *n == 1), "every id once");
    };
    check(&shard);
    drop(shard);
    let shard = Shard::open(&dir, 0, dim, Metric::L2, &params).unwrap();
    check(&shard);
    assert_eq!(shard.sealed_segments(), 2);

    // A segment of the wrong dimension is refused and changes nothing.
    let wrong = tmp.path().join("wrong");
    let narrow: Vec<Vec<f32>> = rows(10, 8);
    bulk_segment(
        &wrong,
        &(0..10).collect::<Vec<_>>(),
        &narrow,
        8,
        "x",
        &params,
    );
    assert!(shard.attach(&wrong).is_err());
    check(&shard);
    // Writes after an attach go on as usual.
    shard.delete_ids(&[160, 240]).unwrap();
    drop(shard);
    let shard = Shard::open(&dir, 0, dim, Metric::L2, &params).unwrap();
    assert!(shard.get(160).is_none() && shard.get(240).is_none());
    assert_eq!(shard.len(), 298);
}

#[test]
fn a_crash_mid_seal_leaves_the_previous_state() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shard");
    let dim = 8;
    let params = small_params(1_000);
    let data = rows(60, dim);
    let shard = Shard::open(&dir, 0, dim, Metric::Cosine, &params).unwrap();
    shard
        .write(
            (0..60u64)
                .map(|id| upsert(id, "x", &data[id as usize]))
                .collect(),
        )
        .unwrap();
    drop(shard);
    // An interrupted seal: a built segment and a new WAL that shard.bin
    // does not name yet.
    let stray = dir.join(SEGMENTS_DIR).join("00000000");
    SealedSegment::build(
        &stray,
        &[1, 2, 3],
        &data[..3].concat(),
        dim,
        Metric::Cosine,
        &params,
    )
    .unwrap();
    std::fs::write(wal_path(&dir, 1), b"ENGRWAL1").unwrap();
    let shard = Shard::open(&dir, 0, dim, Metric::Cosine, &params).unwrap();
    assert_eq!(shard.len(), 60);
    assert_eq!(shard.sealed_segments(), 0);
    assert!(
        !stray.exists() && !wal_path(&dir, 1).exists(),
        "leftovers removed"
    );
}

/// What the chaos run's full disks left: a seal that failed after
/// creating its segment directory. Every later seal of the shard then
/// failed on "already exists", and so did every write that reached the
/// threshold, after it was logged.
#[test]
fn a_seal_that_failed_midway_neither_blocks_later_seals_nor_fails_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shard");
    let dim = 8;
    let params = small_params(50);
    let data = rows(120, dim);
    let shard = Shard::open(&dir, 0, dim, Metric::Cosine, &params).unwrap();
    let leftover = dir.join(SEGMENTS_DIR).join("00000000");
    std::fs::create_dir_all(&leftover).unwrap();
    std::fs::write(leftover.join("half-written"), b"x").unwrap();
    let upserts = |ids: std::ops::Range<u64>| -> WalRecord {
        ids.map(|id| upsert(id, "x", &data[id as usize])).collect()
    };
    shard.write(upserts(0..60)).unwrap();
    assert_eq!(shard.sealed_segments(), 1);
    assert!(!leftover.join("half-written").exists());
    // A seal that cannot happen (its directory cannot be created) does
    // not fail the logged write; the rows stay served and durable.
    std::fs::remove_dir_all(dir.join(SEGMENTS_DIR)).unwrap();
    std::fs::write(dir.join(SEGMENTS_DIR), b"not a directory").unwrap();
    shard.write(upserts(60..120)).unwrap();
    assert_eq!(shard.sealed_segments(), 1);
    assert!(shard.get(119).is_some());
    drop(shard);
    let (_, records) = Wal::open(&wal_path(&dir, 1)).unwrap();
    let logged: usize = records.iter().map(|r| r.ops.len()).sum();
    assert_eq!(logged, 60, "the rows of the failed seal stay in the WAL");
}

#[test]
fn an_unreadable_sealed_segment_makes_the_answer_partial_not_silent() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shard");
    let dim = 8;
    let params = small_params(100);
    let data = rows(150, dim);
    let shard = Shard::open(&dir, 0, dim, Metric::Cosine, &params).unwrap();
    for chunk in (0..150u64).collect::<Vec<_>>().chunks(50) {
        shard
            .write(
                chunk
                    .iter()
                    .map(|id| upsert(*id, "x", &data[*id as usize]))
                    .collect(),
            )
            .unwrap();
    }
    assert_eq!(shard.sealed_segments(), 1);
    let query = [data[120].as_slice()];
    let healthy = shard.search_batch(&query, 5, &SearchFilter::default(), SearchTuning::default());
    assert_eq!(healthy.failed_segments, 0);

    // The disk index loses everything past its header sector while open.
    let segment = dir.join(SEGMENTS_DIR).join("00000000");
    let index_file = std::fs::read_dir(&segment)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with("_disk.index"))
        .unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&index_file)
        .unwrap()
        .set_len(4096)
        .unwrap();
    let hurt = shard.search_batch(&query, 5, &SearchFilter::default(), SearchTuning::default());
    assert_eq!(hurt.failed_segments, 1, "the failure is reported");
    assert_eq!(hurt.lists[0].len(), 5, "the growing segment still answers");
    assert!(hurt.lists[0].iter().all(|n| n.id >= 100));
}

/// Sixteen small sealed segments (one per seal) merge tier by tier into
/// one; the answers, deletes and item table are the same before and after,
/// and after a reopen.
#[test]
fn merging_sixteen_segments_leaves_one_with_the_same_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shard");
    let dim = 8;
    let params = IndexParams {
        merge_floor_rows: 50,
        ..small_params(40)
    };
    let data = rows(700, dim);
    let shard = Shard::open(&dir, 0, dim, Metric::L2, &params).unwrap();
    for chunk in (0..640u64).collect::<Vec<_>>().chunks(40) {
        shard
            .write(
                chunk
                    .iter()
                    .map(|id| upsert(*id, "x", &data[*id as usize]))
                    .collect(),
            )
            .unwrap();
    }
    assert_eq!(shard.sealed_segments(), 16);
    shard
        .write(
            (640..660u64)
                .map(|id| upsert(id, "y", &data[id as usize]))
                .collect(),
        )
        .unwrap();
    let doomed: Vec<u64> = (0..640).step_by(9).collect();
    shard.delete_ids(&doomed).unwrap();
    let deletion = shard
        .delete_traced(|t| if t.contains(5) { vec![5] } else { vec![] })
        .unwrap()
        .unwrap();
    let queries: Vec<&[f32]> = data.iter().step_by(37).map(Vec::as_slice).collect();
    let answers = |shard: &Shard| -> Vec<Vec<u64>> {
        shard
            .search_batch(
                &queries,
                5,
                &SearchFilter::default(),
                SearchTuning {
                    list_size: Some(200),
                },
            )
            .lists
            .into_iter()
            .map(|l| l.into_iter().map(|n| n.id).collect())
            .collect()
    };
    let before = answers(&shard);
    assert!(
        before
            .iter()
            .flatten()
            .all(|id| !doomed.contains(id) && *id != 5)
    );
    assert!(!shard.presence(&deletion).unwrap().segments.is_empty());

    // A policy that merges only full tiers: 16 -> 4 -> 1, deletes dropped.
    let done = shard
        .compact(CompactOptions {
            min_deleted_fraction: 0.9,
            seal: SealGrowing::Never,
            retrain_codebook: false,
        })
        .unwrap();
    assert_eq!(shard.sealed_segments(), 1, "{done:?}");
    assert_eq!(
        done.segments_rewritten, 20,
        "16 merged by fours, then the 4 results"
    );
    assert_eq!(done.segments_written, 5);
    assert_eq!(answers(&shard), before);
    assert_eq!(shard.len(), 660 - doomed.len() - 1);
    assert!(
        shard.presence(&deletion).unwrap().segments.is_empty(),
        "row 5 left every file"
    );
    assert_eq!(shard.tombstones().0, 0);
    assert_eq!(
        shard.get(640).unwrap().label.as_ref(),
        "y",
        "growing rows untouched"
    );
    drop(shard);
    let shard = Shard::open(&dir, 0, dim, Metric::L2, &params).unwrap();
    assert_eq!(shard.sealed_segments(), 1);
    assert_eq!(answers(&shard), before);
    assert_eq!(shard.len(), 660 - doomed.len() - 1);
    let segments_on_disk = std::fs::read_dir(dir.join(SEGMENTS_DIR)).unwrap().count();
    assert_eq!(segments_on_disk, 1, "merged-away directories are gone");
}

/// Compaction no longer seals a small growing segment: deleted rows' vectors
/// leave the WAL by rewriting it with the live rows only.
#[test]
fn compaction_rewrites_the_wal_instead_of_sealing_a_small_growing_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shard");
    let dim = 8;
    let params = small_params(1_000);
    let data = rows(100, dim);
    let shard = Shard::open(&dir, 0, dim, Metric::L2, &params).unwrap();
    shard
        .write(
            (0..100u64)
                .map(|id| upsert(id, "x", &data[id as usize]))
                .collect(),
        )
        .unwrap();
    let deletion = shard
        .delete_traced(|_| (0..10u64).collect())
        .unwrap()
        .unwrap();
    assert!(shard.presence(&deletion).unwrap().wal);
    // Under the threshold nothing happens; at 0 the WAL is rewritten. A
    // user's compaction (`Large`) leaves 90 rows, under the merge floor of
    // 10,000, growing.
    assert_eq!(
        shard
            .compact(CompactOptions {
                min_deleted_fraction: 0.5,
                seal: SealGrowing::Large,
                retrain_codebook: false
            })
            .unwrap(),
        Compaction::default()
    );
    let done = shard
        .compact(CompactOptions {
            min_deleted_fraction: 0.0,
            seal: SealGrowing::Large,
            retrain_codebook: false,
        })
        .unwrap();
    assert_eq!((done.wals_rewritten, done.segments_written), (1, 0));
    assert_eq!(shard.sealed_segments(), 0);
    assert!(!shard.presence(&deletion).unwrap().wal);
    for (id, row) in data.iter().enumerate().take(10) {
        assert!(
            !files_contain(&dir, &bytes(row)),
            "row {id} still in a file"
        );
    }
    drop(shard);
    let shard = Shard::open(&dir, 0, dim, Metric::L2, &params).unwrap();
    assert_eq!(shard.len(), 90);
    assert_eq!(shard.get_vector(50).unwrap().unwrap(), data[50]);
}

/// A user's compaction seals a growing segment of at least a merge tier's
/// floor of rows (it is then served as a sealed segment and merged with
/// others), and automatic maintenance never seals.
#[test]
fn a_user_compaction_seals_a_growing_segment_of_a_tier_floor() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shard");
    let dim = 8;
    let params = IndexParams {
        merge_floor_rows: 150,
        ..small_params(1_000)
    };
    let data = rows(200, dim);
    let shard = Shard::open(&dir, 0, dim, Metric::L2, &params).unwrap();
    let write = |ids: std::ops::Range<u64>| {
        shard
            .write(ids.map(|id| upsert(id, "x", &data[id as usize])).collect())
            .unwrap()
    };
    // Maintenance's options (nothing deleted needed) with `seal` asked for.
    let compact = |seal: SealGrowing| {
        shard
            .compact(CompactOptions {
                seal,
                ..CompactOptions::maintenance(0.0)
            })
            .unwrap()
    };
    write(0..100);
    compact(SealGrowing::Large);
    assert_eq!(shard.sealed_segments(), 0, "100 rows are under the floor");
    write(100..200);
    compact(SealGrowing::Never);
    assert_eq!(shard.sealed_segments(), 0, "maintenance never seals");
    compact(SealGrowing::Large);
    assert_eq!(shard.sealed_segments(), 1);
    assert_eq!(shard.stats().growing_rows, 0);
    assert_eq!(shard.len(), 200);
    let hits = shard.search_batch(
        &[&data[123]],
        1,
        &SearchFilter::default(),
        SearchTuning::default(),
    );
    assert_eq!(hits.lists[0][0].id, 123);
}

fn scanned(id: u64, label: &str, vector: &[f32]) -> ScannedItem {
    ScannedItem {
        id,
        label: label.into(),
        weight: 1.0,
        source: None,
        vector: vector.to_vec(),
        thumbnail: None,
    }
}

/// A resharding target takes copied rows only for ids it has not seen
/// written or deleted since it began receiving, across seals and restarts.
#[test]
fn a_receiving_shard_never_lets_a_copy_overwrite_a_newer_write_or_a_delete() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shard");
    let dim = 8;
    let params = small_params(30);
    let data = rows(100, dim);
    let shard = Shard::open(&dir, 0, dim, Metric::L2, &params).unwrap();
    shard.start_receiving().unwrap();
    assert!(shard.is_receiving());
    // Newer writes arrive first: id 1 upserted, ids 2 and 77 deleted (77 was never here).
    shard.write(vec![upsert(1, "new", &data[1])]).unwrap();
    assert_eq!(shard.delete_receiving(&[2, 77, 2]).unwrap().len(), 2);
    // Then the copy of the old layout, read before those writes.
    let copied = shard
        .copy_in(
            (0..40u64)
                .chain([77])
                .map(|id| scanned(id, "old", &data[id as usize]))
                .collect(),
        )
        .unwrap();
    assert_eq!(copied.len(), 38, "ids 1, 2 and 77 are skipped");
    assert!(shard.sealed_segments() >= 1, "copies seal like writes");
    let check = |shard: &Shard| {
        assert_eq!(shard.get(1).unwrap().label.as_ref(), "new");
        assert!(shard.get(2).is_none() && shard.get(77).is_none());
        assert_eq!(shard.get(3).unwrap().label.as_ref(), "old");
    };
    check(&shard);
    assert_eq!(shard.len(), 39);
    // Tombstones outlive seals (the WAL holding the deletes is retired) and restarts.
    shard
        .write(
            (50..75u64)
                .map(|id| upsert(id, "w", &data[id as usize]))
                .collect(),
        )
        .unwrap();
    drop(shard);
    let shard = Shard::open(&dir, 0, dim, Metric::L2, &params).unwrap();
    assert!(shard.is_receiving());
    assert!(
        shard
            .copy_in(vec![
                scanned(2, "old", &data[2]),
                scanned(77, "old", &data[77])
            ])
            .unwrap()
            .is_empty()
    );
    check(&shard);
    assert_eq!(shard.len(), 39 + 25);
    // A later delete of a live row is a tombstone too.
    shard.delete_receiving(&[3]).unwrap();
    assert!(
        shard
            .copy_in(vec![scanned(3, "old", &data[3])])
            .unwrap()
            .is_empty()
    );
    shard.finish_receiving().unwrap();
    assert!(!shard.is_receiving());
    drop(shard);
    let shard = Shard::open(&dir, 0, dim, Metric::L2, &params).unwrap();
    assert!(!shard.is_receiving());
    assert!(shard.get(3).is_none() && shard.get(1).is_some());
}

mod receiving_properties {
    use super::*;
    use proptest::prelude::*;

    /// One step of a resharding as a target shard sees it.
    #[derive(Debug, Clone)]
    enum Step {
        /// A client's upsert (new version) or delete, reaching the old
        /// layout and (dual write) the target.
        Upsert(u64),
        Delete(u64),
        /// The copy reads id's row from the old layout now...
        Read(u64),
        /// ...and delivers the n-th read not delivered yet now.
        Deliver(usize),
        /// A seal or restart in between (tombstones must survive).
        Seal,
        Reopen,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => (0u64..12).prop_map(Step::Upsert),
            2 => (0u64..12).prop_map(Step::Delete),
            3 => (0u64..12).prop_map(Step::Read),
            3 => (0usize..4).prop_map(Step::Deliver),
            1 => Just(Step::Seal),
            1 => Just(Step::Reopen),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Whatever order copies (of rows read earlier) and client writes
        /// reach a receiving shard in, once every row has been copied it
        /// holds exactly the old layout's newest state: no copy overwrites
        /// a newer write, none brings a deleted row back.
        #[test]
        fn copies_and_writes_in_any_order_converge_to_the_old_layout(
            initial in prop::collection::btree_set(0u64..12, 0..12),
            steps in prop::collection::vec(step(), 0..60),
        ) {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().join("target");
            let dim = 4;
            let params = small_params(5);
            let vector = |id: u64, version: u64| -> Vec<f32> {
                vec![id as f32, version as f32, 1.0, (id * 7 + version) as f32]
            };
            // The old layout: id -> version.
            let mut old: HashMap<u64, u64> = initial.iter().map(|id| (*id, 0)).collect();
            let mut target = Shard::open(&dir, 0, dim, Metric::L2, &params).unwrap();
            target.start_receiving().unwrap();
            let mut in_flight: Vec<Option<(u64, u64)>> = Vec::new();
            let mut version = 1u64;
            let row = |id: u64, version: u64| ScannedItem {
                id,
                label: format!("v{version}").into(),
                weight: 1.0,
                source: None,
                vector: vector(id, version),
                thumbnail: None,
            };
            for step in steps {
                match step {
                    Step::Upsert(id) => {
                        version += 1;
                        old.insert(id, version);
                        target.write(vec![upsert(id, &format!("v{version}"), &vector(id, version))]).unwrap();
                    }
                    Step::Delete(id) => {
                        old.remove(&id);
                        target.delete_receiving(&[id]).unwrap();
                    }
                    Step::Read(id) => in_flight.push(old.get(&id).map(|v| (id, *v))),
                    Step::Deliver(n) => {
                        let pending: Vec<usize> = in_flight
                            .iter()
                            .enumerate()
                            .filter(|(_, r)| r.is_some())
                            .map(|(i, _)| i)
                            .collect();
                        if let Some(i) = pending.get(n.min(pending.len().saturating_sub(1))) {
                            let (id, version) = in_flight[*i].take().unwrap();
                            target.copy_in(vec![row(id, version)]).unwrap();
                        }
                    }
                    Step::Seal => target.seal().unwrap(),
                    Step::Reopen => {
                        drop(target);
                        target = Shard::open(&dir, 0, dim, Metric::L2, &params).unwrap();
                        prop_assert!(target.is_receiving());
                    }
                }
            }
            // Late deliveries of earlier reads, then the copy's full pass.
            for (id, version) in in_flight.into_iter().flatten() {
                target.copy_in(vec![row(id, version)]).unwrap();
            }
            target
                .copy_in(old.iter().map(|(id, v)| row(*id, *v)).collect())
                .unwrap();
            prop_assert_eq!(target.len(), old.len());
            for id in 0..12u64 {
                match (target.get(id), old.get(&id)) {
                    (Some(item), Some(v)) => {
                        let label = format!("v{v}");
                        prop_assert_eq!(item.label.as_ref(), label.as_str());
                        prop_assert_eq!(target.get_vector(id).unwrap().unwrap(), vector(id, *v));
                    }
                    (None, None) => {}
                    (got, want) => prop_assert!(false, "id {id}: {:?} vs {:?}", got, want),
                }
            }
        }
    }
}

/// Seals encode with the shard's one codebook: trained at the first seal,
/// reused by the next, kept across a restart; a damaged one is refused by
/// its checksum and replaced by a new version; rows that drifted from it
/// get a new version too.
#[test]
fn seals_share_one_codebook_until_it_is_damaged_or_the_rows_drift() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shard");
    let dim = 16;
    let params = sealing_at_200();
    let data = rows(400, dim);
    let write = |shard: &Shard, ids: std::ops::Range<u64>, vector: &dyn Fn(u64) -> Vec<f32>| {
        let ops = ids.map(|id| upsert(id, "c", &vector(id))).collect();
        shard.write(ops).unwrap();
    };
    let codebooks = |shard: &Shard| -> Vec<Option<u64>> {
        shard
            .sealed()
            .iter()
            .map(|s| s.manifest().codebook)
            .collect()
    };
    let shard = Shard::open(&dir, 0, dim, Metric::Cosine, &params).unwrap();
    write(&shard, 0..200, &|id| data[id as usize].clone());
    write(&shard, 200..400, &|id| data[id as usize].clone());
    assert_eq!(codebooks(&shard), vec![Some(1), Some(1)], "trained once");
    drop(shard);

    let shard = Shard::open(&dir, 0, dim, Metric::Cosine, &params).unwrap();
    assert_eq!(shard.codebooks.current().unwrap().version(), 1);
    drop(shard);
    let pivots = dir.join(CODEBOOKS_DIR).join("v000001").join("pivots.bin");
    let mut bytes = std::fs::read(&pivots).unwrap();
    bytes[64] ^= 1;
    std::fs::write(&pivots, bytes).unwrap();
    let shard = Shard::open(&dir, 0, dim, Metric::Cosine, &params).unwrap();
    assert!(shard.codebooks.current().is_none(), "refused, not used");
    write(&shard, 400..600, &|id| data[(id - 400) as usize].clone());
    assert_eq!(
        codebooks(&shard)[2],
        Some(2),
        "a new version, never v1 again"
    );

    // Rows far from everything the codebook saw: a mirrored, shifted set.
    let drifted = |id: u64| {
        let mut v: Vec<f32> = data[(id - 600) as usize]
            .iter()
            .rev()
            .enumerate()
            .map(|(i, x)| x * 0.2 + if i % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        engram_core::vector::normalize_in_place(&mut v).unwrap();
        v
    };
    write(&shard, 600..800, &drifted);
    assert_eq!(codebooks(&shard)[3], Some(3), "retrained on drift");
    // Every segment still answers its own rows.
    for (id, vector) in [(250u64, data[250].clone()), (700, drifted(700))] {
        let hits = shard.search_batch(
            &[vector.as_slice()],
            1,
            &SearchFilter::default(),
            SearchTuning::default(),
        );
        assert_eq!(hits.lists[0][0].id, id);
    }
    // An operator's request: the next build (here the compaction's merge of
    // the four segments, a full tier) trains one, whatever drift says.
    let done = shard
        .compact(CompactOptions {
            min_deleted_fraction: 0.0,
            seal: SealGrowing::Never,
            retrain_codebook: true,
        })
        .unwrap();
    assert!(
        done.segments_written > 0,
        "a full tier was merged: {done:?}"
    );
    assert_eq!(shard.codebooks.current().unwrap().version(), 4);
    assert_eq!(codebooks(&shard), vec![Some(4)], "merged with the new one");
    write(&shard, 800..1000, &|id| data[(id - 800) as usize].clone());
    assert_eq!(codebooks(&shard).last(), Some(&Some(4)), "and reused after");
    let kept: Vec<_> = std::fs::read_dir(dir.join(CODEBOOKS_DIR))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(kept, vec!["v000004".to_string()], "older versions removed");
}
