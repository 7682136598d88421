//! The public HTTP API of the real server on loopback, with the real model.

mod common;

use common::*;
use serde_json::{Value, json};

fn vector_collection(server: &Server, name: &str, dim: usize, metric: &str) {
    let (status, body) = server.post(
        "/v1/collections",
        &json!({ "name": name, "dim": dim, "metric": metric, "shards": 8 }),
    );
    assert_eq!(status, 201, "{body}");
}

fn start(extra_limits: &str) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let config = write_config(dir.path(), extra_limits);
    let server = Server::start(&config, &dir.path().join("data"));
    (dir, server)
}

#[test]
fn collections_items_search_classify_and_delete() {
    let (_dir, server) = start("");
    vector_collection(&server, "pts", 2, "l2");
    assert_client_error(
        &server.post("/v1/collections", &json!({ "name": "pts", "dim": 2 })),
        409,
        "duplicate",
    );

    // Class a around (0, 0), class b around (10, 0).
    let mut items = Vec::new();
    for i in 0..20u64 {
        let (label, x) = if i < 10 { ("a", 0.0) } else { ("b", 10.0) };
        items.push(json!({ "id": i, "label": label, "vector": [x + (i % 10) as f32 * 0.1, 0.0], "source": format!("file{}", i % 2) }));
    }
    let (status, body) = server.post("/v1/collections/pts/items", &json!({ "items": items }));
    assert_eq!((status, body["added"].as_u64()), (200, Some(20)), "{body}");

    let (status, info) = server.get("/v1/collections/pts");
    assert_eq!(status, 200);
    assert_eq!(info["items"], 20);
    assert_eq!(info["labels"], json!({ "a": 10, "b": 10 }));
    assert_eq!(info["metric"], "l2");
    let (_, list) = server.get("/v1/collections");
    assert_eq!(list["collections"][0]["name"], "pts");

    let (status, item) = server.get("/v1/collections/pts/items/13");
    assert_eq!(status, 200);
    assert_eq!(
        item,
        json!({ "id": 13, "label": "b", "weight": 1.0, "source": "file1" })
    );

    let (status, found) = server.post(
        "/v1/collections/pts/search",
        &json!({ "vector": [10.25, 0.0], "k": 3, "search_list_size": 20 }),
    );
    assert_eq!(status, 200, "{found}");
    let ids: Vec<u64> = found["neighbors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, vec![12, 13, 11]);
    assert_eq!(found["partial"], false);
    assert!(
        (found["neighbors"][0]["distance"].as_f64().unwrap() - 0.0025).abs() < 1e-4,
        "squared L2"
    );

    for rule in ["rank", "softmax", "distance", "plurality"] {
        let (status, d) = server.post(
            "/v1/collections/pts/classify",
            &json!({ "vector": [9.0, 0.0], "k": 5, "rule": rule }),
        );
        assert_eq!(status, 200, "{d}");
        assert_eq!(d["label"], "b", "{rule}");
        assert_eq!(d["neighbors"].as_array().unwrap().len(), 5);
        let first = &d["neighbors"][0];
        for field in ["id", "label", "distance", "weight", "vote", "rank"] {
            assert!(!first[field].is_null(), "neighbour lacks {field}: {first}");
        }
        let votes: f64 = d["votes"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_f64().unwrap())
            .sum();
        assert!(
            (d["confidence"].as_f64().unwrap() - d["votes"]["b"].as_f64().unwrap() / votes).abs()
                < 1e-9
        );
    }
    // Rank voting, k = 4: ranks 0 and 1 are a (1/2 + 1/3), ranks 2 and 3 are b (1/4 + 1/5).
    let (_, d) = server.post(
        "/v1/collections/pts/classify",
        &json!({ "vector": [4.0, 0.0], "k": 4, "alpha": 2 }),
    );
    assert_eq!(d["label"], "a");
    // exclude_ids drops the query's own neighbours and still returns k.
    let (_, d) = server.post(
        "/v1/collections/pts/classify",
        &json!({ "vector": [0.0, 0.0], "k": 3, "exclude_ids": [0, 1] }),
    );
    let ids: Vec<u64> = d["neighbors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, vec![2, 3, 4]);
    // Batches: each query its own exclusions.
    let (status, batch) = server.post(
        "/v1/collections/pts/classify/batch",
        &json!({ "queries": [ { "vector": [0.0, 0.0], "exclude_ids": [0] }, { "vector": [10.0, 0.0] } ], "k": 2, "rule": "plurality" }),
    );
    assert_eq!(status, 200, "{batch}");
    assert_eq!(batch["results"][0]["neighbors"][0]["id"], 1);
    assert_eq!(batch["results"][1]["neighbors"][0]["id"], 10);
    assert_eq!(batch["results"][1]["label"], "b");

    // Upsert by id replaces label and vector; weight multiplies the vote.
    server.post(
        "/v1/collections/pts/items",
        &json!({ "items": [ { "id": 0, "label": "c", "vector": [0.0, 0.0], "weight": 0.5 } ] }),
    );
    let (_, item) = server.get("/v1/collections/pts/items/0");
    assert_eq!(
        (item["label"].as_str(), item["weight"].as_f64()),
        (Some("c"), Some(0.5))
    );
    let (_, d) = server.post(
        "/v1/collections/pts/classify",
        &json!({ "vector": [0.0, 0.0], "k": 1, "rule": "plurality" }),
    );
    assert_eq!(d["votes"]["c"], 0.5);

    // Deletes by id, source and label; none is ever returned again.
    let (_, del) = server.post(
        "/v1/collections/pts/items/delete",
        &json!({ "ids": [0, 1, 999] }),
    );
    assert_eq!(del["deleted"], 2);
    let (_, del) = server.post(
        "/v1/collections/pts/items/delete",
        &json!({ "source": "file0" }),
    );
    assert_eq!(del["deleted"], 9, "even ids 2..18 remain from file0");
    let (_, del) = server.post("/v1/collections/pts/items/delete", &json!({ "label": "b" }));
    assert_eq!(del["deleted"], 5);
    let (_, found) = server.post(
        "/v1/collections/pts/search",
        &json!({ "vector": [5.0, 0.0], "k": 100 }),
    );
    let ids: Vec<u64> = found["neighbors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, vec![9, 7, 5, 3]);
    assert_client_error(
        &server.get("/v1/collections/pts/items/0"),
        404,
        "deleted item",
    );
    let (_, info) = server.get("/v1/collections/pts");
    assert_eq!(info["items"], 4);
    assert_eq!(info["labels"], json!({ "a": 4 }));

    let (status, _) = server.delete("/v1/collections/pts");
    assert_eq!(status, 204);
    assert_client_error(
        &server.get("/v1/collections/pts"),
        404,
        "deleted collection",
    );
    assert_client_error(&server.delete("/v1/collections/pts"), 404, "deleted twice");
}

#[test]
fn bad_input_gets_a_json_4xx_and_stores_nothing() {
    let (_dir, server) = start("max_body_bytes = 1048576");
    vector_collection(&server, "v", 3, "cosine");
    server.post(
        "/v1/collections",
        &json!({ "name": "img", "embedder": "default", "shards": 4 }),
    );
    let ok = json!({ "items": [ { "id": 1, "label": "x", "vector": [1.0, 0.0, 0.0] } ] });
    assert_eq!(server.post("/v1/collections/v/items", &ok).0, 200);

    let cases: Vec<(&str, &str, Value, u16)> = vec![
        (
            "wrong dimension",
            "/v1/collections/v/items",
            json!({ "items": [ { "id": 2, "label": "x", "vector": [1.0, 0.0] } ] }),
            400,
        ),
        (
            "infinite value",
            "/v1/collections/v/items",
            json!({ "items": [ { "id": 2, "label": "x", "vector": [1e39, 0.0, 0.0] } ] }),
            400,
        ),
        (
            "zero vector for cosine",
            "/v1/collections/v/items",
            json!({ "items": [ { "id": 2, "label": "x", "vector": [0.0, 0.0, 0.0] } ] }),
            400,
        ),
        (
            "both vector and image",
            "/v1/collections/v/items",
            json!({ "items": [ { "id": 2, "label": "x", "vector": [1.0, 0.0, 0.0], "image": "AAAA" } ] }),
            400,
        ),
        (
            "neither vector nor image",
            "/v1/collections/v/items",
            json!({ "items": [ { "id": 2, "label": "x" } ] }),
            400,
        ),
        (
            "empty label",
            "/v1/collections/v/items",
            json!({ "items": [ { "id": 2, "label": "", "vector": [1.0, 0.0, 0.0] } ] }),
            400,
        ),
        (
            "negative weight",
            "/v1/collections/v/items",
            json!({ "items": [ { "id": 2, "label": "x", "vector": [1.0, 0.0, 0.0], "weight": -1 } ] }),
            400,
        ),
        (
            "reserved id",
            "/v1/collections/v/items",
            json!({ "items": [ { "id": u64::MAX, "label": "x", "vector": [1.0, 0.0, 0.0] } ] }),
            400,
        ),
        (
            "negative id",
            "/v1/collections/v/items",
            json!({ "items": [ { "id": -1, "label": "x", "vector": [1.0, 0.0, 0.0] } ] }),
            400,
        ),
        (
            "no items",
            "/v1/collections/v/items",
            json!({ "items": [] }),
            400,
        ),
        (
            "unknown field",
            "/v1/collections/v/items",
            json!({ "items": [ { "id": 2, "label": "x", "vectr": [1.0, 0.0, 0.0] } ] }),
            400,
        ),
        (
            "image in a collection without embedder",
            "/v1/collections/v/items",
            json!({ "items": [ { "id": 2, "label": "x", "image": "iVBORw0KGgo=" } ] }),
            400,
        ),
        (
            "undecodable image",
            "/v1/collections/img/items",
            json!({ "items": [ { "id": 2, "label": "x", "image": "bm90IGFuIGltYWdl" } ] }),
            400,
        ),
        (
            "empty image",
            "/v1/collections/img/items",
            json!({ "items": [ { "id": 2, "label": "x", "image": "" } ] }),
            400,
        ),
        (
            "image not base64",
            "/v1/collections/img/items",
            json!({ "items": [ { "id": 2, "label": "x", "image": "%%%" } ] }),
            400,
        ),
        (
            "unknown collection",
            "/v1/collections/nope/items",
            ok.clone(),
            404,
        ),
        (
            "k = 0",
            "/v1/collections/v/search",
            json!({ "vector": [1.0, 0.0, 0.0], "k": 0 }),
            400,
        ),
        (
            "absurd k",
            "/v1/collections/v/search",
            json!({ "vector": [1.0, 0.0, 0.0], "k": 1_000_000_000u64 }),
            400,
        ),
        (
            "search both",
            "/v1/collections/v/search",
            json!({ "vector": [1.0, 0.0, 0.0], "image": "AAAA", "k": 1 }),
            400,
        ),
        (
            "search neither",
            "/v1/collections/v/search",
            json!({ "k": 1 }),
            400,
        ),
        (
            "search_list_size 0",
            "/v1/collections/v/search",
            json!({ "vector": [1.0, 0.0, 0.0], "k": 1, "search_list_size": 0 }),
            400,
        ),
        (
            "search_list_size huge",
            "/v1/collections/v/classify",
            json!({ "vector": [1.0, 0.0, 0.0], "search_list_size": 1_000_000 }),
            400,
        ),
        (
            "invalid rule",
            "/v1/collections/v/classify",
            json!({ "vector": [1.0, 0.0, 0.0], "rule": "majority" }),
            400,
        ),
        (
            "invalid tau",
            "/v1/collections/v/classify",
            json!({ "vector": [1.0, 0.0, 0.0], "rule": "softmax", "tau": 0 }),
            400,
        ),
        (
            "invalid alpha",
            "/v1/collections/v/classify",
            json!({ "vector": [1.0, 0.0, 0.0], "alpha": -2 }),
            400,
        ),
        (
            "classify wrong dim",
            "/v1/collections/v/classify",
            json!({ "vector": [1.0] }),
            400,
        ),
        (
            "empty batch",
            "/v1/collections/v/classify/batch",
            json!({ "queries": [] }),
            400,
        ),
        (
            "bad query in batch",
            "/v1/collections/v/classify/batch",
            json!({ "queries": [ { "vector": [1.0, 0.0, 0.0] }, { "vector": [1.0] } ] }),
            400,
        ),
        (
            "delete with nothing",
            "/v1/collections/v/items/delete",
            json!({}),
            400,
        ),
        (
            "collection bad name",
            "/v1/collections",
            json!({ "name": "../etc", "dim": 3 }),
            400,
        ),
        (
            "collection no dim",
            "/v1/collections",
            json!({ "name": "nodim" }),
            400,
        ),
        (
            "collection bad metric",
            "/v1/collections",
            json!({ "name": "m", "dim": 3, "metric": "dot" }),
            400,
        ),
        (
            "collection unknown embedder",
            "/v1/collections",
            json!({ "name": "e", "embedder": "clip" }),
            400,
        ),
        (
            "collection embedder dim mismatch",
            "/v1/collections",
            json!({ "name": "e", "embedder": "default", "dim": 3 }),
            400,
        ),
        (
            "collection zero dim",
            "/v1/collections",
            json!({ "name": "z", "dim": 0 }),
            400,
        ),
    ];
    for (what, path, body, status) in &cases {
        assert_client_error(&server.post(path, body), *status, what);
    }
    assert_client_error(
        &server.post_oversized("/v1/collections/v/items", 2 << 20),
        413,
        "oversized body",
    );
    assert_client_error(
        &server.post_raw(
            "/v1/collections/v/items",
            b"{not json".to_vec(),
            "application/json",
        ),
        400,
        "malformed JSON",
    );
    assert_client_error(
        &server.post_raw(
            "/v1/collections/v/items",
            ok.to_string().into_bytes(),
            "text/plain",
        ),
        415,
        "no JSON content type",
    );
    assert_client_error(
        &server.get("/v1/collections/v/items/notanumber"),
        400,
        "bad item id",
    );
    assert_client_error(&server.get("/v1/nothing-here"), 404, "unknown route");
    assert_client_error(
        &server.delete("/v1/collections/v/search"),
        405,
        "wrong method",
    );

    assert!(server.healthy(), "server keeps running");
    let (_, info) = server.get("/v1/collections/v");
    assert_eq!(
        info["items"], 1,
        "nothing was stored by a refused request: {info}"
    );
    let (_, info) = server.get("/v1/collections/img");
    assert_eq!(info["items"], 0);
    let (_, list) = server.get("/v1/collections");
    assert_eq!(list["collections"].as_array().unwrap().len(), 2);
}

#[test]
fn images_are_embedded_with_the_real_model() {
    let (_dir, server) = start("");
    let (status, created) = server.post(
        "/v1/collections",
        &json!({ "name": "fm", "embedder": "default", "shards": 4 }),
    );
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["dim"], 1280);
    let dir = fashion_mnist_dir();
    let train = engram_ingest::idx::read_images(&dir.join("train-images-idx3-ubyte.gz")).unwrap();
    let labels = engram_ingest::idx::read_labels(&dir.join("train-labels-idx1-ubyte.gz")).unwrap();
    let test = engram_ingest::idx::read_images(&dir.join("t10k-images-idx3-ubyte.gz")).unwrap();
    let test_labels =
        engram_ingest::idx::read_labels(&dir.join("t10k-labels-idx1-ubyte.gz")).unwrap();
    let names = engram_ingest::idx::FASHION_MNIST_CLASSES;
    let items: Vec<Value> = (0..600)
        .map(|i| json!({ "id": i, "label": names[labels[i] as usize], "image": fashion_png(&train, i) }))
        .collect();
    let (status, added) = server.post("/v1/collections/fm/items", &json!({ "items": items }));
    assert_eq!(status, 200, "{added}");
    assert_eq!(server.get("/v1/collections/fm").1["items"], 600);

    // A stored image is its own nearest neighbour, at distance ~0.
    let (_, found) = server.post(
        "/v1/collections/fm/search",
        &json!({ "image": fashion_png(&train, 7), "k": 1 }),
    );
    assert_eq!(found["neighbors"][0]["id"], 7);
    assert!(found["neighbors"][0]["distance"].as_f64().unwrap() < 1e-4);

    // Held-out images are classified far above chance (10 classes).
    let queries: Vec<Value> = (0..100)
        .map(|i| json!({ "image": fashion_png(&test, i) }))
        .collect();
    let (status, batch) = server.post(
        "/v1/collections/fm/classify/batch",
        &json!({ "queries": queries, "k": 10 }),
    );
    assert_eq!(status, 200);
    let correct = batch["results"]
        .as_array()
        .unwrap()
        .iter()
        .zip(&test_labels)
        .filter(|(r, t)| r["label"] == names[**t as usize])
        .count();
    assert!(
        correct >= 60,
        "only {correct}/100 correct with 600 memories"
    );

    // The embed endpoint returns unit vectors that search like images do.
    let (_, embedded) = server.post(
        "/v1/collections/fm/embed",
        &json!({ "images": [fashion_png(&train, 7)] }),
    );
    let v: Vec<f64> = embedded["vectors"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(v.len(), 1280);
    assert!((v.iter().map(|x| x * x).sum::<f64>() - 1.0).abs() < 1e-4);
    let (_, by_vector) = server.post("/v1/collections/fm/search", &json!({ "vector": v, "k": 1 }));
    assert_eq!(by_vector["neighbors"][0]["id"], 7);

    // JPEG and colour images work too.
    let rgb = image::RgbImage::from_fn(40, 30, |x, y| {
        image::Rgb([(x * 6) as u8, (y * 8) as u8, 128])
    });
    let mut jpeg = std::io::Cursor::new(Vec::new());
    rgb.write_to(&mut jpeg, image::ImageFormat::Jpeg).unwrap();
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(jpeg.into_inner());
    let (status, d) = server.post("/v1/collections/fm/classify", &json!({ "image": b64 }));
    assert_eq!(status, 200, "{d}");
    assert_eq!(d["neighbors"].as_array().unwrap().len(), 50);
}

#[test]
fn openapi_metrics_and_health() {
    let (_dir, server) = start("");
    let (status, doc) = server.get("/v1/openapi.json");
    assert_eq!(status, 200);
    let paths = doc["paths"].as_object().expect("openapi paths");
    for path in [
        "/v1/collections",
        "/v1/collections/{collection}",
        "/v1/collections/{collection}/items",
        "/v1/collections/{collection}/items/{id}",
        "/v1/collections/{collection}/items/delete",
        "/v1/collections/{collection}/search",
        "/v1/collections/{collection}/classify",
        "/v1/collections/{collection}/classify/batch",
        "/v1/collections/{collection}/embed",
        "/v1/collections/{collection}/compact",
        "/v1/collections/{collection}/reshard",
        "/v1/collections/{collection}/interventions",
        "/v1/collections/{collection}/jobs",
        "/v1/collections/{collection}/jobs/{job}",
        "/v1/collections/{collection}/jobs/{job}/cancel",
        "/v1/collections/{collection}/jobs/{job}/resume",
        "/v1/collections/{collection}/pruning",
        "/v1/collections/{collection}/unlearning",
        "/v1/collections/{collection}/unlearning/{receipt}",
        "/v1/collections/{collection}/unlearning/{receipt}/erase",
        "/v1/cluster",
        "/v1/cluster/coordinators",
        "/v1/cluster/coordinators/{id}",
        "/v1/cluster/rebalance",
        "/v1/cluster/moves",
        "/v1/snapshots",
        "/v1/snapshots/restore",
        "/v1/collections/{collection}/items/{id}/thumbnail",
    ] {
        assert!(paths.contains_key(path), "openapi.json lacks {path}");
    }
    assert!(server.healthy());
    assert_eq!(server.get("/readyz").0, 200);
    let (status, cluster) = server.get("/v1/cluster");
    assert_eq!((status, cluster["mode"].as_str()), (200, Some("embedded")));
    vector_collection(&server, "m", 2, "l2");
    server.post(
        "/v1/collections/m/items",
        &json!({ "items": [ { "id": 1, "label": "x", "vector": [1.0, 2.0] } ] }),
    );
    let text = server.metrics_text();
    assert!(text.contains("engram_http_requests_total{method=\"POST\",route=\"/v1/collections/{collection}/items\",status=\"200\"} 1"), "{text}");
    assert!(
        text.contains("engram_collection_items{collection=\"m\"} 1"),
        "{text}"
    );
}

/// Back-pressure: a client that sends more queries at once than
/// `max_concurrent_queries_per_client` gets 429 with `Retry-After` and the
/// JSON error for the excess, the rest are answered, and once the burst is
/// over nothing stays counted (a single query gets in).
#[test]
fn overload_is_answered_429_with_retry_after() {
    let (_dir, server) = start("max_concurrent_queries_per_client = 1");
    vector_collection(&server, "o", 16, "l2");
    let items: Vec<Value> = (0..2_000u64)
        .map(|i| {
            let v: Vec<f32> = (0..16).map(|d| ((i * 31 + d * 7) % 97) as f32).collect();
            json!({ "id": i, "label": format!("l{}", i % 3), "vector": v })
        })
        .collect();
    assert_eq!(
        server
            .post("/v1/collections/o/items", &json!({ "items": items }))
            .0,
        200
    );
    let queries: Vec<Value> = (0..1_000u64)
        .map(|i| json!({ "vector": (0..16).map(|d| ((i + d) % 50) as f32).collect::<Vec<f32>>() }))
        .collect();
    let batch = json!({ "queries": queries, "k": 50 });
    let answers: Vec<(u16, Option<String>, Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..12)
            .map(|_| {
                s.spawn(|| {
                    let r = server
                        .http
                        .post(server.url("/v1/collections/o/classify/batch"))
                        .json(&batch)
                        .send()
                        .unwrap();
                    let status = r.status().as_u16();
                    let retry = r
                        .headers()
                        .get("retry-after")
                        .map(|v| v.to_str().unwrap().to_string());
                    (status, retry, r.json().unwrap_or(Value::Null))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok = answers.iter().filter(|a| a.0 == 200).count();
    let refused: Vec<_> = answers.iter().filter(|a| a.0 == 429).collect();
    assert_eq!(ok + refused.len(), answers.len(), "{answers:?}");
    assert!(ok >= 1, "nothing was answered");
    assert!(!refused.is_empty(), "12 concurrent batches, none refused");
    for (_, retry, body) in &refused {
        assert_eq!(retry.as_deref(), Some("1"));
        assert_eq!(body["error"]["code"], "resource_exhausted", "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("max_concurrent_queries_per_client"),
            "{body}"
        );
    }
    let (status, body) = server.post(
        "/v1/collections/o/classify",
        &json!({ "vector": vec![1.0f32; 16], "k": 5 }),
    );
    assert_eq!(status, 200, "{body}");
    // Writes are not queries: still admitted.
    assert_eq!(
        server
            .post(
                "/v1/collections/o/items",
                &json!({ "items": [ { "id": 9_999, "label": "x", "vector": vec![0.0f32; 16] } ] })
            )
            .0,
        200
    );
}
