//! Network partitions on loopback (issue: recovery at billion scale,
//! partitions): three coordinators and three workers whose internal ports
//! sit behind fault-injecting proxies (`common::netfault`), replication 2,
//! under a client that writes, deletes and searches throughout (each
//! request retried, on the next coordinator, until acknowledged; a deleted
//! id returned by any search fails the test).
//!
//! Each test cuts the network one way for a few seconds while the client
//! runs, heals it, waits until the cluster reports every copy in sync, and
//! then demands that the memory holds exactly the acknowledged writes minus
//! the acknowledged deletes:
//! - a worker cut off from everyone (its shards fail over; it comes back
//!   and its copies catch up);
//! - a worker that can be reached but reaches no one (one way: its
//!   heartbeats and replication are lost, so it must stop serving on its
//!   own once its read lease lapses, and its shards fail over);
//! - the Raft leader cut off from everyone (a new leader is elected;
//!   writes go on through the other coordinators);
//! - the Raft leader cut off from the other coordinators only (workers
//!   still reach it and it them: a deposed leader that still talks to the
//!   workers).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::cluster::{Cluster, DIM, SHARDS, healed};
use common::netfault::NetFaults;
use common::traffic::{check_ledger, with_traffic};
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a fault lasts: several worker timeouts and Raft elections.
const FAULT: Duration = Duration::from_secs(6);

fn start() -> (Cluster, NetFaults) {
    let cluster = Cluster::start_with_net_faults("");
    let (status, body) = cluster.post(
        "/v1/collections",
        &json!({"name": "c", "dim": DIM, "metric": "l2", "shards": SHARDS, "replication": 2}),
    );
    assert_eq!(status, 201, "{body:?}");
    let net = cluster.net.clone().unwrap();
    (cluster, net)
}

/// Runs the client for 3 s, applies `fault` (given the Raft leader's id)
/// and lifts it after [`FAULT`], runs the client 6 s more, waits until the
/// cluster has healed, checks that the fault had its effect (`took`,
/// given the cluster and the leader before the fault) and checks the
/// ledger.
fn under_partition(fault: impl FnOnce(&NetFaults, u64), took: impl FnOnce(&Cluster, u64)) {
    let (cluster, net) = start();
    let leader = cluster.wait_ready(3, Duration::from_secs(30));
    let cluster = Arc::new(Mutex::new(cluster));
    let (ledger, _) = with_traffic(
        cluster.clone(),
        Duration::from_secs(3),
        |_| {
            fault(&net, leader);
            let net = net.clone();
            std::thread::spawn(move || {
                std::thread::sleep(FAULT);
                net.heal();
                eprintln!("partition lifted");
            });
        },
        FAULT + Duration::from_secs(6),
    );
    net.heal();
    let cluster = Arc::into_inner(cluster).unwrap().into_inner().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let status = cluster
            .live_coordinators()
            .first()
            .and_then(|b| cluster.status(b));
        if status.as_ref().is_some_and(healed) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cluster did not heal: {status:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        ledger.writes_after_fault > 0,
        "no write was acknowledged after the fault"
    );
    took(&cluster, leader);
    check_ledger(&cluster, &ledger);
}

/// The Raft leader declared `worker` dead (its heartbeats stopped coming).
fn failed_over(cluster: &Cluster, worker: u64) {
    let lines: usize = cluster
        .coordinators
        .iter()
        .map(|c| {
            c.log_lines(&format!(
                "worker missed its heartbeats; failing it over worker={worker}"
            ))
        })
        .sum();
    assert!(lines > 0, "worker {worker} was never failed over");
}

/// Another coordinator leads now.
fn new_leader(cluster: &Cluster, before: u64) {
    let now = cluster.wait_ready(3, Duration::from_secs(30));
    assert_ne!(now, before, "coordinator {before} still leads");
}

#[test]
fn a_worker_cut_off_from_everyone_loses_nothing() {
    under_partition(|net, _| net.isolate("worker-1"), |c, _| failed_over(c, 1));
}

#[test]
fn a_worker_that_reaches_no_one_but_is_reached_loses_nothing() {
    under_partition(|net, _| net.mute("worker-2"), |c, _| failed_over(c, 2));
}

#[test]
fn the_raft_leader_cut_off_from_everyone_loses_nothing() {
    under_partition(
        |net, leader| net.isolate(&format!("coordinator-{leader}")),
        new_leader,
    );
}

#[test]
fn the_raft_leader_cut_off_from_the_other_coordinators_loses_nothing() {
    under_partition(
        |net, leader| {
            let leader = format!("coordinator-{leader}");
            for other in (1..=3).map(|c| format!("coordinator-{c}")) {
                if other != leader {
                    net.block(&leader, &other);
                    net.block(&other, &leader);
                }
            }
        },
        new_leader,
    );
}
