//! Jobs that outlive their coordinator (issue: recovery at billion scale,
//! job takeover), with real processes on loopback: three coordinators
//! (Raft over real sockets) and three workers.
//!
//! An ingest job's owner is killed with kill -9 mid-job and never comes
//! back in time: the Raft leader takes the job over once the owner has
//! been silent for `cluster.job_takeover_s` and runs it on from the
//! checkpoint the owner published. The first owner then restarts and must
//! not run the job again (its claim is refused); the second owner is
//! killed mid-job too, and a third coordinator finishes it. Every row ends
//! up written exactly once, and the job's status names its owners.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::cluster::{Cluster, DIM, Launch, vector, write_parquet_of};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const FILES: u64 = 60;
const ROWS_PER_FILE: u64 = 1_000;

/// Job `id` as coordinator `from` (1-based) answers it: a coordinator that
/// does not run the job shows what its owner published through Raft.
fn job_status(cluster: &Cluster, from: u64, id: u64) -> Value {
    let base = cluster.coordinators[from as usize - 1]
        .base
        .as_deref()
        .unwrap();
    // The job's Raft entry is committed before its submitter answers, but
    // a follower applies it a moment later: until then it answers 404.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let response = cluster
            .http
            .get(format!("{base}/v1/collections/c/jobs/{id}"))
            .send()
            .unwrap();
        if response.status() == 404 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        assert_eq!(response.status(), 200);
        return response.json().unwrap();
    }
}

/// A live coordinator other than `owners`.
fn observer(cluster: &Cluster, owners: &[u64]) -> u64 {
    (1..=cluster.coordinators.len() as u64)
        .find(|c| !owners.contains(c) && cluster.coordinators[*c as usize - 1].alive())
        .unwrap()
}

/// Waits until job `id`, as coordinator `watcher` shows it, has read more
/// rows than `after` under an owner other than those in `not`, and returns
/// that owner.
fn wait_for_progress(
    cluster: &Cluster,
    watcher: u64,
    id: u64,
    after: u64,
    not: &[u64],
) -> (u64, Value) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let job = job_status(cluster, watcher, id);
        assert_eq!(job["state"], "running", "the job ended too soon: {job}");
        let owner = job["owner"].as_u64().unwrap();
        let read = job["counts"]["rows_read"].as_u64().unwrap_or(0);
        if !not.contains(&owner) && read > after {
            return (owner, job);
        }
        assert!(Instant::now() < deadline, "no progress past {after}: {job}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Creates the collection `c` (2 shards, replication 2) and writes `files`
/// Parquet files of [`ROWS_PER_FILE`] rows each (label `label`,
/// `vector_of(id)`) under the exchange's `input/`; returns that directory.
fn load_input(
    cluster: &Cluster,
    files: u64,
    label: &str,
    vector_of: impl Fn(u64) -> Vec<f32> + Copy,
) -> std::path::PathBuf {
    let (status, body) = cluster.post(
        "/v1/collections",
        &json!({"name": "c", "dim": DIM, "metric": "l2", "shards": 2, "replication": 2}),
    );
    assert_eq!(status, 201, "{body}");
    let input = cluster.exchange().join("input");
    std::fs::create_dir_all(&input).unwrap();
    for f in 0..files {
        let ids: Vec<u64> = (f * ROWS_PER_FILE..(f + 1) * ROWS_PER_FILE).collect();
        write_parquet_of(
            &input.join(format!("part-{f:03}.parquet")),
            &ids,
            label,
            vector_of,
        );
    }
    input
}

/// Starts an ingest job of `input` (with `options`) on coordinator 1,
/// which owns it; returns its id.
fn submit(cluster: &Cluster, input: &std::path::Path, options: Value) -> u64 {
    let mut body = json!({"kind": "ingest", "uri": input.display().to_string()});
    body.as_object_mut()
        .unwrap()
        .extend(options.as_object().unwrap().clone());
    let (status, job) = cluster.post("/v1/collections/c/jobs", &body);
    assert_eq!(status, 202, "{job}");
    assert_eq!(job["owner"], 1, "{job}");
    job["id"].as_u64().unwrap()
}

/// Waits until job `id`, as coordinator `watcher` shows it, has ended.
fn wait_for_end(cluster: &Cluster, watcher: u64, id: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let job = job_status(cluster, watcher, id);
        if job["state"] != "running" {
            return job;
        }
        assert!(Instant::now() < deadline, "the job did not end: {job}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn an_ingest_job_runs_on_when_its_coordinators_are_killed_mid_job() {
    let mut cluster = Cluster::start_with_cluster("job_takeover_s = 4");
    // A few rows of some files are bad (a NaN in the vector): rejected by
    // whichever coordinator reads them, and all in the job's rejects file
    // at the end.
    let bad = |id: u64| id % ROWS_PER_FILE == 7 && (id / ROWS_PER_FILE).is_multiple_of(3);
    let input = load_input(&cluster, FILES, "ingested", |id| {
        let mut v = vector(id);
        if bad(id) {
            v[0] = f32::NAN;
        }
        v
    });
    let total = FILES * ROWS_PER_FILE;
    let rejected = (0..total).filter(|id| bad(*id)).count() as u64;
    let id = submit(&cluster, &input, json!({"batch_rows": 250}));

    // The first owner is killed once the job is under way (published
    // progress past the first files).
    let (first, job) = wait_for_progress(&cluster, 3, id, 3 * ROWS_PER_FILE, &[]);
    eprintln!("killing the job's first owner, coordinator {first}: {job}");
    cluster.coordinators[first as usize - 1].kill9();
    let (second, job) = wait_for_progress(&cluster, 3, id, 0, &[first]);
    eprintln!("coordinator {second} took the job over: {job}");
    assert_eq!(job["previous_owners"], json!([first]), "{job}");

    // The first owner comes back: its own checkpoint says `running`, but
    // the job is no longer its to run.
    cluster.coordinators[first as usize - 1].restart();
    cluster.wait_ready(3, Duration::from_secs(60));
    let deadline = Instant::now() + Duration::from_secs(60);
    while cluster.coordinators[first as usize - 1]
        .log_lines("not resuming the ingest job: another coordinator holds it")
        == 0
    {
        assert!(
            Instant::now() < deadline,
            "the restarted first owner did not give the job up"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // The second owner is killed mid-job as well.
    let read_now = job_status(&cluster, observer(&cluster, &[second]), id)["counts"]["rows_read"]
        .as_u64()
        .unwrap();
    let watcher = observer(&cluster, &[second]);
    let (_, job) = wait_for_progress(&cluster, watcher, id, read_now + ROWS_PER_FILE, &[first]);
    assert!(
        job["counts"]["rows_read"].as_u64().unwrap() < total,
        "the job was nearly done before the second kill: {job}"
    );
    eprintln!("killing the job's second owner, coordinator {second}: {job}");
    cluster.coordinators[second as usize - 1].kill9();

    let job = wait_for_end(&cluster, observer(&cluster, &[second]), id);
    assert_eq!(job["state"], "succeeded", "{job}");
    let third = job["owner"].as_u64().unwrap();
    assert_ne!(third, second, "{job}");
    assert_eq!(job["previous_owners"], json!([first, second]), "{job}");
    assert_eq!(job["report"]["rows_read"], total, "{job}");
    assert_eq!(job["report"]["items_written"], total - rejected, "{job}");
    assert_eq!(job["report"]["rejected"], rejected, "{job}");
    // Every rejected row is in the rejects file, though three coordinators
    // read them: the parts written before each takeover came from object
    // storage.
    assert_eq!(job["report"]["rejects_elsewhere"], json!([]), "{job}");
    let rejects = std::path::PathBuf::from(job["report"]["rejects_file"].as_str().unwrap());
    let mut rows: Vec<u64> = engram_ingest::items::read_rejects(&rejects)
        .unwrap()
        .iter()
        .map(|r| r.id.unwrap())
        .collect();
    rows.sort_unstable();
    rows.dedup();
    let expected: Vec<u64> = (0..total).filter(|id| bad(*id)).collect();
    assert_eq!(rows, expected);
    // It ran on from a published checkpoint, not from the start.
    assert!(
        job["report"]["resumed_at_row"].as_u64().unwrap() > 0,
        "{job}"
    );

    // Every row exactly once: the item count, and each file's first and
    // last row found by id.
    let (_, info) = cluster.get("/v1/collections/c");
    assert_eq!(info["items"], total - rejected, "{info}");
    assert_eq!(info["labels"]["ingested"], total - rejected, "{info}");
    for f in 0..FILES {
        for row in [
            f * ROWS_PER_FILE,
            (f + 1) * ROWS_PER_FILE - 1,
            f * ROWS_PER_FILE + 7,
        ] {
            let (status, item) = cluster.get(&format!("/v1/collections/c/items/{row}"));
            let expected = if bad(row) { 404 } else { 200 };
            assert_eq!(status, expected, "row {row}: {item}");
        }
    }
    // The coordinators that took the job over count it.
    let taken: f64 = cluster
        .live_coordinators()
        .iter()
        .map(|base| {
            let page = cluster.coordinator_metrics(base);
            common::cluster::metric(&page, "engram_jobs_taken_over_total")
        })
        .sum();
    assert!(taken >= 1.0, "no takeover counted");
}

/// The bulk path: the owner builds sealed segments from the rows and
/// attaches them; killed once some are attached, the job is run on by
/// another coordinator from the last attached generation (its rows read
/// again and attached again, superseding by id: nothing twice).
#[test]
fn a_bulk_ingest_job_runs_on_when_its_coordinator_is_killed_mid_job() {
    const BULK_FILES: u64 = 60;
    let mut cluster = Cluster::start_with_cluster("job_takeover_s = 4");
    let input = load_input(&cluster, BULK_FILES, "bulk", vector);
    let total = BULK_FILES * ROWS_PER_FILE;
    let id = submit(
        &cluster,
        &input,
        json!({"bulk": true, "segment_rows": 1000}),
    );
    // Killed once segments are attached and their checkpoint published.
    let deadline = Instant::now() + Duration::from_secs(120);
    let job = loop {
        let job = job_status(&cluster, 3, id);
        assert_eq!(job["state"], "running", "the job ended too soon: {job}");
        if job["counts"]["segments"].as_u64().unwrap_or(0) >= 2 {
            break job;
        }
        assert!(Instant::now() < deadline, "no segments attached: {job}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        job["counts"]["items_written"].as_u64().unwrap() < total,
        "the job was nearly done before the kill: {job}"
    );
    eprintln!("killing the bulk job's owner: {job}");
    cluster.coordinators[0].kill9();
    let job = wait_for_end(&cluster, 3, id);
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["previous_owners"], json!([1]), "{job}");
    assert_eq!(job["report"]["rows_read"], total, "{job}");
    assert!(
        job["report"]["resumed_at_row"].as_u64().unwrap() > 0,
        "{job}"
    );
    let (_, info) = cluster.get("/v1/collections/c");
    assert_eq!(info["items"], total, "{info}");
    assert_eq!(info["labels"]["bulk"], total, "{info}");
    for row in [0, 2_500, total / 2, total - 1] {
        let (status, answer) = cluster.post(
            "/v1/collections/c/search",
            &json!({"vector": vector(row), "k": 1, "require_complete": true}),
        );
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["neighbors"][0]["id"], row, "{answer}");
    }
}

/// The first line of `log` that contains `needle`, and its timestamp
/// (the RFC 3339 time each log line starts with, compared as text).
fn first_line_at(log: &std::path::Path, needle: &str) -> Option<String> {
    std::fs::read_to_string(log)
        .ok()?
        .lines()
        .find(|l| l.contains(needle))
        .map(|l| l.split_whitespace().next().unwrap_or_default().to_string())
}

/// The owner of an ingest job is cut off from the other coordinators by a
/// network partition (it still reaches the workers, so it could go on
/// writing): it stops the job itself once its lease lapses, before the
/// leader on the majority side takes the job over, and the job ends there.
#[test]
fn a_partitioned_owner_stops_its_job_before_another_takes_it_over() {
    let cluster = Cluster::launch(Launch {
        cluster_extra: "job_takeover_s = 4",
        net_faults: true,
        ..Launch::default()
    });
    let input = load_input(&cluster, FILES, "ingested", vector);
    let total = FILES * ROWS_PER_FILE;
    let id = submit(&cluster, &input, json!({"batch_rows": 250}));
    let (_, job) = wait_for_progress(&cluster, 3, id, 3 * ROWS_PER_FILE, &[]);
    eprintln!("cutting coordinator 1 off from the other coordinators: {job}");
    let net = cluster.net.clone().unwrap();
    for other in ["coordinator-2", "coordinator-3"] {
        net.block("coordinator-1", other);
        net.block(other, "coordinator-1");
    }
    let job = wait_for_end(&cluster, 3, id);
    net.heal();
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["previous_owners"], json!([1]), "{job}");
    assert_eq!(job["report"]["items_written"], total, "{job}");
    let stopped = first_line_at(
        &cluster.coordinators[0].log,
        "no Raft majority took the job's status",
    )
    .expect("the cut-off owner never stopped the job");
    let taken = cluster.coordinators[1..]
        .iter()
        .filter_map(|c| first_line_at(&c.log, "this coordinator takes the job over"))
        .min()
        .expect("nobody took the job over");
    assert!(
        stopped < taken,
        "the owner stopped at {stopped}, after the takeover at {taken}"
    );
    let (_, info) = cluster.get("/v1/collections/c");
    assert_eq!(info["items"], total, "{info}");
}
