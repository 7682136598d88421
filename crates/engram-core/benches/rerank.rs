//! The second stage's in-process cost: a head's prediction (10 classes x
//! 1280 dimensions, the Fashion-MNIST eval's shape), the fusion with the
//! votes, and one training epoch over 2,000 rows; beside it, the first
//! stage's vote (rank rule, k = 17, the eval's chosen k) as the reference.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::collections::BTreeMap;
use std::hint::black_box;

use engram_core::head::{SplitMix64, TrainingSet};
use engram_core::rerank::fuse;
use engram_core::{HeadTraining, LinearHead, Neighbor, VoteParams, decide};

const DIM: usize = 1280;
const CLASSES: usize = 10;

fn rows(n: usize, seed: u64) -> (Vec<f32>, Vec<u32>) {
    let mut rng = SplitMix64(seed);
    let vectors = (0..n * DIM)
        .map(|_| rng.below(1_000) as f32 / 1_000.0 - 0.5)
        .collect();
    let classes = (0..n).map(|_| rng.below(CLASSES as u64) as u32).collect();
    (vectors, classes)
}

fn labels() -> Vec<String> {
    (0..CLASSES).map(|c| format!("class-{c}")).collect()
}

fn bench(c: &mut Criterion) {
    let (vectors, classes) = rows(2_000, 1);
    let set = TrainingSet {
        dim: DIM,
        vectors: &vectors,
        classes: &classes,
        labels: labels(),
    };
    let one_epoch = HeadTraining {
        epochs: 1,
        ..HeadTraining::default()
    };
    let head = LinearHead::train(&set, &one_epoch, &mut |_| true)
        .expect("valid set")
        .expect("not stopped");
    let query = &vectors[..DIM];
    let mut group = c.benchmark_group("rerank");
    group.throughput(Throughput::Elements(1));
    group.bench_function("head_predict_10x1280", |b| {
        b.iter(|| head.predict(black_box(query)).expect("dim"))
    });
    let scores = head.predict(query).expect("dim");
    let votes: BTreeMap<String, f64> = labels()
        .into_iter()
        .take(4)
        .enumerate()
        .map(|(i, l)| (l, 1.0 / (2.0 + i as f64)))
        .collect();
    let neighbors: Vec<Neighbor> = (0..17u64)
        .map(|i| Neighbor {
            id: i,
            label: format!("class-{}", i % 4),
            distance: 0.1 + i as f32 * 0.01,
            weight: 1.0,
            source: None,
        })
        .collect();
    let params = VoteParams::default();
    group.bench_function("votes_decide_rank_k17", |b| {
        b.iter(|| decide(black_box(neighbors.clone()), &params))
    });
    group.bench_function("fuse_10_labels", |b| {
        b.iter(|| fuse(black_box(&votes), black_box(&scores), 0.5))
    });
    group.throughput(Throughput::Elements(2_000));
    group.sample_size(10);
    group.bench_function("head_train_epoch_2000_rows", |b| {
        b.iter(|| LinearHead::train(black_box(&set), &one_epoch, &mut |_| true))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
