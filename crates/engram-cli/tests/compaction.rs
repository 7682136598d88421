//! Compaction through the API of the real server: deleted vectors leave
//! every file, automatic compaction runs on its own, and a sealed segment
//! that cannot be read makes answers `partial` instead of silently short.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const DIM: usize = 16;

/// A distinct vector per id whose bytes are easy to find in files.
fn vector(id: u64) -> Vec<f32> {
    (0..DIM)
        .map(|j| 1000.0 + id as f32 + j as f32 / 64.0)
        .collect()
}

fn add(server: &Server, ids: std::ops::Range<u64>) {
    for chunk in ids.collect::<Vec<_>>().chunks(20) {
        let items: Vec<Value> = chunk
            .iter()
            .map(|id| json!({ "id": id, "label": format!("c{}", id % 4), "vector": vector(*id) }))
            .collect();
        let (status, body) = server.post("/v1/collections/m/items", &json!({ "items": items }));
        assert_eq!(status, 200, "{body}");
    }
}

fn search_ids(server: &Server, id: u64, k: usize) -> (Vec<u64>, Value) {
    let (status, body) = server.post(
        "/v1/collections/m/search",
        &json!({ "vector": vector(id), "k": k }),
    );
    assert_eq!(status, 200, "{body}");
    let ids = body["neighbors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_u64().unwrap())
        .collect();
    (ids, body)
}

#[test]
fn compaction_erases_deleted_vectors_and_runs_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "seal_threshold = 40\ncompaction_interval_s = 0\nmax_degree = 16\nbuild_list_size = 32\npq_bytes = 8",
    );
    let data = dir.path().join("data");
    let mut server = Server::start(&config, &data);
    let (status, body) = server.post(
        "/v1/collections",
        &json!({ "name": "m", "dim": DIM, "metric": "l2", "shards": 2 }),
    );
    assert_eq!(status, 201, "{body}");
    add(&server, 0..200);
    let (_, info) = server.get("/v1/collections/m");
    assert!(info["sealed_segments"].as_u64().unwrap() >= 2, "{info}");
    assert_eq!(info["tombstones"], 0);

    let deleted: Vec<u64> = (0..50).collect();
    let (status, body) = server.post("/v1/collections/m/items/delete", &json!({ "ids": deleted }));
    assert_eq!(
        (status, body["deleted"].as_u64()),
        (200, Some(50)),
        "{body}"
    );
    assert!(
        deleted
            .iter()
            .any(|id| on_disk(&data, &f32_bytes(&vector(*id)))),
        "before compaction deleted rows are still in some file"
    );
    let (_, info) = server.get("/v1/collections/m");
    assert!(info["tombstone_share"].as_f64().unwrap() > 0.0, "{info}");

    // Bad requests change nothing.
    assert_client_error(
        &server.post(
            "/v1/collections/m/compact",
            &json!({ "min_deleted_fraction": 1.5 }),
        ),
        400,
        "fraction",
    );
    assert_client_error(
        &server.post(
            "/v1/collections/m/compact",
            &json!({ "min_deleted_fractoin": 0.1 }),
        ),
        400,
        "unknown field",
    );
    assert_client_error(
        &server.post("/v1/collections/nope/compact", &json!({})),
        404,
        "nope",
    );

    let (status, body) = server.post("/v1/collections/m/compact", &json!({}));
    assert_eq!(status, 200, "{body}");
    assert!(body["segments_rewritten"].as_u64().unwrap() >= 1, "{body}");
    for id in &deleted {
        assert!(
            !on_disk(&data, &f32_bytes(&vector(*id))),
            "deleted vector {id} is still in a file after compaction"
        );
    }
    assert!(on_disk(&data, &f32_bytes(&vector(120))), "live rows stay");
    let (ids, body) = search_ids(&server, 10, 200);
    assert_eq!(ids.len(), 150);
    assert!(ids.iter().all(|id| *id >= 50));
    assert_eq!(body["partial"], false);
    assert!(body.get("missing_shards").is_none(), "{body}");

    // A stored vector comes back exactly, from a sealed segment or the
    // growing one; unknown query parameters are refused.
    let (_, info) = server.get("/v1/collections/m");
    assert!(info["sealed_segments"].as_u64().unwrap() >= 1);
    for id in [60u64, 199] {
        let (status, item) = server.get(&format!("/v1/collections/m/items/{id}?vector=true"));
        assert_eq!(status, 200, "{item}");
        let got: Vec<f32> = serde_json::from_value(item["vector"].clone()).unwrap();
        assert_eq!(got, vector(id));
    }
    let (_, plain) = server.get("/v1/collections/m/items/60");
    assert!(plain.get("vector").is_none());
    assert_client_error(
        &server.get("/v1/collections/m/items/60?vector=maybe"),
        400,
        "vector=maybe",
    );
    assert_client_error(
        &server.get("/v1/collections/m/items/60?vectors=true"),
        400,
        "vectors",
    );
    assert_client_error(
        &server.get("/v1/collections/m/items/10?vector=true"),
        404,
        "deleted item",
    );

    // Automatic compaction: deletions past the threshold are compacted
    // without being asked.
    server.stop();
    let config = write_config(
        dir.path(),
        "seal_threshold = 40\ncompaction_interval_s = 1\ncompact_deleted_fraction = 0.1\nmax_degree = 16\nbuild_list_size = 32\npq_bytes = 8",
    );
    // Every sealed segment is served from disk (no cache budget), so that
    // the truncated file below is read.
    let disk_only = [("ENGRAM_CACHE__BUDGET_MB".to_string(), "0".to_string())];
    let mut server = Server::start_with_env(&config, &data, &disk_only);
    let (status, _) = server.post(
        "/v1/collections/m/items/delete",
        &json!({ "ids": (50..100).collect::<Vec<u64>>() }),
    );
    assert_eq!(status, 200);
    let deadline = Instant::now() + Duration::from_secs(60);
    while (50..100).any(|id| on_disk(&data, &f32_bytes(&vector(id)))) {
        assert!(
            Instant::now() < deadline,
            "automatic compaction did not run"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let metrics = server.metrics_text();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("engram_segments_compacted_total ") && !l.ends_with(" 0")),
        "{metrics}"
    );

    // A sealed segment truncated under the running server: answers say
    // they are partial and which shards are missing.
    let index_file = files_under(&data)
        .into_iter()
        .find(|f| f.to_string_lossy().ends_with("_disk.index"))
        .unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&index_file)
        .unwrap()
        .set_len(4096)
        .unwrap();
    let (ids, body) = search_ids(&server, 150, 100);
    assert_eq!(body["partial"], true, "{body}");
    assert_eq!(
        body["missing_shards"].as_array().unwrap().len(),
        1,
        "{body}"
    );
    assert!(!ids.is_empty(), "the other shard still answers");
    let (status, body) = server.post(
        "/v1/collections/m/classify",
        &json!({ "vector": vector(150), "k": 5 }),
    );
    assert_eq!((status, &body["partial"]), (200, &json!(true)), "{body}");
    server.stop();

    // On restart the truncated file is refused by its manifest checksum.
    let refused = Server::try_start(&config, &data).err().expect("refused");
    assert!(refused.contains("_disk.index"), "{refused}");
}
