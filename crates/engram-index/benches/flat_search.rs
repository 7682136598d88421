//! Exact search throughput of the growing segment's index.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use engram_core::Metric;
use engram_index::{FlatIndex, MutableSegmentIndex, SegmentIndex};

fn random_unit_vectors(n: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            let mut v: Vec<f32> = (0..dim)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
                })
                .collect();
            engram_core::vector::normalize_in_place(&mut v).expect("non-zero");
            v
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let dim = 1280;
    let n = 20_000;
    let mut index = FlatIndex::new(dim, Metric::Cosine);
    for (id, v) in random_unit_vectors(n, dim, 1).iter().enumerate() {
        index.upsert(id as u64, v).expect("dim");
    }
    let queries = random_unit_vectors(64, dim, 2);
    let refs: Vec<&[f32]> = queries.iter().map(|q| q.as_slice()).collect();
    let mut group = c.benchmark_group("flat_cosine_1280d_20k");
    group.sample_size(10);
    group.throughput(Throughput::Elements(1));
    group.bench_function("search_k50", |b| {
        b.iter(|| index.search(&queries[0], 50, &|_| true))
    });
    group.throughput(Throughput::Elements(refs.len() as u64));
    group.bench_function("search_batch64_k50", |b| {
        b.iter(|| index.search_batch(&refs, 50, &|_| true))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
