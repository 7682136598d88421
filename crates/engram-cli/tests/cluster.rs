//! The cluster with real processes on loopback: three coordinators (Raft
//! over HTTP) and three workers, replication 2. Faults are kill -9 of the
//! real processes while a client writes, deletes and searches.
//!
//! Invariants checked throughout: every acknowledged upsert is found at
//! the end, a deleted id is never returned by a search that started after
//! its delete was acknowledged, and (replication 2) searches stay complete
//! when one worker dies.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::cluster::{Cluster, DIM, Proc, SHARDS, engramctl, free_port, vector, write_parquet};
use common::traffic::{StopOnDrop, check_ledger, with_traffic};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn create_collection(cluster: &Cluster, name: &str) {
    let (status, body) = cluster.post(
        "/v1/collections",
        &json!({"name": name, "dim": DIM, "metric": "l2", "shards": SHARDS, "replication": 2}),
    );
    assert_eq!(status, 201, "{body:?}");
}

#[test]
fn raft_leader_killed_during_writes_then_everything_restarted() {
    let cluster = Cluster::start();
    create_collection(&cluster, "c");
    let cluster = Arc::new(Mutex::new(cluster));
    let mut killed_leader = 0;
    let (ledger, _) = with_traffic(
        cluster.clone(),
        Duration::from_secs(3),
        |cluster| {
            let mut c = cluster.lock().unwrap();
            let leader = c.wait_ready(3, Duration::from_secs(10));
            c.coordinators[leader as usize - 1].kill9();
            killed_leader = leader;
        },
        Duration::from_secs(6),
    );
    let mut cluster = Arc::into_inner(cluster).unwrap().into_inner().unwrap();
    // A new leader among the survivors, within seconds.
    let started = Instant::now();
    let leader = cluster.wait_ready(3, Duration::from_secs(10));
    assert_ne!(leader, killed_leader);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        ledger.writes_after_fault > 0,
        "no write succeeded after the kill"
    );
    // Metadata writes continue without the old leader, and none were lost.
    create_collection(&cluster, "after-failover");
    check_ledger(&cluster, &ledger);

    // Restart everything (kill -9 all, then start all): every acknowledged
    // item and both collections come back.
    for p in cluster
        .coordinators
        .iter_mut()
        .chain(cluster.workers.iter_mut())
    {
        p.kill9();
    }
    for p in cluster
        .coordinators
        .iter_mut()
        .chain(cluster.workers.iter_mut())
    {
        p.restart();
    }
    cluster.wait_ready(3, Duration::from_secs(30));
    let (status, list) = cluster.get("/v1/collections");
    assert_eq!(status, 200);
    let names: BTreeSet<&str> = list["collections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, BTreeSet::from(["c", "after-failover"]));
    check_ledger(&cluster, &ledger);

    // Membership through the API: remove coordinator 3, then add it back.
    let members = |cluster: &Cluster| -> BTreeSet<u64> {
        let (_, status) = cluster.get("/v1/cluster");
        status["coordinators"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_u64().unwrap())
            .collect()
    };
    let base = cluster.coordinators[0].base.clone().unwrap();
    // Through engramctl, as an operator would.
    let (ok, out) = cluster.engramctl(&base, &["node", "remove", "3"]);
    assert!(ok, "{out}");
    assert_eq!(members(&cluster), BTreeSet::from([1, 2]));
    let internal3 = cluster.coordinators[2].internal_addr();
    let (ok, out) = cluster.engramctl(&base, &["node", "add", "--id", "3", "--addr", &internal3]);
    assert!(ok, "{out}");
    assert_eq!(members(&cluster), BTreeSet::from([1, 2, 3]));
    // engramctl status: the members, the leader, every worker alive, and
    // the shard maps of both collections.
    let (ok, out) = cluster.engramctl(&base, &["status"]);
    assert!(ok, "{out}");
    assert!(out.contains("Raft leader"), "{out}");
    assert_eq!(out.matches("  leader").count(), 1, "{out}");
    assert!(
        out.contains("collection c:") && out.contains("collection after-failover:"),
        "{out}"
    );
    let (ok, out) = cluster.engramctl(&base, &["status", "--json"]);
    assert!(ok, "{out}");
    let status: Value = serde_json::from_str(&out).unwrap();
    assert!(
        status["cluster"]["workers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|w| w["alive"] == true),
        "{status}"
    );
    create_collection(&cluster, "after-membership");
}

#[test]
fn worker_holding_primaries_killed_during_writes() {
    let cluster = Cluster::start();
    create_collection(&cluster, "c");
    // The victim leads some shards.
    let (_, status) = cluster.get("/v1/cluster");
    let shards = status["collections"][0]["shards"]
        .as_array()
        .unwrap()
        .clone();
    let victim = shards[0]["primary"].as_u64().unwrap();
    let cluster = Arc::new(Mutex::new(cluster));
    let (ledger, partials) = with_traffic(
        cluster.clone(),
        Duration::from_secs(3),
        |cluster| cluster.lock().unwrap().workers[victim as usize - 1].kill9(),
        Duration::from_secs(6),
    );
    let mut cluster = Arc::into_inner(cluster).unwrap().into_inner().unwrap();
    assert!(
        ledger.writes_after_fault > 0,
        "no write succeeded after the kill"
    );
    assert!(
        partials.is_empty(),
        "with replication 2 searches stay complete: {partials:?}"
    );
    // A replica was promoted for every shard the victim led.
    let (_, status) = cluster.get("/v1/cluster");
    let maps: BTreeMap<u64, u64> = status["collections"][0]["shards"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(s, p)| (s as u64, p["primary"].as_u64().unwrap()))
        .collect();
    assert!(maps.values().all(|p| *p != victim), "{status:?}");
    check_ledger(&cluster, &ledger);

    // The victim comes back, catches up by transfer, and is in sync again.
    cluster.workers[victim as usize - 1].restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, status) = cluster.get("/v1/cluster");
        let back = status["collections"][0]["shards"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["out_of_sync"].as_array().unwrap().is_empty());
        if back {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "victim did not catch up: {status:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Its copies serve: kill the others' copies' holders one by one is out
    // of scope; instead kill a surviving worker and check nothing is lost.
    // A collection without replicas, to see answers lose a dead worker's shards.
    let (status, body) = cluster.post(
        "/v1/collections",
        &json!({"name": "single", "dim": DIM, "metric": "l2", "shards": SHARDS, "replication": 1}),
    );
    assert_eq!(status, 201, "{body:?}");
    let items: Vec<Value> = (0..200u64)
        .map(|id| json!({"id": id, "label": "x", "vector": vector(id)}))
        .collect();
    assert_eq!(
        cluster
            .post("/v1/collections/single/items", &json!({ "items": items }))
            .0,
        200
    );
    let other = (1..=3u64).find(|w| *w != victim).unwrap();
    cluster.workers[other as usize - 1].kill9();
    cluster.wait_ready(2, Duration::from_secs(10));
    check_ledger(&cluster, &ledger);
    let query = json!({"vector": vector(7), "k": 200});
    let (status, answer) = cluster.post("/v1/collections/single/search", &query);
    assert_eq!(status, 200);
    assert_eq!(answer["partial"], json!(true), "{answer:?}");
    let missing = answer["missing_shards"].as_array().unwrap().len();
    assert!(missing > 0 && missing < SHARDS as usize, "{answer:?}");
    assert!(answer["neighbors"].as_array().unwrap().len() < 200);
    let mut strict = query.clone();
    strict["require_complete"] = json!(true);
    let (status, body) = cluster.post("/v1/collections/single/search", &strict);
    assert_eq!(status, 503, "{body:?}");
    assert_eq!(body["error"]["code"], json!("unavailable"));
}

/// Two classes in 2-d: `a` around (0, 0), `b` around (10, 0), and three
/// `b` items inside `a` (noise) that pruning should find.
fn curation_memory() -> Vec<Value> {
    let mut items = Vec::new();
    for i in 0..30u64 {
        let (x, y) = ((i % 6) as f32 * 0.2, (i / 6) as f32 * 0.2);
        items.push(json!({ "id": i, "label": "a", "vector": [x, y] }));
        items.push(json!({ "id": 100 + i, "label": "b", "vector": [10.0 + x, y] }));
    }
    for (n, id) in [200u64, 201, 202].into_iter().enumerate() {
        let x = 0.3 + n as f32 * 0.2;
        items.push(json!({ "id": id, "label": "b", "vector": [x, 0.5], "source": "noise" }));
    }
    items
}

impl Cluster {
    /// A request to coordinator `i` (0-based) itself.
    fn at(&self, i: usize, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let base = self.coordinators[i].base.clone().unwrap();
        let url = format!("{base}{path}");
        let request = match method {
            "POST" => self.http.post(url).json(body.unwrap()),
            _ => self.http.get(url),
        };
        let r = request.send().unwrap();
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(Value::Null))
    }

    /// Polls coordinator `i` until `check` holds for its answer to GET
    /// `path` (it applies Raft entries a moment after the leader).
    fn eventually(&self, i: usize, path: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, body) = self.at(i, "GET", path, None);
            if status == 200 && check(&body) {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "coordinator {} never showed it at {path}: {status} {body}",
                i + 1
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn curation_lives_in_raft_on_every_coordinator() {
    // Automatic compaction runs on the workers every second here.
    // The snapshot at the end is written by this cluster and read by a
    // fresh one: both may use its directory.
    let snapshots = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start_with_roots(
        "compaction_interval_s = 1\ncompact_deleted_fraction = 0.2",
        &[snapshots.path()],
    );
    let (status, body) = cluster.at(
        0,
        "POST",
        "/v1/collections",
        Some(&json!({"name": "m", "dim": 2, "metric": "l2", "shards": 4, "replication": 2, "default_k": 5})),
    );
    assert_eq!(status, 201, "{body}");
    let (status, body) = cluster.at(
        0,
        "POST",
        "/v1/collections/m/items",
        Some(&json!({ "items": curation_memory() })),
    );
    assert_eq!(status, 200, "{body}");
    let near_b = json!({ "vector": [10.0, 0.0], "k": 5 });
    let (_, answer) = cluster.at(2, "POST", "/v1/collections/m/classify", Some(&near_b));
    assert_eq!(answer["label"], "b", "{answer}");

    // An intervention taken by one coordinator steers decisions on another.
    let block = json!({ "action": "block_class", "label": "b", "reason": "recall of batch 7" });
    let (status, entry) = cluster.at(1, "POST", "/v1/collections/m/interventions", Some(&block));
    assert_eq!(status, 200, "{entry}");
    assert_eq!(entry["seq"], 1);
    cluster.eventually(2, "/v1/collections/m/interventions", |v| {
        v["audit"].as_array().is_some_and(|a| a.len() == 1)
    });
    let (_, answer) = cluster.at(2, "POST", "/v1/collections/m/classify", Some(&near_b));
    assert_eq!(answer["label"], "a", "blocked class still voted: {answer}");
    // The state machine applies the same rules: a bad one is refused.
    let (status, error) = cluster.at(
        0,
        "POST",
        "/v1/collections/m/interventions",
        Some(&json!({ "action": "set_weight", "id": 999, "weight": 2.0, "reason": "x" })),
    );
    assert_eq!(status, 404, "{error}");
    let unblock = json!({ "action": "unblock_class", "label": "b", "reason": "batch 7 cleared" });
    let (status, _) = cluster.at(0, "POST", "/v1/collections/m/interventions", Some(&unblock));
    assert_eq!(status, 200);
    let (_, answer) = cluster.at(0, "POST", "/v1/collections/m/classify", Some(&near_b));
    assert_eq!(answer["label"], "b", "{answer}");

    // Soft pruning scans the collection through the workers; its weights
    // reach every coordinator.
    let (status, job) = cluster.at(
        0,
        "POST",
        "/v1/collections/m/jobs",
        Some(&json!({ "kind": "prune", "mode": "soft", "k": 5 })),
    );
    assert_eq!(status, 202, "{job}");
    let job = cluster.eventually(0, &format!("/v1/collections/m/jobs/{}", job["id"]), |j| {
        j["state"] != "running"
    });
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["report"]["items_scored"], 63, "{job}");
    // Jobs are in the Raft state too: another coordinator shows it.
    let job_path = format!("/v1/collections/m/jobs/{}", job["id"]);
    cluster.eventually(2, &job_path, |j| j["state"] == "succeeded");
    let pruning = cluster.eventually(1, "/v1/collections/m/pruning", |p| {
        p["weighted_items"].as_u64().is_some_and(|n| n > 0)
    });
    assert_eq!(pruning["stale_items"], 0, "{pruning}");

    // Unlearning a noise item gives a receipt any coordinator can show.
    let (status, deleted) = cluster.at(
        1,
        "POST",
        "/v1/collections/m/items/delete",
        Some(&json!({ "ids": [201] })),
    );
    assert_eq!(status, 200, "{deleted}");
    let receipt = deleted["receipt"].as_u64().expect("a receipt");
    let path = format!("/v1/collections/m/unlearning/{receipt}");
    let unlearning = cluster.eventually(2, &path, |_| true);
    assert_eq!(
        (&unlearning["deleted"], &unlearning["ids"]),
        (&json!(1), &json!([201])),
        "{unlearning}"
    );
    assert_eq!(unlearning["status"], "deleted", "{unlearning}");
    assert!(
        !unlearning["present_in"]["wal_shards"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{unlearning}"
    );
    assert!(unlearning["stale_pruning_weights"].as_u64().unwrap() > 0);

    // A job started on one coordinator is cancelled through another.
    let (status, body) = cluster.at(
        0,
        "POST",
        "/v1/collections",
        Some(&json!({"name": "big", "dim": 2, "metric": "l2", "shards": 4, "replication": 1})),
    );
    assert_eq!(status, 201, "{body}");
    let items: Vec<Value> = (0..4_000u64)
        .map(|i| json!({ "id": i, "label": format!("c{}", i % 7), "vector": [(i % 67) as f32, (i / 67) as f32] }))
        .collect();
    for chunk in items.chunks(2_000) {
        let (status, body) = cluster.at(
            0,
            "POST",
            "/v1/collections/big/items",
            Some(&json!({ "items": chunk })),
        );
        assert_eq!(status, 200, "{body}");
    }
    // Each copy's sealed segments (seal threshold 400) reach the Raft
    // state: every shard's primary reports files with sizes and CRC32s.
    let status = cluster.eventually(2, "/v1/cluster", |s| {
        s["collections"].as_array().unwrap().iter().any(|c| {
            c["name"] == "big"
                && c["shards"].as_array().unwrap().iter().all(|shard| {
                    let primary = shard["primary"].to_string();
                    shard["segments"][&primary]
                        .as_array()
                        .is_some_and(|segments| !segments.is_empty())
                })
        })
    });
    let big = status["collections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "big")
        .unwrap();
    let mut sealed_rows = 0;
    for shard in big["shards"].as_array().unwrap() {
        for segment in shard["segments"][&shard["primary"].to_string()]
            .as_array()
            .unwrap()
        {
            sealed_rows += segment["rows"].as_u64().unwrap();
            assert_eq!(segment["deleted"], 0, "{segment}");
            assert!(
                segment["files"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|f| f["bytes"].as_u64().unwrap() > 0),
                "{segment}"
            );
        }
    }
    assert!(sealed_rows > 0 && sealed_rows <= 4_000, "{sealed_rows}");
    let (status, job) = cluster.at(
        0,
        "POST",
        "/v1/collections/big/jobs",
        Some(&json!({ "kind": "prune", "mode": "dry_run", "k": 5 })),
    );
    assert_eq!(status, 202, "{job}");
    let big_job = format!("/v1/collections/big/jobs/{}", job["id"]);
    cluster.eventually(1, &big_job, |j| j["state"] == "running");
    let (status, body) = cluster.at(1, "POST", &format!("{big_job}/cancel"), Some(&json!({})));
    assert_eq!(status, 200, "{body}");
    let ended = cluster.eventually(0, &big_job, |j| j["state"] != "running");
    assert_eq!(ended["state"], "cancelled", "{ended}");
    cluster.eventually(2, &big_job, |j| j["state"] == "cancelled");

    // Workers compact their own copies automatically: after deleting 40%
    // of `big`, every copy reports segments without deleted rows, and the
    // deleted items are gone from answers while the others remain.
    let deleted: Vec<u64> = (0..1_600).collect();
    let (status, body) = cluster.at(
        2,
        "POST",
        "/v1/collections/big/items/delete",
        Some(&json!({ "ids": deleted })),
    );
    assert_eq!(status, 200, "{body}");
    // (Compaction seals first, so the primaries' segments then hold
    // exactly the 2,400 live items.)
    cluster.eventually(1, "/v1/cluster", |s| {
        let Some(big) = s["collections"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "big")
        else {
            return false;
        };
        let shards = big["shards"].as_array().unwrap();
        let clean = shards.iter().all(|shard| {
            shard["segments"].as_object().unwrap().values().all(|copy| {
                copy.as_array()
                    .unwrap()
                    .iter()
                    .all(|seg| seg["deleted"] == 0)
            })
        });
        let primary_rows: u64 = shards
            .iter()
            .flat_map(|shard| {
                shard["segments"][&shard["primary"].to_string()]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .map(|seg| seg["rows"].as_u64().unwrap())
            .sum();
        clean && primary_rows == 2_400
    });
    let (_, info) = cluster.at(0, "GET", "/v1/collections/big", None);
    assert_eq!(info["items"], 2_400, "{info}");
    for id in [0u64, 799, 1_599, 1_600, 3_999] {
        let vector = json!([(id % 67) as f32, (id / 67) as f32]);
        let (status, found) = cluster.at(
            1,
            "POST",
            "/v1/collections/big/search",
            Some(&json!({ "vector": vector, "k": 1 })),
        );
        assert_eq!(status, 200, "{found}");
        let nearest = found["neighbors"][0]["id"].as_u64().unwrap();
        if id < 1_600 {
            assert!(nearest >= 1_600, "deleted {id} came back: {found}");
        } else {
            assert_eq!(nearest, id, "{found}");
        }
    }

    // Kill -9 the Raft leader and bring it back: it recovers the curation
    // from its own log and snapshot files.
    let leader = cluster.wait_ready(3, Duration::from_secs(10)) as usize - 1;
    cluster.coordinators[leader].kill9();
    cluster.coordinators[leader].restart();
    cluster.wait_ready(3, Duration::from_secs(30));
    let view = cluster.eventually(leader, "/v1/collections/m/interventions", |v| {
        v["audit"].as_array().is_some_and(|a| a.len() == 2)
    });
    assert_eq!(view["audit"][0]["reason"], "recall of batch 7", "{view}");
    assert!(view["pruning"]["weighted_items"].as_u64().unwrap() > 0);
    cluster.eventually(leader, &path, |u| u["ids"] == json!([201]));

    // Snapshot, wipe (a brand-new cluster), restore: the same collections,
    // items, curation and answers.
    let uri = snapshots.path().to_string_lossy().to_string();
    let base = cluster.coordinators[1].base.clone().unwrap();
    let (ok, out) = cluster.engramctl(&base, &["snapshot", "create", "--uri", &uri, "--json"]);
    assert!(ok, "{out}");
    let made: Value = serde_json::from_str(&out).unwrap();
    let id = made["id"].as_str().unwrap().to_string();
    let probe = |cluster: &Cluster| -> Vec<Value> {
        let mut answers = Vec::new();
        for body in [
            json!({ "vector": [10.0, 0.0], "k": 5 }),
            json!({ "vector": [0.5, 0.5], "k": 5 }),
        ] {
            let (status, answer) = cluster.at(0, "POST", "/v1/collections/m/classify", Some(&body));
            assert_eq!(status, 200, "{answer}");
            answers.push(json!([answer["label"], answer["neighbors"]]));
        }
        for id in [1_600u64, 2_500, 3_999] {
            let body = json!({ "vector": [(id % 67) as f32, (id / 67) as f32], "k": 3 });
            let (status, answer) = cluster.at(0, "POST", "/v1/collections/big/search", Some(&body));
            assert_eq!(status, 200, "{answer}");
            answers.push(answer["neighbors"].clone());
        }
        let (_, view) = cluster.at(0, "GET", "/v1/collections/m/interventions", None);
        answers.push(view["audit"].clone());
        for name in ["m", "big"] {
            let (_, info) = cluster.at(0, "GET", &format!("/v1/collections/{name}"), None);
            answers.push(json!([info["items"], info["labels"]]));
        }
        answers
    };
    let before = probe(&cluster);
    drop(cluster);
    let fresh = Cluster::start_with_roots("compaction_interval_s = 0", &[snapshots.path()]);
    let base = fresh.coordinators[2].base.clone().unwrap();
    let (ok, out) = fresh.engramctl(&base, &["snapshot", "restore", "--uri", &uri, "--id", &id]);
    assert!(ok, "{out}");
    assert_eq!(probe(&fresh), before);
}

impl Cluster {
    /// Starts worker `id` with the configuration of worker 1 (its own
    /// port and data directory).
    fn add_worker(&mut self, id: usize) {
        let first = &self.workers[0];
        let text = std::fs::read_to_string(&first.config).unwrap();
        let port = text
            .lines()
            .find(|l| l.starts_with("internal_listen"))
            .unwrap()
            .to_string();
        let text = text
            .replace("worker-1", &format!("worker-{id}"))
            .replace("node_id = 1\n", &format!("node_id = {id}\n"))
            .replace(
                &port,
                &format!("internal_listen = \"127.0.0.1:{}\"", free_port()),
            );
        let dir = first.config.parent().unwrap().to_path_buf();
        let config = dir.join(format!("worker-{id}.toml"));
        std::fs::write(&config, text).unwrap();
        let log = dir.join(format!("worker-{id}.log"));
        self.workers.push(Proc::start(
            &format!("worker-{id}"),
            "worker",
            &config,
            &log,
        ));
    }

    /// Which workers host any copy of any shard.
    fn hosting_workers(&self) -> BTreeSet<u64> {
        let (_, status) = self.get("/v1/cluster");
        let mut out = BTreeSet::new();
        for c in status["collections"].as_array().unwrap() {
            for s in c["shards"].as_array().unwrap() {
                out.insert(s["primary"].as_u64().unwrap());
                for w in s["replicas"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .chain(s["out_of_sync"].as_array().unwrap())
                {
                    out.insert(w.as_u64().unwrap());
                }
            }
        }
        out
    }
}

/// Top-5 ids of each probe query on the `static` collection, or the first
/// answer that was not a 200.
fn static_answers(cluster: &Cluster, probes: &[u64]) -> Result<Vec<Vec<u64>>, String> {
    probes
        .iter()
        .map(|id| {
            let (status, body) = cluster.post(
                "/v1/collections/static/search",
                &json!({"vector": vector(*id), "k": 5, "require_complete": true}),
            );
            if status != 200 {
                return Err(format!("{status} {body}"));
            }
            Ok(body["neighbors"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n["id"].as_u64().unwrap())
                .collect())
        })
        .collect()
}

/// Runs an `engramctl` rebalance until it completes: a move that fails
/// (here: its target was failed over by a heartbeat delayed on a loaded
/// machine) leaves a consistent map, and running it again goes on, as an
/// operator would. The outcome is checked on the shard map afterwards.
fn until_applied(api_key: &str, base: &str, args: &[&str]) {
    for _ in 0..3 {
        let (ok, out) = engramctl(api_key, base, args);
        if ok {
            let applied: Value = serde_json::from_str(&out).unwrap();
            let planned = applied["plan"]["moves"].as_array().unwrap().len();
            assert_eq!(
                applied["moved"].as_array().unwrap().len(),
                planned,
                "{applied}"
            );
            return;
        }
        eprintln!("rebalance stopped, running it again: {out}");
    }
    panic!("rebalance did not complete in 3 runs");
}

#[test]
fn fourth_worker_rebalanced_then_drained_under_load() {
    let mut cluster = Cluster::start();
    create_collection(&cluster, "c");
    // A collection that does not change, to compare answers before, during
    // and after the moves (small shards: exact answers from each copy).
    let (status, body) = cluster.post(
        "/v1/collections",
        &json!({"name": "static", "dim": DIM, "metric": "l2", "shards": SHARDS, "replication": 2}),
    );
    assert_eq!(status, 201, "{body}");
    for chunk in (100_000..100_800u64).collect::<Vec<_>>().chunks(200) {
        let items: Vec<Value> = chunk
            .iter()
            .map(|id| json!({"id": id, "label": "s", "vector": vector(*id)}))
            .collect();
        let (status, body) = cluster.post("/v1/collections/static/items", &json!({"items": items}));
        assert_eq!(status, 200, "{body}");
    }
    let probes: Vec<u64> = (100_000..100_800).step_by(37).collect();
    let baseline = static_answers(&cluster, &probes).unwrap();

    cluster.add_worker(4);
    cluster.wait_ready(4, Duration::from_secs(30));
    assert!(!cluster.hosting_workers().contains(&4));
    let base = cluster.coordinators[0].base.clone().unwrap();
    let (ok, plan) = cluster.engramctl(&base, &["rebalance", "--plan"]);
    assert!(ok, "{plan}");
    assert!(plan.contains("FROM  TO"), "{plan}");

    // Rebalance, then drain worker 4 again, while a client writes and
    // deletes on `c` and another reads `static` and checks every answer.
    let api_key = cluster.api_key.clone();
    let cluster = Arc::new(Mutex::new(cluster));
    let stop_reader = AtomicBool::new(false);
    let reader_errors = Mutex::new(Vec::new());
    let (ledger, _) = std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let mut rounds = 0;
            while !stop_reader.load(Ordering::SeqCst) {
                let answers = static_answers(&cluster.lock().unwrap(), &probes[..4]);
                match answers {
                    Ok(a) if a == baseline[..4] => {}
                    other => reader_errors.lock().unwrap().push(format!("{other:?}")),
                }
                rounds += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            rounds
        });
        let _stop_reader = StopOnDrop(&stop_reader);
        let result = with_traffic(
            cluster.clone(),
            Duration::from_secs(2),
            |_| until_applied(&api_key, &base, &["rebalance", "--apply", "--json"]),
            Duration::from_secs(1),
        );
        stop_reader.store(true, Ordering::SeqCst);
        assert!(reader.join().unwrap() > 0);
        result
    });
    let cluster = Arc::into_inner(cluster).unwrap().into_inner().unwrap();
    assert!(
        reader_errors.lock().unwrap().is_empty(),
        "answers changed or failed during the moves: {:?}",
        reader_errors.lock().unwrap()
    );
    assert!(
        cluster.hosting_workers().contains(&4),
        "worker 4 got no copy"
    );
    let (_, status) = cluster.get("/v1/cluster");
    let copies_on_4: usize = status["collections"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["shards"].as_array().unwrap())
        .filter(|s| s["primary"] == 4 || s["replicas"].as_array().unwrap().contains(&json!(4)))
        .count();
    // 32 copies over 4 workers, balanced by items (the written-to
    // collection's copies weigh more): a fair share lands on worker 4.
    assert!(copies_on_4 >= 3, "{copies_on_4} copies on worker 4");
    check_ledger(&cluster, &ledger);
    assert_eq!(static_answers(&cluster, &probes).unwrap(), baseline);

    // Worker 4's shard copies are on its disk now...
    let data = cluster.workers[3]
        .config
        .parent()
        .unwrap()
        .join("worker-4")
        .join("collections");
    let shard_dirs = || -> usize {
        ["c", "static"]
            .iter()
            .map(|c| {
                std::fs::read_dir(data.join(c).join("shards"))
                    .map(|d| {
                        d.filter(|e| {
                            let name = e.as_ref().unwrap().file_name();
                            name.to_string_lossy().chars().all(|c| c.is_ascii_digit())
                        })
                        .count()
                    })
                    .unwrap_or(0)
            })
            .sum()
    };
    assert_eq!(shard_dirs(), copies_on_4);
    // Drain it: every copy leaves, nothing is lost, answers are the same.
    until_applied(&cluster.api_key, &base, &["node", "drain", "4", "--json"]);
    assert!(!cluster.hosting_workers().contains(&4));
    check_ledger(&cluster, &ledger);
    assert_eq!(static_answers(&cluster, &probes).unwrap(), baseline);
    // ...and its files go too (its agent drops copies placed elsewhere).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let shards = shard_dirs();
        if shards == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{shards} shard directories left on worker 4"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn bulk_segments_reach_every_copy_and_outlive_a_worker() {
    let mut cluster = Cluster::start();
    create_collection(&cluster, "c");
    let before: Vec<Value> = (0..50u64)
        .map(|id| json!({"id": id, "label": "old", "vector": vector(id + 1)}))
        .collect();
    let (status, _) = cluster.post("/v1/collections/c/items", &json!({"items": before}));
    assert_eq!(status, 200);
    let file = cluster.exchange().join("part-0.parquet");
    write_parquet(&file, &(0..4000u64).collect::<Vec<_>>(), "bulk");
    let (status, job) = cluster.post(
        "/v1/collections/c/jobs",
        &json!({"kind": "ingest", "uri": file.display().to_string(), "bulk": true, "segment_rows": 1000}),
    );
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_u64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let job = loop {
        let (_, job) = cluster.get(&format!("/v1/collections/c/jobs/{id}"));
        if job["state"] != "running" {
            break job;
        }
        assert!(Instant::now() < deadline, "bulk job did not end: {job}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["report"]["items_written"], 4000);
    let (_, info) = cluster.get("/v1/collections/c");
    assert_eq!(info["items"], 4000, "{info}");
    assert_eq!(
        info["labels"]["bulk"], 4000,
        "the bulk rows superseded the old ones"
    );

    // Every copy of every shard reports the same sealed rows to Raft.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, status) = cluster.get("/v1/cluster");
        let shards = status["collections"][0]["shards"]
            .as_array()
            .unwrap()
            .clone();
        let agreed = shards.iter().all(|shard| {
            let hosts: Vec<u64> = std::iter::once(shard["primary"].as_u64().unwrap())
                .chain(
                    shard["replicas"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|r| r.as_u64().unwrap()),
                )
                .collect();
            let rows: Vec<u64> = hosts
                .iter()
                .map(|w| {
                    shard["segments"][w.to_string()]
                        .as_array()
                        .map_or(0, |s| s.iter().map(|r| r["rows"].as_u64().unwrap()).sum())
                })
                .collect();
            hosts.len() == 2 && rows[0] > 0 && rows.iter().all(|r| *r == rows[0])
        });
        if agreed {
            break;
        }
        assert!(Instant::now() < deadline, "copies differ: {status}");
        std::thread::sleep(Duration::from_millis(300));
    }
    // Uploaded once, to the segment store.
    let store = cluster.workers[0]
        .config
        .parent()
        .unwrap()
        .join("segment-store");
    let uploaded = std::fs::read_dir(store.join("c"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert!(uploaded > 0, "nothing in {}", store.display());

    // A worker dies: every row is still answered, completely.
    cluster.workers[0].kill9();
    cluster.wait_ready(2, Duration::from_secs(10));
    for probe in [3u64, 1234, 3999] {
        let (status, answer) = cluster.post(
            "/v1/collections/c/search",
            &json!({"vector": vector(probe), "k": 1, "require_complete": true}),
        );
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["neighbors"][0]["id"], probe, "{answer}");
        assert_eq!(answer["neighbors"][0]["label"], "bulk", "{answer}");
    }
    let (_, info) = cluster.get("/v1/collections/c");
    assert_eq!(info["items"], 4000, "{info}");
}
