//! Unlearning receipts with an erasure deadline on the embedded node: the
//! receipt lists each place the deleted bytes are, the node erases them by
//! the deadline on its own (no compaction asked), a byte scan of the data
//! directory finds none of the deleted vectors, and an overdue receipt says
//! so in its status and the list.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const DIM: usize = 8;

/// A vector no other row shares any 4 bytes of (so a byte scan finds
/// exactly its own copies).
fn vector(id: u64) -> Vec<f32> {
    (0..DIM)
        .map(|d| 0.5 + id as f32 * 0.001 + d as f32 * 0.0001 + 0.000_003 * (id % 7) as f32)
        .collect()
}

fn items(ids: std::ops::Range<u64>, label: &str) -> Value {
    json!({ "items": ids.map(|id| json!({
        "id": id,
        "label": label,
        "vector": vector(id),
        "source": format!("src{}", id % 4),
    })).collect::<Vec<_>>() })
}

fn wait_for(server: &Server, path: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = server.get(path);
        assert_eq!(status, 200, "{body}");
        if done(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "{what}: {body}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn kinds(status: &Value) -> Vec<String> {
    status["places"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["kind"].as_str().unwrap().to_string())
        .collect()
}

/// A node with small segments checking receipts every `check_s` seconds
/// (0: never, so nothing erases on its own) and a collection `m` of
/// `shards` shards; the node and its data directory.
fn start(dir: &tempfile::TempDir, check_s: u64, shards: u32) -> (Server, std::path::PathBuf) {
    let config = write_config(
        dir.path(),
        "seal_threshold = 50\ncompaction_interval_s = 0\nmax_degree = 16\nbuild_list_size = 32\npq_bytes = 2",
    );
    let data = dir.path().join("data");
    let server = Server::start_with_env(
        &config,
        &data,
        &[(
            "ENGRAM_CURATION__RECEIPT_CHECK_S".into(),
            check_s.to_string(),
        )],
    );
    let (status, body) = server.post(
        "/v1/collections",
        &json!({ "name": "m", "dim": DIM, "metric": "l2", "shards": shards }),
    );
    assert_eq!(status, 201, "{body}");
    (server, data)
}

#[test]
fn a_deadline_erases_every_place_without_a_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let (server, data) = start(&dir, 1, 2);
    // Sealed segments (200 rows over 2 shards, sealed at 50), then rows
    // that stay growing (their vectors in the WAL).
    for start in (0..200).step_by(50) {
        let (status, body) = server.post("/v1/collections/m/items", &items(start..start + 50, "a"));
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = server.post("/v1/collections/m/items", &items(200..220, "b"));
    assert_eq!(status, 200, "{body}");
    let (_, info) = server.get("/v1/collections/m");
    assert!(info["sealed_segments"].as_u64().unwrap() >= 2, "{info}");

    // By id (sealed rows), and by label (growing rows, in the WAL); the
    // deadline is the request's own.
    let doomed: Vec<u64> = vec![3, 77, 150, 201, 219];
    let (status, by_id) = server.post(
        "/v1/collections/m/items/delete",
        &json!({ "ids": [3, 77, 150], "erase_within_s": 4 }),
    );
    assert_eq!(status, 200, "{by_id}");
    let (status, by_label) = server.post(
        "/v1/collections/m/items/delete",
        &json!({ "label": "b", "erase_within_s": 4 }),
    );
    assert_eq!(status, 200, "{by_label}");
    assert_eq!(by_label["deleted"], 20);
    for id in &doomed {
        assert!(
            on_disk(&data, &f32_bytes(&vector(*id))),
            "row {id} on disk before"
        );
    }
    let path = |r: &Value| format!("/v1/collections/m/unlearning/{}", r["receipt"]);
    let (_, first) = server.get(&path(&by_id));
    assert_eq!(first["status"], "deleted", "{first}");
    assert!(first["erase_by"].is_string(), "{first}");
    assert!(kinds(&first).iter().all(|k| k == "segment"), "{first}");
    assert!(!kinds(&first).is_empty(), "{first}");
    let (_, second) = server.get(&path(&by_label));
    assert!(kinds(&second).contains(&"wal".to_string()), "{second}");
    assert_eq!(
        second["present_in"]["wal_shards"].as_array().unwrap().len(),
        2,
        "{second}"
    );

    // No compaction is asked for: the deadline alone erases them.
    for receipt in [&by_id, &by_label] {
        let erased = wait_for(&server, &path(receipt), "erased by the deadline", |s| {
            s["status"] == "erased"
        });
        assert_eq!(erased["places"], json!([]), "{erased}");
        assert_eq!(erased["overdue"], false, "{erased}");
    }
    for id in &doomed {
        assert!(
            !on_disk(&data, &f32_bytes(&vector(*id))),
            "row {id} still on disk"
        );
    }
    // Rows nobody deleted are all still there, and served.
    assert!(on_disk(&data, &f32_bytes(&vector(4))));
    let (_, info) = server.get("/v1/collections/m");
    assert_eq!(info["items"], 197, "{info}");
    let (_, list) = server.get("/v1/collections/m/unlearning");
    let statuses: Vec<&Value> = list["receipts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["status"])
        .collect();
    assert_eq!(statuses, vec!["erased", "erased"], "{list}");
}

#[test]
fn an_overdue_receipt_says_so_until_erased() {
    let dir = tempfile::tempdir().unwrap();
    // The node's own erasure work is off (no checks): nothing meets the
    // deadline, so the receipt goes overdue.
    let (server, _) = start(&dir, 0, 1);
    let (status, _) = server.post("/v1/collections/m/items", &items(0..100, "a"));
    assert_eq!(status, 200);
    assert_client_error(
        &server.post(
            "/v1/collections/m/items/delete",
            &json!({ "ids": [1], "erase_within_s": 400_000_000u64 }),
        ),
        400,
        "erase_within_s",
    );
    let (_, kept) = server.post(
        "/v1/collections/m/items/delete",
        &json!({ "ids": [2], "erase_within_s": 0 }),
    );
    let (status, late) = server.post(
        "/v1/collections/m/items/delete",
        &json!({ "ids": [5, 6], "erase_within_s": 1 }),
    );
    assert_eq!(status, 200, "{late}");
    std::thread::sleep(Duration::from_millis(2_100));
    let path = format!("/v1/collections/m/unlearning/{}", late["receipt"]);
    let (_, status) = server.get(&path);
    assert_eq!(
        (&status["status"], &status["overdue"]),
        (&json!("deleted"), &json!(true)),
        "{status}"
    );
    let (_, none) = server.get(&format!("/v1/collections/m/unlearning/{}", kept["receipt"]));
    assert!(
        none.get("erase_by").is_none(),
        "erase_within_s = 0: no deadline: {none}"
    );
    assert_eq!(none["overdue"], false);
    let (_, overdue) = server.get("/v1/collections/m/unlearning?overdue=true");
    let listed: Vec<&Value> = overdue["receipts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["receipt"])
        .collect();
    assert_eq!(listed, vec![&late["receipt"]], "{overdue}");
    assert_client_error(
        &server.get("/v1/collections/m/unlearning?overdue=maybe"),
        400,
        "query",
    );

    // Erasing on demand.
    let (code, erased) = server.post(&format!("{path}/erase"), &json!({}));
    assert_eq!(code, 200, "{erased}");
    assert_eq!(
        (&erased["status"], &erased["overdue"]),
        (&json!("erased"), &json!(false)),
        "{erased}"
    );
    assert_client_error(
        &server.post("/v1/collections/m/unlearning/99/erase", &json!({})),
        404,
        "99",
    );
}

/// A snapshot taken before a delete is a place of its rows until it is
/// rewritten; restoring an older snapshot leaves out every id deleted
/// after it was taken, and says how many.
#[test]
fn snapshots_are_rewritten_and_never_resurrect() {
    let dir = tempfile::tempdir().unwrap();
    let (server, data) = start(&dir, 0, 2);
    for start in (0..120).step_by(40) {
        let (status, _) = server.post("/v1/collections/m/items", &items(start..start + 40, "a"));
        assert_eq!(status, 200);
    }
    let snapshots = data.join("snapshots").join("s");
    let uri = snapshots.to_string_lossy().to_string();
    let (status, older) = server.post("/v1/snapshots", &json!({ "uri": uri }));
    assert_eq!(status, 201, "{older}");
    // One second later, so the two snapshots' ids and times differ.
    std::thread::sleep(Duration::from_millis(1_100));

    // By id and by source (src1: ids 1, 5, 9, ...), after the snapshot.
    let (_, by_id) = server.post("/v1/collections/m/items/delete", &json!({ "ids": [3, 40] }));
    let (_, by_source) = server.post(
        "/v1/collections/m/items/delete",
        &json!({ "source": "src1" }),
    );
    assert_eq!(by_source["deleted"], 30, "{by_source}");
    let mut doomed: Vec<u64> = vec![3, 40];
    doomed.extend((0..120).filter(|id| id % 4 == 1));
    for id in &doomed {
        assert!(
            on_disk(&snapshots, &f32_bytes(&vector(*id))),
            "row {id} in the snapshot"
        );
    }
    for receipt in [&by_id, &by_source] {
        let path = format!("/v1/collections/m/unlearning/{}", receipt["receipt"]);
        let (_, status) = server.get(&path);
        let snapshot_places: Vec<&Value> = status["places"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["kind"] == "snapshot")
            .collect();
        assert_eq!(snapshot_places.len(), 1, "{status}");
        assert_eq!(snapshot_places[0]["id"], older["id"], "{status}");
        assert_eq!(
            status["present_in"]["snapshots"].as_array().unwrap().len(),
            1,
            "{status}"
        );
        let (code, erased) = server.post(&format!("{path}/erase"), &json!({}));
        assert_eq!(code, 200, "{erased}");
        assert_eq!(erased["status"], "erased", "{erased}");
    }
    for id in &doomed {
        assert!(
            !on_disk(&data, &f32_bytes(&vector(*id))),
            "row {id} still in a file"
        );
    }
    // The rewritten snapshot names the receipts it was erased of, and
    // stays restorable.
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(
            snapshots
                .join(older["id"].as_str().unwrap())
                .join("manifest.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        manifest["erased_receipts"]["m"].as_array().unwrap().len(),
        2,
        "{manifest}"
    );

    // A second snapshot, then a delete nobody erases.
    let (status, newer) = server.post("/v1/snapshots", &json!({ "uri": uri }));
    assert_eq!(status, 201, "{newer}");
    std::thread::sleep(Duration::from_millis(1_100));
    let (_, late) = server.post(
        "/v1/collections/m/items/delete",
        &json!({ "ids": [50, 51] }),
    );
    assert_eq!(late["deleted"], 2);
    assert!(
        on_disk(&snapshots, &f32_bytes(&vector(50))),
        "not erased yet"
    );

    // Restoring either snapshot leaves the deleted ids out.
    for (snapshot, reapplied) in [(&newer, 2), (&older, 2)] {
        let (status, _) = server.delete("/v1/collections/m");
        assert_eq!(status, 204);
        let (status, restored) = server.post(
            "/v1/snapshots/restore",
            &json!({ "uri": uri, "id": snapshot["id"] }),
        );
        assert_eq!(status, 200, "{restored}");
        assert_eq!(restored["reapplied_deletions"], reapplied, "{restored}");
        let (_, info) = server.get("/v1/collections/m");
        assert_eq!(info["items"], 120 - doomed.len() - 2, "{info}");
        for id in doomed.iter().chain(&[50, 51]) {
            let (status, body) = server.get(&format!("/v1/collections/m/items/{id}"));
            assert_eq!(status, 404, "{id} came back: {body}");
        }
    }
}
