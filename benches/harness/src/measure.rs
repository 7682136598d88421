//! Engram's side of the index benchmark: build a segment, then search every
//! query one at a time on one thread for each candidate list size L.

use std::path::Path;
use std::time::Instant;

use engram_core::Metric;
use engram_core::config::IndexParams;
use engram_core::residency::Residency;
use engram_index::{
    GrowingSegment, MutableSegmentIndex, SealedSegment, SearchSettings, SegmentCache,
};
use std::sync::Arc;

use crate::data::{read_fbin, read_gt};

const SWEEP: [u32; 9] = [10, 20, 30, 50, 75, 100, 150, 200, 300];

/// Resident set (current, peak) in MiB from /proc/self/status.
fn rss_mb() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| -> f64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn dir_mb(dir: &Path) -> f64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum::<u64>()
        })
        .unwrap_or(0) as f64
        / (1 << 20) as f64
}

fn recall_at_10(results: &[Vec<u64>], gt: &[u32], gt_k: usize) -> f64 {
    let mut hits = 0usize;
    for (q, result) in results.iter().enumerate() {
        let truth = &gt[q * gt_k..q * gt_k + 10];
        hits += result
            .iter()
            .take(10)
            .filter(|id| truth.contains(&(**id as u32)))
            .count();
    }
    hits as f64 / (results.len() * 10) as f64
}

struct Line<'a> {
    index: &'a str,
    data: &'a str,
    param: String,
    recall10: f64,
    qps: f64,
    build_s: f64,
    rss_mb: f64,
    disk_mb: f64,
}

fn print(line: Line<'_>) {
    println!(
        "{}",
        serde_json::json!({
            "index": line.index, "data": line.data, "param": line.param,
            "recall10": line.recall10, "qps": line.qps, "build_s": line.build_s,
            "rss_mb": line.rss_mb, "disk_mb": line.disk_mb,
        })
    );
}

fn params() -> IndexParams {
    IndexParams::default()
}

pub fn run(
    data: &Path,
    work: &Path,
    index: &str,
    phase: &str,
    cache: &[f64],
) -> anyhow::Result<()> {
    std::fs::create_dir_all(work)?;
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("meta.json"))?)?;
    let name = meta["name"].as_str().unwrap_or("data").to_string();
    match index {
        "sealed" => sealed(data, work, &name, phase, cache),
        "growing" => growing(data, &name),
        other => anyhow::bail!("unknown index {other}; expected sealed or growing"),
    }
}

fn sealed(data: &Path, work: &Path, name: &str, phase: &str, cache: &[f64]) -> anyhow::Result<()> {
    let segment_dir = work.join("engram-sealed");
    let build_file = work.join("engram-sealed.build_s");
    if phase == "build" || phase == "all" {
        if segment_dir.exists() {
            std::fs::remove_dir_all(&segment_dir)?;
        }
        let (base, dim) = read_fbin(&data.join("base.fbin"))?;
        let ids: Vec<u64> = (0..(base.len() / dim) as u64).collect();
        let started = Instant::now();
        SealedSegment::build(&segment_dir, &ids, &base, dim, Metric::L2, &params())?;
        let build_s = started.elapsed().as_secs_f64();
        std::fs::write(&build_file, build_s.to_string())?;
        eprintln!("engram-sealed built in {build_s:.1} s");
    }
    if phase == "serve" || phase == "all" {
        let build_s: f64 = std::fs::read_to_string(&build_file)?.trim().parse()?;
        let (queries, dim) = read_fbin(&data.join("query.fbin"))?;
        let (gt, gt_k) = read_gt(&data.join("gt.ibin"))?;
        let segment = Arc::new(SealedSegment::open(&segment_dir, &params(), false)?);
        let disk_mb = dir_mb(&segment_dir);
        let file_bytes = segment.footprint(0).file_bytes;
        for share in cache {
            // A node whose cache budget is this share of the segment.
            let budget = (file_bytes as f64 * share) as u64;
            let node = SegmentCache::new(budget);
            node.register(&segment);
            let residency = segment.residency();
            eprintln!(
                "engram-sealed served with a cache budget of {:.0}% ({} MiB): {}",
                share * 100.0,
                budget >> 20,
                residency.describe()
            );
            // One series per budget in the plots and summary lines.
            let series = if *share <= 0.0 {
                "engram-sealed".to_string()
            } else if *share >= 1.0 {
                "engram-sealed-memory".to_string()
            } else {
                format!("engram-sealed-cache{:.0}pct", share * 100.0)
            };
            for list_size in SWEEP {
                let settings = SearchSettings {
                    list_size,
                    beam_width: params().beam_width,
                };
                let started = Instant::now();
                let results: Vec<Vec<u64>> = queries
                    .chunks_exact(dim)
                    .map(|q| {
                        Ok(segment
                            .search_with(q, 10, &|_| true, settings)?
                            .iter()
                            .map(|h| h.id)
                            .collect())
                    })
                    .collect::<anyhow::Result<_>>()?;
                let qps = results.len() as f64 / started.elapsed().as_secs_f64();
                print(Line {
                    index: &series,
                    data: name,
                    param: format!(
                        "L={list_size},beam=4,reader={:?},cache={:.0}%",
                        segment.reader_kind(),
                        share * 100.0
                    ),
                    recall10: recall_at_10(&results, &gt, gt_k),
                    qps,
                    build_s,
                    rss_mb: rss_mb().1,
                    disk_mb,
                });
            }
            drop(node);
            segment.set_residency(Residency::Disk)?;
        }
    }
    Ok(())
}

fn growing(data: &Path, name: &str) -> anyhow::Result<()> {
    let (base, dim) = read_fbin(&data.join("base.fbin"))?;
    let mut segment = GrowingSegment::new(dim, Metric::L2, &params())?;
    let started = Instant::now();
    for (id, row) in base.chunks_exact(dim).enumerate() {
        segment.upsert(id as u64, row)?;
    }
    let build_s = started.elapsed().as_secs_f64();
    eprintln!(
        "engram-growing: {} inserts on one thread in {build_s:.1} s",
        base.len() / dim
    );
    drop(base);
    let (queries, _) = read_fbin(&data.join("query.fbin"))?;
    let (gt, gt_k) = read_gt(&data.join("gt.ibin"))?;
    for list_size in SWEEP {
        let started = Instant::now();
        let results: Vec<Vec<u64>> = queries
            .chunks_exact(dim)
            .map(|q| {
                Ok(segment
                    .search_with(q, 10, &|_| true, list_size as usize)?
                    .iter()
                    .map(|h| h.id)
                    .collect())
            })
            .collect::<anyhow::Result<_>>()?;
        let qps = results.len() as f64 / started.elapsed().as_secs_f64();
        print(Line {
            index: "engram-growing",
            data: name,
            param: format!("L={list_size}"),
            recall10: recall_at_10(&results, &gt, gt_k),
            qps,
            build_s,
            // Current, not peak: the build held the input rows as well.
            rss_mb: rss_mb().0,
            disk_mb: 0.0,
        });
    }
    Ok(())
}
