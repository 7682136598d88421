//! Dataset preparation: embeddings or synthetic rows, and exact ground truth.

use anyhow::Context;
use rayon::prelude::*;
use std::io::Write;
use std::path::{Path, PathBuf};

use engram_core::Metric;
use engram_core::config::EmbedderConfig;
use engram_index::{FlatIndex, MutableSegmentIndex, SegmentIndex};
use engram_ingest::{OnnxEmbedder, idx};

pub const GT_K: usize = 100;

pub fn write_fbin(path: &Path, rows: &[f32], dim: usize) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    out.write_all(&((rows.len() / dim) as u32).to_le_bytes())?;
    out.write_all(&(dim as u32).to_le_bytes())?;
    for x in rows {
        out.write_all(&x.to_le_bytes())?;
    }
    out.flush()?;
    Ok(())
}

pub fn read_fbin(path: &Path) -> anyhow::Result<(Vec<f32>, usize)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let n = u32::from_le_bytes(bytes[0..4].try_into()?) as usize;
    let dim = u32::from_le_bytes(bytes[4..8].try_into()?) as usize;
    let rows: Vec<f32> = bytes[8..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    anyhow::ensure!(rows.len() == n * dim, "{} is truncated", path.display());
    Ok((rows, dim))
}

pub fn read_gt(path: &Path) -> anyhow::Result<(Vec<u32>, usize)> {
    let bytes = std::fs::read(path)?;
    let k = u32::from_le_bytes(bytes[4..8].try_into()?) as usize;
    Ok((
        bytes[8..]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        k,
    ))
}

/// Exact top-`GT_K` by squared L2 for every query, via Engram's exact index.
fn write_ground_truth(dir: &Path, base: &[f32], queries: &[f32], dim: usize) -> anyhow::Result<()> {
    let mut exact = FlatIndex::new(dim, Metric::L2);
    for (i, row) in base.chunks_exact(dim).enumerate() {
        exact.upsert(i as u64, row)?;
    }
    let refs: Vec<&[f32]> = queries.chunks_exact(dim).collect();
    let mut ids = Vec::with_capacity(refs.len() * GT_K);
    for chunk in refs.chunks(256) {
        for hits in exact.search_batch(chunk, GT_K, &|_| true) {
            anyhow::ensure!(hits.len() == GT_K, "fewer than {GT_K} rows");
            ids.extend(hits.iter().map(|h| h.id as u32));
        }
    }
    let mut out = std::io::BufWriter::new(std::fs::File::create(dir.join("gt.ibin"))?);
    out.write_all(&(refs.len() as u32).to_le_bytes())?;
    out.write_all(&(GT_K as u32).to_le_bytes())?;
    for id in ids {
        out.write_all(&id.to_le_bytes())?;
    }
    out.flush()?;
    Ok(())
}

fn finish(dir: &Path, name: &str, base: &[f32], queries: &[f32], dim: usize) -> anyhow::Result<()> {
    write_fbin(&dir.join("base.fbin"), base, dim)?;
    write_fbin(&dir.join("query.fbin"), queries, dim)?;
    write_ground_truth(dir, base, queries, dim)?;
    let meta = serde_json::json!({ "name": name, "n": base.len() / dim, "nq": queries.len() / dim, "dim": dim });
    std::fs::write(dir.join("meta.json"), meta.to_string())?;
    eprintln!(
        "wrote {} ({} rows, {} queries, dim {dim})",
        dir.display(),
        base.len() / dim,
        queries.len() / dim
    );
    Ok(())
}

pub fn fashion_mnist(
    out: &Path,
    memory: usize,
    queries: usize,
    image_size: u32,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let config = EmbedderConfig {
        model_path: root.join("models/efficientnet-lite0/efficientnet-lite0.onnx"),
        image_size,
        ..EmbedderConfig::default()
    };
    let embedder = OnnxEmbedder::load(&config, 40_000_000)?;
    let dataset = Path::new("/usr/share/datasets/fashion-mnist");
    // `mirrored`: the images flipped left-right, real images too (beyond
    // the 60,000 training images a memory takes their mirror images).
    let embed = |file: &str, n: usize, mirrored: bool| -> anyhow::Result<Vec<f32>> {
        let images = idx::read_images(&dataset.join(file))?;
        let n = n.min(images.count);
        let mut rows = Vec::with_capacity(n * 1280);
        for start in (0..n).step_by(512) {
            let pngs: Vec<Vec<u8>> = (start..(start + 512).min(n))
                .into_par_iter()
                .map(|i| {
                    let mut img = image::GrayImage::from_raw(
                        images.cols as u32,
                        images.rows as u32,
                        images.image(i).to_vec(),
                    )
                    .expect("28x28");
                    if mirrored {
                        image::imageops::flip_horizontal_in_place(&mut img);
                    }
                    let mut png = std::io::Cursor::new(Vec::new());
                    img.write_to(&mut png, image::ImageFormat::Png)
                        .expect("png");
                    png.into_inner()
                })
                .collect();
            let refs: Vec<&[u8]> = pngs.iter().map(Vec::as_slice).collect();
            for v in embedder.embed_images(&refs)? {
                rows.extend(v);
            }
            eprint!("\r{file}: {}/{n}", (start + 512).min(n));
        }
        eprintln!();
        Ok(rows)
    };
    let mut base = embed("train-images-idx3-ubyte.gz", memory.min(60_000), false)?;
    if memory > 60_000 {
        base.extend(embed("train-images-idx3-ubyte.gz", memory - 60_000, true)?);
    }
    let query = embed("t10k-images-idx3-ubyte.gz", queries, false)?;
    let name = if memory > 60_000 {
        format!("fashion-mnist-effnet-{}", human(memory))
    } else {
        "fashion-mnist-effnet".to_string()
    };
    finish(out, &name, &base, &query, 1280)
}

pub fn synthetic(out: &Path, n: usize, queries: usize, dim: usize) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    // Clustered Gaussians: 256 centres ~ N(0, 1), points = centre + N(0, 0.35^2),
    // from a fixed-seed xorshift generator with a Box-Muller transform.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    let mut normal = move || {
        let (u, v) = (uniform(), uniform());
        ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
    };
    let centres: Vec<f32> = (0..256 * dim).map(|_| normal()).collect();
    let mut make = |count: usize| -> Vec<f32> {
        let mut rows = Vec::with_capacity(count * dim);
        for i in 0..count {
            let c = (i.wrapping_mul(2_654_435_761) >> 3) % 256;
            for j in 0..dim {
                rows.push(centres[c * dim + j] + 0.35 * normal());
            }
        }
        rows
    };
    let base = make(n);
    let query = make(queries);
    finish(
        out,
        &format!("synthetic-{}-{dim}d", human(n)),
        &base,
        &query,
        dim,
    )
}

fn human(n: usize) -> String {
    if n.is_multiple_of(1_000_000) {
        format!("{}m", n / 1_000_000)
    } else if n.is_multiple_of(1_000) {
        format!("{}k", n / 1_000)
    } else {
        n.to_string()
    }
}
