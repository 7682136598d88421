//! `engram embed` against a real S3-compatible server (moto_server, on
//! 127.0.0.1): four `--part i/4` processes produce exactly the rows of one
//! `--part 0/1` run; a part killed with kill -9 and rerun leaves no
//! duplicates (finished parts are skipped); the bulk load of the parts
//! holds every row once.

#![allow(clippy::unwrap_used)]

mod common;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, UInt64Type};
use arrow_array::{ArrayRef, BinaryArray, RecordBatch, StringArray, UInt64Array};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::properties::WriterProperties;
use serde_json::json;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const FILES: usize = 3;
const PER_FILE: usize = 60;

/// Three files of 60 Fashion-MNIST PNGs in row groups of 20; row 7 of the
/// second file is not an image.
fn image_parquet(s3: &S3) {
    let dir = fashion_mnist_dir();
    let images = engram_ingest::idx::read_images(&dir.join("t10k-images-idx3-ubyte.gz")).unwrap();
    let labels = engram_ingest::idx::read_labels(&dir.join("t10k-labels-idx1-ubyte.gz")).unwrap();
    for f in 0..FILES {
        let rows: Vec<usize> = (f * PER_FILE..(f + 1) * PER_FILE).collect();
        let pngs: Vec<Vec<u8>> = rows
            .iter()
            .map(|i| {
                if f == 1 && *i == PER_FILE + 7 {
                    return b"not an image".to_vec();
                }
                let image = image::GrayImage::from_raw(
                    images.cols as u32,
                    images.rows as u32,
                    images.image(*i).to_vec(),
                )
                .unwrap();
                let mut png = std::io::Cursor::new(Vec::new());
                image.write_to(&mut png, image::ImageFormat::Png).unwrap();
                png.into_inner()
            })
            .collect();
        let batch = RecordBatch::try_from_iter([
            (
                "id",
                Arc::new(UInt64Array::from_iter_values(
                    rows.iter().map(|i| *i as u64 + 1000),
                )) as ArrayRef,
            ),
            (
                "label",
                Arc::new(StringArray::from_iter_values(
                    rows.iter().map(|i| format!("class-{}", labels[*i])),
                )) as ArrayRef,
            ),
            (
                "image",
                Arc::new(BinaryArray::from_iter_values(pngs.iter())) as ArrayRef,
            ),
        ])
        .unwrap();
        let mut out = Vec::new();
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(20))
            .build();
        let mut writer = ArrowWriter::try_new(&mut out, batch.schema(), Some(props)).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
        s3.put(&format!("images/part-{f}.parquet"), out);
    }
}

fn embed(config: &std::path::Path, s3: &S3, output: &str, part: &str) -> Command {
    embed_with(
        config,
        s3,
        output,
        part,
        &["--batch", "16", "--batch-rows", "8"],
    )
}

fn embed_with(
    config: &std::path::Path,
    s3: &S3,
    output: &str,
    part: &str,
    batching: &[&str],
) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_engram"));
    command
        .args([
            "embed",
            &format!("s3://{BUCKET}/images"),
            &format!("s3://{BUCKET}/{output}"),
        ])
        .args(["--part", part, "--threads", "1"])
        .args(batching)
        .arg("--config")
        .arg(config)
        .envs(s3.env())
        .env("ENGRAM_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

fn succeeded(output: Output) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{text}");
    text
}

/// (id, label, embedding) rows of the parts under `output`, parts in order.
fn rows_of(s3: &S3, output: &str, parts: usize) -> Vec<(u64, String, Vec<f32>)> {
    let mut rows = Vec::new();
    for part in 0..parts {
        let key = format!("{output}/part-{part:05}-of-{parts:05}.parquet");
        let bytes = s3
            .get(&key)
            .unwrap_or_else(|| panic!("{key} missing; keys: {:?}", s3.keys("")));
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes))
            .unwrap()
            .build()
            .unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            let ids = batch
                .column_by_name("id")
                .unwrap()
                .as_primitive::<UInt64Type>();
            let labels = batch.column_by_name("label").unwrap().as_string::<i32>();
            let embeddings = batch
                .column_by_name("embedding")
                .unwrap()
                .as_fixed_size_list();
            for i in 0..batch.num_rows() {
                let v = embeddings.value(i);
                let v = v.as_primitive::<Float32Type>().values().to_vec();
                rows.push((ids.value(i), labels.value(i).to_string(), v));
            }
        }
    }
    rows
}

fn assert_same_rows(a: &[(u64, String, Vec<f32>)], b: &[(u64, String, Vec<f32>)]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert_eq!(
            (x.0, &x.1),
            (y.0, &y.1),
            "same ids and labels in the same order"
        );
        let diff =
            x.2.iter()
                .zip(&y.2)
                .map(|(p, q)| (p - q).abs())
                .fold(0f32, f32::max);
        assert!(diff < 1e-4, "id {}: embeddings differ by {diff}", x.0);
    }
}

#[test]
fn parts_cover_the_input_once_and_a_killed_part_reruns_cleanly() {
    let s3 = S3::start();
    image_parquet(&s3);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");

    // One process over everything.
    let out = succeeded(embed(&config, &s3, "one", "0/1").output().unwrap());
    assert!(
        out.contains("embed provider=cpu batch=16 images_per_s="),
        "{out}"
    );
    let one = rows_of(&s3, "one", 1);
    assert_eq!(one.len(), FILES * PER_FILE - 1);
    assert_eq!(one.iter().map(|r| r.2.len()).max(), Some(1280));
    let manifest: serde_json::Value =
        serde_json::from_slice(&s3.get("one/part-00000-of-00001.manifest.json").unwrap()).unwrap();
    assert_eq!(manifest["rejected"], 1, "{manifest}");
    assert_eq!(manifest["rows_read"], (FILES * PER_FILE) as u64);
    assert!(s3.get("one/part-00000-of-00001.rejects.parquet").is_some());

    // Four processes at once: the same rows, in the same order.
    let children: Vec<Child> = (0..4)
        .map(|p| {
            embed(&config, &s3, "four", &format!("{p}/4"))
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        succeeded(child.wait_with_output().unwrap());
    }
    assert_same_rows(&rows_of(&s3, "four", 4), &one);

    // A part killed midway leaves no manifest; the rerun of every part
    // skips the finished ones and redoes the killed one whole.
    for p in [0, 1, 3] {
        succeeded(
            embed(&config, &s3, "killed", &format!("{p}/4"))
                .output()
                .unwrap(),
        );
    }
    // Killed once it is writing its Parquet file locally (one image per
    // model run, so that takes a while), before anything is uploaded.
    let work = dir.path().join("victim-work");
    let mut victim = embed_with(
        &config,
        &s3,
        "killed",
        "2/4",
        &["--batch", "1", "--batch-rows", "1"],
    )
    .arg("--work-dir")
    .arg(&work)
    .spawn()
    .unwrap();
    let started = Instant::now();
    while !work.join("part-00002-of-00004.parquet").exists() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the part never started"
        );
        assert!(victim.try_wait().unwrap().is_none(), "the part ended early");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(100));
    victim.kill().unwrap();
    victim.wait().unwrap();
    assert!(
        s3.get("killed/part-00002-of-00004.manifest.json").is_none(),
        "the part was killed before its manifest"
    );
    for p in 0..4 {
        let out = succeeded(
            embed(&config, &s3, "killed", &format!("{p}/4"))
                .output()
                .unwrap(),
        );
        assert_eq!(out.contains("skipped"), p != 2, "part {p}: {out}");
    }
    assert_same_rows(&rows_of(&s3, "killed", 4), &one);

    // The parts load as embeddings (no second embedding pass), every row once.
    let data_dir = dir.path().join("data");
    let server = Server::start_with_env(&config, &data_dir, &s3.env());
    let (status, _) = server.post(
        "/v1/collections",
        &json!({ "name": "emb", "dim": 1280, "metric": "cosine", "shards": 2 }),
    );
    assert_eq!(status, 201);
    let (status, job) = server.post(
        "/v1/collections/emb/jobs",
        &json!({ "kind": "ingest", "uri": format!("s3://{BUCKET}/killed/part-*-of-00004.parquet"),
                 "bulk": true, "segment_rows": 1000 }),
    );
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_u64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let job = loop {
        let (_, job) = server.get(&format!("/v1/collections/emb/jobs/{id}"));
        if job["state"] != "running" {
            break job;
        }
        assert!(Instant::now() < deadline, "{job}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["report"]["files"], 4, "{job}");
    let read: Vec<&str> = job["report"]["files_read"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        read,
        (0..4)
            .map(|p| format!("killed/part-{p:05}-of-00004.parquet"))
            .collect::<Vec<_>>(),
        "lineage: the part files the job read"
    );
    // Each item names the input file its image came from.
    let (_, item) = server.get(&format!("/v1/collections/emb/items/{}", one[70].0));
    assert_eq!(item["source"], "images/part-1.parquet", "{item}");
    let (_, info) = server.get("/v1/collections/emb");
    assert_eq!(info["items"], one.len() as u64, "{info}");
    let probe = &one[10];
    let (_, answer) = server.post(
        "/v1/collections/emb/search",
        &json!({"vector": probe.2, "k": 1}),
    );
    assert_eq!(answer["neighbors"][0]["id"], probe.0, "{answer}");
}
