//! Confined storage on a real server: an ingest job or a snapshot that
//! names a local path outside `[storage] local_roots` (`/`, `/etc`, `..`,
//! a symlink out of a root, percent-encoded dots) gets 403 naming the
//! roots, and nothing is read or written; the same file under a root is
//! ingested (so the refusals are the roots', not a broken path);
//! `engram ingest` with a relative path outside says what to do next. On a
//! real cluster, an ATTACH whose file names hold `/` or `..` writes
//! nothing anywhere.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::cluster::{Cluster, DIM, healed, write_parquet};
use common::*;
use engram_store::CheckedFile;
use engram_worker::wire::{AttachRequest, RpcError, RpcResult, SegmentObject, path};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;

fn ingest_cli(base: &str, uri: &str, cwd: &Path) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_engram"))
        .args([
            "ingest",
            uri,
            "--collection",
            "c",
            "--server",
            base,
            "--json",
        ])
        .current_dir(cwd)
        .env("ENGRAM_LOG", "warn")
        .output()
        .unwrap();
    (output.status.success(), output_text(&output))
}

/// Every path below `dir`, directories included, sorted.
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut all = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() && !path.is_symlink() {
                stack.push(path.clone());
            }
            all.push(path);
        }
    }
    all.sort();
    all
}

#[test]
fn request_paths_outside_the_roots_are_refused_and_nothing_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    write_parquet(
        &outside.join("secret.parquet"),
        &(0..50).collect::<Vec<_>>(),
        "secret",
    );
    let server = Server::start(&write_config(dir.path(), ""), &data);
    let (status, body) = server.post(
        "/v1/collections",
        &json!({ "name": "c", "dim": DIM, "metric": "l2", "shards": 1 }),
    );
    assert_eq!(status, 201, "{body}");
    // The default roots exist once the server runs; links out of one.
    let import = data.join("import");
    let root = std::fs::canonicalize(&import).unwrap();
    assert!(data.join("snapshots").is_dir());
    std::os::unix::fs::symlink(&outside, import.join("escape")).unwrap();
    std::os::unix::fs::symlink(outside.join("secret.parquet"), import.join("link.parquet"))
        .unwrap();
    let import_text = import.display().to_string();
    let uris = [
        "/".to_string(),
        "/etc".into(),
        "file:///etc".into(),
        outside.display().to_string(),
        outside.join("secret.parquet").display().to_string(),
        format!("{import_text}/../../outside"),
        format!("{import_text}/%2e%2e/%2e%2e/outside"),
        format!("{import_text}/escape"),
        format!("{import_text}/escape/secret.parquet"),
        format!("{import_text}/link.parquet"),
    ];
    // What a refused snapshot could have written to: the directories the
    // URIs name (listed, not walked: `/` is shared with everything else on
    // the machine) and this test's own tree, but for the server's state.
    let watched = || {
        let listed = |dir: &str| -> Vec<PathBuf> {
            let mut all: Vec<PathBuf> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            all.sort();
            all
        };
        let ours: Vec<PathBuf> = tree(dir.path())
            .into_iter()
            .filter(|p| {
                !p.starts_with(&data)
                    || p.starts_with(data.join("import"))
                    || p.starts_with(data.join("snapshots"))
            })
            .collect();
        (listed("/"), listed("/etc"), ours)
    };
    let before = watched();
    for uri in &uris {
        let answers = [
            server.post(
                "/v1/collections/c/jobs",
                &json!({ "kind": "ingest", "uri": uri }),
            ),
            server.post(
                "/v1/collections/c/jobs",
                &json!({ "kind": "ingest", "uri": uri, "bulk": true }),
            ),
            server.post("/v1/snapshots", &json!({ "uri": uri })),
            server.post("/v1/snapshots/restore", &json!({ "uri": uri, "id": "s1" })),
        ];
        for (status, body) in answers {
            assert_eq!(status, 403, "{uri}: {body}");
            assert_eq!(body["error"]["code"], "permission_denied", "{uri}: {body}");
        }
        let listed = server
            .http
            .get(server.url("/v1/snapshots"))
            .query(&[("uri", uri)])
            .send()
            .unwrap();
        assert_eq!(listed.status().as_u16(), 403, "{uri}");
    }
    // The message names the roots and what to do.
    let (_, body) = server.post("/v1/snapshots", &json!({ "uri": "/etc" }));
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&root.display().to_string())
            && message.contains("ENGRAM_STORAGE__LOCAL_ROOTS"),
        "{message}"
    );
    // Nothing was read into the collection, no job was started, nothing
    // was written.
    let (_, info) = server.get("/v1/collections/c");
    assert_eq!(info["items"], 0, "{info}");
    let (_, jobs) = server.get("/v1/collections/c/jobs");
    assert_eq!(jobs["jobs"], json!([]), "{jobs}");
    assert_eq!(watched(), before);
    // A glob inside the root is admitted, but the link it matches is
    // refused where it is reached: the job fails and reads nothing.
    let (status, job) = server.post(
        "/v1/collections/c/jobs",
        &json!({ "kind": "ingest", "uri": format!("{import_text}/*.parquet") }),
    );
    assert_eq!(status, 202, "{job}");
    let path = format!("/v1/collections/c/jobs/{}", job["id"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let job = loop {
        let (_, job) = server.get(&path);
        if job["state"] != "running" && job["state"] != "queued" {
            break job;
        }
        assert!(std::time::Instant::now() < deadline, "{job}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(job["state"], "failed", "{job}");
    assert!(
        job["error"]
            .as_str()
            .unwrap()
            .contains("outside the local root"),
        "{job}"
    );
    let (_, info) = server.get("/v1/collections/c");
    assert_eq!(info["items"], 0, "{info}");

    // A snapshot id is one plain name, even under a root.
    let snapshots = data.join("snapshots").display().to_string();
    let (status, body) = server.post(
        "/v1/snapshots/restore",
        &json!({ "uri": snapshots, "id": "../outside" }),
    );
    assert_eq!(status, 400, "{body}");

    // From the command line: a relative path outside the roots is refused
    // with what to do next; the same file under `import/` is ingested.
    let (ok, out) = ingest_cli(&server.base, "outside", dir.path());
    assert!(!ok, "{out}");
    assert!(
        out.contains("403 permission_denied")
            && out.contains("local roots")
            && out.contains("<data_dir>/import"),
        "{out}"
    );
    std::fs::create_dir_all(import.join("ok")).unwrap();
    std::fs::copy(
        outside.join("secret.parquet"),
        import.join("ok/part-0.parquet"),
    )
    .unwrap();
    let (ok, out) = ingest_cli(&server.base, "ok", &import);
    assert!(ok, "{out}");
    let (_, info) = server.get("/v1/collections/c");
    assert_eq!(info["items"], 50, "{info}");
}

/// Names a peer could send in an ATTACH: each would leave the staging
/// directory if joined as it is.
const BAD_NAMES: [&str; 5] = ["../../escape.bin", "a/b.bin", "..", "/abs-escape.bin", ""];

#[test]
fn an_attach_naming_files_outside_its_directory_writes_nothing() {
    let cluster = Cluster::start();
    let (status, body) = cluster.post(
        "/v1/collections",
        &json!({ "name": "c", "dim": DIM, "metric": "l2", "shards": 1, "replication": 2 }),
    );
    assert_eq!(status, 201, "{body}");
    // Every coordinator applies the collection soon after the leader.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let state = loop {
        let (_, state) = cluster.get("/v1/cluster");
        let listed = state["collections"]
            .as_array()
            .is_some_and(|cs| cs.iter().any(|c| c["name"] == "c"));
        if listed && healed(&state) {
            break state;
        }
        assert!(std::time::Instant::now() < deadline, "{state}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let shard = &state["collections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "c")
        .unwrap()["shards"][0];
    let placement: engram_core::placement::ShardPlacement =
        serde_json::from_value(shard.clone()).unwrap();
    let addr = |id: u64| -> String {
        state["workers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["id"] == id)
            .unwrap()["addr"]
            .as_str()
            .unwrap()
            .to_string()
    };
    // A real object in the segment store, so only the names are wrong.
    let store = cluster.dir.path().join("segment-store");
    std::fs::create_dir_all(store.join("evil")).unwrap();
    std::fs::write(store.join("evil/ok.bin"), b"x").unwrap();
    let before = tree(cluster.dir.path());
    let http = reqwest::blocking::Client::new();
    for name in BAD_NAMES {
        let request = AttachRequest {
            collection: "c".into(),
            shard: 0,
            placement: placement.clone(),
            segment: SegmentObject {
                uri: store.display().to_string(),
                key: "evil".into(),
                files: vec![
                    CheckedFile {
                        name: "ok.bin".into(),
                        bytes: 1,
                        crc32: crc32fast::hash(b"x"),
                    },
                    CheckedFile {
                        name: name.into(),
                        bytes: 1,
                        crc32: crc32fast::hash(b"x"),
                    },
                ],
            },
            stage_only: false,
            position: None,
        };
        // To the primary (which stages on every copy) and to a replica.
        for (worker, route) in [
            (placement.primary, path::ATTACH),
            (placement.replicas[0], path::ATTACH_REPLICA),
        ] {
            let response = http
                .post(format!("http://{}{route}", addr(worker)))
                .header("engram-cluster-secret", &cluster.cluster_secret)
                .header("content-type", "application/x-bincode")
                .body(bincode::serialize(&request).unwrap())
                .send()
                .unwrap();
            assert_eq!(response.status().as_u16(), 200, "{name:?} {route}");
            let answer: RpcResult<Value> = bincode::deserialize::<
                RpcResult<engram_worker::AttachedSegment>,
            >(&response.bytes().unwrap())
            .unwrap()
            .map(|a| json!(a.name));
            match answer {
                Err(RpcError::Invalid(reason)) | Err(RpcError::Replication(reason)) => {
                    assert!(reason.contains("plain file name"), "{name:?}: {reason}")
                }
                other => panic!("{name:?} {route}: {other:?}"),
            }
        }
    }
    // Nothing named by the request exists anywhere: not under the cluster
    // (no staged copy, no escaped file), not at the filesystem root.
    let after = tree(cluster.dir.path());
    let added: Vec<&PathBuf> = after.iter().filter(|p| !before.contains(p)).collect();
    assert!(
        added.iter().all(|p| {
            let text = p.display().to_string();
            !text.contains("evil") && !text.contains("escape") && !text.ends_with("b.bin")
        }),
        "{added:?}"
    );
    assert!(!Path::new("/abs-escape.bin").exists());
}
