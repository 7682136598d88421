//! The decision page, driven in headless Chromium against the real server
//! (tests/e2e/decision_page.py), with API keys on: the page asks for the key
//! at its first 401 and keeps it in the tab. `make test` installs Chromium
//! (Debian package `chromium`) and Playwright (into .venv) first. The
//! screenshot is kept as a test artifact in `target/tmp/decision_page.png`.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::json;
use std::process::Command;

#[test]
fn classify_relabel_and_unlearn_in_the_browser() {
    let dir = tempfile::tempdir().unwrap();
    // The shipped config's `[rerankers.head]` (mix 0.5) re-ranks on request.
    let config = write_config(dir.path(), "");
    let key = "decision-page-key-0123456789";
    let env = [("ENGRAM_SECURITY__API_KEY".to_string(), key.to_string())];
    let mut server = Server::start_with_env(&config, &dir.path().join("data"), &env);
    server.http = common::cluster::keyed_client(
        reqwest::blocking::Client::builder(),
        key,
        std::time::Duration::from_secs(120),
    );
    let (status, body) = server.post(
        "/v1/collections",
        &json!({ "name": "fashion", "embedder": "default", "shards": 4, "default_k": 5 }),
    );
    assert_eq!(status, 201, "{body}");
    let data = fashion_mnist_dir();
    let train = engram_ingest::idx::read_images(&data.join("train-images-idx3-ubyte.gz")).unwrap();
    let labels = engram_ingest::idx::read_labels(&data.join("train-labels-idx1-ubyte.gz")).unwrap();
    let names = engram_ingest::idx::FASHION_MNIST_CLASSES;
    for chunk in (0..300usize).collect::<Vec<_>>().chunks(100) {
        let items: Vec<_> = chunk
            .iter()
            .map(|&i| json!({ "id": i, "label": names[labels[i] as usize], "image": fashion_png(&train, i), "source": format!("train#{}", i % 7) }))
            .collect();
        let (status, body) =
            server.post("/v1/collections/fashion/items", &json!({ "items": items }));
        assert_eq!(status, 200, "{body}");
    }
    let trained = server.run_job(
        "fashion",
        &json!({ "kind": "train_head", "reranker": "head", "training": { "epochs": 30 } }),
    );
    assert_eq!(trained["state"], "succeeded", "{trained}");
    let (status, page) = server.get("/ui");
    assert_eq!(status, 200);
    assert!(
        page.as_str().unwrap_or_default().contains("<title>Engram"),
        "the page is served"
    );

    // The query: a held-out test image, as a PNG file the browser uploads.
    let test = engram_ingest::idx::read_images(&data.join("t10k-images-idx3-ubyte.gz")).unwrap();
    use base64::Engine as _;
    let png = base64::engine::general_purpose::STANDARD
        .decode(fashion_png(&test, 0))
        .unwrap();
    let query = dir.path().join("query.png");
    std::fs::write(&query, png).unwrap();
    let screenshot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("decision_page.png");
    let _ = std::fs::remove_file(&screenshot);

    let python = repo_root().join(".venv/bin/python");
    let output = Command::new(&python)
        .arg(repo_root().join("crates/engram-cli/tests/e2e/decision_page.py"))
        .arg(&server.base)
        .arg("fashion")
        .arg(&query)
        .arg(&screenshot)
        .env("ENGRAM_TEST_API_KEY", key)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{} did not run ({e}): run the tests with `make test`",
                python.display()
            )
        });
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "browser test failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("decision page: ok"), "{stdout}");
    assert!(stdout.contains("asked for the API key once"), "{stdout}");
    assert!(
        screenshot.metadata().unwrap().len() > 10_000,
        "a screenshot was saved"
    );

    // What the browser did is what the server now holds.
    let (_, curation) = server.get("/v1/collections/fashion/interventions");
    let audit = curation["audit"].as_array().unwrap();
    assert!(
        !audit.is_empty()
            && audit
                .iter()
                .all(|e| e["action"] == "relabel" && e["reason"] == "e2e test")
    );
    let (_, info) = server.get("/v1/collections/fashion");
    assert_eq!(info["items"], 299, "one neighbour was unlearned");
}
