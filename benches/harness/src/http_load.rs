//! The cluster benchmark's client: loads a data directory into a
//! collection through the public API and measures query latency and
//! throughput through one coordinator (or the embedded node).

use anyhow::Context;
use serde_json::{Value, json};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::data::{read_fbin, read_gt};

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(3600))
        .build()
        .expect("http client")
}

fn post(client: &reqwest::blocking::Client, url: &str, body: &Value) -> anyhow::Result<Value> {
    let response = client.post(url).json(body).send()?;
    let status = response.status();
    let value: Value = response.json().unwrap_or(Value::Null);
    anyhow::ensure!(status.is_success(), "{url}: HTTP {status}: {value}");
    Ok(value)
}

/// How `load` leaves the rows.
#[derive(Debug, Clone, Copy)]
pub struct LoadShape {
    /// Shards of the new collection; `None` leaves the count to the server.
    pub shards: Option<u32>,
    pub replication: u32,
    /// The rows are added in this many parts, each sealed into one segment
    /// per shard (`POST .../compact` with `"seal": true`); 0 adds them all
    /// and compacts with an empty body, as a user would.
    pub sealed_parts: usize,
}

/// Creates `collection` (L2), adds every base row with its row number as
/// id, in the parts `shape` asks for.
pub fn load(url: &str, collection: &str, data: &Path, shape: LoadShape) -> anyhow::Result<()> {
    let (rows, dim) = read_fbin(&data.join("base.fbin"))?;
    let http = client();
    let mut create =
        json!({"name": collection, "dim": dim, "metric": "l2", "replication": shape.replication});
    if let Some(shards) = shape.shards {
        create["shards"] = json!(shards);
    }
    let created = post(&http, &format!("{url}/v1/collections"), &create)?;
    let started = Instant::now();
    let n = rows.len() / dim;
    let parts = shape.sealed_parts.max(1);
    let per_part = n.div_ceil(parts);
    let mut sealing = Duration::ZERO;
    for part in 0..parts {
        let range = (part * per_part).min(n)..((part + 1) * per_part).min(n);
        for first in range.clone().step_by(2_000) {
            let last = (first + 2_000).min(range.end);
            let items: Vec<Value> = (first..last)
                .map(|i| json!({"id": i, "label": format!("c{}", i % 10), "vector": &rows[i * dim..(i + 1) * dim]}))
                .collect();
            post(
                &http,
                &format!("{url}/v1/collections/{collection}/items"),
                &json!({ "items": items }),
            )?;
        }
        let sealed = Instant::now();
        // A user's compaction sends an empty body: the server seals growing
        // segments of at least a merge tier's floor, not small ones.
        let body = if shape.sealed_parts > 0 {
            json!({ "seal": true })
        } else {
            json!({})
        };
        post(
            &http,
            &format!("{url}/v1/collections/{collection}/compact"),
            &body,
        )?;
        sealing += sealed.elapsed();
    }
    eprintln!(
        "loaded {n} rows into {collection} ({} shards) in {:.1} s, of which sealing/compaction {:.1} s",
        created["shards"],
        started.elapsed().as_secs_f64(),
        sealing.as_secs_f64()
    );
    Ok(())
}

/// `POST .../compact` (merges by the merge policy, drops deleted rows);
/// prints the segments before and after.
pub fn compact(url: &str, collection: &str) -> anyhow::Result<()> {
    let http = client();
    let started = Instant::now();
    let done = post(
        &http,
        &format!("{url}/v1/collections/{collection}/compact"),
        &json!({}),
    )?;
    eprintln!(
        "compacted {collection} in {:.1} s: {done}",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Latency percentiles from one client sending the queries one at a time,
/// throughput from `concurrency` clients for `seconds`, recall@10 against
/// the exact neighbours. Prints the summary line with `label`.
pub fn query(
    url: &str,
    collection: &str,
    data: &Path,
    label: &str,
    concurrency: usize,
    seconds: f64,
) -> anyhow::Result<()> {
    let (queries, dim) = read_fbin(&data.join("query.fbin"))?;
    let (gt, gt_k) = read_gt(&data.join("gt.ibin")).context("ground truth")?;
    let nq = queries.len() / dim;
    let search = format!("{url}/v1/collections/{collection}/search");
    let k = 10;
    let http = client();
    let ask = |http: &reqwest::blocking::Client, q: usize| -> anyhow::Result<Vec<u64>> {
        let answer = post(
            http,
            &search,
            &json!({"vector": &queries[q * dim..(q + 1) * dim], "k": k}),
        )?;
        anyhow::ensure!(answer["partial"] == json!(false), "partial answer");
        Ok(answer["neighbors"]
            .as_array()
            .context("neighbors")?
            .iter()
            .filter_map(|n| n["id"].as_u64())
            .collect())
    };
    // Warm-up: page the segments in.
    for q in 0..nq.min(100) {
        ask(&http, q)?;
    }
    let mut latencies = Vec::with_capacity(nq);
    let mut hits = 0usize;
    for q in 0..nq {
        let started = Instant::now();
        let ids = ask(&http, q)?;
        latencies.push(started.elapsed().as_secs_f64() * 1e3);
        let truth = &gt[q * gt_k..q * gt_k + k];
        hits += ids
            .iter()
            .filter(|id| truth.contains(&(**id as u32)))
            .count();
    }
    latencies.sort_by(f64::total_cmp);
    let recall = hits as f64 / (nq * k) as f64;
    let done = AtomicUsize::new(0);
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..concurrency {
            let done = &done;
            let ask = &ask;
            s.spawn(move || {
                let http = client();
                let mut q = t;
                while Instant::now() < deadline {
                    if ask(&http, q % nq).is_ok() {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    q += concurrency;
                }
            });
        }
    });
    let qps = done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    println!(
        "{label} p50_ms={:.2} p99_ms={:.2} qps={:.0} recall_at_10={:.3} concurrency={concurrency}",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        qps,
        recall
    );
    Ok(())
}
