//! Provable unlearning in a cluster (replication 2, sealed segments in a
//! real S3-compatible bucket): rows bulk-ingested and written through the
//! API, a snapshot taken before the deletes, a copy moved by rebalancing
//! after it and a corrupted copy quarantined. Deleting by id, by label and
//! by source gives receipts that list every place (each copy on its own
//! worker, the moved copy, the quarantined copy, uploaded segments, the
//! snapshot); by the erasure deadline every place
//! is gone, a byte scan of every data directory, the bucket and the
//! snapshot finds none of the deleted vectors, the receipts say `erased`,
//! and restoring the old snapshot brings no deleted id back.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::cluster::{Cluster, Launch, healed, vector, write_parquet};
use common::{BUCKET, S3, f32_bytes, files_under};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Seconds a receipt has to be erased in: the node starts the work once
/// the deadline is a minute away (`unlearning::deadline`), so places can be
/// seen for about 20 s first.
const ERASE_WITHIN_S: u64 = 80;

fn wait_healed(cluster: &Cluster, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let base = cluster.live_coordinators()[0].to_string();
        if let Some(status) = cluster.status(&base)
            && healed(&status)
        {
            return status;
        }
        assert!(Instant::now() < deadline, "not healed");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn shard_placement(status: &Value, shard: usize) -> (u64, u64) {
    let s = &status["collections"][0]["shards"][shard];
    (
        s["primary"].as_u64().unwrap(),
        s["replicas"][0].as_u64().unwrap(),
    )
}

/// Every object in the bucket, with its bytes.
fn bucket(s3: &S3) -> Vec<(String, Vec<u8>)> {
    s3.keys("")
        .into_iter()
        .map(|k| {
            let bytes = s3.get(&k).unwrap_or_default();
            (k, bytes)
        })
        .collect()
}

fn holds(bytes: &[u8], needle: &[u8]) -> bool {
    bytes.windows(needle.len()).any(|w| w == needle)
}

/// Starts a job on `u` and waits (up to 2 minutes) for it to succeed.
fn run_job(cluster: &Cluster, request: &Value) -> Value {
    let (status, job) = cluster.post("/v1/collections/u/jobs", request);
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_u64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, job) = cluster.get(&format!("/v1/collections/u/jobs/{id}"));
        if job["state"] != "running" {
            assert_eq!(job["state"], "succeeded", "{job}");
            return job;
        }
        assert!(
            Instant::now() < deadline,
            "job {request} did not end: {job}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Trains head `head` on `u` and waits for the job's end.
fn train_head(cluster: &Cluster) -> Value {
    run_job(cluster, &json!({"kind": "train_head", "reranker": "head"}))
}

/// One classification re-ranked by the head, asked of each coordinator.
fn classify_everywhere(cluster: &Cluster) -> Vec<Value> {
    (0..cluster.live_coordinators().len())
        .map(|i| {
            let (status, answer) = cluster.post_from(
                i,
                "/v1/collections/u/classify",
                &json!({"vector": vector(1205), "k": 5, "rerank": "head"}),
            );
            assert_eq!(status, 200, "{answer}");
            answer
        })
        .collect()
}

#[test]
fn every_place_of_a_deleted_row_is_listed_and_gone_by_the_deadline() {
    let s3 = S3::start();
    let segments = format!("s3://{BUCKET}/segments");
    let storage = format!(
        "s3 = {{ endpoint = {:?}, region = \"us-east-1\", access_key_id = \"test\", \
         secret_access_key = \"test\", allow_http = true }}",
        s3.endpoint
    );
    let mut cluster = Cluster::launch(Launch {
        storage_extra: &storage,
        segments_uri: Some(&segments),
        sections: "[curation]\nreceipt_check_s = 1\n\n[rerankers.head]\nkind = \"head\"\n[rerankers.head.training]\nepochs = 5\n",
        ..Launch::default()
    });
    let (status, body) = cluster.post(
        "/v1/collections",
        &json!({"name": "u", "dim": common::cluster::DIM, "metric": "l2", "shards": 2, "replication": 2}),
    );
    assert_eq!(status, 201, "{body}");

    // Bulk rows (sealed segments built by the job, uploaded to the bucket
    // by the job and by each shard's primary), then rows written through
    // the API (growing segments: in every copy's WAL).
    let file = cluster.exchange().join("part-0.parquet");
    write_parquet(&file, &(0..1200u64).collect::<Vec<_>>(), "bulk");
    run_job(
        &cluster,
        &json!({"kind": "ingest", "uri": file.display().to_string(), "bulk": true, "segment_rows": 1000}),
    );
    let api: Vec<Value> = (1200..1300u64)
        .map(|id| {
            let label = if id < 1210 { "rare" } else { "api" };
            json!({"id": id, "label": label, "vector": vector(id), "source": format!("src{}", id % 4)})
        })
        .collect();
    let (status, body) = cluster.post("/v1/collections/u/items", &json!({ "items": api }));
    assert_eq!(status, 200, "{body}");
    // The job deleted its uploaded segments once they were attached (the
    // codebook that encoded them stays).
    let job_objects = s3.keys("segments/u/");
    assert!(
        !job_objects.is_empty() && job_objects.iter().all(|k| k.contains("/codebooks/")),
        "{job_objects:?}"
    );
    let status = wait_healed(&cluster, Duration::from_secs(60));

    // A head re-ranker trained from the memory; its weights travel
    // through Raft, so every coordinator serves the same head.
    let head_job = train_head(&cluster);
    assert_eq!(head_job["report"]["classes"], 3, "{head_job}");
    let first_head = head_job["id"].clone();
    for answer in classify_everywhere(&cluster) {
        assert_eq!(answer["rerank"]["status"], "ok", "{answer}");
        assert_eq!(answer["rerank"]["head"]["job"], first_head, "{answer}");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while !s3
        .keys("segments/shards/u/")
        .iter()
        .any(|k| k.ends_with("manifest.json"))
    {
        assert!(Instant::now() < deadline, "no primary uploaded a segment");
        std::thread::sleep(Duration::from_millis(200));
    }

    // The snapshot, before anything is deleted.
    let snapshots = cluster.exchange().join("snapshots");
    let snapshot_uri = snapshots.display().to_string();
    let (code, snapshot) = cluster.post("/v1/snapshots", &json!({ "uri": snapshot_uri }));
    assert_eq!(code, 201, "{snapshot}");
    std::thread::sleep(Duration::from_millis(1_100));

    // A copy of shard 0 moved to the worker that has none.
    let (primary0, replica0) = shard_placement(&status, 0);
    let free = (1..=3u64)
        .find(|w| *w != primary0 && *w != replica0)
        .unwrap();
    let (code, moved) = cluster.post(
        "/v1/cluster/moves",
        &json!({"collection": "u", "shard": 0, "from": replica0, "to": free}),
    );
    assert_eq!(code, 200, "{moved}");
    let status = wait_healed(&cluster, Duration::from_secs(90));

    // Shard 1's replica finds its copy corrupted: set aside, rebuilt.
    let (_, replica1) = shard_placement(&status, 1);
    let w = replica1 as usize - 1;
    let data = cluster.workers[w].data_dir();
    let manifest = data.join("collections/u/shards/0001/shard.bin");
    cluster.workers[w].kill9();
    let mut bytes = std::fs::read(&manifest).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0xff;
    std::fs::write(&manifest, bytes).unwrap();
    cluster.workers[w].restart();
    let deadline = Instant::now() + Duration::from_secs(60);
    while cluster.workers[w].log_lines("corrupted shard copy refused") == 0 {
        assert!(
            Instant::now() < deadline,
            "the damaged copy was not refused"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_healed(&cluster, Duration::from_secs(90));
    assert!(data.join("quarantine").read_dir().unwrap().count() == 1);

    // Deletes by id (bulk rows and one written row), by label, by source.
    let requests = [
        json!({"ids": [5, 650, 1011, 1201], "erase_within_s": ERASE_WITHIN_S}),
        json!({"label": "rare", "erase_within_s": ERASE_WITHIN_S}),
        json!({"source": "src3", "erase_within_s": ERASE_WITHIN_S}),
    ];
    let mut receipts = Vec::new();
    for request in &requests {
        let (code, deleted) = cluster.post("/v1/collections/u/items/delete", request);
        assert_eq!(code, 200, "{deleted}");
        receipts.push(deleted["receipt"].as_u64().unwrap());
    }
    let mut doomed: BTreeSet<u64> = [5, 650, 1011, 1201].into();
    doomed.extend(1200..1210);
    doomed.extend((1200..1300).filter(|id| id % 4 == 3));

    // Each receipt names its places, every copy on its own.
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    let mut segment_workers: BTreeSet<u64> = BTreeSet::new();
    for receipt in &receipts {
        let (_, status) = cluster.get(&format!("/v1/collections/u/unlearning/{receipt}"));
        assert_eq!(status["status"], "deleted", "{status}");
        for place in status["places"].as_array().unwrap() {
            *kinds
                .entry(place["kind"].as_str().unwrap().to_string())
                .or_default() += 1;
            if place["kind"] == "segment" {
                segment_workers.insert(place["worker"].as_u64().unwrap());
            }
        }
    }
    eprintln!("places by kind: {kinds:?}");
    for kind in [
        "segment",
        "wal",
        "snapshot",
        "segment_object",
        "quarantined",
        "head",
    ] {
        assert!(
            kinds.contains_key(kind),
            "no {kind} place listed: {kinds:?}"
        );
    }
    assert!(
        segment_workers.contains(&free),
        "the moved copy is not listed: {segment_workers:?}"
    );
    assert!(segment_workers.len() >= 2, "{segment_workers:?}");
    for id in &doomed {
        let needle = f32_bytes(&vector(*id));
        let stored = files_under(cluster.dir.path())
            .iter()
            .any(|f| holds(&std::fs::read(f).unwrap_or_default(), &needle));
        assert!(
            stored,
            "row {id} is not stored anywhere before the deadline"
        );
    }
    // The operator's view of the same.
    let base = cluster.live_coordinators()[0].to_string();
    let (ok, listed) = cluster.engramctl(&base, &["unlearning", "--collection", "u"]);
    assert!(ok, "{listed}");
    for expected in [
        "RECEIPT",
        "ERASE BY",
        "deleted",
        "where deleted bytes still are",
        "snapshot",
        "quarantined",
    ] {
        assert!(
            listed.contains(expected),
            "engramctl unlearning lacks {expected}:\n{listed}"
        );
    }
    let needle = f32_bytes(&vector(5));
    assert!(
        bucket(&s3).iter().any(|(_, bytes)| holds(bytes, &needle)),
        "the bulk row is not in the bucket before the deadline"
    );

    // By the deadline, with no compaction asked: every place is gone.
    let deadline = Instant::now() + Duration::from_secs(ERASE_WITHIN_S + 30);
    for receipt in &receipts {
        let path = format!("/v1/collections/u/unlearning/{receipt}");
        loop {
            let (_, status) = cluster.get(&path);
            if status["status"] == "erased" {
                assert_eq!(status["overdue"], false, "{status}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "not erased by the deadline: {status}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    let objects = bucket(&s3);
    // Every node's data directory and the snapshot; not the Parquet file
    // the rows were ingested from (the user's own input).
    let local: Vec<_> = files_under(cluster.dir.path())
        .into_iter()
        .filter(|f| *f != file)
        .collect();
    for id in &doomed {
        let needle = f32_bytes(&vector(*id));
        for file in &local {
            assert!(
                !holds(&std::fs::read(file).unwrap_or_default(), &needle),
                "row {id} still in {}",
                file.display()
            );
        }
        for (key, bytes) in &objects {
            assert!(
                !holds(bytes, &needle),
                "row {id} still in s3://{BUCKET}/{key}"
            );
        }
    }
    let kept = f32_bytes(&vector(6));
    assert!(
        local
            .iter()
            .any(|f| holds(&std::fs::read(f).unwrap_or_default(), &kept)),
        "a row nobody deleted is gone"
    );
    let (_, info) = cluster.get("/v1/collections/u");
    assert_eq!(info["items"], 1300 - doomed.len(), "{info}");
    // Erased includes the head: the node retrained it without the rows
    // (a train_head job of its own), and every coordinator serves that
    // one, which knows no "rare" any more.
    let (_, jobs) = cluster.get("/v1/collections/u/jobs");
    let heads: Vec<&Value> = jobs["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["kind"] == "train_head" && j["state"] == "succeeded")
        .collect();
    assert!(heads.len() >= 2, "the head was not retrained: {jobs}");
    for answer in classify_everywhere(&cluster) {
        assert_eq!(answer["rerank"]["status"], "ok", "{answer}");
        assert_ne!(answer["rerank"]["head"]["job"], first_head, "{answer}");
        assert!(answer["rerank"]["scores"].get("rare").is_none(), "{answer}");
    }
    let (_, overdue) = cluster.get("/v1/collections/u/unlearning?overdue=true");
    assert_eq!(overdue["receipts"], json!([]), "{overdue}");
    let (ok, listed) = cluster.engramctl(&base, &["unlearning", "--json"]);
    assert!(ok, "{listed}");
    let listed: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 3, "{listed}");
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["status"] == "erased"),
        "{listed}"
    );

    // Restoring the old snapshot brings none of them back.
    let (code, _) = cluster.delete("/v1/collections/u");
    assert_eq!(code, 204);
    // A dropped collection's uploads go with it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !s3.keys("segments/shards/u/").is_empty() {
        assert!(
            Instant::now() < deadline,
            "uploads left after the drop: {:?}",
            s3.keys("segments/")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (code, restored) = cluster.post(
        "/v1/snapshots/restore",
        &json!({"uri": snapshot_uri, "id": snapshot["id"]}),
    );
    assert_eq!(code, 200, "{restored}");
    let (_, info) = cluster.get("/v1/collections/u");
    assert_eq!(info["items"], 1300 - doomed.len(), "{info}");
    for id in &doomed {
        let (code, body) = cluster.get(&format!("/v1/collections/u/items/{id}"));
        assert_eq!(code, 404, "{id} came back: {body}");
    }
}
