//! The chaos run (issue 9): a loopback cluster of 3 coordinators and 3
//! workers, replication 2, under a mixed load of adds, deletes and
//! classifications, while a controller kill -9s random processes and
//! restarts them, pauses processes (SIGSTOP/SIGCONT), cuts their disk
//! writes (the `ENGRAM_FAULT_DISK_FULL` flag of `engram_store::fault`) and
//! cuts the network between them (the proxies of `common::netfault` in
//! front of every internal port): a process cut off from everyone, one that
//! reaches no one but is reached (one way), and the Raft leader cut off
//! from the other coordinators.
//!
//! The clients behave like real ones: each request is sent once (to the
//! next coordinator only when the connection was refused, i.e. it never
//! arrived), and the ledger records what was acknowledged and what is
//! uncertain (an error or timeout: the operation may or may not have
//! happened). The checker then demands:
//! - every acknowledged add whose id was never sent a delete is present
//!   (else it is `lost`);
//! - no id whose delete was acknowledged is present at the end, or was
//!   returned by a query that started after the acknowledgement (else it
//!   is `resurrected`);
//! - every answer was complete or flagged `partial`: a query for a stored
//!   item's own vector that is not flagged partial must find that item
//!   (else it is `unflagged`).
//!
//! - no unlearning receipt says `erased` while a file on any worker still
//!   holds one of its deleted vectors (else it is an `early_erasure`): one
//!   delete in four asks for a 3-second erasure deadline, and an auditor
//!   byte-scans every worker's data directory for the vectors of each
//!   receipt it sees turn `erased`.
//!
//! Every worker merges and compacts its copies once a second (small tiers),
//! and a resharder runs beside the faults: it reshards the collection online,
//! 8 shards to 12 and back, again and again; a resharding whose job dies
//! with its coordinator is resumed by it when it restarts, one that failed
//! is asked for again.
//!
//! `ENGRAM_CHAOS_KILLS` (default 10; `make chaos` runs 100) sets how many
//! kill -9s the run makes, `ENGRAM_CHAOS_SEED` replays a run,
//! `ENGRAM_CHAOS_DISK_FULL=0` leaves the "disk full" faults out,
//! `ENGRAM_CHAOS_PARTITIONS=0` the network faults and
//! `ENGRAM_CHAOS_RESHARD=0` the resharding. `ENGRAM_CHAOS_AT_ONCE=2` injects
//! two faults at a time (on two processes) and `ENGRAM_CHAOS_REPLICATION=3`
//! keeps three copies of every shard (`make chaos-two-faults`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::cluster::{Cluster, DIM, Launch, Proc, SHARDS, client_with_key, vector};
use engram_cli::rng::SplitMix64;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

/// A pause between `from` and `to` milliseconds.
fn millis(rng: &mut SplitMix64, from: u64, to: u64) -> Duration {
    Duration::from_millis(from + rng.below(to - from + 1))
}

/// What one id went through, as far as the clients know.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fate {
    /// The add was acknowledged at this instant (no delete sent yet).
    Added(Instant),
    /// The add failed or timed out: it may or may not have happened.
    AddUncertain,
    /// A delete was sent and failed or timed out.
    DeleteUncertain,
    /// The delete was acknowledged at this instant.
    Deleted(Instant),
}

#[derive(Default)]
struct Ledger {
    fates: BTreeMap<u64, Fate>,
    /// Ids returned by a query that started after their delete was
    /// acknowledged, with what happened.
    resurrected: BTreeMap<u64, String>,
    /// Answers not flagged partial that missed the stored item queried for.
    unflagged: Vec<String>,
    partial: u64,
    errors: u64,
    acked_ops: u64,
    classifies: u64,
    /// Receipts seen `erased` and audited.
    erasures: u64,
    /// Receipts said `erased` while a worker's file held a deleted vector.
    early_erasures: Vec<String>,
}

impl Ledger {
    fn live_ids(&self) -> Vec<u64> {
        self.fates
            .iter()
            .filter(|(_, f)| matches!(f, Fate::Added(_)))
            .map(|(id, _)| *id)
            .collect()
    }
}

/// The coordinators' public addresses, updated by the controller when one
/// restarts on a new port; clients read it without waiting for a restart.
type Bases = RwLock<Vec<Option<String>>>;

/// Sends one request: to the first coordinator that accepts the
/// connection. `None` when it failed after reaching one (the outcome is
/// unknown), or when no coordinator accepted it. A `request_id` is sent
/// as `x-request-id`, so that a bad answer can be followed through the
/// coordinator's and the workers' logs.
fn send_once(
    http: &reqwest::blocking::Client,
    bases: &Bases,
    start: usize,
    method: &str,
    path: &str,
    body: Option<&Value>,
    request_id: Option<&str>,
) -> Option<(u16, Value)> {
    let bases: Vec<String> = bases.read().unwrap().iter().flatten().cloned().collect();
    for i in 0..bases.len() {
        let url = format!("{}{path}", bases[(start + i) % bases.len()]);
        let request = match (method, body) {
            ("POST", Some(body)) => http.post(url).json(body),
            _ => http.get(url),
        };
        let request = match request_id {
            Some(id) => request.header("x-request-id", id),
            None => request,
        };
        match request.send() {
            Ok(r) => {
                let status = r.status().as_u16();
                return Some((status, r.json().unwrap_or(Value::Null)));
            }
            // Refused: the request never arrived, another may take it.
            Err(e) if e.is_connect() => continue,
            Err(_) => return None,
        }
    }
    None
}

/// Adds batches of fresh ids and deletes random live ones, each sent once.
fn writer(
    http: &reqwest::blocking::Client,
    bases: &Bases,
    ledger: &Mutex<Ledger>,
    seed: u64,
    stop: &AtomicBool,
    next_id: &AtomicU64,
) {
    let mut rng = SplitMix64(seed);
    while !stop.load(Ordering::SeqCst) {
        let start = rng.below(3) as usize;
        if rng.below(10) < 7 {
            let first = next_id.fetch_add(10, Ordering::SeqCst);
            let ids: Vec<u64> = (first..first + 10).collect();
            let items: Vec<Value> = ids
                .iter()
                .map(|id| json!({"id": id, "label": format!("l{}", id % 5), "vector": vector(*id)}))
                .collect();
            let answer = send_once(
                http,
                bases,
                start,
                "POST",
                "/v1/collections/c/items",
                Some(&json!({ "items": items })),
                None,
            );
            let acked = matches!(answer, Some((200, _)));
            let now = Instant::now();
            let mut l = ledger.lock().unwrap();
            for id in ids {
                l.fates.insert(
                    id,
                    if acked {
                        Fate::Added(now)
                    } else {
                        Fate::AddUncertain
                    },
                );
            }
            if acked {
                l.acked_ops += 1
            } else {
                l.errors += 1
            }
        } else {
            let doomed: Vec<u64> = {
                let mut l = ledger.lock().unwrap();
                let live = l.live_ids();
                if live.len() < 10 {
                    continue;
                }
                let doomed: Vec<u64> = (0..3)
                    .map(|_| live[rng.below(live.len() as u64) as usize])
                    .collect();
                // Uncertain from the moment it is sent.
                for id in &doomed {
                    l.fates.insert(*id, Fate::DeleteUncertain);
                }
                doomed
            };
            // One in four with a short erasure deadline (the auditor checks
            // that `erased` is never said too early).
            let body = if rng.below(4) == 0 {
                json!({ "ids": doomed, "erase_within_s": 3 })
            } else {
                json!({ "ids": doomed })
            };
            let answer = send_once(
                http,
                bases,
                start,
                "POST",
                "/v1/collections/c/items/delete",
                Some(&body),
                None,
            );
            let mut l = ledger.lock().unwrap();
            if matches!(answer, Some((200, _))) {
                let now = Instant::now();
                for id in doomed {
                    l.fates.insert(id, Fate::Deleted(now));
                }
                l.acked_ops += 1;
            } else {
                l.errors += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A deleted vector an auditor looks for: receipt, id, its bytes.
type Needle = (u64, u64, Vec<u8>);

/// Every few seconds, lists the collection's unlearning receipts and, for
/// each newly `erased` one, byte-scans every worker's data directory for
/// its deleted vectors: none may be found. (Chaos never adds a deleted id
/// again, so any copy of such a vector is the deleted row's.)
fn auditor(
    http: &reqwest::blocking::Client,
    bases: &Bases,
    ledger: &Mutex<Ledger>,
    workers: &[std::path::PathBuf],
    stop: &AtomicBool,
) {
    let mut audited = std::collections::BTreeSet::new();
    let mut round = 0usize;
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_secs(4));
        round += 1;
        let Some((200, list)) = send_once(
            http,
            bases,
            round,
            "GET",
            "/v1/collections/c/unlearning",
            None,
            None,
        ) else {
            continue;
        };
        let fresh: Vec<(u64, Vec<u64>)> = list["receipts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["status"] == "erased")
            .filter_map(|r| {
                let n = r["receipt"].as_u64()?;
                let ids = r["ids"]
                    .as_array()?
                    .iter()
                    .filter_map(Value::as_u64)
                    .collect();
                (!audited.contains(&n)).then_some((n, ids))
            })
            .collect();
        if fresh.is_empty() {
            continue;
        }
        // Needles by their first 8 bytes: one pass over every file.
        let mut needles: std::collections::HashMap<[u8; 8], Vec<Needle>> =
            std::collections::HashMap::new();
        for (n, ids) in &fresh {
            for id in ids {
                let bytes: Vec<u8> = vector(*id).iter().flat_map(|x| x.to_le_bytes()).collect();
                let head: [u8; 8] = bytes[..8].try_into().unwrap();
                needles.entry(head).or_default().push((*n, *id, bytes));
            }
        }
        let mut found = Vec::new();
        for dir in workers {
            for file in common::files_under_lenient(dir) {
                let Ok(bytes) = std::fs::read(&file) else {
                    continue;
                };
                for at in 0..bytes.len().saturating_sub(DIM * 4 - 1) {
                    let head: [u8; 8] = bytes[at..at + 8].try_into().unwrap();
                    if let Some(candidates) = needles.get(&head) {
                        for (n, id, needle) in candidates {
                            if bytes[at..].starts_with(needle) {
                                found.push(format!(
                                    "receipt {n} said erased, yet {} holds id {id}'s vector",
                                    file.display()
                                ));
                            }
                        }
                    }
                }
            }
        }
        let mut l = ledger.lock().unwrap();
        l.erasures += fresh.len() as u64;
        for finding in found {
            eprintln!("chaos: early erasure: {finding}");
            l.early_erasures.push(finding);
        }
        audited.extend(fresh.into_iter().map(|(n, _)| n));
    }
}

/// Classifies and searches for stored items' own vectors, checking each
/// answer against the ledger as it was when the query started.
fn reader(
    http: &reqwest::blocking::Client,
    bases: &Bases,
    ledger: &Mutex<Ledger>,
    seed: u64,
    stop: &AtomicBool,
) {
    let mut rng = SplitMix64(seed);
    while !stop.load(Ordering::SeqCst) {
        let started = Instant::now();
        let target = {
            let l = ledger.lock().unwrap();
            let live = l.live_ids();
            if live.is_empty() {
                drop(l);
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            live[rng.below(live.len() as u64) as usize]
        };
        let path = if rng.below(2) == 0 {
            "/v1/collections/c/classify"
        } else {
            "/v1/collections/c/search"
        };
        let body = json!({"vector": vector(target), "k": 10});
        let via = rng.below(3) as usize;
        let request_id = format!("chaos-read-{seed:x}-{}", rng.below(u64::MAX));
        let answer = send_once(
            http,
            bases,
            via,
            "POST",
            path,
            Some(&body),
            Some(&request_id),
        );
        let mut l = ledger.lock().unwrap();
        l.classifies += 1;
        let Some((200, answer)) = answer else {
            l.errors += 1;
            continue;
        };
        let ids: Vec<u64> = answer["neighbors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["id"].as_u64().unwrap())
            .collect();
        for id in &ids {
            if let Some(Fate::Deleted(at)) = l.fates.get(id)
                && *at < started
            {
                let why = format!(
                    "{path} via coordinator {} started {:?} after the delete was acknowledged (at {} UTC) returned it: {answer}",
                    via + 1,
                    started - *at,
                    utc(*at)
                );
                l.resurrected.insert(*id, why);
            }
        }
        if answer["partial"] == json!(true) {
            l.partial += 1;
        } else if !ids.contains(&target) && matches!(l.fates.get(&target), Some(Fate::Added(_))) {
            let finding = format!(
                "{path} for {target} (request {request_id}, via coordinator {}, started {} UTC): {answer}",
                via + 1,
                utc(started)
            );
            eprintln!("chaos: unflagged: {finding}");
            l.unflagged.push(finding);
        }
    }
}

/// Reshards `c` online between `SHARDS` and 12 shards until `stop`: asks
/// for the next count, follows the job (on any coordinator: its status is
/// in Raft) and, when it failed, asks for the same count again (which
/// resumes the resharding under way). Returns the reshardings finished.
fn resharder(http: &reqwest::blocking::Client, bases: &Bases, stop: &AtomicBool) -> u64 {
    let counts = [12u32, SHARDS];
    let mut finished = 0u64;
    let mut next = 0usize;
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_secs(2));
        let body = json!({ "shards": counts[next % 2] });
        let Some((status, job)) = send_once(
            http,
            bases,
            next,
            "POST",
            "/v1/collections/c/reshard",
            Some(&body),
            None,
        ) else {
            continue;
        };
        if status != 202 {
            eprintln!(
                "chaos: reshard to {} answered {status}: {job}",
                counts[next % 2]
            );
            // A job resumed by its restarted coordinator got there first.
            if job["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("already has"))
            {
                next += 1;
            }
            continue;
        }
        let id = job["id"].as_u64().unwrap_or(0);
        loop {
            if stop.load(Ordering::SeqCst) {
                return finished;
            }
            std::thread::sleep(Duration::from_millis(300));
            let path = format!("/v1/collections/c/jobs/{id}");
            let Some((200, job)) = send_once(http, bases, 0, "GET", &path, None, None) else {
                continue;
            };
            match job["state"].as_str() {
                Some("running") => continue,
                Some("succeeded") => {
                    finished += 1;
                    next += 1;
                    eprintln!(
                        "chaos: resharded to {} shards ({job})",
                        counts[(next + 1) % 2]
                    );
                }
                _ => eprintln!(
                    "chaos: reshard job ended {}: {}",
                    job["state"], job["error"]
                ),
            }
            break;
        }
    }
    finished
}

/// Kinds of fault the controller injects.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    Kill,
    Pause,
    DiskFull,
    /// Cut off from every other process, both ways.
    Partition,
    /// Reaches no other process, but they reach it.
    OneWay,
    /// The Raft leader cut off from the other coordinators (workers still
    /// reach it and it them).
    LeaderCut,
}

/// Which faults a run injects, how many at a time, and how many copies
/// each shard has.
#[derive(Debug, Clone, Copy)]
struct Mix {
    disk_full: bool,
    partitions: bool,
    at_once: usize,
    replication: usize,
}

#[derive(Default, Debug)]
struct Faults {
    kills: u64,
    pauses: u64,
    disk_full: u64,
    partitions: u64,
    one_way: u64,
    leader_cuts: u64,
    /// Processes that exited on their own (e.g. on a failed disk write)
    /// and were restarted, as a supervisor would.
    exited: u64,
}

fn process(cluster: &mut Cluster, i: usize) -> &mut Proc {
    if i < 3 {
        &mut cluster.coordinators[i]
    } else {
        &mut cluster.workers[i - 3]
    }
}

/// Restarts any process that exited by itself; returns how many.
fn supervise(cluster: &mut Cluster, bases: &Bases) -> u64 {
    let mut restarted = 0;
    for i in 0..6 {
        let proc = process(cluster, i);
        if proc.exited() {
            eprintln!("chaos: {} exited by itself; restarting", proc.name);
            proc.kill9();
            proc.restart();
            restarted += 1;
            if i < 3 {
                bases.write().unwrap()[i] = proc.base.clone();
            }
        }
    }
    restarted
}

/// Waits until a leader is known, every worker is healthy and no copy is
/// out of sync: the cluster has healed from the last fault.
/// Processes restarted meanwhile are added to `exited`.
fn wait_healed(
    cluster: &mut Cluster,
    bases: &Bases,
    within: Duration,
    replication: usize,
    exited: &mut u64,
) -> Result<Duration, String> {
    let started = Instant::now();
    let deadline = started + within;
    let mut last = String::new();
    loop {
        let mut healed = false;
        if let Some(status) = cluster
            .live_coordinators()
            .first()
            .and_then(|b| cluster.status(b))
        {
            healed = common::cluster::healed_with(&status, replication - 1);
            last = status.to_string();
        }
        if healed {
            return Ok(started.elapsed());
        }
        if Instant::now() > deadline {
            return Err(last);
        }
        *exited += supervise(cluster, bases);
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Picks a fault for a process (0-2 coordinators, 3-5 workers).
fn pick_fault(rng: &mut SplitMix64, mix: Mix) -> Fault {
    match rng.below(12) {
        0..=5 => Fault::Kill,
        6 | 7 => Fault::Pause,
        8 if mix.disk_full => Fault::DiskFull,
        9 if mix.partitions => Fault::Partition,
        10 if mix.partitions => Fault::OneWay,
        11 if mix.partitions => Fault::LeaderCut,
        _ => Fault::Pause,
    }
}

/// The index (0-2) of the coordinator the live ones agree leads.
fn leader_index(cluster: &Cluster) -> Option<usize> {
    let base = cluster.live_coordinators().first().copied()?;
    let leader = cluster.status(base)?["leader"].as_u64()?;
    Some(leader as usize - 1)
}

/// Starts `fault` on process `target`.
fn begin(cluster: &mut Cluster, bases: &Bases, fault: Fault, target: usize, faults: &mut Faults) {
    let net = cluster.net.clone();
    let proc = process(cluster, target);
    let name = proc.name.clone();
    match fault {
        Fault::Kill => {
            proc.kill9();
            if target < 3 {
                bases.write().unwrap()[target] = None;
            }
            faults.kills += 1;
        }
        Fault::Pause => {
            proc.signal(libc::SIGSTOP);
            faults.pauses += 1;
        }
        Fault::DiskFull => {
            std::fs::write(proc.disk_full_flag(), b"").unwrap();
            faults.disk_full += 1;
        }
        Fault::Partition => {
            net.expect("network faults need the proxies").isolate(&name);
            faults.partitions += 1;
        }
        Fault::OneWay => {
            net.expect("network faults need the proxies").mute(&name);
            faults.one_way += 1;
        }
        Fault::LeaderCut => {
            let net = net.expect("network faults need the proxies");
            for other in (1..=3).map(|c| format!("coordinator-{c}")) {
                if other != name {
                    net.block(&name, &other);
                    net.block(&other, &name);
                }
            }
            faults.leader_cuts += 1;
        }
    }
}

/// Ends `fault` on process `target`.
fn end(cluster: &mut Cluster, bases: &Bases, fault: Fault, target: usize) {
    let net = cluster.net.clone();
    let proc = process(cluster, target);
    match fault {
        Fault::Kill => {
            proc.restart();
            if target < 3 {
                bases.write().unwrap()[target] = proc.base.clone();
            }
        }
        Fault::Pause => proc.signal(libc::SIGCONT),
        Fault::DiskFull => std::fs::remove_file(proc.disk_full_flag()).unwrap(),
        Fault::Partition | Fault::OneWay | Fault::LeaderCut => {
            net.expect("network faults need the proxies").heal()
        }
    }
}

/// Injects faults until `kills` kill -9s have been made: `mix.at_once`
/// at a time, on distinct processes, each held for the same while.
fn controller(cluster: &Mutex<Cluster>, bases: &Bases, kills: u64, seed: u64, mix: Mix) -> Faults {
    let mut rng = SplitMix64(seed);
    let mut faults = Faults::default();
    let mut slowest_heal = Duration::ZERO;
    let started = Instant::now();
    while faults.kills < kills {
        std::thread::sleep(millis(&mut rng, 500, 2_500));
        let mut c = cluster.lock().unwrap();
        faults.exited += supervise(&mut c, bases);
        let mut chosen: Vec<(Fault, usize)> = Vec::new();
        while chosen.len() < mix.at_once {
            let fault = pick_fault(&mut rng, mix);
            let target = match fault {
                Fault::LeaderCut => match leader_index(&c) {
                    Some(leader) => leader,
                    None => continue,
                },
                _ => rng.below(6) as usize,
            };
            // One fault per process, and one leader cut at a time (the
            // proxies' faults are lifted together).
            if chosen
                .iter()
                .any(|(f, t)| *t == target || (*f == Fault::LeaderCut && fault == Fault::LeaderCut))
            {
                continue;
            }
            chosen.push((fault, target));
        }
        let held = millis(&mut rng, 200, 3_000);
        let names: Vec<String> = chosen
            .iter()
            .map(|(fault, target)| format!("{fault:?} {}", process(&mut c, *target).name))
            .collect();
        let names = names.join(" + ");
        eprintln!("chaos: {names} for {held:?}");
        eprintln!("chaos: at {:?}", started.elapsed());
        for (fault, target) in &chosen {
            begin(&mut c, bases, *fault, *target, &mut faults);
        }
        std::thread::sleep(held);
        for (fault, target) in &chosen {
            end(&mut c, bases, *fault, *target);
        }
        match wait_healed(
            &mut c,
            bases,
            Duration::from_secs(90),
            mix.replication,
            &mut faults.exited,
        ) {
            Ok(took) => slowest_heal = slowest_heal.max(took),
            Err(status) => {
                let why = format!("the cluster did not heal within 90 s of {names}: {status}");
                keep_logs(&c, seed, &why);
                panic!("{why}")
            }
        }
    }
    eprintln!("chaos: slowest heal {slowest_heal:?}");
    faults
}

/// Copies every node's log to `<target>/tmp/chaos-logs/<seed>/` (the
/// cluster's directory goes with the test), for reading after a failed run.
fn keep_logs(cluster: &Cluster, seed: u64, findings: &str) {
    let to = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("chaos-logs")
        .join(seed.to_string());
    std::fs::create_dir_all(&to).unwrap();
    for entry in std::fs::read_dir(cluster.dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "log") {
            std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
        }
    }
    // The assertion's message may be cut short where CI output is kept;
    // the whole list stays beside the logs it is to be read with.
    std::fs::write(to.join("findings.txt"), findings).unwrap();
    eprintln!("chaos: logs kept in {}", to.display());
}

/// GETs `id` until an answer that is not a 503 (a copy still opening).
fn item_status(cluster: &Cluster, id: u64) -> u16 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = cluster.get(&format!("/v1/collections/c/items/{id}"));
        if status == 200 || status == 404 || Instant::now() > deadline {
            if status == 200 {
                assert_eq!(body["label"], json!(format!("l{}", id % 5)), "{body}");
            }
            return status;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The wall-clock time of `at` (UTC, time of day), to find it in the logs.
fn utc(at: Instant) -> String {
    let wall = std::time::SystemTime::now() - at.elapsed();
    let since_epoch = wall
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since_epoch.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        since_epoch.subsec_millis()
    )
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a number"))
    })
}

#[test]
fn chaos_kills_pauses_and_full_disks_lose_nothing() {
    let kills = env_u64("ENGRAM_CHAOS_KILLS").unwrap_or(10);
    // `make chaos` turns "disk full" on; `make test` leaves it off while
    // that fault still loses writes in rare runs (docs/reliability.md).
    let disk_full = env_u64("ENGRAM_CHAOS_DISK_FULL").unwrap_or(1) == 1;
    let reshard = env_u64("ENGRAM_CHAOS_RESHARD").unwrap_or(1) == 1;
    let mix = Mix {
        disk_full,
        partitions: env_u64("ENGRAM_CHAOS_PARTITIONS").unwrap_or(1) == 1,
        at_once: env_u64("ENGRAM_CHAOS_AT_ONCE").unwrap_or(1).clamp(1, 3) as usize,
        replication: env_u64("ENGRAM_CHAOS_REPLICATION").unwrap_or(2).clamp(1, 3) as usize,
    };
    let replication = mix.replication;
    let seed = env_u64("ENGRAM_CHAOS_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    });
    eprintln!(
        "chaos: seed {seed} (ENGRAM_CHAOS_SEED replays it), {kills} kills, {mix:?}, replication {replication}"
    );
    // Maintenance every second with small tiers: segments (sealed every
    // 400 rows) merge and deleted rows are compacted away throughout.
    let cluster = Cluster::launch(Launch {
        index_extra: "compaction_interval_s = 1\nmerge_floor_rows = 200",
        net_faults: mix.partitions,
        sections: "[curation]\nreceipt_check_s = 1\n",
        ..Launch::default()
    });
    let (status, body) = cluster.post(
        "/v1/collections",
        &json!({"name": "c", "dim": DIM, "metric": "l2", "shards": SHARDS, "replication": replication}),
    );
    assert_eq!(status, 201, "{body:?}");
    let bases: Bases = RwLock::new(
        cluster
            .coordinators
            .iter()
            .map(|c| c.base.clone())
            .collect(),
    );
    let http = client_with_key(&cluster.api_key, Duration::from_secs(10));
    let worker_dirs: Vec<std::path::PathBuf> =
        cluster.workers.iter().map(|w| w.data_dir()).collect();
    let cluster = Mutex::new(cluster);
    let ledger = Mutex::new(Ledger::default());
    let stop = AtomicBool::new(false);
    let next_id = AtomicU64::new(0);
    let started = Instant::now();
    let (faults, reshards) = std::thread::scope(|s| {
        let w = s.spawn(|| writer(&http, &bases, &ledger, seed ^ 1, &stop, &next_id));
        let r = s.spawn(|| reader(&http, &bases, &ledger, seed ^ 2, &stop));
        let a = s.spawn(|| auditor(&http, &bases, &ledger, &worker_dirs, &stop));
        let m = s.spawn(|| {
            if reshard {
                resharder(&http, &bases, &stop)
            } else {
                0
            }
        });
        let stopper = scopeguard(&stop);
        let faults = controller(&cluster, &bases, kills, seed, mix);
        drop(stopper);
        w.join().expect("writer panicked");
        r.join().expect("reader panicked");
        a.join().expect("auditor panicked");
        (faults, m.join().expect("resharder panicked"))
    });
    let ran = started.elapsed();
    let cluster = cluster.into_inner().unwrap();
    let ledger = ledger.into_inner().unwrap();

    // The final check reads every id the ledger is certain about.
    let mut lost = Vec::new();
    let mut resurrected = ledger.resurrected.clone();
    let mut acked = 0u64;
    for (id, fate) in &ledger.fates {
        match fate {
            Fate::Added(at) => {
                acked += 1;
                let status = item_status(&cluster, *id);
                if status != 200 {
                    // 404: gone; 503 for 30 s: no copy of its shard answers.
                    lost.push(format!("{id}: GET {status}, added at {} UTC", utc(*at)));
                }
            }
            Fate::Deleted(_) => {
                acked += 1;
                let status = item_status(&cluster, *id);
                if status != 404 {
                    resurrected.insert(*id, format!("the final GET answered {status}"));
                }
            }
            Fate::AddUncertain | Fate::DeleteUncertain => {}
        }
    }
    let heals = cluster.heals();
    let line = format!(
        "chaos kills={} acked={acked} lost={} resurrected={} errors={} pauses={} disk_full={} partitions={} one_way={} leader_cuts={} at_once={} replication={replication} self_exits={} reshards={reshards} acked_ops={} queries={} partial={} unflagged={} erasures={} early_erasures={} heals_delta={} heals_segments={} heals_object_store={} heals_rows={} heal_bytes_delta={} heal_bytes_segments={} heal_bytes_object_store={} heal_bytes_rows={} seconds={}",
        faults.kills,
        lost.len(),
        resurrected.len(),
        ledger.errors,
        faults.pauses,
        faults.disk_full,
        faults.partitions,
        faults.one_way,
        faults.leader_cuts,
        mix.at_once,
        faults.exited,
        ledger.acked_ops,
        ledger.classifies,
        ledger.partial,
        ledger.unflagged.len(),
        ledger.erasures,
        ledger.early_erasures.len(),
        heals.delta,
        heals.segments,
        heals.object_store,
        heals.rows,
        heals.delta_bytes,
        heals.segments_bytes,
        heals.object_store_bytes,
        heals.rows_bytes,
        ran.as_secs()
    );
    println!("{line}");
    eprintln!("{line}");
    if !lost.is_empty()
        || !resurrected.is_empty()
        || !ledger.unflagged.is_empty()
        || !ledger.early_erasures.is_empty()
    {
        let findings = format!(
            "{line}\nlost: {lost:#?}\nresurrected: {resurrected:#?}\nunflagged: {:#?}\nearly erasures: {:#?}\n",
            ledger.unflagged, ledger.early_erasures
        );
        keep_logs(&cluster, seed, &findings);
    }
    assert!(lost.is_empty(), "acknowledged adds lost: {lost:?}");
    assert!(
        resurrected.is_empty(),
        "deleted ids came back: {resurrected:?}"
    );
    assert!(
        ledger.unflagged.is_empty(),
        "incomplete answers not flagged partial: {:?}",
        ledger.unflagged
    );
    assert!(
        ledger.early_erasures.is_empty(),
        "receipts said erased while a file held a deleted vector: {:?}",
        ledger.early_erasures
    );
    assert!(
        acked > 0 && ledger.classifies > 0,
        "the load never got through"
    );
}

/// Sets `stop` when dropped, also while the controller's panic unwinds,
/// so the clients end and the scope can report it.
fn scopeguard(stop: &AtomicBool) -> impl Drop + '_ {
    struct Guard<'a>(&'a AtomicBool);
    impl Drop for Guard<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    Guard(stop)
}
