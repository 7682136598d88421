//! Every process of a real cluster is scraped: the coordinators' `/metrics`
//! with the API key, the workers' `/metrics` on their internal ports with
//! the cluster secret as a bearer token (as Prometheus sends it). The
//! documented series exist, and they move when the cluster is written to
//! and searched.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::cluster::{Cluster, vector};
use serde_json::json;

/// The sum of every sample of `series` (any labels) whose labels contain
/// `with`.
fn total(text: &str, series: &str, with: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{series}{{")) || l.starts_with(&format!("{series} ")))
        .filter(|l| l.contains(with))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn every_process_exports_the_documented_series_and_they_move() {
    let cluster = Cluster::start();
    let scrape_workers = || -> Vec<String> {
        cluster
            .workers
            .iter()
            .map(|w| {
                let response = reqwest::blocking::Client::new()
                    .get(format!("http://{}/metrics", w.internal_addr()))
                    .bearer_auth(&cluster.cluster_secret)
                    .send()
                    .unwrap();
                assert_eq!(response.status(), 200, "{}", w.name);
                response.text().unwrap()
            })
            .collect()
    };
    let before = scrape_workers();
    for text in &before {
        for series in [
            "engram_requests_cut_off_total",
            "engram_tls_handshake_failures_total",
            "engram_cluster_secret_refused_total",
        ] {
            assert!(text.contains(series), "no {series} in:\n{text}");
        }
    }

    let (status, body) = cluster.post(
        "/v1/collections",
        &json!({ "name": "watched", "dim": 8, "metric": "l2", "shards": 4 }),
    );
    assert_eq!(status, 201, "{body}");
    let items: Vec<_> = (0..300u64)
        .map(|id| json!({ "id": id, "label": format!("l{}", id % 3), "vector": vector(id) }))
        .collect();
    let (status, body) = cluster.post("/v1/collections/watched/items", &json!({ "items": items }));
    assert!(status < 300, "{body}");
    for id in 0..10u64 {
        let (status, body) = cluster.post(
            "/v1/collections/watched/search",
            &json!({ "vector": vector(id), "k": 3 }),
        );
        assert_eq!(status, 200, "{body}");
    }

    let after = scrape_workers();
    // Every item is on two copies (replication 2): the shard gauges of the
    // three workers add up to twice the items.
    let items: f64 = after
        .iter()
        .map(|t| total(t, "engram_shard_items", "collection=\"watched\""))
        .sum();
    assert_eq!(items, 600.0, "{after:?}");
    for series in [
        "engram_worker_requests_total",
        "engram_worker_request_duration_seconds_bucket",
        "engram_shard_sealed_segments",
        "engram_shard_growing_rows",
        "engram_shard_tombstones",
        "engram_shard_sealed_bytes",
    ] {
        assert!(
            after.iter().all(|t| t.contains(series)),
            "no {series}: {after:?}"
        );
    }
    for text in &after {
        assert!(
            total(text, "engram_cache", "what=\"budget_bytes\"") > 0.0,
            "{text}"
        );
        assert!(text.contains("engram_cache{what=\"used_bytes\"}"), "{text}");
    }
    let searches = |texts: &[String]| -> f64 {
        texts
            .iter()
            .map(|t| {
                total(
                    t,
                    "engram_worker_requests_total",
                    "route=\"/internal/v1/search\"",
                )
            })
            .sum()
    };
    assert!(
        searches(&after) >= searches(&before) + 10.0,
        "searches did not count"
    );
    let writes: f64 = after
        .iter()
        .map(|t| {
            total(
                t,
                "engram_worker_requests_total",
                "route=\"/internal/v1/write\"",
            )
        })
        .sum();
    assert!(writes >= 1.0, "writes did not count");

    // The coordinators: their own series, read with the API key.
    for coordinator in &cluster.coordinators {
        let text = cluster
            .http
            .get(format!("{}/metrics", coordinator.base.as_ref().unwrap()))
            .send()
            .unwrap()
            .text()
            .unwrap();
        for series in [
            "engram_http_requests_total",
            "engram_http_request_duration_seconds_bucket",
            "engram_requests_cut_off_total",
            "engram_cluster_secret_refused_total",
        ] {
            assert!(text.contains(series), "{}: no {series}", coordinator.name);
        }
    }
    // Exactly one coordinator leads, every one knows a leader and sees the
    // three workers alive.
    let cluster_gauge =
        |text: &str, what: &str| total(text, "engram_cluster", &format!("what=\"{what}\""));
    let scraped: Vec<String> = cluster
        .coordinators
        .iter()
        .map(|c| {
            cluster
                .http
                .get(format!("{}/metrics", c.base.as_ref().unwrap()))
                .send()
                .unwrap()
                .text()
                .unwrap()
        })
        .collect();
    let leaders: f64 = scraped
        .iter()
        .map(|t| cluster_gauge(t, "raft_is_leader"))
        .sum();
    assert_eq!(leaders, 1.0, "{scraped:?}");
    for text in &scraped {
        assert_eq!(cluster_gauge(text, "raft_has_leader"), 1.0);
        assert_eq!(cluster_gauge(text, "workers_alive"), 3.0);
        assert_eq!(cluster_gauge(text, "raft_voters"), 3.0);
        assert!(cluster_gauge(text, "raft_term") >= 1.0);
    }
    // Every engram_* series the shipped alert rules name is exported.
    let rules =
        std::fs::read_to_string(common::repo_root().join("deploy/prometheus/alerts.yml")).unwrap();
    let everything = format!("{}\n{}", scraped.join("\n"), after.join("\n"));
    let mut named = 0;
    for expr in rules.lines().filter_map(|l| l.trim().strip_prefix("expr:")) {
        for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("engram_") {
                named += 1;
                assert!(
                    everything.contains(word),
                    "the alert rules name {word}, which nothing exports"
                );
            }
        }
    }
    assert!(named >= 6, "{named}");
    // And every one the Grafana dashboard plots.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::repo_root().join("deploy/grafana/engram-dashboard.json"))
            .unwrap(),
    )
    .unwrap();
    let mut plotted = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                let series = word.strip_suffix("_bucket").map_or(word, |s| s).to_string();
                if series.starts_with("engram_") {
                    plotted += 1;
                    assert!(
                        everything.contains(&series),
                        "the dashboard plots {word}, which nothing exports"
                    );
                }
            }
        }
    }
    assert!(plotted >= 15, "{plotted}");
    // A scrape without the secret is refused like any internal request.
    let refused = reqwest::blocking::Client::new()
        .get(format!(
            "http://{}/metrics",
            cluster.workers[0].internal_addr()
        ))
        .send()
        .unwrap();
    assert_eq!(refused.status(), 401);
}
