//! The method's curation features through the HTTP API of the real server:
//! new classes, interventions with explanations and an audit trail,
//! counterfactuals, unlearning receipts, and memory pruning jobs.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Class `a` on a grid around (0, 0), class `b` around (10, 0); three
/// items labelled `b` sit inside `a` (noise), all from source `s<id % 3>`.
fn memory() -> Vec<Value> {
    let mut items = Vec::new();
    for i in 0..30u64 {
        let (x, y) = ((i % 6) as f32 * 0.2, (i / 6) as f32 * 0.2);
        items.push(
            json!({ "id": i, "label": "a", "vector": [x, y], "source": format!("s{}", i % 3) }),
        );
        items.push(json!({ "id": 100 + i, "label": "b", "vector": [10.0 + x, y], "source": format!("s{}", i % 3) }));
    }
    for (n, id) in [200u64, 201, 202].into_iter().enumerate() {
        let x = 0.3 + n as f32 * 0.2;
        items.push(json!({ "id": id, "label": "b", "vector": [x, 0.5], "source": "noise" }));
    }
    items
}

fn start(dir: &tempfile::TempDir, extra: &str) -> Server {
    let config = write_config(dir.path(), extra);
    Server::start(&config, &dir.path().join("data"))
}

fn classify(server: &Server, body: Value) -> Value {
    let (status, answer) = server.post("/v1/collections/m/classify", &body);
    assert_eq!(status, 200, "{answer}");
    answer
}

fn intervene(server: &Server, body: Value) -> Value {
    let (status, answer) = server.post("/v1/collections/m/interventions", &body);
    assert_eq!(status, 200, "{answer}");
    answer
}

fn wait_for_job(server: &Server, id: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, job) = server.get(&format!("/v1/collections/m/jobs/{id}"));
        assert_eq!(status, 200, "{job}");
        if job["state"] != "running" {
            return job;
        }
        assert!(Instant::now() < deadline, "job {id} did not finish: {job}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn new_classes_interventions_explanations_and_counterfactuals() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(&dir, "");
    let (status, body) = server.post(
        "/v1/collections",
        &json!({ "name": "m", "dim": 2, "metric": "l2", "shards": 4, "default_k": 5 }),
    );
    assert_eq!(status, 201, "{body}");
    let (status, _) = server.post("/v1/collections/m/items", &json!({ "items": memory() }));
    assert_eq!(status, 200);

    // A new class, online: no training, visible at once with its count.
    let (status, _) = server.post(
        "/v1/collections/m/items",
        &json!({ "items": [
            { "id": 300, "label": "c", "vector": [20.0, 0.0] },
            { "id": 301, "label": "c", "vector": [20.1, 0.0] },
            { "id": 302, "label": "c", "vector": [20.0, 0.1] },
        ] }),
    );
    assert_eq!(status, 200);
    let (_, info) = server.get("/v1/collections/m");
    assert_eq!(info["labels"], json!({ "a": 30, "b": 33, "c": 3 }));
    assert_eq!(
        classify(&server, json!({ "vector": [20.05, 0.05], "k": 3 }))["label"],
        "c"
    );

    // Relabel, reweight and scale show in the explanation, with reasons.
    let near_b = json!({ "vector": [10.0, 0.0], "k": 5 });
    assert_eq!(classify(&server, near_b.clone())["label"], "b");
    let entry = intervene(
        &server,
        json!({ "action": "relabel", "id": 100, "label": "a", "reason": "annotator error" }),
    );
    assert_eq!(
        (entry["seq"].as_u64(), &entry["action"]),
        (Some(1), &json!("relabel"))
    );
    let answer = classify(&server, near_b.clone());
    let first = &answer["neighbors"][0];
    assert_eq!(
        (first["id"].as_u64(), &first["label"]),
        (Some(100), &json!("a"))
    );
    assert_eq!(first["adjustments"][0]["kind"], "relabelled");
    assert_eq!(first["adjustments"][0]["from"], "b");
    assert_eq!(first["adjustments"][0]["reason"], "annotator error");
    intervene(
        &server,
        json!({ "action": "set_weight", "id": 100, "weight": 10.0, "reason": "trusted" }),
    );
    let answer = classify(&server, near_b.clone());
    assert_eq!(
        answer["label"], "a",
        "one relabelled, heavily weighted neighbour wins: {answer}"
    );
    intervene(
        &server,
        json!({ "action": "scale_class", "label": "a", "factor": 0.0, "reason": "class under review" }),
    );
    let answer = classify(&server, near_b.clone());
    assert_eq!(answer["label"], "b", "{answer}");
    assert_eq!(answer["neighbors"][0]["vote"], 0.0);
    let kinds: Vec<&str> = answer["neighbors"][0]["adjustments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["relabelled", "weight", "class_scaled"]);
    for undo in [
        json!({ "action": "scale_class", "label": "a", "factor": 1.0, "reason": "review done" }),
        json!({ "action": "clear_weight", "id": 100, "reason": "undo" }),
        json!({ "action": "clear_relabel", "id": 100, "reason": "undo" }),
    ] {
        intervene(&server, undo);
    }
    assert!(
        classify(&server, near_b.clone())["neighbors"][0]
            .get("adjustments")
            .is_none()
    );

    // Blocking a class: its items are skipped inside the search (k others
    // vote) and the explanation names them with the reason.
    intervene(
        &server,
        json!({ "action": "block_class", "label": "b", "reason": "licence audit" }),
    );
    let answer = classify(
        &server,
        json!({ "vector": [10.0, 0.0], "k": 5, "explain": true }),
    );
    assert_ne!(answer["label"], "b");
    assert_eq!(answer["neighbors"].as_array().unwrap().len(), 5);
    assert!(
        answer["neighbors"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["label"] != "b")
    );
    let blocked = answer["blocked"].as_array().unwrap();
    assert_eq!(blocked.len(), 5, "{answer}");
    assert!(
        blocked[0]["reason"]
            .as_str()
            .unwrap()
            .contains("licence audit")
    );
    intervene(
        &server,
        json!({ "action": "unblock_class", "label": "b", "reason": "cleared" }),
    );
    intervene(
        &server,
        json!({ "action": "block_source", "source": "noise", "reason": "scraped" }),
    );
    let answer = classify(
        &server,
        json!({ "vector": [0.5, 0.5], "k": 5, "explain": true }),
    );
    assert!(
        answer["neighbors"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["source"] != "noise")
    );
    assert!(
        answer["blocked"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["id"] == 201)
    );
    intervene(
        &server,
        json!({ "action": "unblock_source", "source": "noise", "reason": "cleared" }),
    );

    // Bad interventions: clear errors, nothing recorded.
    for (body, status, what) in [
        (
            json!({ "action": "relabel", "id": 100, "label": "a" }),
            400,
            "reason",
        ),
        (
            json!({ "action": "teleport", "id": 1, "reason": "x" }),
            400,
            "teleport",
        ),
        (
            json!({ "action": "set_weight", "id": 1, "weight": -1, "reason": "x" }),
            400,
            "weight",
        ),
        (
            json!({ "action": "set_weight", "id": 1, "wieght": 1, "reason": "x" }),
            400,
            "wieght",
        ),
        (
            json!({ "action": "relabel", "id": 9999, "label": "a", "reason": "x" }),
            404,
            "9999",
        ),
        (
            json!({ "action": "block_class", "label": "", "reason": "x" }),
            400,
            "label",
        ),
        (
            json!({ "action": "scale_class", "label": "a", "factor": 1, "reason": " " }),
            400,
            "reason",
        ),
        (
            json!({ "action": "block_class", "label": "x".repeat(300), "reason": "x" }),
            400,
            "long label",
        ),
        (
            json!({ "action": "block_source", "source": "s", "reason": "r".repeat(5000) }),
            400,
            "long reason",
        ),
    ] {
        assert_client_error(
            &server.post("/v1/collections/m/interventions", &body),
            status,
            what,
        );
    }
    assert_client_error(
        &server.post(
            "/v1/collections/nope/interventions",
            &json!({ "action": "block_class", "label": "a", "reason": "x" }),
        ),
        404,
        "nope",
    );

    // The audit trail: every accepted change, in order, with time and reason;
    // it survives a restart.
    let (_, view) = server.get("/v1/collections/m/interventions");
    let audit = view["audit"].as_array().unwrap();
    assert_eq!(audit.len(), 10, "{view}");
    assert!(
        audit
            .iter()
            .all(|e| e["at"].as_str().unwrap().ends_with('Z') && e["reason"].is_string())
    );
    assert_eq!(audit[9]["action"], "unblock_source");
    server.stop();
    let server = start(&dir, "");
    let (_, again) = server.get("/v1/collections/m/interventions");
    assert_eq!(again["audit"], view["audit"]);

    // Counterfactual: removing the named neighbours changes the decision,
    // checked by asking again without them. Between the classes the five
    // nearest are `a`, then `b` waits in line.
    for rule in ["rank", "plurality", "softmax", "distance"] {
        let answer = classify(
            &server,
            json!({ "vector": [5.45, 0.4], "k": 7, "rule": rule, "explain": true }),
        );
        assert_eq!(answer["label"], "a", "{answer}");
        let cf = &answer["counterfactual"];
        let remove: Vec<u64> = cf["remove"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert!(!remove.is_empty(), "{answer}");
        let without = classify(
            &server,
            json!({ "vector": [5.45, 0.4], "k": 7, "rule": rule, "exclude_ids": remove }),
        );
        assert_ne!(without["label"], answer["label"], "{rule}: {answer}");
        assert_eq!(without["label"], cf["label"], "{rule}: {answer}");
    }
}

#[test]
fn unlearning_receipts_and_pruning_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        &dir,
        "seal_threshold = 20\ncompaction_interval_s = 0\nmax_degree = 16\nbuild_list_size = 32\npq_bytes = 2",
    );
    let (status, body) = server.post(
        "/v1/collections",
        &json!({ "name": "m", "dim": 2, "metric": "l2", "shards": 2, "default_k": 5 }),
    );
    assert_eq!(status, 201, "{body}");
    for chunk in memory().chunks(10) {
        let (status, _) = server.post("/v1/collections/m/items", &json!({ "items": chunk }));
        assert_eq!(status, 200);
    }
    let (_, info) = server.get("/v1/collections/m");
    assert!(info["sealed_segments"].as_u64().unwrap() >= 2, "{info}");

    // Pruning, dry run: the noise items inside class a score highest.
    let (status, job) = server.post(
        "/v1/collections/m/jobs",
        &json!({ "kind": "prune", "mode": "dry_run", "k": 5, "threshold": 4 }),
    );
    assert_eq!(status, 202, "{job}");
    let job = wait_for_job(&server, job["id"].as_u64().unwrap());
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(
        (job["done"].as_u64(), job["total"].as_u64()),
        (Some(63), Some(63))
    );
    let report = &job["report"];
    assert_eq!(report["items_scored"], 63);
    let flagged: Vec<u64> = report["top"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_u64().unwrap())
        .collect();
    assert_eq!(
        flagged
            .iter()
            .copied()
            .collect::<std::collections::BTreeSet<_>>(),
        [200, 201, 202].into()
    );
    let (_, info) = server.get("/v1/collections/m");
    assert_eq!(info["items"], 63, "a dry run changes nothing");

    // Soft pruning: the noise items' votes shrink by 1.75 / (1 + v).
    let (_, job) = server.post(
        "/v1/collections/m/jobs",
        &json!({ "kind": "prune", "mode": "soft", "k": 5 }),
    );
    let job = wait_for_job(&server, job["id"].as_u64().unwrap());
    assert_eq!(job["state"], "succeeded", "{job}");
    let answer = classify(&server, json!({ "vector": [0.5, 0.5], "k": 5 }));
    let noise = answer["neighbors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == 201)
        .unwrap()
        .clone();
    let pruned = &noise["adjustments"][0];
    assert_eq!(pruned["kind"], "pruned");
    let v = pruned["v"].as_f64().unwrap();
    assert!((pruned["gamma"].as_f64().unwrap() - 1.75 / (1.0 + v)).abs() < 1e-6);
    assert_eq!(answer["label"], "a");
    let (status, summary) = server.get("/v1/collections/m/pruning");
    assert_eq!(
        (status, summary["stale_items"].as_u64()),
        (200, Some(0)),
        "{summary}"
    );

    // Unlearning a query item (noise 201) marks the weights it counted
    // towards stale; the receipt reports where the item still is.
    let (status, deleted) = server.post("/v1/collections/m/items/delete", &json!({ "ids": [201] }));
    assert_eq!(status, 200, "{deleted}");
    let receipt = deleted["receipt"].as_u64().unwrap();
    let (status, unlearning) = server.get(&format!("/v1/collections/m/unlearning/{receipt}"));
    assert_eq!(status, 200, "{unlearning}");
    assert_eq!(
        (&unlearning["deleted"], &unlearning["ids"]),
        (&json!(1), &json!([201]))
    );
    assert_eq!(unlearning["status"], "deleted", "{unlearning}");
    let present = &unlearning["present_in"];
    assert_eq!(
        present["sealed_segments"].as_array().unwrap().len()
            + present["wal_shards"].as_array().unwrap().len(),
        1,
        "{unlearning}"
    );
    let stale = unlearning["stale_pruning_weights"].as_u64().unwrap();
    assert!(stale > 0, "{unlearning}");
    let (_, summary) = server.get("/v1/collections/m/pruning");
    assert_eq!(summary["stale_items"].as_u64(), Some(stale));
    let (status, compacted) = server.post("/v1/collections/m/compact", &json!({}));
    assert_eq!(status, 200, "{compacted}");
    let (_, unlearning) = server.get(&format!("/v1/collections/m/unlearning/{receipt}"));
    assert_eq!(unlearning["status"], "erased", "{unlearning}");
    assert_eq!(unlearning["present_in"]["sealed_segments"], json!([]));
    assert_eq!(unlearning["present_in"]["wal_shards"], json!([]));

    // Hard pruning deletes exactly what a dry run with the same settings
    // lists, with a receipt.
    let (_, job) = server.post(
        "/v1/collections/m/jobs",
        &json!({ "kind": "prune", "mode": "dry_run", "k": 5, "threshold": 3 }),
    );
    let dry = wait_for_job(&server, job["id"].as_u64().unwrap());
    let mut listed: Vec<u64> = dry["report"]["top"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_u64().unwrap())
        .collect();
    listed.sort();
    assert!(listed.contains(&200) && listed.contains(&202), "{dry}");
    let (_, job) = server.post(
        "/v1/collections/m/jobs",
        &json!({ "kind": "prune", "mode": "hard", "k": 5, "threshold": 3 }),
    );
    let job = wait_for_job(&server, job["id"].as_u64().unwrap());
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(
        job["report"]["deleted"].as_u64(),
        Some(listed.len() as u64),
        "{job}"
    );
    let (_, hard) = server.get(&format!(
        "/v1/collections/m/unlearning/{}",
        job["report"]["receipt"].as_u64().unwrap()
    ));
    let mut ids: Vec<u64> = hard["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, listed);
    let answer = classify(&server, json!({ "vector": [0.5, 0.5], "k": 5 }));
    assert!(
        answer["neighbors"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["label"] == "a"),
        "{answer}"
    );

    // Deleting the pruning weights; bad job requests.
    let (status, _) = server.delete("/v1/collections/m/pruning");
    assert_eq!(status, 204);
    assert_client_error(&server.get("/v1/collections/m/pruning"), 404, "pruning");
    for (body, what) in [
        (json!({ "kind": "shred" }), "shred"),
        (json!({ "kind": "prune", "mode": "gentle" }), "gentle"),
        (json!({ "kind": "prune", "k": 0 }), "k"),
        (json!({ "kind": "prune", "threshold": 0 }), "threshold"),
        (json!({ "kind": "prune", "speed": 2 }), "speed"),
    ] {
        assert_client_error(&server.post("/v1/collections/m/jobs", &body), 400, what);
    }
    assert_client_error(&server.get("/v1/collections/m/jobs/77"), 404, "77");
    assert_client_error(&server.get("/v1/collections/m/jobs/x"), 400, "job id");
    assert_client_error(&server.get("/v1/collections/m/unlearning/999"), 404, "999");
    let (_, list) = server.get("/v1/collections/m/jobs");
    assert_eq!(list["jobs"].as_array().unwrap().len(), 4);
}

/// The node follows its receipts on its own: `engram_unlearning_receipts`
/// counts a fresh one as `deleted` with its age, and as `erased` once
/// compaction has rewritten what held its rows.
#[test]
fn receipts_are_followed_until_erased_in_the_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "seal_threshold = 20\ncompaction_interval_s = 0\nmax_degree = 16\nbuild_list_size = 32\npq_bytes = 2",
    );
    let server = Server::start_with_env(
        &config,
        &dir.path().join("data"),
        &[("ENGRAM_CURATION__RECEIPT_CHECK_S".into(), "1".into())],
    );
    let (status, body) = server.post(
        "/v1/collections",
        &json!({ "name": "m", "dim": 2, "metric": "l2", "shards": 2 }),
    );
    assert_eq!(status, 201, "{body}");
    let (status, _) = server.post("/v1/collections/m/items", &json!({ "items": memory() }));
    assert_eq!(status, 200);
    let gauge = |text: &str, series: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(-1.0)
    };
    let wait_for = |what: &str, done: &dyn Fn(&str) -> bool| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let text = server.metrics_text();
            if done(&text) {
                return text;
            }
            assert!(std::time::Instant::now() < deadline, "{what}:\n{text}");
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    };
    let deleted = "engram_unlearning_receipts{status=\"deleted\"}";
    let erased = "engram_unlearning_receipts{status=\"erased\"}";
    let text = server.metrics_text();
    assert_eq!(
        (gauge(&text, deleted), gauge(&text, erased)),
        (0.0, 0.0),
        "{text}"
    );

    let (status, body) = server.post("/v1/collections/m/items/delete", &json!({ "ids": [3, 4] }));
    assert_eq!(status, 200, "{body}");
    let text = wait_for("the receipt counted as deleted", &|t| {
        gauge(t, deleted) == 1.0
    });
    assert_eq!(gauge(&text, erased), 0.0);
    std::thread::sleep(std::time::Duration::from_millis(1_100));
    let text = wait_for("the receipt's age counted", &|t| {
        gauge(t, "engram_unlearning_oldest_pending_seconds") >= 1.0
    });
    assert!(
        gauge(&text, "engram_unlearning_oldest_pending_seconds") < 60.0,
        "{text}"
    );

    let (status, body) = server.post(
        "/v1/collections/m/compact",
        &json!({ "seal": true, "min_deleted_fraction": 0.0 }),
    );
    assert_eq!(status, 200, "{body}");
    let text = wait_for("the receipt counted as erased", &|t| {
        gauge(t, erased) == 1.0 && gauge(t, deleted) == 0.0
    });
    assert_eq!(
        gauge(&text, "engram_unlearning_oldest_pending_seconds"),
        0.0
    );
}
