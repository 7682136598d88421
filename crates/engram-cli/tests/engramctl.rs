//! `engramctl` against the real embedded server: every verb's table and
//! JSON, its errors and exit codes, and compaction that leaves deleted
//! vectors in no file. (Against a cluster: tests/cluster.rs.)

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{Value, json};
use std::process::Command;
use std::time::{Duration, Instant};

const DIM: usize = 16;

/// Runs `engramctl --server <server> args...`: (exit ok, stdout, stderr).
fn ctl(server: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_engramctl"))
        .arg("--server")
        .arg(server)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// `ctl` with `--json`, which must succeed.
fn ctl_json(server: &str, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let (ok, out, err) = ctl(server, &all);
    assert!(ok, "engramctl {args:?} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// A distinct vector per id whose bytes are easy to find in files.
fn vector(id: u64) -> Vec<f32> {
    (0..DIM)
        .map(|j| 2000.0 + id as f32 + j as f32 / 64.0)
        .collect()
}

#[test]
fn every_verb_against_the_embedded_node() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "seal_threshold = 50\ncompaction_interval_s = 0\nmax_degree = 16\nbuild_list_size = 32\npq_bytes = 4",
    );
    let server = Server::start(&config, &dir.path().join("data"));
    let base = server.base.clone();

    let (ok, out, err) = ctl(
        &base,
        &[
            "collections",
            "create",
            "m",
            "--dim",
            "16",
            "--metric",
            "l2",
            "--shards",
            "2",
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains("created `m`"), "{out}");
    for chunk in (0..400u64).collect::<Vec<_>>().chunks(50) {
        let items: Vec<Value> = chunk
            .iter()
            .map(|id| json!({ "id": id, "label": format!("c{}", id % 4), "vector": vector(*id), "source": "s" }))
            .collect();
        let (status, body) = server.post("/v1/collections/m/items", &json!({ "items": items }));
        assert_eq!(status, 200, "{body}");
    }

    // status: a human table and the same facts as JSON.
    let (ok, out, err) = ctl(&base, &["status"]);
    assert!(ok, "{err}");
    assert!(out.contains("embedded node"), "{out}");
    assert!(
        out.contains("collection m: 400 items, dim 16, 2 shards"),
        "{out}"
    );
    assert!(out.contains("SHARD  EPOCH  PRIMARY"), "{out}");
    let status = ctl_json(&base, &["status"]);
    assert_eq!(status["cluster"]["mode"], "embedded");
    assert_eq!(status["collections"][0]["items"], 400);

    let shown = ctl_json(&base, &["collections", "show", "m"]);
    let shard_items: u64 = shown["shard_stats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["items"].as_u64().unwrap())
        .sum();
    assert_eq!(shard_items, 400, "{shown}");
    assert_eq!(shown["labels"]["c1"], 100);
    let (ok, out, _) = ctl(&base, &["collections", "list"]);
    assert!(ok && out.lines().nth(1).unwrap().starts_with("m "), "{out}");

    let item = ctl_json(&base, &["items", "get", "m", "7"]);
    assert_eq!(
        (&item["label"], &item["source"]),
        (&json!("c3"), &json!("s"))
    );
    let (ok, _, err) = ctl(&base, &["items", "get", "m", "99999"]);
    assert!(!ok, "a missing item must fail");
    assert!(err.contains("404 not_found"), "{err}");

    // jobs: a prune dry run, listed and shown.
    let (status, job) = server.post(
        "/v1/collections/m/jobs",
        &json!({ "kind": "prune", "mode": "dry_run", "k": 5 }),
    );
    assert_eq!(status, 202, "{job}");
    let id = job["id"].to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let shown = ctl_json(&base, &["jobs", "show", "m", &id]);
        if shown["state"] == "succeeded" {
            break;
        }
        assert!(Instant::now() < deadline, "{shown}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let listed = ctl_json(&base, &["jobs", "list"]);
    assert_eq!(listed["jobs"][0]["kind"], "prune", "{listed}");
    let (ok, out, _) = ctl(&base, &["jobs", "list", "--collection", "m"]);
    assert!(
        ok && out.contains("succeeded") && out.contains("400/400"),
        "{out}"
    );

    // compact: delete 30%, compact; the deleted vectors' bytes are in no
    // file, the bytes reclaimed are reported, the rest is still found.
    let deleted: Vec<u64> = (0..120).collect();
    let (status, body) = server.post("/v1/collections/m/items/delete", &json!({ "ids": deleted }));
    assert_eq!(status, 200, "{body}");
    let data = dir.path().join("data");
    assert!(
        on_disk(&data, &f32_bytes(&vector(5))),
        "vector 5 should still be on disk"
    );
    let report = ctl_json(
        &base,
        &["compact", "--collection", "m", "--min-deleted", "0.1"],
    );
    let report = &report[0];
    assert!(
        report["segments_rewritten"].as_u64().unwrap() > 0,
        "{report}"
    );
    assert!(report["bytes_reclaimed"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(report["tombstones_after"], 0, "{report}");
    for id in [0u64, 5, 60, 119] {
        assert!(
            !on_disk(&data, &f32_bytes(&vector(id))),
            "deleted {id} still on disk"
        );
    }
    for id in [120u64, 250, 399] {
        let (status, found) = server.post(
            "/v1/collections/m/search",
            &json!({ "vector": vector(id), "k": 1 }),
        );
        assert_eq!(status, 200);
        assert_eq!(found["neighbors"][0]["id"], id, "{found}");
    }

    // snapshot: create, list, wipe, restore: the same items and answers;
    // a damaged snapshot file is refused before anything is restored.
    let answers = |server: &Server| -> Vec<Value> {
        [120u64, 250, 399]
            .iter()
            .map(|id| {
                let body = json!({ "vector": vector(*id), "k": 5 });
                server.post("/v1/collections/m/search", &body).1
            })
            .collect()
    };
    let before = answers(&server);
    // The data directory's `snapshots/`: one of the default local roots.
    let snapshots = dir.path().join("data").join("snapshots");
    let uri = snapshots.to_string_lossy().to_string();
    let made = ctl_json(&base, &["snapshot", "create", "--uri", &uri]);
    assert_eq!(made["items"], 280, "{made}");
    let id = made["id"].as_str().unwrap().to_string();
    let listed = ctl_json(&base, &["snapshot", "list", "--uri", &uri]);
    assert_eq!(listed["snapshots"][0]["id"], id.as_str(), "{listed}");
    let (ok, _, err) = ctl(&base, &["snapshot", "restore", "--uri", &uri, "--id", &id]);
    assert!(
        !ok && err.contains("409"),
        "restore into a non-empty node: {err}"
    );
    let (ok, _, err) = ctl(&base, &["collections", "delete", "m", "--yes"]);
    assert!(ok, "{err}");
    let shard_file = snapshots.join(&id).join("m").join("0001.bin");
    let good = std::fs::read(&shard_file).unwrap();
    let mut bad = good.clone();
    let middle = bad.len() / 2;
    bad[middle] ^= 0x40;
    std::fs::write(&shard_file, &bad).unwrap();
    let (ok, _, err) = ctl(&base, &["snapshot", "restore", "--uri", &uri, "--id", &id]);
    assert!(!ok && err.contains("checksum"), "{err}");
    assert_eq!(
        ctl_json(&base, &["collections", "list"])["collections"],
        json!([])
    );
    std::fs::write(&shard_file, &good).unwrap();
    let (ok, out, err) = ctl(&base, &["snapshot", "restore", "--uri", &uri, "--id", &id]);
    assert!(ok, "{err}");
    assert!(out.contains("280 items"), "{out}");
    let (_, info) = server.get("/v1/collections/m");
    assert_eq!(info["items"], 280, "{info}");
    assert_eq!(answers(&server), before);
    let (ok, _, err) = ctl(&base, &["items", "get", "m", "7"]);
    assert!(
        !ok && err.contains("404"),
        "deleted items stay deleted: {err}"
    );
    assert_eq!(
        ctl_json(&base, &["items", "get", "m", "207"])["label"],
        "c3"
    );

    // Deleting needs --yes; a cluster-only verb fails clearly here.
    let (ok, _, err) = ctl(&base, &["collections", "delete", "m"]);
    assert!(!ok && err.contains("--yes"), "{err}");
    let (ok, _, err) = ctl(&base, &["node", "remove", "3"]);
    assert!(!ok && err.contains("embedded node"), "{err}");
    let (ok, _, err) = ctl(&base, &["collections", "delete", "m", "--yes"]);
    assert!(ok, "{err}");
    assert_eq!(
        ctl_json(&base, &["collections", "list"])["collections"],
        json!([])
    );

    // Nobody listening: a clear error and a non-zero exit.
    let (ok, _, err) = ctl("http://127.0.0.1:1", &["status"]);
    assert!(!ok && err.contains("cannot reach"), "{err}");
}
