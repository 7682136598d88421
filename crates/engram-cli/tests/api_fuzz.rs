//! API fuzzing: 10,000 generated malformed requests against every endpoint
//! of a real embedded server (bad JSON, wrong types, huge and non-finite
//! numbers, deep nesting, wrong dimensions, random bytes as images, unknown
//! fields, odd path parameters, wrong content types, oversize bodies).
//! Every answer must be a 4xx with the JSON error body (or a 2xx for a
//! harmless read), the server must stay up, and the stored data must not
//! change. API keys are on: each request goes without a key, with a wrong
//! one, the read-only one or the full one (without a right key it must be
//! 401 on every route but the open probes). Prints
//! `fuzz requests=<n> status5xx=<x> crashes=<c> unkeyed=<u>`.
//!
//! Requests are malformed by construction: a generated body that the API
//! could accept is never sent to an endpoint that writes, so "nothing
//! changed" is a real check, not a coincidence.

#![allow(clippy::unwrap_used)]

mod common;

use reqwest::Method;
use serde_json::{Value, json};

use common::*;

const REQUESTS: usize = 10_000;
const FULL_KEY: &str = "fuzz-full-key-0123456789";
const READ_KEY: &str = "fuzz-read-key-0123456789";
/// Routes open without a key.
const OPEN: [&str; 2] = ["/healthz", "/readyz"];
const DIM: usize = 4;

/// xorshift64*: reproducible, and enough for picking cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// A JSON value of a random kind (rarely the right one).
fn any_value(rng: &mut Rng, depth: usize) -> Value {
    match rng.below(if depth > 3 { 7 } else { 9 }) {
        0 => Value::Null,
        1 => json!(rng.below(2) == 0),
        2 => json!(-(rng.below(1000) as i64) - 1),
        3 => json!(u64::MAX),
        4 => json!(1.5e300),
        5 => json!("x".repeat(rng.below(5000))),
        6 => json!(""),
        7 => Value::Array(
            (0..rng.below(5))
                .map(|_| any_value(rng, depth + 1))
                .collect(),
        ),
        _ => {
            let mut map = serde_json::Map::new();
            for _ in 0..rng.below(4) {
                map.insert(format!("k{}", rng.below(9)), any_value(rng, depth + 1));
            }
            Value::Object(map)
        }
    }
}

/// Makes a request body.
type BodyMaker = dyn Fn(&mut Rng) -> Vec<u8>;

/// Text that is not valid JSON, or JSON the parser must refuse.
fn broken_json(rng: &mut Rng) -> Vec<u8> {
    let cases: [&BodyMaker; 8] = [
        &|r| {
            let n = r.below(300);
            r.bytes(n)
        },
        &|_| b"{\"items\": [".to_vec(),
        &|_| b"{\"vector\": [NaN, 1, 2, 3]}".to_vec(),
        &|_| b"{\"vector\": [1e999, 0, 0, 0]}".to_vec(),
        &|_| b"{\"k\": 99999999999999999999999999}".to_vec(),
        &|r| {
            let depth = 200 + r.below(5000);
            let mut s = "[".repeat(depth);
            s.push_str(&"]".repeat(depth));
            s.into_bytes()
        },
        &|_| "{\"label\": \"\u{0}\u{ffff}\"".as_bytes().to_vec(),
        &|_| vec![0xff, 0xfe, b'{', b'}'],
    ];
    let case = rng.below(cases.len());
    cases[case](rng)
}

/// A valid body for `kind` with one required part broken.
fn mutated(rng: &mut Rng, kind: &str) -> Value {
    let bad_vector = |r: &mut Rng| -> Value {
        match r.below(5) {
            0 => json!(vec![0.5; DIM + 1 + r.below(3)]),
            1 => json!([]),
            2 => json!(["a", "b", "c", "d"]),
            3 => json!(vec![1e39; DIM]),
            _ => any_value(r, 0),
        }
    };
    let bad_image = |r: &mut Rng| -> Value {
        use base64::Engine as _;
        match r.below(3) {
            0 => json!(base64::engine::general_purpose::STANDARD.encode(r.bytes(200))),
            1 => json!("not base64 !!"),
            _ => {
                json!(base64::engine::general_purpose::STANDARD.encode(b"\x89PNG\r\n\x1a\n broken"))
            }
        }
    };
    match kind {
        "items" => match rng.below(6) {
            0 => json!({"items": [{"id": 1, "label": "a", "vector": bad_vector(rng)}]}),
            1 => {
                json!({"items": [{"id": any_value(rng, 1), "label": "a", "vector": [0.1, 0.2, 0.3, 0.4]}]})
            }
            2 => json!({"items": [{"id": 1, "label": "", "vector": [0.1, 0.2, 0.3, 0.4]}]}),
            3 => json!({"items": [{"id": 1, "label": "a", "image": bad_image(rng)}]}),
            4 => {
                json!({"items": [{"id": 1, "label": "a", "vector": [0.1, 0.2, 0.3, 0.4], "weight": -3.0}]})
            }
            _ => json!({"items": any_value(rng, 1), "surprise": true}),
        },
        "query" => match rng.below(6) {
            0 => json!({"vector": bad_vector(rng), "k": 5}),
            1 => json!({"vector": [0.1, 0.2, 0.3, 0.4], "k": any_value(rng, 1)}),
            2 => json!({"vector": [0.1, 0.2, 0.3, 0.4], "k": 0}),
            3 => json!({"image": bad_image(rng)}),
            4 => json!({"vector": [0.1, 0.2, 0.3, 0.4], "rule": any_value(rng, 1)}),
            _ => json!({"queries": any_value(rng, 1)}),
        },
        "collection" => match rng.below(4) {
            0 => json!({"name": "n/../x", "dim": 4}),
            1 => json!({"name": "ok", "dim": any_value(rng, 1)}),
            2 => json!({"name": "ok", "dim": 0}),
            _ => json!({"name": any_value(rng, 1), "dim": 4, "metric": "manhattan"}),
        },
        "delete" => match rng.below(3) {
            0 => json!({"ids": any_value(rng, 1), "label": 5}),
            1 => json!({"ids": [1], "label": 5}),
            _ => json!({"nothing": true}),
        },
        "job" => match rng.below(4) {
            0 => json!({"kind": "ingest"}),
            1 => json!({"kind": "prune", "k": 0}),
            2 => json!({"kind": "teleport"}),
            _ => {
                json!({"kind": "ingest", "uri": "ftp://nowhere/x", "batch_rows": any_value(rng, 1)})
            }
        },
        // Never a valid count other than the current one (2): a
        // resharding would really happen.
        "reshard" => match rng.below(4) {
            0 => json!({"shards": any_value(rng, 1)}),
            1 => json!({"shards": 0}),
            2 => json!({"shards": 2, "also": any_value(rng, 1)}),
            _ => json!({"shards": 5000}),
        },
        "intervention" => match rng.below(3) {
            0 => json!({"kind": "reweight", "weight": "heavy"}),
            1 => json!({"kind": any_value(rng, 1)}),
            _ => json!({"kind": "relabel", "id": any_value(rng, 1)}),
        },
        // Never a usable location with a valid request: a snapshot or a
        // restore would really happen.
        "snapshot" => match rng.below(6) {
            0 => json!({"uri": 5, "id": []}),
            1 => json!({"uri": "ftp://x/y", "id": "s1"}),
            2 => json!({"uri": "s3:///no-bucket", "id": "s1"}),
            3 => json!({"uri": "x".repeat(300 + rng.below(5000)), "id": "s1"}),
            4 => json!({"uri": "/tmp/engram-fuzz", "surprise": any_value(rng, 1)}),
            _ => json!({"id": any_value(rng, 1)}),
        },
        _ => match rng.below(3) {
            0 => json!({"min_deleted_fraction": any_value(rng, 1), "to": "x"}),
            1 => json!({"min_deleted_fraction": 7.5}),
            _ => json!({"unknown_field": any_value(rng, 1)}),
        },
    }
}

/// (method, path template, body kind); `{c}` is a collection, `{id}` an id.
const ENDPOINTS: &[(&str, &str, &str)] = &[
    ("POST", "/v1/collections", "collection"),
    ("GET", "/v1/collections", ""),
    ("GET", "/v1/collections/{c}", ""),
    ("DELETE", "/v1/collections/{x}", ""),
    ("POST", "/v1/collections/{c}/items", "items"),
    ("GET", "/v1/collections/{c}/items/{id}", ""),
    ("POST", "/v1/collections/{c}/items/delete", "delete"),
    ("POST", "/v1/collections/{c}/search", "query"),
    ("POST", "/v1/collections/{c}/classify", "query"),
    ("POST", "/v1/collections/{c}/classify/batch", "query"),
    ("POST", "/v1/collections/{c}/embed", "query"),
    ("POST", "/v1/collections/{c}/compact", "other"),
    ("POST", "/v1/collections/{c}/reshard", "reshard"),
    ("POST", "/v1/collections/{c}/interventions", "intervention"),
    ("GET", "/v1/collections/{c}/interventions", ""),
    ("POST", "/v1/collections/{c}/jobs", "job"),
    ("GET", "/v1/collections/{c}/jobs", ""),
    ("GET", "/v1/collections/{c}/jobs/{id}", ""),
    ("POST", "/v1/collections/{c}/jobs/{id}/cancel", ""),
    ("POST", "/v1/collections/{c}/jobs/{id}/resume", ""),
    ("GET", "/v1/collections/{c}/pruning", ""),
    ("DELETE", "/v1/collections/{x}/pruning", ""),
    ("GET", "/v1/collections/{c}/unlearning", ""),
    ("GET", "/v1/collections/{c}/unlearning/{id}", ""),
    ("POST", "/v1/collections/{c}/unlearning/{id}/erase", ""),
    ("GET", "/v1/cluster", ""),
    ("POST", "/v1/cluster/coordinators", "other"),
    ("DELETE", "/v1/cluster/coordinators/{id}", ""),
    ("GET", "/v1/cluster/rebalance", ""),
    ("POST", "/v1/cluster/moves", "other"),
    ("POST", "/v1/snapshots", "snapshot"),
    ("GET", "/v1/snapshots", ""),
    ("POST", "/v1/snapshots/restore", "snapshot"),
    ("GET", "/v1/openapi.json", ""),
    ("GET", "/healthz", ""),
    ("GET", "/readyz", ""),
    ("GET", "/metrics", ""),
];

fn odd_segment(rng: &mut Rng) -> String {
    let cases = [
        "nope".to_string(),
        "%00".to_string(),
        "..".to_string(),
        "%2e%2e%2fetc".to_string(),
        "a".repeat(3000),
        "%F0%9F%92%A9".to_string(),
        "-1".to_string(),
        "18446744073709551616".to_string(),
        "1e400".to_string(),
        "NaN".to_string(),
        " ".to_string(),
    ];
    rng.pick(&cases).clone()
}

/// What must not change: the collections, fz's items, labels, curation
/// and an answer.
fn state(server: &Server) -> Value {
    let (_, list) = server.get("/v1/collections");
    let (_, info) = server.get("/v1/collections/fz");
    let (_, interventions) = server.get("/v1/collections/fz/interventions");
    let (_, answer) = server.post(
        "/v1/collections/fz/search",
        &json!({"vector": [0.3, 0.1, 0.2, 0.9], "k": 10}),
    );
    json!({"list": list, "items": info["items"], "labels": info["labels"],
           "interventions": interventions, "answer": answer["neighbors"]})
}

#[test]
fn malformed_requests_get_4xx_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "max_body_bytes = 1048576");
    let keys = [
        ("ENGRAM_SECURITY__API_KEY".to_string(), FULL_KEY.to_string()),
        (
            "ENGRAM_SECURITY__READ_ONLY_API_KEY".to_string(),
            READ_KEY.to_string(),
        ),
    ];
    let mut server = Server::start_with_env(&config, &dir.path().join("data"), &keys);
    // The harness's own calls (setup, the state checks) use the full key.
    server.http = keyed_client(Some(FULL_KEY));
    let (status, _) = server.post(
        "/v1/collections",
        &json!({"name": "fz", "dim": DIM, "metric": "l2", "shards": 2}),
    );
    assert_eq!(status, 201);
    let items: Vec<Value> = (0..50u64)
        .map(|i| json!({"id": i, "label": format!("c{}", i % 3), "vector": [i as f32, 1.0, 0.5, 0.25]}))
        .collect();
    assert_eq!(
        server
            .post("/v1/collections/fz/items", &json!({"items": items}))
            .0,
        200
    );
    let before = state(&server);

    let http = keyed_client(None);
    let mut rng = Rng(0x5eed_f00d_dead_beef);
    let (mut server_errors, mut crashes, mut unkeyed) = (Vec::new(), 0usize, 0usize);
    for n in 0..REQUESTS {
        let (method, template, kind) = *rng.pick(ENDPOINTS);
        // Mostly the full key, so that most requests reach the handlers.
        let key = *rng.pick(&[
            None,
            Some("wrong-key-0123456789abc"),
            Some(READ_KEY),
            Some(FULL_KEY),
            Some(FULL_KEY),
            Some(FULL_KEY),
        ]);
        let collection = if rng.below(4) == 0 {
            odd_segment(&mut rng)
        } else {
            "fz".to_string()
        };
        let id = if rng.below(2) == 0 {
            odd_segment(&mut rng)
        } else {
            rng.below(100).to_string()
        };
        let path = template
            .replace("{c}", &collection)
            // Deleting goes only to names that do not exist.
            .replace("{x}", &odd_segment(&mut rng))
            .replace("{id}", &id);
        let (body, content_type): (Vec<u8>, &str) = match (kind, rng.below(10)) {
            (_, 0) => (broken_json(&mut rng), "application/json"),
            (_, 1) => (
                rng.bytes(64),
                *rng.pick(&[
                    "text/plain",
                    "application/octet-stream",
                    "multipart/form-data",
                ]),
            ),
            (_, 2) if n % 500 == 0 => (vec![b' '; 1_100_000], "application/json"),
            ("", _) => (Vec::new(), "application/json"),
            (kind, _) => (
                serde_json::to_vec(&mutated(&mut rng, kind)).unwrap(),
                "application/json",
            ),
        };
        let url = format!("{}{path}", server.base);
        let mut request = http
            .request(Method::from_bytes(method.as_bytes()).unwrap(), &url)
            .header("content-type", content_type)
            .body(body.clone());
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        match request.send() {
            Ok(answer) => {
                let status = answer.status().as_u16();
                let text = answer.text().unwrap_or_default();
                if !matches!(key, Some(READ_KEY | FULL_KEY)) && !OPEN.contains(&template) {
                    assert_eq!(
                        status, 401,
                        "{method} {path:.200} without a right key: {text:.300}"
                    );
                    unkeyed += 1;
                }
                if status >= 500 {
                    server_errors.push(format!(
                        "{method} {} -> {status} {text:.300} (body {:.200})",
                        &path[..path.len().min(200)],
                        String::from_utf8_lossy(&body)
                    ));
                } else if (400..500).contains(&status) {
                    let parsed: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                    assert!(
                        parsed["error"]["code"].is_string(),
                        "{method} {path} -> {status} without a JSON error body: {text:.300}"
                    );
                }
            }
            Err(e) => {
                if !server.healthy() {
                    crashes += 1;
                    server_errors.push(format!("the server died on {method} {path:.200}: {e}"));
                    break;
                }
            }
        }
    }
    println!(
        "fuzz requests={REQUESTS} status5xx={} crashes={crashes} unkeyed={unkeyed}",
        server_errors.len()
    );
    assert!(unkeyed > REQUESTS / 5, "{unkeyed}");
    assert_eq!(crashes, 0, "{server_errors:?}");
    assert!(
        server_errors.is_empty(),
        "{} 5xx answers, e.g. {:#?}",
        server_errors.len(),
        &server_errors[..server_errors.len().min(10)]
    );
    assert!(server.healthy());
    assert_eq!(state(&server), before, "stored data changed");
    server.stop();
}

/// A client sending `key` as a bearer token on every request, if given.
fn keyed_client(key: Option<&str>) -> reqwest::blocking::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(key) = key {
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {key}").parse().unwrap(),
        );
    }
    reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .pool_idle_timeout(engram_meta::serve::CLIENT_POOL_IDLE)
        .default_headers(headers)
        .build()
        .unwrap()
}
