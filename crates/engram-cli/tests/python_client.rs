//! The Python client (`clients/python`, package `engram-client`) installed
//! from the working tree with pip and its tests run against a real embedded
//! server with API keys on: collections, items in batches, search,
//! classify (single and batch), deletes and receipts, curation, jobs
//! (ingesting a real Parquet file, pruning), images as bytes, paths and PIL
//! images, errors carrying the server's codes, and the notebook-style
//! example that rebuilds the demo's memory and its accuracy.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::process::Command;

const FULL: &str = "python-full-key-0123456789";
const READ: &str = "python-read-key-0123456789";

fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// `pip install ./clients/python` into `dir/site`: the `python` to run it
/// with and the `site` directory for `PYTHONPATH`.
fn install_client(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let root = repo_root();
    let python = root.join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run the tests with `make test` (make setup)",
        python.display()
    );
    // Built from a copy: setuptools builds in the source tree, and the
    // tests of this file install at the same time.
    let source = dir.join("source");
    copy_tree(&root.join("clients/python"), &source);
    let site = dir.join("site");
    let installed = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--no-build-isolation",
            "--target",
        ])
        .arg(&site)
        .arg(&source)
        .output()
        .unwrap();
    assert!(installed.status.success(), "{}", output_text(&installed));
    assert!(site.join("engram_client/client.py").exists());
    (python, site)
}

#[test]
fn the_python_client_passes_its_tests_against_a_real_server() {
    let dir = tempfile::tempdir().unwrap();
    let root = repo_root();
    let (python, site) = install_client(dir.path());

    let data = dir.path().join("data");
    let import = data.join("import");
    std::fs::create_dir_all(&import).unwrap();
    let parquet = import.join("embeddings.parquet");
    let ids: Vec<u64> = (1_000..1_100).collect();
    common::cluster::write_parquet(&parquet, &ids, "p");

    let config = write_config(dir.path(), "");
    let env = [
        ("ENGRAM_SECURITY__API_KEY".to_string(), FULL.to_string()),
        (
            "ENGRAM_SECURITY__READ_ONLY_API_KEY".to_string(),
            READ.to_string(),
        ),
    ];
    let server = Server::start_with_env(&config, &data, &env);
    let tests = Command::new(&python)
        .args(["-m", "unittest", "discover", "-v", "-s"])
        .arg(root.join("clients/python/tests"))
        .env("PYTHONPATH", &site)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("TMPDIR", dir.path())
        .env("ENGRAM_URL", &server.base)
        .env("ENGRAM_API_KEY", FULL)
        .env("ENGRAM_READ_ONLY_API_KEY", READ)
        .env("ENGRAM_TEST_PARQUET", &parquet)
        .output()
        .unwrap();
    let text = output_text(&tests);
    eprintln!("{text}");
    assert!(tests.status.success(), "the Python client's tests failed");
    // Every test ran (none skipped), and the example printed its accuracy.
    assert!(text.contains("Ran 8 tests"), "{text}");
    assert!(!text.contains("skipped"), "{text}");
}

#[test]
fn the_python_client_trusts_a_private_ca_when_told() {
    let dir = tempfile::tempdir().unwrap();
    let (python, site) = install_client(dir.path());
    let certs = tls::TestCerts::generate(&dir.path().join("tls"), "python");
    let config = write_config(dir.path(), "");
    let env = [("ENGRAM_SECURITY__API_KEY".to_string(), FULL.to_string())];
    let server = Server::start_tls(&config, &dir.path().join("data"), &env, &certs);
    let script = r#"
import os, sys
from engram_client import Engram, EngramError
url, key, ca = os.environ["ENGRAM_URL"], os.environ["ENGRAM_API_KEY"], os.environ["CA"]
e = Engram(url, api_key=key, ca_cert=ca)
e.create_collection("tls", dim=2, metric="l2")
e.add("tls", ids=[1], labels=["a"], vectors=[[0.0, 1.0]])
assert e.classify("tls", vector=[0.0, 1.0], k=1).label == "a"
try:
    Engram(url, api_key=key).list_collections()
    sys.exit("a client without the CA connected")
except EngramError as error:
    assert error.code == "unreachable", error
print("tls ok")
"#;
    let out = Command::new(&python)
        .args(["-c", script])
        .env("PYTHONPATH", &site)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("ENGRAM_URL", &server.base)
        .env("ENGRAM_API_KEY", FULL)
        .env("CA", &certs.ca)
        .output()
        .unwrap();
    let text = output_text(&out);
    assert!(out.status.success() && text.contains("tls ok"), "{text}");
}
