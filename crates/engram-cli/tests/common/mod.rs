//! Starts the real `engram` binary on a loopback port for integration tests.

#![allow(dead_code, clippy::unwrap_used)]

pub mod cluster;
pub mod netfault;
pub mod tls;
pub mod traffic;

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

pub fn fashion_mnist_dir() -> PathBuf {
    PathBuf::from("/usr/share/datasets/fashion-mnist")
}

/// Writes a config for a test server: the embedded default with an absolute
/// model path, and each `key = value` line of `extra` replacing that key.
pub fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let base = std::fs::read_to_string(repo_root().join("config/embedded.toml")).unwrap();
    let model = repo_root().join("models/efficientnet-lite0/efficientnet-lite0.onnx");
    let text = base.replace(
        "model_path = \"models/efficientnet-lite0/efficientnet-lite0.onnx\"",
        &format!("model_path = {:?}", model.display().to_string()),
    );
    let mut text = text;
    for line in extra.lines().filter(|l| l.contains('=')) {
        let key = line.split('=').next().unwrap().trim();
        let old = text
            .lines()
            .find(|l| l.split('=').next().map(str::trim) == Some(key))
            .expect("known key")
            .to_string();
        text = text.replace(&old, line);
    }
    let path = dir.join("engram.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Appends TOML tables (say `[rerankers.<name>]`) to a written config.
pub fn append_config(config: &Path, tables: &str) {
    let mut text = std::fs::read_to_string(config).unwrap();
    text.push('\n');
    text.push_str(tables);
    std::fs::write(config, text).unwrap();
}

pub struct Server {
    pub child: Child,
    pub base: String,
    pub data_dir: PathBuf,
    pub config: PathBuf,
    pub http: reqwest::blocking::Client,
}

impl Server {
    /// Starts a server over `data_dir` with `config`; waits until it listens.
    pub fn start(config: &Path, data_dir: &Path) -> Server {
        Self::try_start(config, data_dir).unwrap_or_else(|e| panic!("server did not start: {e}"))
    }

    pub fn try_start(config: &Path, data_dir: &Path) -> Result<Server, String> {
        Self::try_start_with_env(config, data_dir, &[])
    }

    /// Starts a server with extra environment variables (e.g. `ENGRAM_*`
    /// overrides).
    pub fn start_with_env(config: &Path, data_dir: &Path, env: &[(String, String)]) -> Server {
        Self::try_start_with_env(config, data_dir, env)
            .unwrap_or_else(|e| panic!("server did not start: {e}"))
    }

    pub fn try_start_with_env(
        config: &Path,
        data_dir: &Path,
        env: &[(String, String)],
    ) -> Result<Server, String> {
        Self::try_start_with_tls(config, data_dir, env, None)
    }

    /// A server serving HTTPS with `certs` (given by environment); its
    /// client trusts only their CA.
    pub fn start_tls(
        config: &Path,
        data_dir: &Path,
        env: &[(String, String)],
        certs: &tls::TestCerts,
    ) -> Server {
        let mut env = env.to_vec();
        env.extend(certs.env());
        Self::try_start_with_tls(config, data_dir, &env, Some(certs))
            .unwrap_or_else(|e| panic!("server did not start: {e}"))
    }

    fn try_start_with_tls(
        config: &Path,
        data_dir: &Path,
        env: &[(String, String)],
        certs: Option<&tls::TestCerts>,
    ) -> Result<Server, String> {
        assert!(
            std::env::var("ORT_DYLIB_PATH").is_ok(),
            "ORT_DYLIB_PATH must name libonnxruntime.so: run the tests with `make test`"
        );
        // The server's log goes to a file beside its data directory: a pipe
        // nobody reads would fill up and block the server once it has
        // logged 64 KiB (refused requests are logged).
        let log_path = PathBuf::from(format!("{}.server.log", data_dir.display()));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("server log file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_engram"))
            .args(["serve", "--config"])
            .arg(config)
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env("ENGRAM_LOG", "warn")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn engram");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        let read = BufReader::new(stdout).read_line(&mut line).unwrap_or(0);
        if read == 0 || !line.starts_with("engram listening on ") {
            let status = child.wait().ok();
            let err = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Err(format!("exit {status:?}: {err}"));
        }
        let addr = line
            .trim()
            .trim_start_matches("engram listening on ")
            .to_string();
        let (scheme, http) = match certs {
            None => ("http", reqwest::blocking::Client::builder()),
            Some(certs) => ("https", certs.client()),
        };
        Ok(Server {
            child,
            base: format!("{scheme}://{addr}"),
            data_dir: data_dir.to_path_buf(),
            config: config.to_path_buf(),
            http: http
                .pool_idle_timeout(engram_meta::serve::CLIENT_POOL_IDLE)
                .timeout(Duration::from_secs(120))
                .build()
                .unwrap(),
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = self.http.post(self.url(path)).json(body).send().unwrap();
        decode(response)
    }

    pub fn post_raw(&self, path: &str, body: Vec<u8>, content_type: &str) -> (u16, Value) {
        let response = self
            .http
            .post(self.url(path))
            .header("content-type", content_type)
            .body(body)
            .send()
            .unwrap();
        decode(response)
    }

    /// Declares a body of `declared_len` bytes but sends only its first
    /// kilobyte, then reads the answer: a server that enforces its body
    /// limit answers from the Content-Length alone. (Sending the whole body
    /// races with the server closing the connection after answering.)
    pub fn post_oversized(&self, path: &str, declared_len: usize) -> (u16, Value) {
        use std::io::{Read, Write};
        let addr = self.base.trim_start_matches("http://");
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {declared_len}\r\nconnection: close\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).unwrap();
        let _ = stream.write_all(&vec![b'['; 1024]);
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        let text = String::from_utf8_lossy(&answer);
        let status: u16 = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
        (
            status,
            serde_json::from_str(body).unwrap_or(Value::String(body.to_string())),
        )
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        decode(self.http.get(self.url(path)).send().unwrap())
    }

    pub fn delete(&self, path: &str) -> (u16, Value) {
        decode(self.http.delete(self.url(path)).send().unwrap())
    }

    /// The Prometheus text of `/metrics`.
    pub fn metrics_text(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .unwrap()
            .text()
            .unwrap()
    }

    /// `/metrics` of a server with keys on, read with `api_key`.
    pub fn metrics_text_with(&self, api_key: &str) -> String {
        self.http
            .get(self.url("/metrics"))
            .bearer_auth(api_key)
            .send()
            .unwrap()
            .text()
            .unwrap()
    }

    /// Starts a job on `collection` and waits (up to 5 minutes) until it
    /// ends; answers its final status.
    pub fn run_job(&self, collection: &str, request: &Value) -> Value {
        let (status, job) = self.post(&format!("/v1/collections/{collection}/jobs"), request);
        assert_eq!(status, 202, "{job}");
        let id = job["id"].as_u64().expect("job id");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
        loop {
            let (_, job) = self.get(&format!("/v1/collections/{collection}/jobs/{id}"));
            if job["state"] != "running" {
                return job;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "job {id} still running: {job}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    pub fn healthy(&self) -> bool {
        matches!(self.get("/healthz"), (200, _))
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill9();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn decode(response: reqwest::blocking::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().unwrap_or_default();
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, value)
}

/// Asserts a 4xx answer with the JSON error body `{error: {code, message}}`.
pub fn assert_client_error(answer: &(u16, Value), status: u16, what: &str) {
    assert_eq!(
        answer.0, status,
        "{what}: expected {status}, got {answer:?}"
    );
    let error = &answer.1["error"];
    assert!(
        error["code"].as_str().is_some_and(|c| !c.is_empty())
            && error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: error body is not {{error: {{code, message}}}}: {answer:?}"
    );
}

/// Base64 PNG of Fashion-MNIST image `i` of the given split.
pub fn fashion_png(images: &engram_ingest::idx::IdxImages, i: usize) -> String {
    use base64::Engine as _;
    let image = image::GrayImage::from_raw(
        images.cols as u32,
        images.rows as u32,
        images.image(i).to_vec(),
    )
    .unwrap();
    let mut png = std::io::Cursor::new(Vec::new());
    image.write_to(&mut png, image::ImageFormat::Png).unwrap();
    base64::engine::general_purpose::STANDARD.encode(png.into_inner())
}

/// A finished command's stdout and stderr, one after the other.
pub fn output_text(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Every file below `dir`.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

/// [`files_under`] of a directory that changes while it is read (files
/// and directories that vanish meanwhile are skipped).
pub fn files_under_lenient(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

/// Whether some file below `dir` contains `needle`.
pub fn on_disk(dir: &Path, needle: &[u8]) -> bool {
    files_under(dir).iter().any(|f| {
        std::fs::read(f)
            .map(|b| b.windows(needle.len()).any(|w| w == needle))
            .unwrap_or(false)
    })
}

/// Little-endian bytes of a vector, as files store it.
pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub const BUCKET: &str = "engram-test";

/// moto_server (from .venv) on a free loopback port with the test bucket,
/// stopped on drop.
pub struct S3 {
    child: Child,
    pub endpoint: String,
}

impl S3 {
    pub fn start() -> S3 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let moto = repo_root().join(".venv/bin/moto_server");
        let child = Command::new(&moto)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{} did not start ({e}): run `make test`", moto.display()));
        let endpoint = format!("http://127.0.0.1:{port}");
        let http = reqwest::blocking::Client::new();
        let started = Instant::now();
        while http.get(&endpoint).send().is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "moto_server did not answer"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let created = http.put(format!("{endpoint}/{BUCKET}")).send().unwrap();
        assert!(created.status().is_success(), "{created:?}");
        S3 { child, endpoint }
    }

    pub fn put(&self, key: &str, bytes: Vec<u8>) {
        let answer = reqwest::blocking::Client::new()
            .put(format!("{}/{BUCKET}/{key}", self.endpoint))
            .body(bytes)
            .send()
            .unwrap();
        assert!(answer.status().is_success(), "{answer:?}");
    }

    /// `ENGRAM_*` overrides pointing the server at this store.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("ENGRAM_STORAGE__S3__ENDPOINT", self.endpoint.as_str()),
            ("ENGRAM_STORAGE__S3__ALLOW_HTTP", "true"),
            ("ENGRAM_STORAGE__S3__REGION", "us-east-1"),
            ("ENGRAM_STORAGE__S3__ACCESS_KEY_ID", "test"),
            ("ENGRAM_STORAGE__S3__SECRET_ACCESS_KEY", "test"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl S3 {
    /// `[storage]` settings reaching this store with the test credentials.
    pub fn storage(&self) -> engram_core::config::StorageConfig {
        engram_core::config::StorageConfig {
            s3: engram_core::config::S3Config {
                endpoint: Some(self.endpoint.clone()),
                region: Some("us-east-1".into()),
                access_key_id: Some("test".into()),
                secret_access_key: Some("test".into()),
                allow_http: true,
            },
            ..Default::default()
        }
    }

    /// The bytes of `key` in the test bucket, if it exists; read with the
    /// test credentials (objects the server wrote are not public).
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        use object_store::ObjectStoreExt;
        let location =
            engram_store::ObjectLocation::parse(&format!("s3://{BUCKET}"), &self.storage())
                .unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            match location.store.get(&location.object(key)).await {
                Ok(got) => Some(got.bytes().await.unwrap().to_vec()),
                Err(object_store::Error::NotFound { .. }) => None,
                Err(e) => panic!("GET {key}: {e}"),
            }
        })
    }

    /// Keys under `prefix` in the test bucket (ListObjectsV2, first page).
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let body = reqwest::blocking::Client::new()
            .get(format!(
                "{}/{BUCKET}?list-type=2&prefix={prefix}&max-keys=1000",
                self.endpoint
            ))
            .send()
            .unwrap()
            .text()
            .unwrap();
        body.split("<Key>")
            .skip(1)
            .map(|rest| rest.split("</Key>").next().unwrap().to_string())
            .collect()
    }
}
