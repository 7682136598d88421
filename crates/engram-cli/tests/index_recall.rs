//! Recall of the DiskANN segments at default settings on real embeddings:
//! Fashion-MNIST images embedded by the default model, against exact search.

mod common;

use common::*;
use engram_core::Metric;
use engram_core::config::{EmbedderConfig, IndexParams};
use engram_index::{FlatIndex, GrowingSegment, MutableSegmentIndex, SealedSegment, SegmentIndex};
use engram_ingest::{OnnxEmbedder, idx};

const MEMORY: usize = 3_000;
const QUERIES: usize = 200;

fn recall(index: &dyn SegmentIndex, exact: &FlatIndex, queries: &[Vec<f32>]) -> f64 {
    let mut hits = 0;
    for q in queries {
        let truth: Vec<u64> = exact
            .search(q, 10, &|_| true)
            .iter()
            .map(|h| h.id)
            .collect();
        hits += index
            .search(q, 10, &|_| true)
            .iter()
            .filter(|h| truth.contains(&h.id))
            .count();
    }
    hits as f64 / (queries.len() * 10) as f64
}

#[test]
fn segments_reach_recall_095_on_fashion_mnist_embeddings_at_default_settings() {
    assert!(
        std::env::var("ORT_DYLIB_PATH").is_ok(),
        "run with `make test`"
    );
    let config = EmbedderConfig {
        model_path: repo_root().join("models/efficientnet-lite0/efficientnet-lite0.onnx"),
        image_size: 128,
        ..EmbedderConfig::default()
    };
    let embedder = OnnxEmbedder::load(&config, 40_000_000).unwrap();
    let dir = fashion_mnist_dir();
    let train = idx::read_images(&dir.join("train-images-idx3-ubyte.gz")).unwrap();
    let test = idx::read_images(&dir.join("t10k-images-idx3-ubyte.gz")).unwrap();
    let embed = |images: &idx::IdxImages, n: usize| -> Vec<Vec<f32>> {
        let pngs: Vec<Vec<u8>> = (0..n)
            .map(|i| {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD
                    .decode(fashion_png(images, i))
                    .unwrap()
            })
            .collect();
        let refs: Vec<&[u8]> = pngs.iter().map(Vec::as_slice).collect();
        embedder.embed_images(&refs).unwrap()
    };
    let memory = embed(&train, MEMORY);
    let queries = embed(&test, QUERIES);

    let params = IndexParams::default();
    let mut exact = FlatIndex::new(1280, Metric::Cosine);
    let mut growing = GrowingSegment::new(1280, Metric::Cosine, &params).unwrap();
    for (id, v) in memory.iter().enumerate() {
        exact.upsert(id as u64, v).unwrap();
        growing.upsert(id as u64, v).unwrap();
    }
    let growing_recall = recall(&growing, &exact, &queries);

    let tmp = tempfile::tempdir().unwrap();
    let segment_dir = tmp.path().join("segment");
    let ids: Vec<u64> = (0..MEMORY as u64).collect();
    SealedSegment::build(
        &segment_dir,
        &ids,
        &memory.concat(),
        1280,
        Metric::Cosine,
        &params,
    )
    .unwrap();
    let sealed = SealedSegment::open(&segment_dir, &params, false).unwrap();
    let sealed_recall = recall(&sealed, &exact, &queries);
    eprintln!(
        "recall@10 at default settings: growing {growing_recall:.4}, sealed {sealed_recall:.4}"
    );
    assert!(
        growing_recall >= 0.95,
        "growing segment recall@10 {growing_recall}"
    );
    assert!(
        sealed_recall >= 0.95,
        "sealed segment recall@10 {sealed_recall}"
    );
}
