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

/// Creates `collection` (L2, `shards`, `replication`), adds every base row
/// with its row number as id, then compacts, which seals every shard's
/// growing segment: each shard ends with one sealed DiskANN segment.
pub fn load(
    url: &str,
    collection: &str,
    data: &Path,
    shards: u32,
    replication: u32,
) -> anyhow::Result<()> {
    let (rows, dim) = read_fbin(&data.join("base.fbin"))?;
    let http = client();
    post(
        &http,
        &format!("{url}/v1/collections"),
        &json!({"name": collection, "dim": dim, "metric": "l2", "shards": shards, "replication": replication}),
    )?;
    let started = Instant::now();
    for (b, chunk) in rows.chunks(dim * 2_000).enumerate() {
        let items: Vec<Value> = chunk
            .chunks_exact(dim)
            .enumerate()
            .map(|(i, v)| json!({"id": b * 2_000 + i, "label": format!("c{}", (b * 2_000 + i) % 10), "vector": v}))
            .collect();
        post(
            &http,
            &format!("{url}/v1/collections/{collection}/items"),
            &json!({ "items": items }),
        )?;
    }
    let loaded = started.elapsed();
    post(
        &http,
        &format!("{url}/v1/collections/{collection}/compact"),
        &json!({}),
    )?;
    eprintln!(
        "loaded {} rows into {collection} ({shards} shards) in {:.1} s, sealed in {:.1} s",
        rows.len() / dim,
        loaded.as_secs_f64(),
        (started.elapsed() - loaded).as_secs_f64()
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
