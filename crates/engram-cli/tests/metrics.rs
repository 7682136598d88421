//! Every process of `make cluster` (deploy/local/cluster.sh, run here over
//! a temporary directory with this build's binary) is scraped: the
//! coordinators' `/metrics` on their public ports, the workers' `/metrics`
//! on their internal ports with the cluster secret as a bearer token (as
//! Prometheus sends it). The documented series exist, and they move when
//! the cluster is written to, sealed and searched.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::cluster::{random_secret, vector};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::Command;

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

/// `make cluster`'s script over `dir`; stopped (`cluster.sh stop`) on drop.
struct MakeCluster {
    dir: tempfile::TempDir,
    secret: String,
    http: reqwest::blocking::Client,
    coordinators: Vec<String>,
    workers: Vec<String>,
}

impl MakeCluster {
    fn script(&self, verb: &str) -> std::process::Output {
        Command::new("bash")
            .arg(common::repo_root().join("deploy/local/cluster.sh"))
            .arg(verb)
            .env("CLUSTER_DIR", self.dir.path())
            .env("CLUSTER_BIN", env!("CARGO_BIN_EXE_engram"))
            .env("ENGRAM_SECURITY__CLUSTER_SECRET", &self.secret)
            .env_remove("ENGRAM_SECURITY__API_KEY")
            .env_remove("CLUSTER_TLS")
            .output()
            .unwrap()
    }

    fn start() -> MakeCluster {
        let cluster = MakeCluster {
            dir: tempfile::tempdir().unwrap(),
            secret: random_secret(),
            http: reqwest::blocking::Client::new(),
            coordinators: (7700..7703)
                .map(|p| format!("http://127.0.0.1:{p}"))
                .collect(),
            workers: (7810..7813).map(|p| format!("127.0.0.1:{p}")).collect(),
        };
        let started = cluster.script("start");
        assert!(
            started.status.success(),
            "make cluster did not start (ports 7700-7702, 7800-7802, 7810-7812 must be free):\n{}\n{}",
            common::output_text(&started),
            cluster.logs()
        );
        cluster
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for entry in std::fs::read_dir(self.dir.path()).unwrap().flatten() {
            let path: PathBuf = entry.path();
            if path.extension().is_some_and(|e| e == "log") {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(20).collect();
                out += &format!(
                    "--- {}\n{}\n",
                    path.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
        out
    }

    fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.coordinators[0]))
            .json(body)
            .send()
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(Value::Null))
    }

    fn scrape_workers(&self) -> Vec<String> {
        self.workers
            .iter()
            .map(|w| {
                let response = self
                    .http
                    .get(format!("http://{w}/metrics"))
                    .bearer_auth(&self.secret)
                    .send()
                    .unwrap();
                assert_eq!(response.status(), 200, "{w}");
                response.text().unwrap()
            })
            .collect()
    }

    fn scrape_coordinators(&self) -> Vec<String> {
        self.coordinators
            .iter()
            .map(|c| {
                let response = self.http.get(format!("{c}/metrics")).send().unwrap();
                assert_eq!(response.status(), 200, "{c}");
                response.text().unwrap()
            })
            .collect()
    }
}

impl Drop for MakeCluster {
    fn drop(&mut self) {
        let _ = self.script("stop");
    }
}

#[test]
fn every_process_of_make_cluster_exports_the_documented_series_and_they_move() {
    let cluster = MakeCluster::start();
    let scrape_workers = || cluster.scrape_workers();
    let coordinators_before = cluster.scrape_coordinators();
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
    // Sealed into DiskANN segments, so that searches read them.
    let (status, body) = cluster.post("/v1/collections/watched/compact", &json!({ "seal": true }));
    assert_eq!(status, 200, "{body}");
    for id in 0..10u64 {
        let (status, body) = cluster.post(
            "/v1/collections/watched/search",
            &json!({ "vector": vector(id), "k": 3 }),
        );
        assert_eq!(status, 200, "{body}");
    }
    // More rows, sealed with a codebook retrained on request: the request
    // reaches every copy through the coordinator.
    let items: Vec<_> = (300..400u64)
        .map(|id| json!({ "id": id, "label": format!("l{}", id % 3), "vector": vector(id) }))
        .collect();
    let (status, body) = cluster.post("/v1/collections/watched/items", &json!({ "items": items }));
    assert!(status < 300, "{body}");
    let (status, body) = cluster.post(
        "/v1/collections/watched/compact",
        &json!({ "seal": true, "retrain_codebook": true }),
    );
    assert_eq!(status, 200, "{body}");

    let after = scrape_workers();
    // Every item is on two copies (replication 2): the shard gauges of the
    // three workers add up to twice the items.
    let items: f64 = after
        .iter()
        .map(|t| total(t, "engram_shard_items", "collection=\"watched\""))
        .sum();
    assert_eq!(items, 800.0, "{after:?}");
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

    // Seals were built and counted, searches read sealed segments, and
    // each write's primary sent it to its replica.
    let sum = |texts: &[String], series: &str, with: &str| -> f64 {
        texts.iter().map(|t| total(t, series, with)).sum()
    };
    assert!(sum(&after, "engram_segment_builds_total", "kind=\"seal\"") >= 4.0);
    assert!(sum(&after, "engram_segment_build_rows_total", "kind=\"seal\"") >= 600.0);
    // Shard copies trained their codebooks at their first seals, and again
    // when the compaction asked.
    assert!(sum(&after, "engram_codebooks_trained_total", "reason=\"first\"") >= 1.0);
    assert!(
        sum(
            &after,
            "engram_codebooks_trained_total",
            "reason=\"requested\""
        ) >= 1.0
    );
    assert!(
        sum(
            &after,
            "engram_segment_build_seconds_total",
            "kind=\"seal\""
        ) > 0.0
    );
    assert!(
        sum(&after, "engram_segment_searches_total", "")
            >= sum(&before, "engram_segment_searches_total", "") + 10.0,
        "{after:?}"
    );
    assert!(
        after
            .iter()
            .all(|t| t.contains("engram_segment_sector_reads_total{served_from=\"disk\"}")),
        "{after:?}"
    );
    assert!(
        sum(
            &after,
            "engram_replication_duration_seconds_count",
            "result=\"ok\""
        ) >= 1.0,
        "{after:?}"
    );

    // A job (a dry-run pruning) on the first coordinator, run to its end.
    let (status, job) = cluster.post(
        "/v1/collections/watched/jobs",
        &json!({ "kind": "prune", "mode": "dry_run", "k": 5 }),
    );
    assert!(status < 300, "{job}");
    let job_id = job["id"].as_u64().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let state = cluster
            .http
            .get(format!(
                "{}/v1/collections/watched/jobs/{job_id}",
                cluster.coordinators[0]
            ))
            .send()
            .unwrap()
            .json::<Value>()
            .unwrap();
        if state["state"] == "succeeded" {
            break;
        }
        assert!(state["state"] == "running", "{state}");
        assert!(std::time::Instant::now() < deadline, "{state}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    // The coordinators: their own series.
    let coordinators_after = cluster.scrape_coordinators();
    let job = format!("job=\"{job_id}\"");
    let done = total(
        &coordinators_after[0],
        "engram_job_progress",
        &format!("{job},kind=\"prune\",what=\"done\""),
    );
    assert!(done >= 300.0, "{}", coordinators_after[0]);
    assert_eq!(
        done,
        total(
            &coordinators_after[0],
            "engram_job_progress",
            &format!("{job},kind=\"prune\",what=\"total\"")
        )
    );
    assert_eq!(
        total(
            &coordinators_after[0],
            "engram_jobs",
            "kind=\"prune\",state=\"succeeded\""
        ),
        1.0
    );
    for text in &coordinators_after {
        for series in [
            "engram_http_requests_total",
            "engram_http_request_duration_seconds_bucket",
            "engram_requests_cut_off_total",
            "engram_cluster_secret_refused_total",
            "engram_jobs{kind=\"ingest\",state=\"running\"}",
            "engram_segment_builds_total",
        ] {
            assert!(text.contains(series), "no {series}:\n{text}");
        }
    }
    // The coordinator that took the searches timed each call of their
    // fan-out, per worker.
    let fan_out = |texts: &[String]| {
        sum(
            texts,
            "engram_fanout_call_duration_seconds_count",
            "route=\"/internal/v1/search\"",
        )
    };
    assert!(
        fan_out(&coordinators_after) >= fan_out(&coordinators_before) + 10.0,
        "{coordinators_after:?}"
    );
    // Exactly one coordinator leads, every one knows a leader and sees the
    // three workers alive.
    let cluster_gauge =
        |text: &str, what: &str| total(text, "engram_cluster", &format!("what=\"{what}\""));
    let scraped = cluster.scrape_coordinators();
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
        .get(format!("http://{}/metrics", cluster.workers[0]))
        .send()
        .unwrap();
    assert_eq!(refused.status(), 401);
}
