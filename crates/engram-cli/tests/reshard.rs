//! Online resharding through the API of real servers: the embedded node
//! (writes go on, a kill -9 in the middle is resumed after the restart)
//! and the loopback cluster (kill -9 of a worker and of the coordinator
//! running the job while a client writes and deletes). Every acknowledged
//! write is found afterwards and no deleted id comes back.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::cluster::{Cluster, DIM as CLUSTER_DIM, vector as cluster_vector};
use common::traffic::{check_ledger, with_traffic};
use common::*;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const DIM: usize = 16;

/// A pseudo-random vector per (id, version): hashed, so two different
/// pairs never share a vector (a linear mix such as `id * 31 + version * 7`
/// does once the writer has run 155 rounds, and the search then rightly
/// answers the other id at distance 0).
fn vector(id: u64, version: u64) -> Vec<f32> {
    (0..DIM as u64)
        .map(|j| {
            let mut x = id.wrapping_mul(0x9e37_79b9_7f4a_7c15)
                ^ version.wrapping_mul(0xd6e8_feb8_6659_fd93)
                ^ (j + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (x >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect()
}

fn put(server: &Server, ids: &[u64], version: u64) -> u16 {
    let items: Vec<Value> = ids
        .iter()
        .map(|id| json!({ "id": id, "label": format!("v{version}"), "vector": vector(*id, version) }))
        .collect();
    server
        .post("/v1/collections/m/items", &json!({ "items": items }))
        .0
}

fn wait_job(server: &Server, id: u64, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (status, job) = server.get(&format!("/v1/collections/m/jobs/{id}"));
        assert_eq!(status, 200, "{job}");
        if job["state"] != "running" {
            return job;
        }
        assert!(
            Instant::now() < deadline,
            "reshard job still running: {job}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The collection holds exactly `model` (id -> version), each item its own
/// nearest neighbour.
fn check_model(server: &Server, model: &HashMap<u64, u64>, shards: u64) {
    let (status, info) = server.get("/v1/collections/m");
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["shards"], shards, "{info}");
    assert_eq!(info["shard_stats"].as_array().unwrap().len() as u64, shards);
    assert_eq!(
        info["items"].as_u64().unwrap(),
        model.len() as u64,
        "{info}"
    );
    let max = model.keys().max().copied().unwrap_or(0) + 10;
    for id in (0..max).step_by(7) {
        let (status, item) = server.get(&format!("/v1/collections/m/items/{id}"));
        match model.get(&id) {
            Some(version) => {
                assert_eq!(status, 200, "acknowledged item {id} lost: {item}");
                assert_eq!(item["label"], format!("v{version}"), "item {id}");
            }
            None => assert_eq!(status, 404, "deleted or never written item {id}: {item}"),
        }
    }
    for (id, version) in model.iter().step_by(97) {
        let (status, answer) = server.post(
            "/v1/collections/m/search",
            &json!({ "vector": vector(*id, *version), "k": 1 }),
        );
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["neighbors"][0]["id"], *id, "{answer}");
    }
}

/// A client writing, updating and deleting through the API until `stop`;
/// returns what it was acknowledged.
fn writer(server: &Server, mut model: HashMap<u64, u64>, stop: &AtomicBool) -> HashMap<u64, u64> {
    let mut round = 0u64;
    while !stop.load(Ordering::SeqCst) || round < 3 {
        round += 1;
        let version = 100 + round;
        let ids: Vec<u64> = (0..40).map(|i| (round * 131 + i * 53) % 5000).collect();
        if put(server, &ids, version) == 200 {
            for id in &ids {
                model.insert(*id, version);
            }
        }
        let doomed: Vec<u64> = ids.iter().copied().step_by(6).collect();
        let (status, _) = server.post("/v1/collections/m/items/delete", &json!({ "ids": doomed }));
        if status == 200 {
            for id in &doomed {
                model.remove(id);
            }
        }
    }
    model
}

#[test]
fn the_embedded_node_reshards_online_and_defaults_to_a_few_shards() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "seal_threshold = 300\ncompaction_interval_s = 0\nmax_degree = 16\nbuild_list_size = 32\npq_bytes = 8",
    );
    let server = Server::start(&config, &dir.path().join("data"));
    let (status, info) = server.post(
        "/v1/collections",
        &json!({ "name": "m", "dim": DIM, "metric": "l2" }),
    );
    assert_eq!(status, 201, "{info}");
    assert_eq!(
        info["shards"], 2,
        "a newcomer's collection has a few shards"
    );
    let mut model = HashMap::new();
    for chunk in (0..3000u64).collect::<Vec<_>>().chunks(500) {
        assert_eq!(put(&server, chunk, 0), 200);
        model.extend(chunk.iter().map(|id| (*id, 0)));
    }

    // Refusals: the same count, out of range, unknown fields and collections.
    for (body, status) in [
        (json!({ "shards": 2 }), 400),
        (json!({ "shards": 0 }), 400),
        (json!({ "shards": 5000 }), 400),
        (json!({ "shards": 3, "extra": 1 }), 400),
    ] {
        let answer = server.post("/v1/collections/m/reshard", &body);
        assert_client_error(&answer, status, &body.to_string());
    }
    assert_client_error(
        &server.post("/v1/collections/nope/reshard", &json!({ "shards": 3 })),
        404,
        "unknown collection",
    );

    for target in [5u64, 3] {
        let stop = AtomicBool::new(false);
        model = std::thread::scope(|scope| {
            let client = scope.spawn(|| writer(&server, model.clone(), &stop));
            std::thread::sleep(Duration::from_millis(200));
            let (status, job) =
                server.post("/v1/collections/m/reshard", &json!({ "shards": target }));
            assert_eq!(status, 202, "{job}");
            assert_eq!(job["kind"], "reshard");
            let done = wait_job(
                &server,
                job["id"].as_u64().unwrap(),
                Duration::from_secs(120),
            );
            assert_eq!(done["state"], "succeeded", "{done}");
            assert_eq!(done["report"]["to_shards"], target, "{done}");
            assert!(
                done["report"]["rows_read"].as_u64().unwrap() >= 2500,
                "{done}"
            );
            std::thread::sleep(Duration::from_millis(200));
            stop.store(true, Ordering::SeqCst);
            client.join().unwrap()
        });
        check_model(&server, &model, target);
    }
    // engramctl follows the job to its end.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_engramctl"))
        .args([
            "--server",
            &server.base,
            "reshard",
            "--collection",
            "m",
            "--shards",
            "4",
        ])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("now has 4 shards (was 3)"), "{text}");
    check_model(&server, &model, 4);
}

#[test]
fn a_resharding_killed_midway_is_resumed_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    // Small seals: the copy builds many segments, so it is still under way
    // when the process is killed.
    let config = write_config(
        dir.path(),
        "seal_threshold = 200\ncompaction_interval_s = 0\nmax_degree = 16\nbuild_list_size = 32\npq_bytes = 8",
    );
    let data = dir.path().join("data");
    let mut server = Server::start(&config, &data);
    let (status, info) = server.post(
        "/v1/collections",
        &json!({ "name": "m", "dim": DIM, "metric": "l2", "shards": 2 }),
    );
    assert_eq!(status, 201, "{info}");
    let mut model = HashMap::new();
    for chunk in (0..20_000u64).collect::<Vec<_>>().chunks(1000) {
        assert_eq!(put(&server, chunk, 0), 200);
        model.extend(chunk.iter().map(|id| (*id, 0)));
    }
    let (status, job) = server.post("/v1/collections/m/reshard", &json!({ "shards": 6 }));
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_u64().unwrap();
    // Writes during the copy, then kill -9 once some rows are copied.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut version = 1;
    loop {
        let (_, job) = server.get(&format!("/v1/collections/m/jobs/{id}"));
        assert_eq!(
            job["state"], "running",
            "the copy ended before the kill: {job}"
        );
        let ids: Vec<u64> = (0..20).map(|i| (version * 17 + i * 101) % 25_000).collect();
        assert_eq!(put(&server, &ids, version), 200);
        model.extend(ids.iter().map(|id| (*id, version)));
        let doomed = [ids[0], ids[1]];
        let (status, _) = server.post("/v1/collections/m/items/delete", &json!({ "ids": doomed }));
        assert_eq!(status, 200);
        for id in doomed {
            model.remove(&id);
        }
        version += 1;
        if job["done"].as_u64().unwrap() > 2_000 {
            break;
        }
        assert!(Instant::now() < deadline, "the copy did not start: {job}");
    }
    server.kill9();
    let server = Server::start(&config, &data);
    // Until the job resumes and ends the collection still answers, from
    // its old layout, and takes writes into both.
    assert_eq!(put(&server, &[24_999], 999), 200);
    model.insert(24_999, 999);
    let (_, jobs) = server.get("/v1/collections/m/jobs");
    let resumed = jobs["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["kind"] == "reshard")
        .cloned()
        .unwrap_or_else(|| panic!("no reshard job after the restart: {jobs}"));
    assert_eq!(resumed["params"]["resumed"], true, "{resumed}");
    let done = wait_job(
        &server,
        resumed["id"].as_u64().unwrap(),
        Duration::from_secs(300),
    );
    assert_eq!(done["state"], "succeeded", "{done}");
    check_model(&server, &model, 6);
    let layouts: Vec<String> = std::fs::read_dir(data.join("collections/m"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("shards"))
        .collect();
    assert_eq!(
        layouts,
        vec!["shards-6".to_string()],
        "the old layout is gone"
    );
}

/// 8 shards become 12 while a client writes and deletes, a worker is
/// killed -9 and restarted, and so is the coordinator running the job
/// (which resumes it from the Raft state when it is back).
#[test]
fn a_cluster_reshards_under_kill9_of_a_worker_and_of_the_job_owner() {
    let cluster = Cluster::start();
    let (status, body) = cluster.post(
        "/v1/collections",
        &json!({"name": "c", "dim": CLUSTER_DIM, "metric": "l2", "shards": 8, "replication": 2}),
    );
    assert_eq!(status, 201, "{body:?}");
    // Rows for the copy to carry (ids the client loop never uses).
    let preloaded: Vec<u64> = (1_000_000..1_020_000).collect();
    for chunk in preloaded.chunks(1000) {
        let items: Vec<Value> = chunk
            .iter()
            .map(|id| json!({"id": id, "label": format!("l{}", id % 5), "vector": cluster_vector(*id)}))
            .collect();
        let (status, body) = cluster.post("/v1/collections/c/items", &json!({ "items": items }));
        assert_eq!(status, 200, "{body:?}");
    }
    let cluster = Arc::new(Mutex::new(cluster));
    let job_state = Mutex::new(Value::Null);
    let (mut ledger, _partials) = with_traffic(
        cluster.clone(),
        Duration::from_secs(2),
        |cluster| {
            let (status, job) = cluster
                .lock()
                .unwrap()
                .post("/v1/collections/c/reshard", &json!({ "shards": 12 }));
            assert_eq!(status, 202, "{job:?}");
            let id = job["id"].as_u64().unwrap();
            let owner = {
                let c = cluster.lock().unwrap();
                c.live_coordinators()[0].to_string()
            };
            // Kill -9 the job's coordinator as soon as the copy is seen
            // under way (polled, not slept for: how long the copy takes
            // depends on the machine), then a worker while the resumed
            // job runs.
            let started = Instant::now();
            let position = loop {
                let (status, job) = cluster
                    .lock()
                    .unwrap()
                    .get(&format!("/v1/collections/c/jobs/{id}"));
                assert!(
                    status != 200 || job["state"] == "running",
                    "the copy ended before it was seen under way: {job}"
                );
                if status == 200 && job["done"].as_u64().unwrap_or(0) > 0 {
                    eprintln!("reshard job when its coordinator is killed: {job}");
                    let mut c = cluster.lock().unwrap();
                    let position = c
                        .coordinators
                        .iter()
                        .position(|p| p.base.as_deref() == Some(owner.as_str()))
                        .unwrap();
                    c.coordinators[position].kill9();
                    break position;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "the copy did not start: {job}"
                );
                std::thread::sleep(Duration::from_millis(20));
            };
            cluster.lock().unwrap().workers[1].kill9();
            std::thread::sleep(Duration::from_secs(2));
            cluster.lock().unwrap().coordinators[position].restart();
            cluster.lock().unwrap().workers[1].restart();
            let deadline = Instant::now() + Duration::from_secs(240);
            loop {
                let (status, job) = cluster
                    .lock()
                    .unwrap()
                    .get(&format!("/v1/collections/c/jobs/{id}"));
                if status == 200 && job["state"] != "running" {
                    *job_state.lock().unwrap() = job;
                    break;
                }
                assert!(Instant::now() < deadline, "resharding did not end: {job:?}");
                std::thread::sleep(Duration::from_millis(200));
            }
        },
        Duration::from_secs(2),
    );
    let job = job_state.into_inner().unwrap();
    eprintln!("reshard job at its end: {job}");
    assert_eq!(job["state"], "succeeded", "{job:?}");
    ledger.acked.extend(&preloaded);
    let cluster = Arc::into_inner(cluster).unwrap().into_inner().unwrap();
    cluster.wait_ready(3, Duration::from_secs(60));
    let (_, info) = cluster.get("/v1/collections/c");
    assert_eq!(info["shards"], 12, "{info:?}");
    check_ledger(&cluster, &ledger);
    let (_, status) = cluster.get("/v1/cluster");
    let maps = status["collections"].as_array().unwrap();
    assert_eq!(
        maps.len(),
        1,
        "only the resharded layout is served: {status:?}"
    );
    assert_eq!(maps[0]["name"], "c");
    assert_eq!(maps[0]["shards"].as_array().unwrap().len(), 12);
    assert!(maps[0]["resharding_to"].is_null());
}
