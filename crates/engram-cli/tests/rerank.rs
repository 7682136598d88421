//! Re-rankers through the real server: an `http` re-ranker on a real
//! socket (a small server in this process whose faults are switched per
//! step: ok, slow, 5xx, malformed), the example re-ranker of
//! examples/rerankers/, and the built-in head trained by a job, stale
//! after a delete or relabel, listed by the unlearning receipt until it is
//! retrained without the rows.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const DIM: usize = 8;
const CLASSES: [&str; 3] = ["a", "b", "c"];

/// Class `c`'s centre: a one-hot vector, with a small wobble per item.
fn vector(class: usize, i: u64) -> Vec<f32> {
    (0..DIM)
        .map(|d| {
            let centre = if d == class { 1.0 } else { 0.0 };
            centre + ((i * 7 + d as u64 * 13) % 17) as f32 * 0.01
        })
        .collect()
}

/// What the stub re-ranker does with the next calls.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// Answers: the farthest neighbour's label wins.
    Ok,
    /// Answers as `Ok`, after 700 ms.
    Slow,
    Error,
    Malformed,
}

struct Stub {
    url: String,
    mode: Arc<Mutex<Mode>>,
    calls: Arc<AtomicUsize>,
    last: Arc<Mutex<Value>>,
}

impl Stub {
    /// Serves POST /rerank on a loopback port, one thread per connection.
    fn start() -> Stub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/rerank", listener.local_addr().unwrap());
        let mode = Arc::new(Mutex::new(Mode::Ok));
        let calls = Arc::new(AtomicUsize::new(0));
        let last = Arc::new(Mutex::new(Value::Null));
        let (m, c, l) = (mode.clone(), calls.clone(), last.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (m, c, l) = (m.clone(), c.clone(), l.clone());
                std::thread::spawn(move || serve(stream, &m, &c, &l));
            }
        });
        Stub {
            url,
            mode,
            calls,
            last,
        }
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

/// Answers requests on one keep-alive connection.
fn serve(
    stream: std::net::TcpStream,
    mode: &Mutex<Mode>,
    calls: &AtomicUsize,
    last: &Mutex<Value>,
) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut length = 0usize;
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            if header == "\r\n" {
                break;
            }
            let lower = header.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        calls.fetch_add(1, Ordering::SeqCst);
        let request: Value = serde_json::from_slice(&body).unwrap();
        *last.lock().unwrap() = request.clone();
        let current = *mode.lock().unwrap();
        let (status, answer) = match current {
            Mode::Ok | Mode::Slow => {
                if current == Mode::Slow {
                    std::thread::sleep(Duration::from_millis(700));
                }
                // The re-ranker's opinion: the neighbours' labels, but the
                // farthest neighbour's label wins.
                let results: Vec<Value> = request["queries"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|q| {
                        let neighbors = q["neighbors"].as_array().unwrap();
                        let far = neighbors.last().unwrap()["label"].as_str().unwrap();
                        let mut scores = serde_json::Map::new();
                        for n in neighbors {
                            scores.insert(n["label"].as_str().unwrap().into(), json!(0.01));
                        }
                        scores.insert(far.into(), json!(0.9));
                        scores.insert("zebra".into(), json!(0.05));
                        json!({ "scores": scores })
                    })
                    .collect();
                ("200 OK", json!({ "results": results }).to_string())
            }
            Mode::Error => (
                "503 Service Unavailable",
                "{\"error\":\"down\"}".to_string(),
            ),
            Mode::Malformed => (
                "200 OK",
                "{\"results\": [{\"scores\": {\"a\": -1}}]}".into(),
            ),
        };
        let response = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
            answer.len()
        );
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

/// A node with the stub (`stub`), the example (`example`, when given) and
/// the shipped config's head (`head`, mix 0.5), and collection `m` of 3
/// labelled clusters.
fn start(dir: &tempfile::TempDir, stub: &Stub, example: Option<&str>) -> Server {
    let config = write_config(dir.path(), "");
    let mut tables = format!(
        "[rerankers.stub]\nkind = \"http\"\nurl = \"{url}\"\ntimeout_ms = 400\nbreaker_failures = 3\nbreaker_open_s = 2\nmix = 1.0\n\n\
         [rerankers.stub_image]\nkind = \"http\"\nurl = \"{url}\"\ntimeout_ms = 5000\nsend_image = true\n",
        url = stub.url
    );
    if let Some(url) = example {
        tables.push_str(&format!(
            "\n[rerankers.example]\nkind = \"http\"\nurl = \"{url}\"\ntimeout_ms = 2000\nmix = 0.5\n"
        ));
    }
    append_config(&config, &tables);
    let server = Server::start_with_env(
        &config,
        &dir.path().join("data"),
        &[("ENGRAM_CURATION__RECEIPT_CHECK_S".into(), "1".into())],
    );
    let (status, body) = server.post(
        "/v1/collections",
        &json!({ "name": "m", "dim": DIM, "metric": "l2", "shards": 2, "default_k": 5 }),
    );
    assert_eq!(status, 201, "{body}");
    let items: Vec<Value> = (0..150u64)
        .map(|i| {
            let class = (i % 3) as usize;
            json!({ "id": i, "label": CLASSES[class], "vector": vector(class, i), "source": format!("s{}", i % 5) })
        })
        .collect();
    let (status, body) = server.post("/v1/collections/m/items", &json!({ "items": items }));
    assert_eq!(status, 200, "{body}");
    server
}

/// The re-ranker did not decide: `status` (fallback, skipped), with a
/// reason naming `why`.
fn assert_votes_decided(answer: &Value, status: &str, why: &str) {
    let rerank = &answer["rerank"];
    assert_eq!(rerank["status"], status, "{answer}");
    assert!(
        rerank["reason"].as_str().unwrap_or_default().contains(why),
        "{answer}"
    );
}

fn classify(server: &Server, class: usize, rerank: Value) -> Value {
    let mut body = json!({ "vector": vector(class, 1000), "k": 5 });
    if !rerank.is_null() {
        body["rerank"] = rerank;
    }
    let (status, answer) = server.post("/v1/collections/m/classify", &body);
    assert_eq!(status, 200, "{answer}");
    answer
}

#[test]
fn http_reranker_ok_fallbacks_breaker_and_batches() {
    let dir = tempfile::tempdir().unwrap();
    let stub = Stub::start();
    let server = start(&dir, &stub, None);

    // Without a re-ranker: the votes alone, no `rerank` in the answer.
    let votes = classify(&server, 0, Value::Null);
    assert_eq!(votes["label"], "a");
    assert!(votes.get("rerank").is_none(), "{votes}");

    // ok: the re-ranker decides (mix 1), the votes are kept beside.
    let answer = classify(&server, 0, json!("stub"));
    let rerank = &answer["rerank"];
    assert_eq!(rerank["status"], "ok", "{answer}");
    assert_eq!(rerank["name"], "stub");
    assert_eq!(rerank["kind"], "http");
    assert_eq!(rerank["vote_label"], "a");
    assert_eq!(answer["votes"], votes["votes"], "votes kept");
    assert_eq!(answer["neighbors"], votes["neighbors"], "neighbours kept");
    let far = answer["neighbors"][4]["label"].as_str().unwrap();
    assert_eq!(answer["label"], far, "the re-ranker's choice: {answer}");
    assert_eq!(rerank["reranker_label"], far);
    let total: f64 = rerank["scores"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_f64().unwrap())
        .sum();
    assert!((total - 1.0).abs() < 1e-9, "scores normalised: {rerank}");
    assert!(rerank["latency_ms"].as_f64().unwrap() > 0.0);
    // What it was sent: the contract.
    let sent = stub.last.lock().unwrap().clone();
    assert_eq!(sent["reranker"], "stub");
    assert_eq!(sent["collection"], "m");
    assert_eq!(sent["k"], 5);
    let query = &sent["queries"][0];
    assert_eq!(query["vector"].as_array().unwrap().len(), DIM);
    assert!(query.get("image").is_none(), "send_image is off");
    assert_eq!(query["neighbors"].as_array().unwrap().len(), 5);
    for field in ["id", "label", "distance", "weight", "vote", "source"] {
        assert!(
            query["neighbors"][0].get(field).is_some(),
            "{field}: {query}"
        );
    }
    assert_eq!(query["votes"], votes["votes"]);

    // A blocked class is removed from the re-ranker's scores too.
    let (status, body) = server.post(
        "/v1/collections/m/interventions",
        &json!({ "action": "block_class", "label": "zebra", "reason": "not a class here" }),
    );
    assert_eq!(status, 200, "{body}");
    let answer = classify(&server, 0, json!("stub"));
    assert!(
        answer["rerank"]["scores"].get("zebra").is_none(),
        "{answer}"
    );

    // A batch calls the re-ranker once.
    let before = stub.calls();
    let queries: Vec<Value> = (0..6)
        .map(|i| json!({ "vector": vector(i % 3, 2000 + i as u64) }))
        .collect();
    let (status, batch) = server.post(
        "/v1/collections/m/classify/batch",
        &json!({ "queries": queries, "k": 5, "rerank": "stub" }),
    );
    assert_eq!(status, 200, "{batch}");
    assert_eq!(stub.calls() - before, 1, "one call for the batch");
    assert_eq!(
        stub.last.lock().unwrap()["queries"]
            .as_array()
            .unwrap()
            .len(),
        6
    );
    for result in batch["results"].as_array().unwrap() {
        assert_eq!(result["rerank"]["status"], "ok", "{result}");
    }

    // timeout: the votes decide, the answer says why, within the budget.
    stub.set(Mode::Slow);
    let started = Instant::now();
    let answer = classify(&server, 1, json!("stub"));
    assert!(
        started.elapsed() < Duration::from_millis(650),
        "waited past the timeout"
    );
    assert_votes_decided(&answer, "fallback", "400 ms");
    assert_eq!(answer["label"], "b", "the votes decided");
    assert!(answer["rerank"]["scores"].as_object().unwrap().is_empty());

    // 5xx and a malformed answer: fallback with the reason.
    stub.set(Mode::Error);
    let answer = classify(&server, 1, json!("stub"));
    assert_votes_decided(&answer, "fallback", "HTTP 503");
    stub.set(Mode::Malformed);
    let answer = classify(&server, 2, json!("stub"));
    assert_votes_decided(&answer, "fallback", "malformed");
    assert_eq!(answer["label"], "c");

    // Three failures in a row opened the breaker: no call is made while
    // it is open, the answer says so, and the metric shows it.
    stub.set(Mode::Ok);
    let before = stub.calls();
    let answer = classify(&server, 0, json!("stub"));
    assert_votes_decided(&answer, "fallback", "breaker open");
    assert_eq!(stub.calls(), before, "not called while open");
    let metrics = server.metrics_text();
    assert!(
        metrics.contains("engram_rerank_breaker_open{reranker=\"stub\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics
            .contains("engram_rerank_fallbacks_total{reason=\"breaker_open\",reranker=\"stub\"}")
    );
    assert!(
        metrics.contains("engram_rerank_fallbacks_total{reason=\"timeout\",reranker=\"stub\"} 1")
    );
    // After breaker_open_s one trial call closes it again.
    std::thread::sleep(Duration::from_millis(2_100));
    let answer = classify(&server, 0, json!("stub"));
    assert_eq!(answer["rerank"]["status"], "ok", "{answer}");
    assert!(
        server
            .metrics_text()
            .contains("engram_rerank_breaker_open{reranker=\"stub\"} 0")
    );

    // The collection's default, and `false` to do without it.
    let (status, body) = server.post(
        "/v1/collections/m/interventions",
        &json!({ "action": "set_reranker", "reranker": "stub", "reason": "second opinion" }),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(classify(&server, 0, Value::Null)["rerank"]["name"], "stub");
    assert!(classify(&server, 0, json!(false)).get("rerank").is_none());

    // Names only from the config: unknown names and `true` are 400s.
    for bad in [json!("nope"), json!(true), json!("http://127.0.0.1:1/x")] {
        let answer = server.post(
            "/v1/collections/m/classify",
            &json!({ "vector": vector(0, 1), "rerank": bad }),
        );
        assert_client_error(&answer, 400, "rerank");
    }
    let answer = server.post(
        "/v1/collections/m/interventions",
        &json!({ "action": "set_reranker", "reranker": "nope", "reason": "r" }),
    );
    assert_client_error(&answer, 400, "unknown re-ranker");
}

#[test]
fn the_example_reranker_answers_the_contract() {
    let python = repo_root().join(".venv/bin/python");
    let port = common::cluster::free_port();
    let mut example = std::process::Command::new(&python)
        .arg(repo_root().join("examples/rerankers/softmax_reranker.py"))
        .args(["--port", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let client = reqwest::blocking::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while client
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .is_err()
    {
        assert!(Instant::now() < deadline, "the example did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let dir = tempfile::tempdir().unwrap();
    let stub = Stub::start();
    let server = start(
        &dir,
        &stub,
        Some(&format!("http://127.0.0.1:{port}/rerank")),
    );
    for (class, name) in CLASSES.iter().enumerate() {
        let answer = classify(&server, class, json!("example"));
        assert_eq!(answer["rerank"]["status"], "ok", "{answer}");
        assert_eq!(answer["label"], *name, "{answer}");
        assert_eq!(answer["rerank"]["mix"], 0.5);
    }
    example.kill().unwrap();
    example.wait().unwrap();
    let answer = classify(&server, 0, json!("example"));
    assert_eq!(answer["rerank"]["status"], "fallback", "{answer}");
}

#[test]
fn head_is_trained_stale_after_a_delete_and_unlearned_by_retraining() {
    let dir = tempfile::tempdir().unwrap();
    let stub = Stub::start();
    let server = start(&dir, &stub, None);

    // Before training: skipped, the votes decide.
    let answer = classify(&server, 2, json!("head"));
    assert_votes_decided(&answer, "skipped", "train_head");
    assert_eq!(answer["label"], "c");

    // Only heads are trained; bad parameters are 400s.
    let bad = server.post(
        "/v1/collections/m/jobs",
        &json!({ "kind": "train_head", "reranker": "stub" }),
    );
    assert_client_error(&bad, 400, "only heads");
    let bad = server.post(
        "/v1/collections/m/jobs",
        &json!({ "kind": "train_head", "reranker": "head", "training": { "epochs": 0 } }),
    );
    assert_client_error(&bad, 400, "epochs");

    // 150 rows are two steps an epoch: more epochs than the default.
    let job = server.run_job(
        "m",
        &json!({ "kind": "train_head", "reranker": "head", "training": { "epochs": 100 } }),
    );
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["report"]["rows"], 150);
    assert_eq!(job["report"]["classes"], 3);
    assert!(
        job["report"]["train_accuracy"].as_f64().unwrap() > 0.95,
        "{job}"
    );
    for (class, name) in CLASSES.iter().enumerate() {
        let answer = classify(&server, class, json!("head"));
        let rerank = &answer["rerank"];
        assert_eq!(rerank["status"], "ok", "{answer}");
        assert_eq!(rerank["kind"], "head");
        assert_eq!(rerank["reranker_label"], *name, "{answer}");
        assert_eq!(answer["label"], *name);
        assert_eq!(rerank["head"]["stale"], false);
        assert_eq!(rerank["head"]["job"], job["id"]);
    }
    // A blocked class applies to the head's output: never predicted.
    let (status, body) = server.post(
        "/v1/collections/m/interventions",
        &json!({ "action": "block_class", "label": "c", "reason": "hide c" }),
    );
    assert_eq!(status, 200, "{body}");
    let answer = classify(&server, 2, json!("head"));
    assert_eq!(answer["rerank"]["status"], "ok", "{answer}");
    assert!(answer["rerank"]["scores"].get("c").is_none(), "{answer}");
    assert_ne!(answer["label"], "c");
    let (status, body) = server.post(
        "/v1/collections/m/interventions",
        &json!({ "action": "unblock_class", "label": "c", "reason": "back" }),
    );
    assert_eq!(status, 200, "{body}");

    // Unlearn class c: the head is stale (skipped, votes decide), and the
    // receipt lists it as a place until it is retrained.
    let (status, deleted) = server.post(
        "/v1/collections/m/items/delete",
        &json!({ "label": "c", "erase_within_s": 3600 }),
    );
    assert_eq!(status, 200, "{deleted}");
    let receipt = deleted["receipt"].as_u64().unwrap();
    let answer = classify(&server, 2, json!("head"));
    assert_votes_decided(&answer, "skipped", "stale");
    assert_eq!(answer["rerank"]["head"]["stale"], true);
    assert_ne!(answer["label"], "c", "the votes know no c");
    let path = format!("/v1/collections/m/unlearning/{receipt}");
    let (_, status) = server.get(&path);
    let head_place = |status: &Value| {
        status["places"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["kind"] == "head" && p["reranker"] == "head")
    };
    assert!(head_place(&status), "{status}");
    assert_eq!(status["status"], "deleted");

    // Erasing now retrains the head (a train_head job started by the
    // node); then no place is left and nothing predicts c.
    let (code, body) = server.post(&format!("{path}/erase"), &json!({}));
    assert_eq!(code, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        let (_, status) = server.get(&path);
        if status["status"] == "erased" {
            break status;
        }
        assert!(Instant::now() < deadline, "not erased: {status}");
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(!head_place(&status));
    let (_, jobs) = server.get("/v1/collections/m/jobs");
    let retrained = jobs["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["kind"] == "train_head" && j["state"] == "succeeded")
        .count();
    assert_eq!(retrained, 2, "the node retrained the head: {jobs}");
    for class in 0..3 {
        let answer = classify(&server, class, json!("head"));
        assert_eq!(answer["rerank"]["status"], "ok", "{answer}");
        assert!(answer["rerank"]["scores"].get("c").is_none(), "{answer}");
        assert_ne!(answer["label"], "c");
        assert_ne!(answer["rerank"]["reranker_label"], "c");
    }

    // A relabel makes it stale too; a retrained head is current again.
    let (status, body) = server.post(
        "/v1/collections/m/interventions",
        &json!({ "action": "relabel", "id": 0, "label": "b", "reason": "fix" }),
    );
    assert_eq!(status, 200, "{body}");
    let answer = classify(&server, 0, json!("head"));
    assert_votes_decided(&answer, "skipped", "relabel");
    let job = server.run_job(
        "m",
        &json!({ "kind": "train_head", "reranker": "head", "training": { "epochs": 5 } }),
    );
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["params"]["training"]["epochs"], 5);
    assert_eq!(
        classify(&server, 0, json!("head"))["rerank"]["status"],
        "ok"
    );

    // The head survives a restart (checksummed file on the embedded node).
    let mut server = server;
    server.stop();
    let server = Server::start_with_env(
        &server.config,
        &server.data_dir,
        &[("ENGRAM_CURATION__RECEIPT_CHECK_S".into(), "1".into())],
    );
    let answer = classify(&server, 0, json!("head"));
    assert_eq!(answer["rerank"]["status"], "ok", "{answer}");
    assert_eq!(answer["rerank"]["head"]["job"], job["id"]);
    let metrics = server.metrics_text();
    assert!(
        metrics.contains(
            "engram_rerank_decisions_total{kind=\"head\",reranker=\"head\",status=\"ok\"}"
        ),
        "{metrics}"
    );
}

#[test]
fn an_image_query_reaches_a_reranker_that_asks_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let stub = Stub::start();
    let server = start(&dir, &stub, None);
    let (status, body) = server.post(
        "/v1/collections",
        &json!({ "name": "pics", "embedder": "default", "shards": 1 }),
    );
    assert_eq!(status, 201, "{body}");
    let data = fashion_mnist_dir();
    let train = engram_ingest::idx::read_images(&data.join("train-images-idx3-ubyte.gz")).unwrap();
    let items: Vec<Value> = (0..12)
        .map(|i| json!({ "id": i, "label": CLASSES[i % 3], "image": fashion_png(&train, i) }))
        .collect();
    let (status, body) = server.post("/v1/collections/pics/items", &json!({ "items": items }));
    assert_eq!(status, 200, "{body}");
    let image = fashion_png(&train, 20);
    let ask = |rerank: &str| {
        let (status, answer) = server.post(
            "/v1/collections/pics/classify",
            &json!({ "image": image, "k": 5, "rerank": rerank }),
        );
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["rerank"]["status"], "ok", "{answer}");
        stub.last.lock().unwrap()["queries"][0].clone()
    };
    // send_image: the image as the query sent it, beside its embedding.
    let sent = ask("stub_image");
    assert_eq!(sent["image"], json!(image));
    assert_eq!(sent["vector"].as_array().unwrap().len(), 1280);
    // Without it, the embedding only.
    assert!(ask("stub").get("image").is_none());
}
