//! Durability: acknowledged writes survive `kill -9`; corrupted files are
//! refused; one process per data directory; an unverified model is refused.

mod common;

use common::*;
use serde_json::json;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn vector(id: u64) -> Vec<f32> {
    vec![
        1.0 + (id % 97) as f32,
        (id % 13) as f32,
        (id % 7) as f32,
        1.0,
    ]
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let data = dir.path().join("data");
    let mut server = Server::start(&config, &data);
    assert_eq!(
        server
            .post(
                "/v1/collections",
                &json!({ "name": "d", "dim": 4, "metric": "l2" })
            )
            .0,
        201
    );

    let acked_upserts = Arc::new(Mutex::new(HashSet::new()));
    let acked_deletes = Arc::new(Mutex::new(HashSet::new()));
    // A delete cut off by the kill may or may not have been applied.
    let attempted_deletes = Arc::new(Mutex::new(HashSet::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let base = server.base.clone();
    let mut writers = Vec::new();
    for writer in 0..3u64 {
        let (acked_upserts, acked_deletes, attempted_deletes, stop, base) = (
            acked_upserts.clone(),
            acked_deletes.clone(),
            attempted_deletes.clone(),
            stop.clone(),
            base.clone(),
        );
        writers.push(std::thread::spawn(move || {
            let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
            let mut batch = 0u64;
            while !stop.load(Ordering::Relaxed) && batch < 5_000 {
                let ids: Vec<u64> = (0..25).map(|i| writer * 1_000_000 + batch * 25 + i).collect();
                let items: Vec<_> = ids.iter().map(|id| json!({ "id": id, "label": format!("w{writer}"), "vector": vector(*id) })).collect();
                match http.post(format!("{base}/v1/collections/d/items")).json(&json!({ "items": items })).send() {
                    Ok(r) if r.status().is_success() => acked_upserts.lock().unwrap().extend(ids.iter().copied()),
                    _ => break,
                }
                if batch % 4 == 3 {
                    // Delete one item of the previous batch.
                    let victim = writer * 1_000_000 + (batch - 1) * 25 + 3;
                    attempted_deletes.lock().unwrap().insert(victim);
                    match http.post(format!("{base}/v1/collections/d/items/delete")).json(&json!({ "ids": [victim] })).send() {
                        Ok(r) if r.status().is_success() => {
                            acked_deletes.lock().unwrap().insert(victim);
                        }
                        _ => break,
                    }
                }
                batch += 1;
            }
        }));
    }
    let started = Instant::now();
    while acked_upserts.lock().unwrap().len() < 1500 && started.elapsed() < Duration::from_secs(60)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    server.kill9();
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    let upserts = acked_upserts.lock().unwrap().clone();
    let deletes = acked_deletes.lock().unwrap().clone();
    assert!(
        upserts.len() >= 1500,
        "writers acknowledged only {}",
        upserts.len()
    );
    assert!(!deletes.is_empty());

    let server = Server::start(&config, &data);
    let (_, info) = server.get("/v1/collections/d");
    let live = info["items"].as_u64().unwrap() as usize;
    let attempted = attempted_deletes.lock().unwrap().clone();
    let expected_live: HashSet<u64> = upserts.difference(&attempted).copied().collect();
    assert!(
        live >= expected_live.len(),
        "{live} items after restart, {} acknowledged and not deleted",
        expected_live.len()
    );
    for id in &expected_live {
        let (status, item) = server.get(&format!("/v1/collections/d/items/{id}"));
        assert_eq!(status, 200, "acknowledged item {id} lost: {item}");
    }
    for id in &deletes {
        assert_eq!(
            server.get(&format!("/v1/collections/d/items/{id}")).0,
            404,
            "acknowledged delete of {id} lost"
        );
        let (_, found) = server.post(
            "/v1/collections/d/search",
            &json!({ "vector": vector(*id), "k": 5 }),
        );
        assert!(
            found["neighbors"]
                .as_array()
                .unwrap()
                .iter()
                .all(|n| n["id"] != *id),
            "deleted {id} returned"
        );
    }
}

#[test]
fn corrupted_wal_is_refused_not_served() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let data = dir.path().join("data");
    let mut server = Server::start(&config, &data);
    server.post(
        "/v1/collections",
        &json!({ "name": "c", "dim": 4, "shards": 1 }),
    );
    for batch in 0..3u64 {
        let items: Vec<_> = (0..10)
            .map(
                |i| json!({ "id": batch * 10 + i, "label": "x", "vector": vector(batch * 10 + i) }),
            )
            .collect();
        assert_eq!(
            server
                .post("/v1/collections/c/items", &json!({ "items": items }))
                .0,
            200
        );
    }
    server.stop();

    // A clean restart serves everything.
    let mut server = Server::start(&config, &data);
    assert_eq!(server.get("/v1/collections/c").1["items"], 30);
    server.stop();

    let wal = data.join("collections/c/shards/0000/wal-00000000.log");
    let mut bytes = std::fs::read(&wal).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&wal, &bytes).unwrap();
    let err = Server::try_start(&config, &data)
        .err()
        .expect("a corrupted WAL must be refused");
    assert!(
        err.contains("corrupted") && err.contains("wal-00000000.log"),
        "unclear error: {err}"
    );

    // A corrupted catalog is refused too.
    bytes[middle] ^= 0x40;
    std::fs::write(&wal, &bytes).unwrap();
    let catalog = data.join("catalog.bin");
    let mut cat = std::fs::read(&catalog).unwrap();
    let last = cat.len() - 2;
    cat[last] ^= 0x01;
    std::fs::write(&catalog, &cat).unwrap();
    let err = Server::try_start(&config, &data)
        .err()
        .expect("a corrupted catalog must be refused");
    assert!(err.contains("catalog.bin"), "unclear error: {err}");
}

#[test]
fn one_process_per_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let data = dir.path().join("data");
    let _server = Server::start(&config, &data);
    let err = Server::try_start(&config, &data)
        .err()
        .expect("second process must be refused");
    assert!(err.contains("in use"), "{err}");
}

#[test]
fn a_model_with_the_wrong_checksum_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "input_name = \"input\"",
        "sha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"\ninput_name = \"input\"",
    );
    std::fs::write(&config, text).unwrap();
    let err = Server::try_start(&config, &dir.path().join("data"))
        .err()
        .expect("must refuse the model");
    assert!(err.contains("sha256") && err.contains("refusing"), "{err}");
}
