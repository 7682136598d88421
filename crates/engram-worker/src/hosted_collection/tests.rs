use super::*;
use engram_core::{Metric, VotingRule};
use proptest::prelude::*;
use std::collections::HashMap;

#[derive(Debug, Clone)]
enum Op {
    Upsert(u64, u8, [f32; 3]),
    DeleteIds(Vec<u64>),
    DeleteLabel(u8),
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u64..60, 0u8..3, prop::array::uniform3(-1f32..1.0)).prop_map(|(id, l, v)| Op::Upsert(id, l, v)),
        2 => prop::collection::vec(0u64..60, 1..5).prop_map(Op::DeleteIds),
        1 => (0u8..3).prop_map(Op::DeleteLabel),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    /// Across shards, seals (threshold 4), compactions and reopens:
    /// search equals brute force over the live items, and nothing
    /// deleted is ever returned.
    #[test]
    fn deleted_items_are_never_returned(ops in prop::collection::vec(arb_op(), 1..80), q in prop::array::uniform3(-1f32..1.0)) {
        let dir = tempfile::tempdir().unwrap();
        let spec = CollectionSpec { name: "p".into(), dim: 3, metric: Metric::L2, embedder: None, shards: 5, replication: 1, default_k: 10, default_rule: VotingRule::Rank };
        let params = IndexParams { seal_threshold: 4, max_degree: 16, build_list_size: 32, pq_bytes: 3, search_list_size: 64, ..IndexParams::default() };
        let mut hosted = HostedCollection::open(dir.path(), spec.clone(), &params).unwrap();
        let mut live: HashMap<u64, (String, [f32; 3])> = HashMap::new();
        let mut deleted: HashSet<u64> = HashSet::new();
        for (step, op) in ops.into_iter().enumerate() {
            match op {
                Op::Upsert(id, l, v) => {
                    hosted.write(vec![WalOp::Upsert { id, label: format!("l{l}").into(), weight: 1.0, source: None, vector: v.to_vec(), thumbnail: None }]).unwrap();
                    live.insert(id, (format!("l{l}"), v));
                    deleted.remove(&id);
                }
                Op::DeleteIds(ids) => {
                    let expected = ids.iter().collect::<HashSet<_>>().iter().filter(|id| live.contains_key(id)).count();
                    prop_assert_eq!(hosted.delete_ids(&ids).unwrap(), expected);
                    for id in ids { if live.remove(&id).is_some() { deleted.insert(id); } }
                }
                Op::DeleteLabel(l) => {
                    let label = format!("l{l}");
                    let ids: Vec<u64> = live.iter().filter(|(_, (x, _))| *x == label).map(|(id, _)| *id).collect();
                    prop_assert_eq!(hosted.delete_label(&label).unwrap(), ids.len());
                    for id in ids { live.remove(&id); deleted.insert(id); }
                }
            }
            if step % 23 == 22 {
                // Compaction rewrites sealed segments without deleted rows.
                hosted.compact(engram_core::merge_policy::CompactOptions::maintenance(0.0)).unwrap();
            }
            if step % 17 == 16 {
                drop(hosted);
                hosted = HostedCollection::open(dir.path(), spec.clone(), &params).unwrap();
            }
        }
        let results = hosted.search_batch(&[&q], 100, &SearchFilter::default(), SearchTuning::default());
        prop_assert!(results.incomplete_shards.is_empty());
        let hits = &results.lists[0];
        prop_assert_eq!(hits.len(), live.len());
        prop_assert!(hits.iter().all(|n| !deleted.contains(&n.id)));
        let mut expected: Vec<(f32, u64)> = live.iter().map(|(id, (_, v))| (Metric::L2.distance(&q, v), *id)).collect();
        expected.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let got: Vec<u64> = hits.iter().map(|n| n.id).collect();
        let want: Vec<u64> = expected.iter().map(|(_, id)| *id).collect();
        prop_assert_eq!(got, want);
        prop_assert_eq!(hosted.stats().items as usize, live.len());
    }
}

struct Hooks {
    committed: parking_lot::Mutex<Option<CollectionSpec>>,
    fail_commit: bool,
}

impl Hooks {
    fn new(fail_commit: bool) -> Hooks {
        Hooks {
            committed: parking_lot::Mutex::new(None),
            fail_commit,
        }
    }
}

impl ReshardHooks for Hooks {
    fn progress(&self, done: u64, total: u64) {
        assert!(done <= total);
    }
    fn cancelled(&self) -> bool {
        false
    }
    fn commit(&self, spec: &CollectionSpec) -> Result<()> {
        if self.fail_commit {
            return Err(crate::WorkerError::Invalid(
                "the catalog is unreachable".into(),
            ));
        }
        *self.committed.lock() = Some(spec.clone());
        Ok(())
    }
}

fn reshard_spec(shards: u32) -> CollectionSpec {
    CollectionSpec {
        name: "r".into(),
        dim: 4,
        metric: Metric::L2,
        embedder: None,
        shards,
        replication: 1,
        default_k: 10,
        default_rule: VotingRule::Rank,
    }
}

fn reshard_params() -> IndexParams {
    IndexParams {
        seal_threshold: 150,
        max_degree: 16,
        build_list_size: 32,
        pq_bytes: 4,
        search_list_size: 64,
        ..IndexParams::default()
    }
}

fn vector(id: u64, generation: u64) -> Vec<f32> {
    let x = (id * 31 + generation * 7) as f32;
    vec![x.sin(), x.cos(), (x * 0.5).sin(), 1.0 + generation as f32]
}

fn put(id: u64, generation: u64) -> WalOp {
    WalOp::Upsert {
        id,
        label: format!("g{generation}").into(),
        weight: 1.0,
        source: Some(format!("src{}", id % 4).into()),
        vector: vector(id, generation),
        thumbnail: None,
    }
}

/// Writes, deletes by id and by source go on while 3 shards become 7 (and
/// then 2): afterwards the collection holds exactly what the writer was
/// acknowledged, in the new layout only, and still does after a reopen.
#[test]
fn resharding_online_keeps_every_acknowledged_write_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let params = reshard_params();
    let hosted = Arc::new(HostedCollection::open(dir.path(), reshard_spec(3), &params).unwrap());
    let mut model: HashMap<u64, u64> = HashMap::new();
    for chunk in (0..1200u64).collect::<Vec<_>>().chunks(100) {
        hosted
            .write(chunk.iter().map(|id| put(*id, 0)).collect())
            .unwrap();
        model.extend(chunk.iter().map(|id| (*id, 0)));
    }
    hosted
        .delete_ids(&(0..1200).step_by(13).collect::<Vec<_>>())
        .unwrap();
    for id in (0..1200u64).step_by(13) {
        model.remove(&id);
    }
    for target in [7u32, 2] {
        let done = std::sync::atomic::AtomicBool::new(false);
        let writer_model = std::thread::scope(|scope| {
            let writer = scope.spawn(|| {
                let mut model = model.clone();
                let mut generation = u64::from(target);
                let mut round = 0u64;
                while !done.load(std::sync::atomic::Ordering::SeqCst) || round < 3 {
                    round += 1;
                    generation += 1;
                    // Updates of old rows, fresh rows, deletes by id and by source.
                    let ids: Vec<u64> = (0..60).map(|i| (round * 97 + i * 17) % 1500).collect();
                    hosted
                        .write(ids.iter().map(|id| put(*id, generation)).collect())
                        .unwrap();
                    for id in &ids {
                        model.insert(*id, generation);
                    }
                    let doomed: Vec<u64> = ids.iter().copied().step_by(5).collect();
                    hosted.delete_ids(&doomed).unwrap();
                    for id in &doomed {
                        model.remove(id);
                    }
                    if round.is_multiple_of(7) {
                        let source = format!("src{}", round % 4);
                        hosted.delete_source(&source).unwrap();
                        model.retain(|id, _| id % 4 != round % 4);
                    }
                }
                model
            });
            let hooks = Hooks::new(false);
            let report = hosted.reshard(target, &hooks).unwrap();
            assert_eq!(report.to_shards, target);
            assert_eq!(hooks.committed.lock().as_ref().unwrap().shards, target);
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            writer.join().unwrap()
        });
        model = writer_model;
        let check = |hosted: &HostedCollection| {
            assert_eq!(hosted.spec().shards, target);
            assert_eq!(hosted.reshard_target(), None);
            assert_eq!(hosted.stats().items as usize, model.len());
            for id in 0..1500u64 {
                match (hosted.get(id), model.get(&id)) {
                    (Some(item), Some(generation)) => {
                        assert_eq!(item.label.as_ref(), format!("g{generation}"), "id {id}");
                        assert_eq!(
                            hosted.get_vector(id).unwrap().unwrap(),
                            vector(id, *generation)
                        );
                    }
                    (None, None) => {}
                    (got, want) => panic!("id {id}: got {got:?}, want generation {want:?}"),
                }
            }
            let q = vector(5, 0);
            let hits = &hosted
                .search_batch(
                    &[&q],
                    2000,
                    &SearchFilter::default(),
                    SearchTuning::default(),
                )
                .lists[0];
            assert_eq!(hits.len(), model.len());
            assert!(hits.iter().all(|n| model.contains_key(&n.id)));
        };
        check(&hosted);
        let layouts: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .filter(|n| n.starts_with("shards"))
            .collect();
        assert_eq!(layouts, vec![format!("shards-{target}")]);
        let reopened = HostedCollection::open(dir.path(), reshard_spec(target), &params).unwrap();
        check(&reopened);
    }
}

/// A resharding interrupted before its commit is taken up again after a
/// reopen (writes reach the target meanwhile); one interrupted after its
/// commit is completed by the reopen itself.
#[test]
fn an_interrupted_resharding_is_resumed_or_completed_when_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let params = reshard_params();
    let hosted = HostedCollection::open(dir.path(), reshard_spec(2), &params).unwrap();
    hosted
        .write((0..400).map(|id| put(id, 0)).collect())
        .unwrap();
    // The commit fails (as if the process died before it).
    assert!(hosted.reshard(5, &Hooks::new(true)).is_err());
    assert_eq!(hosted.spec().shards, 2);
    assert_eq!(hosted.reshard_target(), Some(5));
    drop(hosted);

    let hosted = HostedCollection::open(dir.path(), reshard_spec(2), &params).unwrap();
    assert_eq!(
        hosted.reshard_target(),
        Some(5),
        "picked up from reshard.json"
    );
    hosted
        .write((400..450).map(|id| put(id, 1)).collect())
        .unwrap();
    hosted.delete_ids(&[3, 401]).unwrap();
    // Another count is refused while this one is under way.
    assert!(hosted.reshard(3, &Hooks::new(false)).is_err());
    // Fails once more at the commit; this time the catalog did get the new
    // count before the process died: opening finishes the flip.
    assert!(hosted.reshard(5, &Hooks::new(true)).is_err());
    drop(hosted);
    let hosted = HostedCollection::open(dir.path(), reshard_spec(5), &params).unwrap();
    assert_eq!(hosted.reshard_target(), None);
    assert_eq!(hosted.stats().items, 448);
    assert!(hosted.get(3).is_none() && hosted.get(401).is_none());
    assert_eq!(hosted.get(420).unwrap().label.as_ref(), "g1");
    assert!(
        !dir.path().join("shards").exists(),
        "the old layout is gone"
    );
    assert!(!dir.path().join("reshard.json").exists());

    // Abandoning drops the target and keeps everything in the current layout.
    let hooks = Hooks::new(true);
    assert!(hosted.reshard(9, &hooks).is_err());
    hosted.abandon().unwrap();
    assert_eq!(hosted.reshard_target(), None);
    assert!(!dir.path().join("shards-9").exists());
    assert_eq!(hosted.stats().items, 448);
    assert!(hosted.reshard(5, &Hooks::new(false)).is_err(), "same count");
}
