//! How copies heal (issue: recovery at billion scale), with real processes
//! on loopback: three coordinators and three workers, one shard with a
//! copy on every worker (replication 3).
//!
//! A replica killed with kill -9 while writes and deletes go on comes
//! back and receives only the writes it missed (a delta from its
//! primary's WAL, counted by kind and bytes on the primary's `/metrics`),
//! and then serves every acknowledged write alone. A whole cluster killed
//! and restarted keeps its replicas in sync: a restarted primary compares
//! positions instead of marking them out of sync and resending the shard.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::cluster::{Cluster, DIM, metric, vector};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

fn placement(cluster: &Cluster) -> Value {
    let (_, status) = cluster.get("/v1/cluster");
    status["collections"][0]["shards"][0].clone()
}

fn write(cluster: &Cluster, ids: std::ops::Range<u64>, label: &str) {
    let items: Vec<Value> = ids
        .map(|id| json!({"id": id, "label": label, "vector": vector(id)}))
        .collect();
    let (status, body) = cluster.post("/v1/collections/c/items", &json!({ "items": items }));
    assert_eq!(status, 200, "{body:?}");
}

fn delete(cluster: &Cluster, ids: &[u64]) {
    let (status, body) = cluster.post("/v1/collections/c/items/delete", &json!({ "ids": ids }));
    assert_eq!(status, 200, "{body:?}");
}

/// Waits until no copy of the shard is out of sync.
fn wait_in_sync(cluster: &Cluster, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let p = placement(cluster);
        if p["out_of_sync"].as_array().is_some_and(Vec::is_empty)
            && p["replicas"].as_array().is_some_and(|r| r.len() == 2)
        {
            return p;
        }
        assert!(Instant::now() < deadline, "copies not in sync: {p:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Catch-ups every worker served, by kind, and their bytes.
fn catch_ups(cluster: &Cluster) -> (f64, f64, f64) {
    (0..cluster.workers.len())
        .filter(|w| cluster.workers[*w].alive())
        .map(|w| cluster.worker_metrics(w))
        .fold((0.0, 0.0, 0.0), |(d, r, b), page| {
            (
                d + metric(&page, "engram_catch_ups_total{kind=\"delta\"}"),
                r + metric(&page, "engram_catch_ups_total{kind=\"rows\"}"),
                b + metric(&page, "engram_catch_up_bytes_total{kind=\"delta\"}"),
            )
        })
}

#[test]
fn a_killed_replica_gets_only_what_it_missed_and_a_restarted_cluster_resends_nothing() {
    let mut cluster = Cluster::start();
    let (status, body) = cluster.post(
        "/v1/collections",
        &json!({"name": "c", "dim": DIM, "metric": "l2", "shards": 1, "replication": 3}),
    );
    assert_eq!(status, 201, "{body:?}");
    for batch in 0..10u64 {
        write(&cluster, batch * 10..batch * 10 + 10, "before");
    }
    let start = wait_in_sync(&cluster, Duration::from_secs(10));
    let primary = start["primary"].as_u64().unwrap();
    let lagging = start["replicas"][0].as_u64().unwrap();

    // The replica dies; 30 writes and a delete go on without it.
    cluster.workers[lagging as usize - 1].kill9();
    for id in 100..130u64 {
        write(&cluster, id..id + 1, "missed");
    }
    let deleted: Vec<u64> = vec![3, 17, 105, 120];
    delete(&cluster, &deleted);
    let p = placement(&cluster);
    assert!(
        p["out_of_sync"]
            .as_array()
            .unwrap()
            .contains(&json!(lagging)),
        "{p:?}"
    );
    let (delta_before, rows_before, bytes_before) = catch_ups(&cluster);

    cluster.workers[lagging as usize - 1].restart();
    wait_in_sync(&cluster, Duration::from_secs(30));
    let (delta, rows, bytes) = catch_ups(&cluster);
    assert_eq!(rows, rows_before, "no copy was rebuilt from rows");
    assert_eq!(delta, delta_before + 1.0, "one delta catch-up");
    // 31 writes: 30 single 8-d upserts and one delete of 4 ids. Their WAL
    // records (header 12, count 4, position 17, then per upsert tag, id,
    // weight, label, source flag, dimension and floats; 9 per delete):
    let upsert = 12 + 4 + 17 + (1 + 8 + 4 + (4 + "missed".len()) + 1 + 4 + 4 * DIM);
    let wal = (30 * upsert + (12 + 4 + 17 + 4 * 9)) as f64;
    let sent = bytes - bytes_before;
    eprintln!("delta catch-up of 31 writes: {sent} bytes sent, {wal} bytes of WAL records");
    assert!(sent <= 2.0 * wal, "{sent} bytes for {wal} bytes of WAL");

    // The caught-up copy alone serves every acknowledged write: the other
    // two die, it becomes primary.
    for worker in [primary, 6 - primary - lagging] {
        cluster.workers[worker as usize - 1].kill9();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while placement(&cluster)["primary"] != json!(lagging) {
        assert!(Instant::now() < deadline, "{:?}", placement(&cluster));
        std::thread::sleep(Duration::from_millis(100));
    }
    let until = Instant::now() + Duration::from_secs(20);
    for id in 0..130u64 {
        loop {
            let (status, body) = cluster.get(&format!("/v1/collections/c/items/{id}"));
            let expected = if deleted.contains(&id) { 404 } else { 200 };
            if status == expected {
                break;
            }
            // Reads wait for the promoted copy's lease and new placement.
            assert!(
                status == 503 && Instant::now() < until,
                "item {id}: {status} {body:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    // Everything killed and restarted on its files: each copy is at the
    // same position, so the first writes mark no replica out of sync.
    for worker in &mut cluster.workers {
        worker.kill9();
    }
    for worker in &mut cluster.workers {
        worker.restart();
    }
    cluster.wait_ready(3, Duration::from_secs(30));
    wait_in_sync(&cluster, Duration::from_secs(30));
    let epoch = placement(&cluster)["epoch"].as_u64().unwrap();
    for id in 200..205u64 {
        write(&cluster, id..id + 1, "after");
    }
    let after = placement(&cluster);
    assert!(
        after["out_of_sync"].as_array().unwrap().is_empty(),
        "{after:?}"
    );
    assert_eq!(
        after["epoch"].as_u64().unwrap(),
        epoch,
        "no replica was marked out of sync: {after:?}"
    );
    let (_, rows, _) = catch_ups(&cluster);
    assert_eq!(rows, 0.0, "no copy was rebuilt from rows");
}
