//! The corruption campaign (issue 9): in a loopback cluster (3
//! coordinators, 3 workers, replication 2) a worker is stopped, one byte
//! of one kind of file in one of its shard copies is flipped, and the
//! worker restarted. Each time the worker must refuse the copy with an
//! error naming the file, set it aside (never serve it), and the cluster
//! must heal it from the other copy: every acknowledged item present,
//! every deleted one absent, every copy in sync, answers complete.
//!
//! A coordinator's Raft log is corrupted too: the coordinator refuses to
//! start and names the file; the operator's procedure (move its data
//! directory aside, start it again) brings it back from its peers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::cluster::{Cluster, DIM, SHARDS, vector};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const ITEMS: u64 = 4_000;

fn deleted(id: u64) -> bool {
    id % 10 == 3
}

/// Flips every bit of the byte at `at` (a fraction of the file's length).
fn flip(file: &Path, at: f64) {
    let mut bytes = std::fs::read(file).unwrap();
    assert!(!bytes.is_empty(), "{} is empty", file.display());
    let i = ((bytes.len() as f64 * at) as usize).min(bytes.len() - 1);
    bytes[i] ^= 0xff;
    std::fs::write(file, bytes).unwrap();
}

/// Flips a payload byte of a Raft journal frame about a third into the
/// file (frames: length u32 LE, crc32 u32 LE, payload), one with frames
/// after it: corruption, not the torn tail of an unacknowledged append.
fn flip_journal_payload(journal: &Path) {
    let bytes = std::fs::read(journal).unwrap();
    let mut at = 0usize;
    loop {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let next = at + 8 + len;
        assert!(
            next < bytes.len(),
            "no frame with frames after it in {}",
            journal.display()
        );
        if at >= bytes.len() / 3 && len > 0 {
            let mut corrupted = bytes.clone();
            corrupted[at + 8 + len / 2] ^= 0xff;
            std::fs::write(journal, corrupted).unwrap();
            return;
        }
        at = next;
    }
}

/// Shard copies (`.../collections/c/shards/<nnnn>`) on a worker.
fn shard_dirs(data: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(data.join("collections/c/shards"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir() && p.extension().is_none())
        .collect();
    dirs.sort();
    dirs
}

/// The file of `kind` in one of the shard copies in `dirs`, skipping the
/// first `skip` copies that have one.
fn file_of_kind(dirs: &[PathBuf], kind: &str, skip: usize) -> PathBuf {
    let mut found = Vec::new();
    for dir in dirs {
        let segments: Vec<PathBuf> = std::fs::read_dir(dir.join("segments"))
            .map(|r| r.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default();
        let candidate = match kind {
            "shard.bin" => Some(dir.join("shard.bin")),
            "wal" => std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .find(|p| {
                    p.to_string_lossy().ends_with(".log") && p.metadata().unwrap().len() > 4_096
                }),
            segment_file => segments.first().map(|s| s.join(segment_file)),
        };
        if let Some(file) = candidate.filter(|f| f.exists()) {
            found.push(file);
        }
    }
    assert!(found.len() > skip, "no {kind} file in {dirs:?}");
    found.swap_remove(skip)
}

fn wait_healed(cluster: &Cluster, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let base = cluster.live_coordinators()[0].to_string();
        if let Some(status) = cluster.status(&base) {
            if common::cluster::healed(&status) {
                return;
            }
            assert!(Instant::now() < deadline, "not healed: {status}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every item is as acknowledged: present with its label, or deleted.
fn check_items(cluster: &Cluster) {
    for id in (0..ITEMS).step_by(3) {
        let (status, body) = cluster.get(&format!("/v1/collections/c/items/{id}"));
        if deleted(id) {
            assert_eq!(status, 404, "deleted item {id} is back: {body}");
        } else {
            assert_eq!(status, 200, "item {id} lost: {body}");
            assert_eq!(body["label"], json!(format!("l{}", id % 5)));
        }
    }
    let queries: Vec<_> = (0..ITEMS)
        .step_by(97)
        .filter(|id| !deleted(*id))
        .map(|id| json!({ "vector": vector(id) }))
        .collect();
    let (status, answer) = cluster.post(
        "/v1/collections/c/classify/batch",
        &json!({ "queries": queries, "k": 3, "require_complete": true }),
    );
    assert_eq!(status, 200, "{answer}");
    for (result, id) in answer["results"]
        .as_array()
        .unwrap()
        .iter()
        .zip((0..ITEMS).step_by(97).filter(|id| !deleted(*id)))
    {
        assert_eq!(result["neighbors"][0]["id"], json!(id), "{result}");
    }
}

#[test]
fn corrupted_files_are_refused_by_name_and_healed_from_the_other_copy() {
    let mut cluster = Cluster::start();
    let (status, body) = cluster.post(
        "/v1/collections",
        &json!({"name": "c", "dim": DIM, "metric": "l2", "shards": SHARDS, "replication": 2}),
    );
    assert_eq!(status, 201, "{body}");
    // Small batches: many WAL records, so a flipped byte a quarter into a
    // WAL is in a record with more after it (corruption, not a torn tail).
    for first in (0..ITEMS).step_by(25) {
        let items: Vec<_> = (first..first + 25)
            .map(|id| json!({"id": id, "label": format!("l{}", id % 5), "vector": vector(id)}))
            .collect();
        let (status, body) = cluster.post("/v1/collections/c/items", &json!({ "items": items }));
        assert_eq!(status, 200, "{body}");
    }
    let doomed: Vec<u64> = (0..ITEMS).filter(|id| deleted(*id)).collect();
    let (status, body) = cluster.post("/v1/collections/c/items/delete", &json!({ "ids": doomed }));
    assert_eq!(status, 200, "{body}");
    wait_healed(&cluster, Duration::from_secs(60));
    check_items(&cluster);

    // Each kind of file a shard copy keeps, on the workers in turn.
    let kinds = [
        ("index_disk.index", 0.5),
        ("ids.bin", 0.5),
        ("index_pq_compressed.bin", 0.5),
        ("index_pq_pivots.bin", 0.9),
        ("items.bin", 0.5),
        ("deleted.bin", 0.1),
        ("manifest.json", 0.3),
        ("shard.bin", 0.5),
        ("wal", 0.25),
    ];
    for (round, (kind, at)) in kinds.iter().enumerate() {
        let w = round % 3;
        let data = cluster.dir.path().join(format!("worker-{}", w + 1));
        let file = file_of_kind(&shard_dirs(&data), kind, round / 3);
        let name = file.strip_prefix(&data).unwrap().display().to_string();
        eprintln!("corruption: flipping a byte of {name} on worker {}", w + 1);
        cluster.workers[w].kill9();
        flip(&file, *at);
        let log_before = std::fs::read_to_string(&cluster.workers[w].log)
            .unwrap()
            .len();
        cluster.workers[w].restart();
        let deadline = Instant::now() + Duration::from_secs(60);
        let refusal = loop {
            let log = std::fs::read_to_string(&cluster.workers[w].log).unwrap();
            if let Some(line) = log[log_before..]
                .lines()
                .find(|l| l.contains("corrupted shard copy refused"))
            {
                break line.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "worker {} did not refuse {name}:\n{}",
                w + 1,
                &log[log_before..]
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        wait_healed(&cluster, Duration::from_secs(90));
        let file_name = file.file_name().unwrap().to_string_lossy();
        assert!(
            refusal.contains(&*file_name),
            "the refusal does not name {file_name}: {refusal}"
        );
        // The refused copy is kept for inspection, with the damaged file.
        let shard = file
            .strip_prefix(data.join("collections/c/shards"))
            .unwrap()
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .to_string();
        let inner = file
            .strip_prefix(data.join("collections/c/shards").join(&shard))
            .unwrap();
        let set_aside = std::fs::read_dir(data.join("quarantine"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(&format!("c-{shard}-"))
            })
            .any(|p| p.join(inner).exists());
        assert!(set_aside, "{name} was not set aside under quarantine/");
        check_items(&cluster);
    }
    let quarantined = std::fs::read_dir(cluster.dir.path().join("worker-1/quarantine"))
        .unwrap()
        .count();
    assert!(
        quarantined >= 3,
        "{quarantined} copies set aside on worker 1"
    );

    // A coordinator's Raft log: refused at start, naming the file; back
    // after its data directory is moved aside.
    cluster.coordinators[2].kill9();
    let raft_dir = cluster.dir.path().join("coordinator-3");
    let journal = raft_dir.join("raft/log/raft-log.journal");
    flip_journal_payload(&journal);
    let started = std::process::Command::new(env!("CARGO_BIN_EXE_engram"))
        .args(["serve", "--role", "coordinator", "--config"])
        .arg(&cluster.coordinators[2].config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&started.stderr);
    assert!(
        !started.status.success(),
        "a coordinator started on a corrupted Raft log"
    );
    let journal_name = journal.file_name().unwrap().to_string_lossy();
    assert!(
        stderr.contains(&*journal_name) && stderr.contains("corrupt"),
        "the refusal does not name {journal_name}: {stderr}"
    );
    std::fs::rename(&raft_dir, raft_dir.with_extension("corrupted")).unwrap();
    cluster.coordinators[2].restart();
    let deadline = Instant::now() + Duration::from_secs(60);
    let base = cluster.coordinators[2].base.clone().unwrap();
    loop {
        let status = cluster.status(&base);
        if status.as_ref().is_some_and(|s| {
            s["collections"].as_array().is_some_and(|c| c.len() == 1) && s["leader"].is_u64()
        }) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "coordinator 3 did not rejoin: {status:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_healed(&cluster, Duration::from_secs(60));
    check_items(&cluster);
}
