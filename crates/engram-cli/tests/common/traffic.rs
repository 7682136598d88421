//! A client that writes, deletes and searches through the cluster while a
//! test injects faults, with a ledger of what it was acknowledged, and the
//! check that the collection `c` holds exactly that afterwards. Shared by
//! the cluster scenarios and the resharding tests.

use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::cluster::{Cluster, vector};

/// What the client was told: acknowledged upserts and deletes.
#[derive(Default)]
pub struct Ledger {
    pub acked: BTreeSet<u64>,
    pub deleted: BTreeSet<u64>,
    pub writes_after_fault: usize,
}

/// Sends `body` until a coordinator acknowledges it (upserts and deletes by
/// id are idempotent, so a retried request is harmless), each retry to the
/// next live coordinator (one cut off from the cluster answers only once
/// its own timeout passes); fails the test if none does within 90 s.
pub fn post_until_acked(cluster: &Mutex<Cluster>, path: &str, body: &Value) {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut attempt = 0;
    loop {
        let answer = cluster.lock().unwrap().post_from(attempt, path, body);
        attempt += 1;
        if answer.0 == 200 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{path} not acknowledged for 90 s: {answer:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Writes batches (and deletes every fourth batch's first ids), each until
/// acknowledged, until `stop`; after every delete, searches for a deleted
/// item's vector and fails if a deleted id comes back. Collects answers
/// marked `partial`.
pub fn client_loop(
    cluster: &Mutex<Cluster>,
    ledger: &Mutex<Ledger>,
    stop: &AtomicBool,
    faulted: &AtomicBool,
    partials: &Mutex<Vec<Value>>,
) {
    let mut next_id = 0u64;
    let mut batch = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let ids: Vec<u64> = (next_id..next_id + 20).collect();
        next_id += 20;
        batch += 1;
        let items: Vec<Value> = ids
            .iter()
            .map(|id| json!({"id": id, "label": format!("l{}", id % 5), "vector": vector(*id)}))
            .collect();
        post_until_acked(
            cluster,
            "/v1/collections/c/items",
            &json!({ "items": items }),
        );
        {
            let mut l = ledger.lock().unwrap();
            l.acked.extend(&ids);
            if faulted.load(Ordering::SeqCst) {
                l.writes_after_fault += 1;
            }
        }
        if batch.is_multiple_of(4) {
            let doomed: Vec<u64> = ids[..5].to_vec();
            post_until_acked(
                cluster,
                "/v1/collections/c/items/delete",
                &json!({ "ids": doomed }),
            );
            ledger.lock().unwrap().deleted.extend(&doomed);
            // Deleted ids never come back, from any coordinator, at any time.
            let deleted: Vec<u64> = ledger.lock().unwrap().deleted.iter().copied().collect();
            let answer = cluster.lock().unwrap().post(
                "/v1/collections/c/search",
                &json!({"vector": vector(doomed[0]), "k": 10}),
            );
            if answer.0 == 200 {
                for n in answer.1["neighbors"].as_array().unwrap() {
                    let id = n["id"].as_u64().unwrap();
                    assert!(
                        !deleted.contains(&id),
                        "deleted id {id} returned: {answer:?}"
                    );
                }
                if answer.1["partial"] == json!(true) {
                    partials.lock().unwrap().push(answer.1.clone());
                }
            }
        }
    }
}

/// Every acknowledged, undeleted item is found; no deleted one is.
pub fn check_ledger(cluster: &Cluster, ledger: &Ledger) {
    let started = Instant::now();
    let expected: BTreeSet<u64> = ledger.acked.difference(&ledger.deleted).copied().collect();
    let (status, info) = cluster.get("/v1/collections/c");
    assert_eq!(status, 200, "{info:?}");
    // Every request was retried until acknowledged, so the memory holds
    // exactly the acknowledged upserts minus the acknowledged deletes.
    assert_eq!(
        info["items"].as_u64().unwrap(),
        expected.len() as u64,
        "{info:?}"
    );
    let mut per_label: BTreeMap<String, u64> = BTreeMap::new();
    for id in &expected {
        *per_label.entry(format!("l{}", id % 5)).or_default() += 1;
    }
    assert_eq!(info["labels"], json!(per_label));
    // A sample of the items is its own nearest neighbour, and deleted
    // items are nobody's (queried in batches by their vectors).
    let sample: Vec<u64> = expected
        .iter()
        .step_by(25)
        .chain(ledger.deleted.iter().step_by(5))
        .copied()
        .collect();
    for chunk in sample.chunks(64) {
        let queries: Vec<Value> = chunk
            .iter()
            .map(|id| json!({"vector": vector(*id)}))
            .collect();
        let (status, answer) = cluster.post(
            "/v1/collections/c/classify/batch",
            &json!({"queries": queries, "k": 3}),
        );
        assert_eq!(status, 200, "{answer:?}");
        for (id, result) in chunk.iter().zip(answer["results"].as_array().unwrap()) {
            assert_eq!(result["partial"], json!(false), "{result:?}");
            let ids: Vec<u64> = result["neighbors"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n["id"].as_u64().unwrap())
                .collect();
            assert!(
                ids.iter().all(|n| !ledger.deleted.contains(n)),
                "deleted item among {ids:?}"
            );
            if expected.contains(id) {
                assert_eq!(ids.first(), Some(id), "acknowledged item {id} lost");
            }
        }
    }
    for id in ledger.deleted.iter().step_by(10) {
        let (status, _) = cluster.get(&format!("/v1/collections/c/items/{id}"));
        assert_eq!(status, 404, "deleted item {id} is back");
    }
    eprintln!(
        "checked {} items, {} deletes in {:?}",
        expected.len(),
        ledger.deleted.len(),
        started.elapsed()
    );
}

/// Sets its flag when dropped, also while a panic unwinds.
pub struct StopOnDrop<'a>(pub &'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Runs the client for `before`, applies `fault`, runs it for `after`.
pub fn with_traffic(
    cluster: Arc<Mutex<Cluster>>,
    before: Duration,
    fault: impl FnOnce(&Mutex<Cluster>),
    after: Duration,
) -> (Ledger, Vec<Value>) {
    let ledger = Mutex::new(Ledger::default());
    let stop = AtomicBool::new(false);
    let faulted = AtomicBool::new(false);
    let partials = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        let client = s.spawn(|| client_loop(&cluster, &ledger, &stop, &faulted, &partials));
        // A failing fault step must stop the client too, or the scope
        // would wait for it forever.
        let _stop = StopOnDrop(&stop);
        std::thread::sleep(before);
        fault(&cluster);
        faulted.store(true, Ordering::SeqCst);
        std::thread::sleep(after);
        stop.store(true, Ordering::SeqCst);
        client.join().expect("client loop panicked");
    });
    (ledger.into_inner().unwrap(), partials.into_inner().unwrap())
}
