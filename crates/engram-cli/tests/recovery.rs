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
//! A copy that lost its disk is rebuilt by a full transfer while writes
//! go on: the primary ships its sealed segment files as they are (no graph
//! is rebuilt), or the copy downloads them from object storage where its
//! primary uploaded them, then the writes made meanwhile follow. Its
//! receiver and then its sender are killed mid-transfer: the next transfer
//! resumes the files already staged, and the copy still ends with every
//! acknowledged write.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::cluster::{Cluster, DIM, metric, vector, write_parquet};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The shard's placement (without the copies' segment lists).
fn placement(cluster: &Cluster) -> Value {
    let (_, status) = cluster.get("/v1/cluster");
    let mut shard = status["collections"][0]["shards"][0].clone();
    if let Some(fields) = shard.as_object_mut() {
        fields.remove("segments");
    }
    shard
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

fn create(cluster: &Cluster) {
    create_with(cluster, 3);
}

fn create_with(cluster: &Cluster, replication: usize) {
    let (status, body) = cluster.post(
        "/v1/collections",
        &json!({"name": "c", "dim": DIM, "metric": "l2", "shards": 1, "replication": replication}),
    );
    assert_eq!(status, 201, "{body:?}");
}

/// Kills the two copies other than `survivor`'s, waits until it leads,
/// and checks it alone answers every id of `live` and none of `deleted`.
fn check_alone(
    cluster: &mut Cluster,
    survivor: u64,
    live: &BTreeSet<u64>,
    deleted: &BTreeSet<u64>,
) {
    for worker in (1..=3u64).filter(|w| *w != survivor) {
        cluster.workers[worker as usize - 1].kill9();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while placement(cluster)["primary"] != json!(survivor) {
        assert!(Instant::now() < deadline, "{:?}", placement(cluster));
        std::thread::sleep(Duration::from_millis(100));
    }
    let until = Instant::now() + Duration::from_secs(20);
    for (id, expected) in live
        .iter()
        .map(|id| (*id, 200))
        .chain(deleted.iter().map(|id| (*id, 404)))
    {
        loop {
            let (status, body) = cluster.get(&format!("/v1/collections/c/items/{id}"));
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
}

/// Waits until no copy of the shard is out of sync (and it has its two
/// replicas).
fn wait_in_sync(cluster: &Cluster, within: Duration) -> Value {
    wait_for_replicas(cluster, within, 2)
}

/// Waits until no copy of the shard is out of sync and it has `replicas`.
fn wait_for_replicas(cluster: &Cluster, within: Duration, replicas: usize) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let p = placement(cluster);
        if p["out_of_sync"].as_array().is_some_and(Vec::is_empty)
            && p["replicas"]
                .as_array()
                .is_some_and(|r| r.len() == replicas)
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
    create(&cluster);
    for batch in 0..10u64 {
        write(&cluster, batch * 10..batch * 10 + 10, "before");
    }
    let start = wait_in_sync(&cluster, Duration::from_secs(10));
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
    let live: BTreeSet<u64> = (0..130u64).filter(|id| !deleted.contains(id)).collect();
    check_alone(
        &mut cluster,
        lagging,
        &live,
        &deleted.iter().copied().collect(),
    );

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

#[test]
fn a_worker_back_on_an_empty_disk_before_it_was_missed_serves_nothing_it_lacks() {
    // A worker is missed after 10 s of silence: time enough to be back.
    let mut cluster = Cluster::start_with_worker_timeout(10_000);
    create(&cluster);
    for batch in 0..5u64 {
        write(&cluster, batch * 20..batch * 20 + 20, "before");
    }
    let start = wait_in_sync(&cluster, Duration::from_secs(10));
    let wiped = start["replicas"][0].as_u64().unwrap();
    let total = |h: common::cluster::Heals| h.delta + h.segments + h.object_store + h.rows;
    let healed_before = total(cluster.heals());
    // Its disk replaced, the worker is back before anyone missed it and
    // with no write in between: the shard map still counts its copy.
    cluster.workers[wiped as usize - 1].kill9();
    std::fs::remove_dir_all(cluster.workers[wiped as usize - 1].data_dir()).unwrap();
    cluster.workers[wiped as usize - 1].restart();
    // It records the copy lost instead of serving it empty; its primary
    // then rebuilds it.
    let deadline = Instant::now() + Duration::from_secs(60);
    while cluster.workers[wiped as usize - 1].log_lines("lost with the old disk") == 0
        || total(cluster.heals()) == healed_before
    {
        assert!(
            Instant::now() < deadline,
            "the emptied copy was never recorded lost and rebuilt: {:?}",
            placement(&cluster)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_in_sync(&cluster, Duration::from_secs(30));
    let live: BTreeSet<u64> = (0..100).collect();
    check_alone(&mut cluster, wiped, &live, &BTreeSet::new());
}

#[test]
fn a_shipped_segment_transfer_survives_kill9_of_its_receiver_then_its_sender_while_writes_go_on() {
    // Copies receive the files from their primary: nothing is uploaded.
    let cluster = shipping_slowly();
    // Each end is killed once more than 3 more progress lines (256 KiB
    // each) of a streamed file arrived.
    let (cluster, heals, log) = rebuild_a_copy_under_kills(
        cluster,
        Rebuild::LostDisk,
        false,
        "segment file progress",
        3,
    );
    assert_eq!(heals.object_store, 0, "{heals:?}");
    shipped_and_resumed(&heals, &log);
    drop(cluster);
}

#[test]
fn a_copy_that_lost_its_disk_comes_back_from_object_storage_through_kill9_of_both_ends() {
    // Primaries upload their sealed segments (storage.segments_uri, a
    // directory here); the rebuilt copy downloads them before the rest of
    // its transfer. Each end is killed right after a plan (downloads done).
    let cluster = Cluster::start();
    let (cluster, heals, log) =
        rebuild_a_copy_under_kills(cluster, Rebuild::LostDisk, true, "shipping plan", 0);
    let downloaded = log_fields(&log, "shipping plan", "downloaded_bytes");
    eprintln!("heals {heals:?}; bytes downloaded by each shipping plan: {downloaded:?}");
    assert!(
        downloaded.iter().any(|b| *b > 0),
        "nothing came from object storage: {downloaded:?}"
    );
    assert!(heals.object_store + heals.segments >= 1, "{heals:?}");
    drop(cluster);
}

#[test]
fn a_move_of_a_sealed_shard_survives_kill9_of_its_receiver_then_its_sender_while_writes_go_on() {
    // A rebalancing move (POST /v1/cluster/moves) of a replica of a sealed
    // shard to the worker without a copy: its new copy receives the
    // segment files, is killed, comes back, and its sender is killed too.
    let cluster = shipping_slowly();
    let (cluster, heals, log) =
        rebuild_a_copy_under_kills(cluster, Rebuild::Move, false, "segment file progress", 3);
    shipped_and_resumed(&heals, &log);
    drop(cluster);
}

/// A cluster whose workers upload nothing (copies receive the files from
/// their primary) and stream each file at 2 MiB/s, so that a test's 4 MB
/// segment is still on its way when the kills land.
fn shipping_slowly() -> Cluster {
    Cluster::launch(common::cluster::Launch {
        storage_extra: "upload_sealed_segments = false",
        cluster_extra: "transfer_max_mib_per_s = 2",
        ..Default::default()
    })
}

/// A copy was healed by shipped segments, and the transfers after each
/// kill resumed the files already staged (from the receiver's `log`).
fn shipped_and_resumed(heals: &common::cluster::Heals, log: &str) {
    assert!(heals.segments >= 1, "{heals:?}");
    let resumed: Vec<u64> = log_fields(log, "shipping plan", "resumed_bytes");
    eprintln!("heals {heals:?}; bytes resumed by each shipping plan: {resumed:?}");
    assert!(
        resumed.iter().any(|b| *b > 0),
        "no transfer resumed: {resumed:?}"
    );
    // A kill cut a file's stream: the next one went on from its middle.
    let offsets: Vec<u64> = log_fields(log, "segment file stream", "offset");
    assert!(
        offsets.iter().any(|o| *o > 0),
        "no file stream resumed a staged prefix: {offsets:?}"
    );
}

/// The values of `field` on the lines of `log` that contain `message`.
fn log_fields(log: &str, message: &str, field: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains(message))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|f| f.strip_prefix(field)?.strip_prefix('='))
                .and_then(|v| v.parse().ok())
        })
        .collect()
}

/// How a copy comes to need the whole shard.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Rebuild {
    /// A replica of a shard on every worker loses its disk.
    LostDisk,
    /// A replica of a shard on two of the three workers moves to the third.
    Move,
}

/// Bulk-loads one sealed segment into a shard (and, when `uploads`, waits
/// until its primary has uploaded it); then a replica's disk is deleted
/// and it comes back, or a replica moves to the worker without a copy,
/// while writes and deletes go on. Kills the receiving copy once its log
/// shows `under_way` more than `margin` times, then the sender once more
/// than `margin` more. Checks the copy ends with every acknowledged write
/// and that no copy was rebuilt from rows; returns the cluster (every
/// process but the receiving copy's worker killed), the heals and the
/// receiving worker's log.
fn rebuild_a_copy_under_kills(
    mut cluster: Cluster,
    how: Rebuild,
    uploads: bool,
    under_way: &'static str,
    margin: usize,
) -> (Cluster, common::cluster::Heals, String) {
    create_with(&cluster, if how == Rebuild::Move { 2 } else { 3 });
    // 30,000 rows, bulk-loaded into one sealed segment (about 4 MB of
    // files).
    let file = cluster.exchange().join("part-0.parquet");
    write_parquet(&file, &(0..30_000u64).collect::<Vec<_>>(), "bulk");
    let (status, job) = cluster.post(
        "/v1/collections/c/jobs",
        &json!({"kind": "ingest", "uri": file.display().to_string(), "bulk": true}),
    );
    assert_eq!(status, 202, "{job}");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, job) = cluster.get(&format!("/v1/collections/c/jobs/{}", job["id"]));
        if job["state"] != "running" {
            assert_eq!(job["state"], "succeeded", "{job}");
            break;
        }
        assert!(Instant::now() < deadline, "bulk job did not end: {job}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let start = match how {
        Rebuild::LostDisk => wait_in_sync(&cluster, Duration::from_secs(30)),
        Rebuild::Move => wait_for_replicas(&cluster, Duration::from_secs(30), 1),
    };
    let primary = start["primary"].as_u64().unwrap();
    // LostDisk: `rebuilt` loses its disk and `other` leads once the
    // primary is killed. Move: `other` moves to `rebuilt` (the worker
    // without a copy), and leads once the primary is killed.
    let (rebuilt, other) = match how {
        Rebuild::LostDisk => (
            start["replicas"][0].as_u64().unwrap(),
            start["replicas"][1].as_u64().unwrap(),
        ),
        Rebuild::Move => {
            let other = start["replicas"][0].as_u64().unwrap();
            let free = (1..=3u64).find(|w| *w != primary && *w != other).unwrap();
            (free, other)
        }
    };

    if uploads {
        let deadline = Instant::now() + Duration::from_secs(60);
        while cluster.workers[primary as usize - 1].log_lines("uploaded a sealed segment") == 0 {
            assert!(Instant::now() < deadline, "the primary uploaded nothing");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    // LostDisk: its disk is lost; it comes back empty and needs every row.
    if how == Rebuild::LostDisk {
        cluster.workers[rebuilt as usize - 1].kill9();
        std::fs::remove_dir_all(cluster.workers[rebuilt as usize - 1].data_dir()).unwrap();
    }
    // Move: asked of a coordinator, which answers once the map has
    // flipped (a client that waits long enough for the kills below).
    let mover = (how == Rebuild::Move).then(|| {
        let http = common::cluster::client_with_key(&cluster.api_key, Duration::from_secs(600));
        let base = cluster.live_coordinators()[1].to_string();
        std::thread::spawn(move || {
            let answer = http
                .post(format!("{base}/v1/cluster/moves"))
                .json(&json!({"collection": "c", "shard": 0, "from": other, "to": rebuilt}))
                .send()
                .unwrap();
            let status = answer.status().as_u16();
            (status, answer.text().unwrap_or_default())
        })
    });

    // Writes and deletes go on throughout (ids from 100,000; every fifth
    // one deleted again), each remembered once acknowledged.
    let cluster = Arc::new(Mutex::new(cluster));
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<(BTreeSet<u64>, BTreeSet<u64>)>> = Arc::default();
    let writer = {
        let (cluster, stop, acked) = (cluster.clone(), stop.clone(), acked.clone());
        std::thread::spawn(move || {
            let http = cluster.lock().unwrap().http.clone();
            let bases: Vec<String> = cluster
                .lock()
                .unwrap()
                .live_coordinators()
                .iter()
                .map(|b| b.to_string())
                .collect();
            let mut id = 100_000u64;
            while !stop.load(Ordering::SeqCst) {
                let base = &bases[(id as usize) % bases.len()];
                let item = json!({"items": [{"id": id, "label": "during", "vector": vector(id)}]});
                let ok = http
                    .post(format!("{base}/v1/collections/c/items"))
                    .json(&item)
                    .send()
                    .is_ok_and(|r| r.status().is_success());
                if ok {
                    acked.lock().unwrap().0.insert(id);
                    if id.is_multiple_of(5) {
                        let gone = http
                            .post(format!("{base}/v1/collections/c/items/delete"))
                            .json(&json!({"ids": [id]}))
                            .send()
                            .is_ok_and(|r| r.status().is_success());
                        if gone {
                            let mut acked = acked.lock().unwrap();
                            acked.0.remove(&id);
                            acked.1.insert(id);
                        }
                    }
                }
                id += 1;
            }
        })
    };

    // The writer stops however this test ends (a panic included), so the
    // cluster is dropped and its processes killed.
    struct Stop(Arc<AtomicBool>);
    impl Drop for Stop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let stopper = Stop(stop.clone());

    // The copy starts empty; kill it once its transfer is under way.
    let chunks = |cluster: &Cluster| cluster.workers[rebuilt as usize - 1].log_lines(under_way);
    let wait_for_chunks = |more_than: usize| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let seen = chunks(&cluster.lock().unwrap());
            if seen > more_than {
                return seen;
            }
            assert!(Instant::now() < deadline, "no transfer reached the copy");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    if how == Rebuild::LostDisk {
        cluster.lock().unwrap().workers[rebuilt as usize - 1].restart();
    }
    let seen = wait_for_chunks(margin);
    cluster.lock().unwrap().workers[rebuilt as usize - 1].kill9();
    // Back again: a new transfer (its copy has no position); kill its
    // sender once it is under way. Another copy becomes primary and
    // the transfer starts over from it.
    cluster.lock().unwrap().workers[rebuilt as usize - 1].restart();
    wait_for_chunks(seen + margin);
    cluster.lock().unwrap().workers[primary as usize - 1].kill9();
    match mover {
        None => {
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let p = placement(&cluster.lock().unwrap());
                let replicas = p["replicas"].as_array().unwrap();
                if p["primary"] == json!(other) && replicas.contains(&json!(rebuilt)) {
                    break;
                }
                assert!(Instant::now() < deadline, "the copy was not rebuilt: {p:?}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Some(mover) => {
            // The move ends with the new copy leading (the copy it
            // replaced led once the primary was killed, and handed over).
            let (status, body) = mover.join().unwrap();
            assert_eq!(status, 200, "the move failed: {body}");
            let p = placement(&cluster.lock().unwrap());
            assert_eq!(p["primary"], json!(rebuilt), "{p:?}");
            let hosts = p.to_string();
            assert!(
                !p["replicas"].as_array().unwrap().contains(&json!(other)),
                "{hosts}"
            );
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    drop(stopper);
    writer.join().unwrap();
    let mut cluster = Arc::into_inner(cluster).unwrap().into_inner().unwrap();
    let heals = cluster.heals();
    assert_eq!(heals.rows, 0, "no copy was rebuilt from rows: {heals:?}");
    let log = std::fs::read_to_string(&cluster.workers[rebuilt as usize - 1].log).unwrap();
    let (during, deleted) = std::mem::take(&mut *acked.lock().unwrap());
    assert!(!during.is_empty(), "no write got through");
    // The rebuilt copy alone holds the bulk rows and every acknowledged
    // write, and none of the acknowledged deletes.
    let mut live: BTreeSet<u64> = (0..30_000u64).step_by(97).collect();
    live.extend(&during);
    check_alone(&mut cluster, rebuilt, &live, &deleted);
    (cluster, heals, log)
}
