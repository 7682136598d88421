//! Embedding throughput of Engram's ONNX embedder, batch 32, in two modes:
//! `model` (ONNX Runtime on an already preprocessed batch, the number to
//! compare with Python onnxruntime's `session.run`) and `end_to_end` (PNG
//! bytes -> decode -> resize -> normalise -> model -> L2 normalise).
//!
//! Prints one JSON line per (mode, image size), so that `scripts/bench.sh`
//! can put it beside the Python reference measured in the same run.
//! Environment: ORT_DYLIB_PATH (required), ENGRAM_BENCH_SIZES (default
//! "128,224"), ENGRAM_BENCH_BATCHES (timed batches, default 8).

use std::path::PathBuf;
use std::time::Instant;

use engram_core::config::EmbedderConfig;
use engram_ingest::OnnxEmbedder;
use engram_ingest::idx;

const BATCH: usize = 32;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn png(images: &idx::IdxImages, i: usize) -> Vec<u8> {
    let image = image::GrayImage::from_raw(
        images.cols as u32,
        images.rows as u32,
        images.image(i).to_vec(),
    )
    .expect("28x28");
    let mut out = std::io::Cursor::new(Vec::new());
    image
        .write_to(&mut out, image::ImageFormat::Png)
        .expect("png");
    out.into_inner()
}

fn time_batches(batches: usize, mut run: impl FnMut()) -> Vec<f64> {
    run();
    run();
    (0..batches)
        .map(|_| {
            let started = Instant::now();
            run();
            BATCH as f64 / started.elapsed().as_secs_f64()
        })
        .collect()
}

fn report(mode: &str, size: u32, mut rates: Vec<f64>) {
    rates.sort_by(f64::total_cmp);
    let median = rates[rates.len() / 2];
    let mean = rates.iter().sum::<f64>() / rates.len() as f64;
    println!(
        "{{\"impl\":\"engram-rust-ort\",\"mode\":\"{mode}\",\"size\":{size},\"batch\":{BATCH},\"batches\":{},\"images_per_s_median\":{median:.1},\"images_per_s_mean\":{mean:.1}}}",
        rates.len()
    );
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let sizes: Vec<u32> = std::env::var("ENGRAM_BENCH_SIZES")
        .unwrap_or_else(|_| "128,224".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let batches = env_or("ENGRAM_BENCH_BATCHES", 8usize);
    let dataset = PathBuf::from("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz");
    let images = idx::read_images(&dataset).expect("Fashion-MNIST (make setup installs it)");
    let pngs: Vec<Vec<u8>> = (0..BATCH).map(|i| png(&images, i)).collect();
    let png_refs: Vec<&[u8]> = pngs.iter().map(Vec::as_slice).collect();
    for size in sizes {
        let config = EmbedderConfig {
            model_path: root.join("models/efficientnet-lite0/efficientnet-lite0.onnx"),
            image_size: size,
            batch_size: BATCH,
            ..EmbedderConfig::default()
        };
        let embedder = OnnxEmbedder::load(&config, 40_000_000).expect("model loads");
        let per_image = embedder.preprocessor().tensor_len();
        let tensor: Vec<f32> = (0..BATCH * per_image)
            .map(|i| ((i * 7919) % 255) as f32 / 128.0 - 1.0)
            .collect();
        report(
            "model",
            size,
            time_batches(batches, || {
                embedder.run(&tensor, BATCH).expect("run");
            }),
        );
        report(
            "end_to_end",
            size,
            time_batches(batches, || {
                embedder.embed_images(&png_refs).expect("embed");
            }),
        );
    }
}
