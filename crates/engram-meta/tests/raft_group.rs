//! Three metadata nodes over real HTTP on loopback, in one process: the
//! group elects a leader, followers forward writes, a stopped leader is
//! replaced and a restarted node comes back with everything from its files.
//! The group runs behind the cluster secret, so every call above carries it;
//! a caller without it is refused before any Raft message is decoded.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use engram_core::config::SecurityConfig;
use engram_meta::{ClusterAccess, Command, MetaNode, RaftTiming, rpc};

const SECRET: &str = "raft-group-secret-0123456789";

fn secret() -> ClusterAccess {
    ClusterAccess::from_config(&SecurityConfig {
        cluster_secret: Some(SECRET.into()),
        ..Default::default()
    })
    .expect("no TLS files to read")
}

struct Running {
    node: MetaNode,
    server: tokio::task::JoinHandle<()>,
}

async fn start(id: u64, dir: &Path, listener: tokio::net::TcpListener) -> Running {
    let secret = secret();
    let node = MetaNode::start(
        id,
        &dir.join(format!("n{id}")),
        &RaftTiming::default(),
        &secret,
    )
    .await
    .expect("node starts");
    let app = secret.guard(rpc::router(node.clone()));
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.expect("serve");
    });
    Running { node, server }
}

async fn wait_leader(nodes: &[&MetaNode], not: Option<u64>) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let leaders: Vec<_> = nodes.iter().filter_map(|n| n.leader()).collect();
        if leaders.len() == nodes.len()
            && leaders.iter().all(|l| l.0 == leaders[0].0)
            && Some(leaders[0].0) != not
        {
            return leaders[0].0;
        }
        assert!(Instant::now() < deadline, "no agreed leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn register(id: u64) -> Command {
    Command::RegisterWorker {
        id,
        addr: format!("127.0.0.1:{}", 20000 + id),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elects_forwards_fails_over_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let mut listeners = Vec::new();
    let mut members = BTreeMap::new();
    for id in 1..=3u64 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        members.insert(id, l.local_addr().unwrap().to_string());
        listeners.push(l);
    }
    let mut nodes = Vec::new();
    for (id, l) in (1..=3u64).zip(listeners) {
        nodes.push(start(id, dir.path(), l).await);
    }
    nodes[0].node.bootstrap(&members).await.unwrap();
    nodes[0].node.bootstrap(&members).await.unwrap(); // idempotent
    let all: Vec<&MetaNode> = nodes.iter().map(|r| &r.node).collect();
    let leader = wait_leader(&all, None).await;

    // A write through a follower is forwarded and visible there on return.
    let follower = nodes.iter().find(|r| r.node.id() != leader).unwrap();
    follower.node.write(register(1)).await.unwrap();
    assert!(follower.node.state().workers.contains_key(&1));

    // Stop the leader: the others elect a new one and take writes.
    let index = nodes.iter().position(|r| r.node.id() == leader).unwrap();
    let old = nodes.remove(index);
    old.node.shutdown().await;
    old.server.abort();
    let survivors: Vec<&MetaNode> = nodes.iter().map(|r| &r.node).collect();
    let started = Instant::now();
    let new_leader = wait_leader(&survivors, Some(leader)).await;
    assert_ne!(new_leader, leader);
    assert!(started.elapsed() < Duration::from_secs(8));
    for id in 2..=20 {
        nodes[0].node.write(register(id)).await.unwrap();
    }
    // A refused command is an error, not a silent no-op.
    let refused = nodes[1]
        .node
        .write(Command::DropCollection {
            name: "absent".into(),
        })
        .await;
    assert!(matches!(refused, Err(engram_meta::MetaError::Refused(_))));

    // Without the secret, or with another, nothing reaches Raft: a
    // registration that would pull shards to a foreign address is refused.
    let addr = &members[&nodes[0].node.id()];
    let before = nodes[0].node.state();
    let body = bincode::serialize(&register(99)).unwrap();
    let http = reqwest::Client::new();
    for presented in [None, Some("another-secret-0123456789")] {
        for path in ["write", "append", "vote", "snapshot", "membership"] {
            let mut request = http
                .post(format!("http://{addr}/raft/{path}"))
                .body(body.clone());
            if let Some(p) = presented {
                request = request.header(engram_meta::access::HEADER, p);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 401, "{path} with {presented:?}");
            let error: serde_json::Value = response.json().await.unwrap();
            assert_eq!(error["error"]["code"], "unauthenticated");
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(nodes[0].node.state(), before);

    // The old leader restarts from its files and catches up.
    drop(old);
    let listener = tokio::net::TcpListener::bind(&members[&leader])
        .await
        .unwrap();
    let back = start(leader, dir.path(), listener).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while back.node.state().workers.len() < 20 {
        assert!(Instant::now() < deadline, "restarted node did not catch up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(back.node.state(), nodes[0].node.state());
    assert_eq!(back.node.members().len(), 3);
}
