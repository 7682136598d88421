//! One request followed through a real cluster by its id: the coordinator
//! answers it in `x-request-id` and logs it, and every worker that served a
//! shard of it logs the same id on the internal call it served; a metadata
//! write sent to a follower coordinator reaches the Raft leader's log with
//! its id.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::cluster::{Cluster, random_secret, vector};
use serde_json::json;
use std::time::Duration;

/// The lines of `log` that carry request id `id`.
fn lines_with(log: &std::path::Path, id: &str) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains(&format!("request_id={id}")))
        .map(str::to_string)
        .collect()
}

#[test]
fn one_search_is_followed_from_the_coordinator_into_every_worker_that_served_it() {
    let cluster = Cluster::start();
    let (status, body) = cluster.post(
        "/v1/collections",
        &json!({ "name": "traced", "dim": 8, "metric": "l2", "shards": 8 }),
    );
    assert_eq!(status, 201, "{body}");
    let items: Vec<_> = (0..400u64)
        .map(|id| json!({ "id": id, "label": format!("l{}", id % 4), "vector": vector(id) }))
        .collect();
    let (status, body) = cluster.post("/v1/collections/traced/items", &json!({ "items": items }));
    assert!(status < 300, "{body}");

    let base = cluster.coordinators[0].base.clone().unwrap();
    let id = format!("trace-{}", random_secret());
    let response = cluster
        .http
        .post(format!("{base}/v1/collections/traced/search"))
        .header("x-request-id", &id)
        .json(&json!({ "vector": vector(7), "k": 5 }))
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-request-id"], id.as_str());
    // Without one, the coordinator makes one and answers it.
    let made = cluster
        .http
        .get(format!("{base}/v1/collections/traced"))
        .send()
        .unwrap();
    let made = made.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(made.len(), 16, "{made}");
    // An id that is not one (a space, a slash) is replaced, not logged.
    let odd = cluster
        .http
        .get(format!("{base}/v1/collections/traced"))
        .header("x-request-id", "a b/c")
        .send()
        .unwrap();
    assert_ne!(odd.headers()["x-request-id"], "a b/c");

    std::thread::sleep(Duration::from_millis(500));
    let coordinator = lines_with(&cluster.coordinators[0].log, &id);
    assert!(
        coordinator
            .iter()
            .any(|l| l.contains("request served") && l.contains("/v1/collections/traced/search")),
        "the coordinator did not log {id}: {coordinator:?}"
    );
    // The search went to one copy of each of the 8 shards, spread over the
    // three workers: at least two of them served it, each logging the id.
    let served: Vec<String> = cluster
        .workers
        .iter()
        .filter(|worker| {
            lines_with(&worker.log, &id)
                .iter()
                .any(|l| l.contains("internal call served"))
        })
        .map(|worker| worker.name.clone())
        .collect();
    assert!(served.len() >= 2, "workers that logged {id}: {served:?}");
    eprintln!("{}", lines_with(&cluster.workers[0].log, &id).join("\n"));
    // A metadata write sent to a follower is forwarded to the Raft leader
    // with its id: create a collection through each coordinator; at least
    // two of them follow, and the leader logs their forwarded writes.
    let mut forwarded = 0;
    for (i, coordinator) in cluster.coordinators.iter().enumerate() {
        let id = format!("create-{i}-{}", random_secret());
        let response = cluster
            .http
            .post(format!(
                "{}/v1/collections",
                coordinator.base.as_ref().unwrap()
            ))
            .header("x-request-id", &id)
            .json(&json!({ "name": format!("made-{i}"), "dim": 4, "metric": "l2" }))
            .send()
            .unwrap();
        assert_eq!(response.status(), 201);
        std::thread::sleep(Duration::from_millis(300));
        let elsewhere = cluster
            .coordinators
            .iter()
            .filter(|other| other.name != coordinator.name)
            .any(|other| {
                lines_with(&other.log, &id)
                    .iter()
                    .any(|l| l.contains("internal call served") && l.contains("/raft/write"))
            });
        forwarded += usize::from(elsewhere);
    }
    assert!(
        forwarded >= 2,
        "forwarded Raft writes with their id: {forwarded}"
    );
    // No other request's lines carry it.
    for worker in &cluster.workers {
        for line in lines_with(&worker.log, &id) {
            assert!(!line.contains(&made), "{line}");
        }
    }
}
