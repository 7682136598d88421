//! Items added as images keep a thumbnail, served at
//! `GET .../items/{id}/thumbnail`, that lives exactly as long as the row:
//! in the WAL while the row is growing, in its sealed segment's
//! `thumbnails.bin` after, carried by merges, replaced by a re-upsert,
//! removed by a delete (and its bytes gone from disk once compaction has
//! rewritten the segment), through a kill -9, and in snapshots. In a
//! cluster the coordinator reads it from the worker holding the row.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::{Value, json};

const IMAGES: usize = 40;

fn fashion() -> (engram_ingest::idx::IdxImages, Vec<u8>) {
    let data = fashion_mnist_dir();
    (
        engram_ingest::idx::read_images(&data.join("train-images-idx3-ubyte.gz")).unwrap(),
        engram_ingest::idx::read_labels(&data.join("train-labels-idx1-ubyte.gz")).unwrap(),
    )
}

fn image_items(range: std::ops::Range<usize>) -> Vec<Value> {
    let (images, labels) = fashion();
    let names = engram_ingest::idx::FASHION_MNIST_CLASSES;
    range
        .map(|i| json!({ "id": i, "label": names[labels[i] as usize], "image": fashion_png(&images, i) }))
        .collect()
}

/// `(status, body)` of the thumbnail of `id`.
fn thumbnail(server: &Server, collection: &str, id: u64) -> (u16, Vec<u8>, String) {
    let response = server
        .http
        .get(server.url(&format!(
            "/v1/collections/{collection}/items/{id}/thumbnail"
        )))
        .send()
        .unwrap();
    let status = response.status().as_u16();
    let kind = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, response.bytes().unwrap().to_vec(), kind)
}

fn assert_picture(server: &Server, collection: &str, id: u64) -> Vec<u8> {
    let (status, body, kind) = thumbnail(server, collection, id);
    assert_eq!(status, 200, "item {id}: {}", String::from_utf8_lossy(&body));
    assert_eq!(kind, "image/jpeg");
    let image = image::load_from_memory(&body).unwrap();
    // Fashion-MNIST is 28 x 28: kept as it is, never scaled up.
    assert_eq!((image.width(), image.height()), (28, 28));
    body
}

fn assert_none(server: &Server, collection: &str, id: u64, says: &str) {
    let (status, body, _) = thumbnail(server, collection, id);
    assert_eq!(status, 404, "item {id}");
    let error: Value = serde_json::from_slice(&body).unwrap();
    assert!(
        error["error"]["message"].as_str().unwrap().contains(says),
        "{error}"
    );
}

#[test]
fn a_thumbnail_lives_and_dies_with_its_row() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = write_config(dir.path(), "");
    let mut server = Server::start(&config, &data);
    let (status, body) = server.post(
        "/v1/collections",
        &json!({ "name": "pics", "embedder": "default", "shards": 2 }),
    );
    assert_eq!(status, 201, "{body}");
    let (status, body) = server.post(
        "/v1/collections/pics/items",
        &json!({ "items": image_items(0..IMAGES) }),
    );
    assert_eq!(status, 200, "{body}");
    // An item added as a vector has none.
    let vector: Vec<f32> = (0..1280).map(|d| (d % 7) as f32 + 1.0).collect();
    let (status, body) = server.post(
        "/v1/collections/pics/items",
        &json!({ "items": [ { "id": 1000, "label": "v", "vector": vector } ] }),
    );
    assert_eq!(status, 200, "{body}");

    // Growing rows: from the WAL's records.
    let first = assert_picture(&server, "pics", 3);
    assert_none(&server, "pics", 1000, "has no thumbnail");
    assert_none(&server, "pics", 77_777, "does not exist");
    let (status, _, _) = thumbnail(&server, "pics", 0);
    assert_eq!(status, 200);
    let bad = server.get("/v1/collections/pics/items/x/thumbnail");
    assert_client_error(&bad, 400, "a non-numeric id");

    // Sealed: from the segment's thumbnails.bin, the same bytes.
    let (status, body) = server.post("/v1/collections/pics/compact", &json!({ "seal": true }));
    assert_eq!(status, 200, "{body}");
    assert!(
        files_under(&data)
            .iter()
            .any(|f| f.ends_with(engram_store::THUMBNAILS_FILE)),
        "no thumbnails.bin under {}",
        data.display()
    );
    assert_eq!(assert_picture(&server, "pics", 3), first);
    // More rows after the seal, growing again.
    let (status, body) = server.post(
        "/v1/collections/pics/items",
        &json!({ "items": image_items(IMAGES..IMAGES + 10) }),
    );
    assert_eq!(status, 200, "{body}");

    // A re-upsert as a vector drops the old picture; a delete removes it.
    let (status, _) = server.post(
        "/v1/collections/pics/items",
        &json!({ "items": [ { "id": 4, "label": "v", "vector": vector } ] }),
    );
    assert_eq!(status, 200);
    assert_none(&server, "pics", 4, "has no thumbnail");
    let deleted = assert_picture(&server, "pics", 5);
    assert!(on_disk(&data, &deleted), "the thumbnail is on disk");
    let (status, body) = server.post("/v1/collections/pics/items/delete", &json!({ "ids": [5] }));
    assert_eq!(status, 200, "{body}");
    assert_none(&server, "pics", 5, "does not exist");

    // kill -9: growing rows replay their thumbnails from the WAL, sealed
    // ones are read from their segments.
    server.kill9();
    let mut server = Server::start(&config, &data);
    assert_eq!(assert_picture(&server, "pics", 3), first);
    assert_picture(&server, "pics", (IMAGES + 2) as u64);
    assert_none(&server, "pics", 4, "has no thumbnail");
    assert_none(&server, "pics", 5, "does not exist");

    // Compaction rewrites the segments without the deleted rows: the live
    // rows keep their pictures and the deleted one's bytes are gone.
    let (status, body) = server.post(
        "/v1/collections/pics/compact",
        &json!({ "seal": true, "min_deleted_fraction": 0.0 }),
    );
    assert_eq!(status, 200, "{body}");
    for id in [0u64, 3, (IMAGES + 2) as u64] {
        assert_picture(&server, "pics", id);
    }
    assert_eq!(assert_picture(&server, "pics", 3), first);
    assert!(
        !on_disk(&data, &deleted),
        "the deleted item's thumbnail is still on disk after compaction"
    );

    // A snapshot carries the pictures; a restore brings them back.
    let (status, made) = server.post(
        "/v1/snapshots",
        &json!({ "uri": data.join("snapshots").join("s").to_string_lossy() }),
    );
    assert_eq!(status, 201, "{made}");
    let id = made["id"].as_str().unwrap().to_string();
    assert!(
        on_disk(&data.join("snapshots"), &first),
        "the snapshot holds the thumbnail"
    );
    server.stop();
    let fresh_data = dir.path().join("fresh");
    let copy = fresh_data.join("snapshots").join("s");
    std::fs::create_dir_all(&copy).unwrap();
    for file in files_under(&data.join("snapshots").join("s")) {
        let to = copy.join(file.strip_prefix(data.join("snapshots").join("s")).unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&file, &to).unwrap();
    }
    let fresh = Server::start(&config, &fresh_data);
    let (status, body) = fresh.post(
        "/v1/snapshots/restore",
        &json!({ "uri": copy.to_string_lossy(), "id": id }),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(assert_picture(&fresh, "pics", 3), first);
    assert_none(&fresh, "pics", 1000, "has no thumbnail");
    assert_none(&fresh, "pics", 5, "does not exist");
}

#[test]
fn thumbnail_px_zero_keeps_none() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let server = Server::start_with_env(
        &config,
        &dir.path().join("data"),
        &[("ENGRAM_COLLECTIONS__THUMBNAIL_PX".into(), "0".into())],
    );
    server.post(
        "/v1/collections",
        &json!({ "name": "pics", "embedder": "default", "shards": 1 }),
    );
    let (status, body) = server.post(
        "/v1/collections/pics/items",
        &json!({ "items": image_items(0..3) }),
    );
    assert_eq!(status, 200, "{body}");
    assert_none(&server, "pics", 1, "has no thumbnail");
}

#[test]
fn a_cluster_serves_thumbnails_from_the_worker_holding_the_row() {
    let cluster = common::cluster::Cluster::start_with_embedder();
    let (status, body) = cluster.post(
        "/v1/collections",
        &json!({ "name": "pics", "embedder": "default", "shards": 4 }),
    );
    assert_eq!(status, 201, "{body}");
    let (status, body) = cluster.post(
        "/v1/collections/pics/items",
        &json!({ "items": image_items(0..12) }),
    );
    assert!(status < 300, "{body}");
    let (status, body) = cluster.post("/v1/collections/pics/compact", &json!({ "seal": true }));
    assert_eq!(status, 200, "{body}");
    let base = cluster.coordinators[1].base.clone().unwrap();
    for id in 0..12u64 {
        let response = cluster
            .http
            .get(format!("{base}/v1/collections/pics/items/{id}/thumbnail"))
            .send()
            .unwrap();
        assert_eq!(response.status(), 200, "item {id}");
        let image = image::load_from_memory(&response.bytes().unwrap()).unwrap();
        assert_eq!(image.width(), 28);
    }
    let response = cluster
        .http
        .get(format!("{base}/v1/collections/pics/items/999/thumbnail"))
        .send()
        .unwrap();
    assert_eq!(response.status(), 404);
}
