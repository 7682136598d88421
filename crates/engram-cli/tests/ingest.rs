//! Ingestion jobs against a real S3-compatible server (moto_server from
//! .venv, started here on 127.0.0.1): embedding and image Parquet files,
//! bad rows and their rejects file, the reject threshold, and a job killed
//! with the server (kill -9) that resumes without duplicates or losses.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use arrow_array::builder::{FixedSizeListBuilder, Float32Builder, ListBuilder};
use arrow_array::{ArrayRef, BinaryArray, RecordBatch, StringArray, UInt64Array};
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use serde_json::{Value, json};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

fn vector(id: u64, dim: usize) -> Vec<f32> {
    // Distinct per id: the id itself is in every coordinate.
    (0..dim)
        .map(|j| id as f32 * 0.01 + ((id * 31 + j as u64) % 97) as f32 / 97.0 + j as f32)
        .collect()
}

/// A Parquet file in `groups` row groups of `per_group` rows.
fn parquet(batches: Vec<RecordBatch>, per_group: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(per_group))
        .build();
    let mut writer = ArrowWriter::try_new(&mut out, batches[0].schema(), Some(props)).unwrap();
    for batch in &batches {
        writer.write(batch).unwrap();
    }
    writer.close().unwrap();
    out
}

/// Rows with explicit ids and FixedSizeList embeddings; `None` entries
/// become bad rows as described by the caller.
fn fixed_list_batch(
    ids: &[u64],
    labels: &[Option<&str>],
    vectors: &[Vec<f32>],
    dim: usize,
) -> RecordBatch {
    let mut list = FixedSizeListBuilder::new(Float32Builder::new(), dim as i32);
    for v in vectors {
        list.values().append_slice(v);
        list.append(true);
    }
    RecordBatch::try_from_iter([
        ("id", Arc::new(UInt64Array::from(ids.to_vec())) as ArrayRef),
        (
            "label",
            Arc::new(StringArray::from(labels.to_vec())) as ArrayRef,
        ),
        ("embedding", Arc::new(list.finish()) as ArrayRef),
        (
            "source",
            Arc::new(StringArray::from_iter_values(
                ids.iter().map(|i| format!("batch-{}", i % 2)),
            )) as ArrayRef,
        ),
    ])
    .unwrap()
}

fn ingest_cli(server: &Server, uri: &str, collection: &str, extra: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_engram"))
        .args([
            "ingest",
            uri,
            "--collection",
            collection,
            "--server",
            &server.base,
            "--json",
        ])
        .args(extra)
        .env("ENGRAM_LOG", "warn")
        .output()
        .unwrap();
    (output.status.success(), output_text(&output))
}

/// Job `id`'s status once it has ended on a restarted server (which
/// resumed it under the same id).
fn job_after_restart(server: &Server, collection: &str, id: u64, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (status, job) = server.get(&format!("/v1/collections/{collection}/jobs/{id}"));
        assert_eq!(status, 200, "the resumed job is listed under its id: {job}");
        if job["state"] != "running" {
            return job;
        }
        assert!(
            Instant::now() < deadline,
            "the resumed job did not finish: {job}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn status_of(out: &str) -> Value {
    let start = out.find('{').unwrap();
    serde_json::from_str(&out[start..out.rfind('}').unwrap() + 1]).unwrap()
}

#[test]
fn embeddings_and_images_from_s3_with_rejects() {
    let s3 = S3::start();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let server = Server::start_with_env(&config, &dir.path().join("data"), &s3.env());
    let (status, _) = server.post(
        "/v1/collections",
        &json!({ "name": "emb", "dim": 8, "metric": "l2", "shards": 4 }),
    );
    assert_eq!(status, 201);

    // part-0: 100 rows (2 row groups) with ids; row 7 has a NaN, row 60 no label.
    let ids: Vec<u64> = (0..100).collect();
    let labels: Vec<Option<&str>> = ids
        .iter()
        .map(|i| {
            if *i == 60 {
                None
            } else {
                Some(if i % 2 == 0 { "even" } else { "odd" })
            }
        })
        .collect();
    let vectors: Vec<Vec<f32>> = ids
        .iter()
        .map(|i| {
            let mut v = vector(*i, 8);
            if *i == 7 {
                v[3] = f32::NAN;
            }
            v
        })
        .collect();
    s3.put(
        "emb/part-0.parquet",
        parquet(vec![fixed_list_batch(&ids, &labels, &vectors, 8)], 50),
    );
    // part-1: 40 rows, List<float32>, no id column (ids derived); row 5 has 7 dims.
    let mut list = ListBuilder::new(Float32Builder::new());
    for i in 0..40u64 {
        let v = vector(1000 + i, if i == 5 { 7 } else { 8 });
        list.values().append_slice(&v);
        list.append(true);
    }
    let batch = RecordBatch::try_from_iter([
        (
            "label",
            Arc::new(StringArray::from_iter_values((0..40).map(|_| "listed"))) as ArrayRef,
        ),
        ("embedding", Arc::new(list.finish()) as ArrayRef),
    ])
    .unwrap();
    s3.put("emb/part-1.parquet", parquet(vec![batch], 40));
    s3.put("emb/README.txt", b"not parquet".to_vec());

    let (ok, out) = ingest_cli(
        &server,
        &format!("s3://{BUCKET}/emb"),
        "emb",
        &["--max-reject-share", "0.05"],
    );
    assert!(ok, "{out}");
    let job = status_of(&out);
    let report = &job["report"];
    assert_eq!(report["files"], 2, "{job}");
    assert_eq!(report["rows_read"], 140);
    assert_eq!(report["rejected"], 3);
    assert_eq!(report["items_written"], 137);
    let (_, info) = server.get("/v1/collections/emb");
    assert_eq!(info["items"], 137);
    assert_eq!(
        info["labels"],
        json!({ "even": 49, "odd": 49, "listed": 39 })
    );
    let (_, item) = server.get("/v1/collections/emb/items/42");
    assert_eq!(
        (&item["label"], &item["source"]),
        (&json!("even"), &json!("batch-0"))
    );

    // The rejects file says which rows and why.
    let rejects = engram_ingest::items::read_rejects(std::path::Path::new(
        report["rejects_file"].as_str().unwrap(),
    ))
    .unwrap();
    let mut seen: Vec<(String, u64, String)> = rejects
        .iter()
        .map(|r| {
            (
                r.file.rsplit('/').next().unwrap().to_string(),
                r.row,
                r.reason.clone(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!((seen[0].0.as_str(), seen[0].1), ("part-0.parquet", 7));
    assert!(seen[0].2.contains("bad embedding"), "{seen:?}");
    assert_eq!((seen[1].0.as_str(), seen[1].1), ("part-0.parquet", 60));
    assert!(seen[1].2.contains("missing label"));
    assert_eq!((seen[2].0.as_str(), seen[2].1), ("part-1.parquet", 5));
    assert!(seen[2].2.contains("bad embedding"));
    let (_, found) = server.post(
        "/v1/collections/emb/search",
        &json!({ "vector": vector(1003, 8), "k": 1 }),
    );
    assert_eq!(found["neighbors"][0]["label"], "listed");
    assert_eq!(found["neighbors"][0]["distance"], 0.0);

    // Past the reject threshold the job fails and the CLI says so.
    let (ok, out) = ingest_cli(
        &server,
        &format!("s3://{BUCKET}/emb/part-*.parquet"),
        "emb",
        &["--max-reject-share", "0.001"],
    );
    assert!(!ok, "{out}");
    assert!(out.contains("max_reject_share"), "{out}");
    // Bad requests are refused at once.
    for (body, what) in [
        (json!({ "kind": "ingest" }), "uri"),
        (json!({ "kind": "ingest", "uri": "ftp://x/y" }), "scheme"),
        (
            json!({ "kind": "ingest", "uri": "s3://b/x", "k": 3 }),
            "prune",
        ),
        (
            json!({ "kind": "ingest", "uri": "s3://b/x", "max_reject_share": 2 }),
            "max_reject_share",
        ),
    ] {
        assert_client_error(&server.post("/v1/collections/emb/jobs", &body), 400, what);
    }
    let (ok, out) = ingest_cli(&server, &format!("s3://{BUCKET}/nothing-here"), "emb", &[]);
    assert!(!ok && out.contains("no Parquet files"), "{out}");

    // Images: a binary column, and an image_uri column naming objects.
    let (status, _) = server.post(
        "/v1/collections",
        &json!({ "name": "img", "embedder": "default", "shards": 2 }),
    );
    assert_eq!(status, 201);
    let data = fashion_mnist_dir();
    let train = engram_ingest::idx::read_images(&data.join("train-images-idx3-ubyte.gz")).unwrap();
    let classes =
        engram_ingest::idx::read_labels(&data.join("train-labels-idx1-ubyte.gz")).unwrap();
    use base64::Engine as _;
    let png = |i: usize| {
        base64::engine::general_purpose::STANDARD
            .decode(fashion_png(&train, i))
            .unwrap()
    };
    let name = |i: usize| engram_ingest::idx::FASHION_MNIST_CLASSES[classes[i] as usize];
    let mut images: Vec<Vec<u8>> = (0..20).map(png).collect();
    images[13] = b"not an image".to_vec();
    let batch = RecordBatch::try_from_iter([
        (
            "id",
            Arc::new(UInt64Array::from_iter_values(0..20)) as ArrayRef,
        ),
        (
            "label",
            Arc::new(StringArray::from_iter_values((0..20).map(name))) as ArrayRef,
        ),
        (
            "image",
            Arc::new(BinaryArray::from_iter_values(images.iter())) as ArrayRef,
        ),
    ])
    .unwrap();
    s3.put("img/a.parquet", parquet(vec![batch], 20));
    for i in 20..30 {
        s3.put(&format!("objects/{i}.png"), png(i));
    }
    let batch = RecordBatch::try_from_iter([
        (
            "id",
            Arc::new(UInt64Array::from_iter_values(20..31)) as ArrayRef,
        ),
        (
            "class",
            Arc::new(StringArray::from_iter_values(
                (20..31).map(|i| name(i.min(29))),
            )) as ArrayRef,
        ),
        (
            "path",
            Arc::new(StringArray::from_iter_values(
                (20..31).map(|i| format!("objects/{i}.png")),
            )) as ArrayRef,
        ),
    ])
    .unwrap();
    s3.put("uris/b.parquet", parquet(vec![batch], 11));

    let (ok, out) = ingest_cli(
        &server,
        &format!("s3://{BUCKET}/img"),
        "img",
        &["--max-reject-share", "0.2"],
    );
    assert!(ok, "{out}");
    assert_eq!(status_of(&out)["report"]["items_written"], 19);
    let (ok, out) = ingest_cli(
        &server,
        &format!("s3://{BUCKET}/uris/b.parquet"),
        "img",
        &[
            "--column",
            "label=class",
            "--column",
            "image_uri=path",
            "--max-reject-share",
            "0.2",
        ],
    );
    assert!(ok, "{out}");
    let report = &status_of(&out)["report"];
    assert_eq!(
        (&report["items_written"], &report["rejected"]),
        (&json!(10), &json!(1)),
        "{out}"
    );
    let (_, info) = server.get("/v1/collections/img");
    assert_eq!(info["items"], 29);
    // An ingested image is its own nearest neighbour.
    let (_, found) = server.post(
        "/v1/collections/img/search",
        &json!({ "image": fashion_png(&train, 25), "k": 1 }),
    );
    assert_eq!(found["neighbors"][0]["id"], 25, "{found}");
    // Ingested images keep their thumbnails, from the image column and
    // from fetched image_uri objects alike.
    for id in [3u64, 25] {
        let response = server
            .http
            .get(server.url(&format!("/v1/collections/img/items/{id}/thumbnail")))
            .send()
            .unwrap();
        assert_eq!(response.status(), 200, "item {id}");
        let thumbnail = image::load_from_memory(&response.bytes().unwrap()).unwrap();
        assert_eq!((thumbnail.width(), thumbnail.height()), (28, 28));
    }
}

#[test]
fn a_killed_ingest_resumes_without_duplicates_or_losses() {
    let s3 = S3::start();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let data_dir = dir.path().join("data");
    let mut server = Server::start_with_env(&config, &data_dir, &s3.env());
    let (status, _) = server.post(
        "/v1/collections",
        &json!({ "name": "big", "dim": 32, "metric": "l2", "shards": 4 }),
    );
    assert_eq!(status, 201);
    // 4 files x 10 row groups x 500 rows, no id column: ids are derived
    // from file and row, so a replayed row group rewrites the same items.
    let total = 4 * 10 * 500usize;
    for f in 0..4u64 {
        let mut list = FixedSizeListBuilder::new(Float32Builder::new(), 32);
        for i in 0..5000u64 {
            list.values().append_slice(&vector(f * 10_000 + i, 32));
            list.append(true);
        }
        let batch = RecordBatch::try_from_iter([
            (
                "label",
                Arc::new(StringArray::from_iter_values(
                    (0..5000).map(|i| format!("c{}", i % 10)),
                )) as ArrayRef,
            ),
            ("embedding", Arc::new(list.finish()) as ArrayRef),
        ])
        .unwrap();
        s3.put(&format!("big/part-{f}.parquet"), parquet(vec![batch], 500));
    }
    let (status, job) = server.post(
        "/v1/collections/big/jobs",
        &json!({ "kind": "ingest", "uri": format!("s3://{BUCKET}/big"), "batch_rows": 100 }),
    );
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_u64().unwrap();
    let wait_for = |server: &Server, rows: u64| {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (_, job) = server.get(&format!("/v1/collections/big/jobs/{id}"));
            let done = job["done"].as_u64().unwrap_or(0);
            assert_eq!(
                job["state"], "running",
                "the job ended before it could be stopped: {job}"
            );
            if done >= rows {
                return;
            }
            assert!(Instant::now() < deadline, "no progress: {job}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // Cancelled, then resumed through engramctl: it goes on from its
    // checkpoint under the same id.
    wait_for(&server, 1_000);
    let ctl = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_engramctl"))
            .arg("--server")
            .arg(&server.base)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ctl(&["jobs", "cancel", "big", &id.to_string()]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let cancelled_at = loop {
        let (_, job) = server.get(&format!("/v1/collections/big/jobs/{id}"));
        if job["state"] == "cancelled" {
            break job["done"].as_u64().unwrap();
        }
        assert!(Instant::now() < deadline, "not cancelled: {job}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(cancelled_at < total as u64);
    ctl(&["jobs", "resume", "big", &id.to_string()]);
    // ...then killed: the restarted server resumes it once more.
    wait_for(&server, cancelled_at + 500);
    server.kill9();

    let server = Server::start_with_env(&config, &data_dir, &s3.env());
    let job = job_after_restart(&server, "big", id, Duration::from_secs(180));
    assert_eq!(job["state"], "succeeded", "{job}");
    let report = &job["report"];
    assert_eq!(report["rows_read"], total as u64);
    assert_eq!(report["items_written"], total as u64);
    assert!(report["resumed_at_row"].as_u64().unwrap() > 0, "{job}");
    let (_, info) = server.get("/v1/collections/big");
    assert_eq!(info["items"], total as u64, "exactly every row, once");
    assert_eq!(info["labels"]["c3"], (total / 10) as u64);
    // A new job gets a new id.
    let (_, next) = server.post(
        "/v1/collections/big/jobs",
        &json!({ "kind": "prune", "mode": "dry_run", "k": 1 }),
    );
    assert!(next["id"].as_u64().unwrap() > id);
}

/// Peak resident memory of a process, in MiB.
fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        / 1024
}

#[test]
fn reading_more_parquet_does_not_raise_peak_memory() {
    // 1,600 noise images of 256x256 RGB (~190 KiB of PNG each, ~300 MiB in
    // all) in row groups of 50, from the local disk: the server holds one
    // row group and one batch at a time, never the file.
    let dir = tempfile::tempdir().unwrap();
    // Under the data directory's `import/`, a default local root.
    let images_dir = dir.path().join("data").join("import").join("big");
    std::fs::create_dir_all(&images_dir).unwrap();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut noise = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state as u8
    };
    let png = |noise: &mut dyn FnMut() -> u8| {
        let pixels: Vec<u8> = (0..256 * 256 * 3).map(|_| noise()).collect();
        let image = image::RgbImage::from_raw(256, 256, pixels).unwrap();
        let mut out = std::io::Cursor::new(Vec::new());
        image.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    };
    let mut file_bytes = 0usize;
    for part in 0..4u64 {
        let images: Vec<Vec<u8>> = (0..400).map(|_| png(&mut noise)).collect();
        file_bytes += images.iter().map(Vec::len).sum::<usize>();
        let batch = RecordBatch::try_from_iter([
            (
                "id",
                Arc::new(UInt64Array::from_iter_values(part * 400..(part + 1) * 400)) as ArrayRef,
            ),
            (
                "label",
                Arc::new(StringArray::from_iter_values(
                    (0..400).map(|i| format!("n{}", i % 3)),
                )) as ArrayRef,
            ),
            (
                "image",
                Arc::new(BinaryArray::from_iter_values(images.iter())) as ArrayRef,
            ),
        ])
        .unwrap();
        std::fs::write(
            images_dir.join(format!("part-{part}.parquet")),
            parquet(vec![batch], 50),
        )
        .unwrap();
    }
    let file_mib = (file_bytes / (1 << 20)) as u64;
    assert!(file_mib > 250, "{file_mib} MiB of input");

    let config = write_config(dir.path(), "");
    let server = Server::start(&config, &dir.path().join("data"));
    let (status, _) = server.post(
        "/v1/collections",
        &json!({ "name": "noise", "embedder": "default", "shards": 2 }),
    );
    assert_eq!(status, 201);
    // Warm up with one file (the model's buffers, the first row groups),
    // then read all four: the peak must not grow with the amount read.
    let first = images_dir.join("part-0.parquet");
    let (ok, out) = ingest_cli(
        &server,
        first.to_str().unwrap(),
        "noise",
        &["--batch-rows", "16"],
    );
    assert!(ok, "{out}");
    let after_one = peak_rss_mib(server.child.id());
    let (ok, out) = ingest_cli(
        &server,
        images_dir.to_str().unwrap(),
        "noise",
        &["--batch-rows", "16"],
    );
    assert!(ok, "{out}");
    assert_eq!(status_of(&out)["report"]["items_written"], 1600);
    let after_all = peak_rss_mib(server.child.id());
    eprintln!(
        "peak RSS {after_one} MiB after {} MiB of Parquet, {after_all} MiB after {file_mib} MiB more",
        file_mib / 4
    );
    // Another 300 MiB read may add the stored vectors (1,200 x 5 KiB) and
    // allocator noise, not the input.
    assert!(
        after_all <= after_one + 60,
        "peak RSS grew from {after_one} to {after_all} MiB while reading {file_mib} MiB more"
    );
}

#[test]
fn bulk_ingest_attaches_sealed_segments_and_resumes_after_kill() {
    let s3 = S3::start();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let data_dir = dir.path().join("data");
    let mut env = s3.env();
    env.push((
        "ENGRAM_STORAGE__SEGMENTS_URI".into(),
        format!("s3://{BUCKET}/segments"),
    ));
    let mut server = Server::start_with_env(&config, &data_dir, &env);
    let (status, _) = server.post(
        "/v1/collections",
        &json!({ "name": "bulk", "dim": 32, "metric": "l2", "shards": 4 }),
    );
    assert_eq!(status, 201);
    // Items written before: ids 0..100 are in the input too (the bulk rows
    // supersede them), ids 900_000.. are not (they stay).
    let before: Vec<Value> = (0..100u64)
        .chain(900_000..900_100)
        .map(|id| json!({"id": id, "label": "old", "vector": vector(id + 7, 32)}))
        .collect();
    let (status, body) = server.post("/v1/collections/bulk/items", &json!({"items": before}));
    assert_eq!(status, 200, "{body}");

    // 4 files x 10 row groups x 500 rows with ids; the last file repeats
    // 200 ids of the first with another label (the later row wins).
    let total = 4 * 5000u64;
    for f in 0..4u64 {
        let ids: Vec<u64> = (0..5000u64)
            .map(|i| if f == 3 && i < 200 { i } else { f * 5000 + i })
            .collect();
        let labels: Vec<String> = ids
            .iter()
            .map(|id| {
                if f == 3 && *id < 200 {
                    "again".into()
                } else {
                    format!("c{}", id % 10)
                }
            })
            .collect();
        let vectors: Vec<Vec<f32>> = ids.iter().map(|id| vector(*id, 32)).collect();
        let batch = fixed_list_batch(
            &ids,
            &labels.iter().map(|l| Some(l.as_str())).collect::<Vec<_>>(),
            &vectors,
            32,
        );
        s3.put(&format!("bulk/part-{f}.parquet"), parquet(vec![batch], 500));
    }
    let distinct = total - 200;
    let (status, job) = server.post(
        "/v1/collections/bulk/jobs",
        &json!({ "kind": "ingest", "uri": format!("s3://{BUCKET}/bulk"), "batch_rows": 250,
                 "bulk": true, "segment_rows": 1000 }),
    );
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_u64().unwrap();
    // Killed once a generation's checkpoint is saved and before the end:
    // a generation attaches one segment per shard (4), then saves the
    // checkpoint, so a fifth segment means the first checkpoint is on disk
    // (at the fourth the kill could fall before the save, and the job
    // would rightly start over from row 0).
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let (_, job) = server.get(&format!("/v1/collections/bulk/jobs/{id}"));
        assert_eq!(
            job["state"], "running",
            "ended before it could be killed: {job}"
        );
        if job["counts"]["segments"].as_u64().unwrap_or(0) > 4 {
            break;
        }
        assert!(Instant::now() < deadline, "no segment attached: {job}");
        std::thread::sleep(Duration::from_millis(20));
    }
    server.kill9();
    assert!(!s3.keys("segments/bulk/").is_empty(), "segments uploaded");

    let server = Server::start_with_env(&config, &data_dir, &env);
    let job = job_after_restart(&server, "bulk", id, Duration::from_secs(300));
    assert_eq!(job["state"], "succeeded", "{job}");
    let report = &job["report"];
    assert_eq!(report["rows_read"], total);
    assert!(report["resumed_at_row"].as_u64().unwrap() > 0, "{job}");
    assert!(report["segments"].as_u64().unwrap() >= 4, "{job}");
    assert_eq!(
        report["segments_prefix"],
        format!("s3://{BUCKET}/segments/bulk/job-{id}/"),
        "{job}"
    );

    let (_, info) = server.get("/v1/collections/bulk");
    assert_eq!(
        info["items"],
        distinct + 100,
        "every row once, plus the 100 untouched: {info}"
    );
    assert_eq!(info["labels"]["again"], 200);
    assert_eq!(info["labels"]["old"], 100, "{info}");
    // Everything from the job sits in sealed segments: only the 200 rows
    // written before (carried over, never sealed) are outside them.
    let sealed: u64 = info["shard_stats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["sealed_rows"].as_u64().unwrap())
        .sum::<u64>()
        - info["tombstones"].as_u64().unwrap();
    assert_eq!(sealed, distinct, "{info}");
    let (_, item) = server.get("/v1/collections/bulk/items/5");
    assert_eq!(item["label"], "again", "{item}");
    let (_, item) = server.get("/v1/collections/bulk/items/900005");
    assert_eq!(item["label"], "old", "{item}");
    // Searches find bulk rows by their own vectors.
    for probe in [123u64, 7_777, 19_999] {
        let (status, answer) = server.post(
            "/v1/collections/bulk/search",
            &json!({"vector": vector(probe, 32), "k": 1}),
        );
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["neighbors"][0]["id"], probe, "{answer}");
    }
    // No spill or staging leftovers once the job is done.
    let leftovers: Vec<_> = files_under(&data_dir)
        .into_iter()
        .filter(|p| {
            let p = p.display().to_string();
            p.contains("/bulk/") && p.contains("jobs") || p.contains("/incoming/")
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn bulk_ingest_memory_does_not_grow_with_the_input() {
    // Two local files of 32,000 x 384-d rows (47 MiB of floats each) into
    // a 2-shard collection in segments of 8,000 rows: the server holds one
    // segment's rows while building it, never the input; what stays is
    // each sealed segment's in-RAM part (ids, 16-byte PQ codes, item
    // table: a few hundred bytes a row against 1,536 for the vector). The
    // streaming path would keep every vector and its graph edges in RAM
    // (below the seal threshold).
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("vectors");
    std::fs::create_dir_all(&input).unwrap();
    let (rows, dim) = (32_000u64, 384usize);
    for part in 0..2u64 {
        let ids: Vec<u64> = (part * rows..(part + 1) * rows).collect();
        let mut list = FixedSizeListBuilder::new(Float32Builder::new(), dim as i32);
        for id in &ids {
            list.values().append_slice(&vector(*id, dim));
            list.append(true);
        }
        let batch = RecordBatch::try_from_iter([
            ("id", Arc::new(UInt64Array::from(ids.clone())) as ArrayRef),
            (
                "label",
                Arc::new(StringArray::from_iter_values(
                    ids.iter().map(|i| format!("c{}", i % 7)),
                )) as ArrayRef,
            ),
            ("embedding", Arc::new(list.finish()) as ArrayRef),
        ])
        .unwrap();
        std::fs::write(
            input.join(format!("part-{part}.parquet")),
            parquet(vec![batch], 4_000),
        )
        .unwrap();
    }
    let config = write_config(
        dir.path(),
        "max_degree = 32\nbuild_list_size = 50\npq_bytes = 16",
    );
    // Serving segments from memory is a cache budget spent on purpose,
    // not ingestion's memory: this measures the latter.
    let server_env = [
        ("ENGRAM_CACHE__BUDGET_MB".to_string(), "0".to_string()),
        (
            "ENGRAM_STORAGE__LOCAL_ROOTS".to_string(),
            input.display().to_string(),
        ),
    ];
    let server = Server::start_with_env(&config, &dir.path().join("data"), &server_env);
    let (status, _) = server.post(
        "/v1/collections",
        &json!({ "name": "v", "dim": dim, "metric": "l2", "shards": 2 }),
    );
    assert_eq!(status, 201);
    let load = |file: &str| {
        let (ok, out) = ingest_cli(
            &server,
            input.join(file).to_str().unwrap(),
            "v",
            &["--bulk", "--segment-rows", "8000"],
        );
        assert!(ok, "{out}");
        assert_eq!(status_of(&out)["report"]["items_written"], rows);
    };
    load("part-0.parquet");
    let after_one = peak_rss_mib(server.child.id());
    load("part-1.parquet");
    let after_two = peak_rss_mib(server.child.id());
    let raw_mib = rows * dim as u64 * 4 / (1 << 20);
    eprintln!(
        "bulk: peak RSS {after_one} MiB after one file, {after_two} MiB after two ({raw_mib} MiB of raw vectors each)"
    );
    // Less than the raw vectors it read: the streaming path would keep all
    // of them, and their graph edges, in RAM. (Peak RSS moves by tens of
    // MiB with allocator timing when other tests share the cores: +8 alone,
    // +40 once beside the rest of this binary; the bound is the raw size.)
    assert!(
        after_two < after_one + raw_mib,
        "peak RSS grew from {after_one} to {after_two} MiB for {raw_mib} MiB more input"
    );
    let (_, info) = server.get("/v1/collections/v");
    assert_eq!(info["items"], 2 * rows);
    assert!(
        info["sealed_segments"].as_u64().unwrap() >= 2 * 2 * 2,
        "{info}"
    );
}
