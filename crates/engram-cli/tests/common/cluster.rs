//! The loopback cluster harness: three coordinators (Raft over HTTP) and
//! three workers as real `engram` processes, each with its own config, data
//! directory and log. Used by the cluster scenarios and the chaos run.
//! Every cluster runs as a deployment should: a cluster secret of its own on
//! the internal routes and a public API key, which the harness's client and
//! [`Cluster::engramctl`] send.

use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Names the fault-injection flag file (see `engram_store::fault`).
pub const FAULT_DISK_FULL_ENV: &str = "ENGRAM_FAULT_DISK_FULL";

pub const DIM: usize = 8;
pub const SHARDS: u32 = 8;

/// A free port for an internal address, from 20000-29999: below the
/// ephemeral range, where the public APIs (`127.0.0.1:0`) get theirs, and
/// never handed out twice in this process, so parallel tests cannot take
/// each other's ports between this check and the bind.
pub fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let offset = std::process::id() % 5_000;
    loop {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let port = 20_000 + ((offset + n) % 10_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// 32 hex digits from the process's random hasher keys: a key or secret
/// no other test run shares.
pub fn random_secret() -> String {
    use std::hash::{BuildHasher, RandomState};
    let half = || RandomState::new().hash_one(std::time::SystemTime::now());
    format!("{:016x}{:016x}", half(), half())
}

/// A client that sends `api_key` as a bearer token on every request.
pub fn client_with_key(api_key: &str, timeout: Duration) -> reqwest::blocking::Client {
    keyed_client(reqwest::blocking::Client::builder(), api_key, timeout)
}

/// `builder` (one trusting a test CA, say) sending `api_key`.
pub fn keyed_client(
    builder: reqwest::blocking::ClientBuilder,
    api_key: &str,
    timeout: Duration,
) -> reqwest::blocking::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {api_key}")).unwrap();
    value.set_sensitive(true);
    headers.insert(reqwest::header::AUTHORIZATION, value);
    builder
        .pool_idle_timeout(engram_meta::serve::CLIENT_POOL_IDLE)
        .default_headers(headers)
        .timeout(timeout)
        .build()
        .unwrap()
}

/// Runs `engramctl --server <base> args...` with `api_key` in its
/// environment: (exit ok, stdout + stderr).
pub fn engramctl(api_key: &str, base: &str, args: &[&str]) -> (bool, String) {
    engramctl_trusting(api_key, None, base, args)
}

/// [`engramctl`] trusting the CA in `ca_cert` (`ENGRAM_CA_CERT`).
pub fn engramctl_trusting(
    api_key: &str,
    ca_cert: Option<&Path>,
    base: &str,
    args: &[&str],
) -> (bool, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_engramctl"));
    command
        .arg("--server")
        .arg(base)
        .args(args)
        .env("ENGRAM_API_KEY", api_key)
        .env_remove("ENGRAM_CA_CERT");
    if let Some(ca) = ca_cert {
        command.env("ENGRAM_CA_CERT", ca);
    }
    let out = command.output().unwrap();
    (out.status.success(), super::output_text(&out))
}

pub struct Proc {
    pub name: String,
    pub child: Option<Child>,
    /// Public API base URL (coordinators only).
    pub base: Option<String>,
    pub config: PathBuf,
    pub role: &'static str,
    pub log: PathBuf,
}

impl Proc {
    pub fn start(name: &str, role: &'static str, config: &Path, log: &Path) -> Proc {
        let mut proc = Proc {
            name: name.to_string(),
            child: None,
            base: None,
            config: config.to_path_buf(),
            role,
            log: log.to_path_buf(),
        };
        proc.restart();
        proc
    }

    pub fn restart(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_engram"))
            .args(["serve", "--role", self.role, "--config"])
            .arg(&self.config)
            // Every write a worker applies is in its log (debug), so that a
            // failed chaos run can follow one item through its copies.
            .env(
                "ENGRAM_LOG",
                "info,openraft=warn,engram_worker::node=debug,engram_worker::catch_up=debug,engram_worker::ship=debug,engram_meta::request_id=debug",
            )
            .env(FAULT_DISK_FULL_ENV, self.disk_full_flag())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn engram");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        assert!(
            line.contains("listening on"),
            "{} did not start: {line:?}; its log:\n{}",
            self.name,
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
        if self.role == "coordinator" {
            let addr = line.trim().rsplit(' ').next().unwrap().to_string();
            let config = std::fs::read_to_string(&self.config).unwrap();
            let scheme = if config.contains("[security.tls]") {
                "https"
            } else {
                "http"
            };
            self.base = Some(format!("{scheme}://{addr}"));
        }
        self.child = Some(child);
    }

    /// The quoted value of `key` in its config.
    fn config_value(&self, key: &str) -> String {
        std::fs::read_to_string(&self.config)
            .unwrap()
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split('"').nth(1))
            .unwrap_or_else(|| panic!("no {key} line in {}", self.config.display()))
            .to_string()
    }

    /// The data directory (`server.data_dir`) in its config.
    pub fn data_dir(&self) -> PathBuf {
        self.config_value("data_dir").into()
    }

    /// Lines of its log (across restarts) that contain `needle`.
    pub fn log_lines(&self, needle: &str) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// The internal address (`cluster.internal_listen`) in its config.
    pub fn internal_addr(&self) -> String {
        self.config_value("internal_listen")
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn alive(&self) -> bool {
        self.child.is_some()
    }

    /// Whether the process has ended by itself (not by [`Proc::kill9`]).
    pub fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_some())
    }

    /// The file whose existence makes this process's durable writes fail
    /// as if the disk were full (fault injection, see `engram_store::fault`).
    pub fn disk_full_flag(&self) -> PathBuf {
        self.log.with_extension("disk-full")
    }

    /// Sends `signal` (SIGSTOP, SIGCONT) to the running process.
    pub fn signal(&self, signal: i32) {
        if let Some(child) = &self.child {
            // SAFETY: kill(2) on the pid of a child this harness owns.
            let rc = unsafe { libc::kill(child.id() as i32, signal) };
            assert_eq!(rc, 0, "kill({}, {signal}) failed", self.name);
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("panicked"))
                .filter(|l| !l.contains("openraft"))
                .collect();
            let from = tail.len().saturating_sub(15);
            eprintln!(
                "--- {} (last warnings) ---\n{}",
                self.name,
                tail[from..].join("\n")
            );
        }
    }
}

/// Fields drop in order: the processes (printing their logs when a test
/// fails) before the directory holding those logs.
pub struct Cluster {
    /// The full-access public API key every coordinator requires.
    pub api_key: String,
    /// The secret of the internal routes.
    pub cluster_secret: String,
    pub coordinators: Vec<Proc>,
    pub workers: Vec<Proc>,
    pub http: reqwest::blocking::Client,
    /// Certificates when every port serves TLS ([`Cluster::start_tls`]).
    pub tls: Option<super::tls::TestCerts>,
    /// The proxies in front of every internal port, when the cluster was
    /// started with network faults ([`Cluster::start_with_net_faults`]).
    pub net: Option<super::netfault::NetFaults>,
    pub dir: tempfile::TempDir,
}

/// How [`Cluster::launch`] configures the nodes.
pub struct Launch<'a> {
    /// Extra lines of every node's `[index]` section.
    pub index_extra: &'a str,
    /// Extra lines of every node's `[storage]` section.
    pub storage_extra: &'a str,
    /// Extra lines of every node's `[cluster]` section.
    pub cluster_extra: &'a str,
    /// Local directories nodes may read and write besides the exchange.
    pub extra_roots: &'a [&'a Path],
    pub tls: bool,
    pub embedder: bool,
    pub worker_timeout_ms: u64,
    /// Internal ports behind fault-injecting proxies.
    pub net_faults: bool,
    /// `storage.segments_uri` (default: a directory of the cluster's).
    pub segments_uri: Option<&'a str>,
    /// Whole sections (`[curation]` ...) appended to every node's config.
    pub sections: &'a str,
}

impl Default for Launch<'_> {
    fn default() -> Self {
        Launch {
            index_extra: "compaction_interval_s = 0",
            storage_extra: "",
            cluster_extra: "",
            extra_roots: &[],
            tls: false,
            embedder: false,
            worker_timeout_ms: 1_500,
            net_faults: false,
            segments_uri: None,
            sections: "",
        }
    }
}

impl Cluster {
    /// A directory under one of the nodes' local roots: where a test puts
    /// files for ingest jobs and snapshots.
    pub fn exchange(&self) -> PathBuf {
        self.dir.path().join("exchange")
    }

    pub fn start() -> Cluster {
        Cluster::start_with("compaction_interval_s = 0")
    }

    /// A cluster whose nodes' `[index]` section also has `index_extra`.
    pub fn start_with(index_extra: &str) -> Cluster {
        Cluster::start_with_roots(index_extra, &[])
    }

    /// [`Cluster::start_with`] whose nodes may also read and write local
    /// files under `extra_roots` (beside [`Cluster::exchange`]).
    pub fn start_with_roots(index_extra: &str, extra_roots: &[&Path]) -> Cluster {
        Cluster::launch(Launch {
            index_extra,
            extra_roots,
            ..Launch::default()
        })
    }

    /// A cluster whose nodes' `[storage]` section also has `storage_extra`.
    pub fn start_with_storage(storage_extra: &str) -> Cluster {
        Cluster::launch(Launch {
            storage_extra,
            ..Launch::default()
        })
    }

    /// A cluster whose nodes' `[cluster]` section also has `cluster_extra`.
    pub fn start_with_cluster(cluster_extra: &str) -> Cluster {
        Cluster::launch(Launch {
            cluster_extra,
            ..Launch::default()
        })
    }

    /// A cluster whose internal ports are reached through fault-injecting
    /// proxies (`common::netfault`): `cluster.net` cuts the network between
    /// its nodes. `cluster_extra` as in [`Cluster::start_with_cluster`].
    pub fn start_with_net_faults(cluster_extra: &str) -> Cluster {
        Cluster::launch(Launch {
            cluster_extra,
            net_faults: true,
            ..Launch::default()
        })
    }

    /// A cluster whose coordinators declare a worker dead only after
    /// `worker_timeout_ms` of silence (1,500 otherwise).
    pub fn start_with_worker_timeout(worker_timeout_ms: u64) -> Cluster {
        Cluster::launch(Launch {
            worker_timeout_ms,
            ..Launch::default()
        })
    }

    /// A cluster whose coordinators load the default image embedder (the
    /// real ONNX model, as `config/embedded.toml` configures it).
    pub fn start_with_embedder() -> Cluster {
        Cluster::launch(Launch {
            embedder: true,
            ..Launch::default()
        })
    }

    /// A cluster whose every port serves TLS: HTTPS on the public APIs,
    /// mutual TLS between peers, under a CA the test made.
    pub fn start_tls() -> Cluster {
        Cluster::launch(Launch {
            tls: true,
            ..Launch::default()
        })
    }

    /// A cluster configured by `launch`.
    pub fn launch(launch: Launch) -> Cluster {
        let Launch {
            index_extra,
            storage_extra,
            cluster_extra,
            extra_roots,
            tls,
            embedder,
            worker_timeout_ms,
            net_faults,
            segments_uri,
            sections,
        } = launch;
        let net = net_faults.then(super::netfault::NetFaults::default);
        // Where a node's internal port is reached (a proxy in front of it
        // with network faults) and the line that makes its connections
        // leave from its own loopback address.
        // (Without proxies the lines are empty: tests that copy a node's
        // config for a new node change only its port.)
        let front = |name: &str, coordinator: bool, n: usize, port: u16| -> (u16, String) {
            match &net {
                None => (port, String::new()),
                Some(net) => {
                    let proxy = net.proxy(port, name);
                    let source = net.source_of(name, coordinator, n);
                    let advertise = if coordinator {
                        String::new()
                    } else {
                        format!("advertise = \"127.0.0.1:{proxy}\"\n")
                    };
                    (proxy, format!("{advertise}source_address = \"{source}\"\n"))
                }
            }
        };
        let dir = tempfile::tempdir().unwrap();
        let certs =
            tls.then(|| super::tls::TestCerts::generate(&dir.path().join("tls"), "cluster"));
        let tls_section = certs.as_ref().map(|c| c.toml()).unwrap_or_default();
        let exchange = dir.path().join("exchange");
        std::fs::create_dir_all(&exchange).unwrap();
        let roots: Vec<String> = std::iter::once(exchange.as_path())
            .chain(extra_roots.iter().copied())
            .map(|root| format!("{:?}", root.display().to_string()))
            .collect();
        let (api_key, cluster_secret) = (random_secret(), random_secret());
        eprintln!("cluster dir {}", dir.path().display());
        let internal: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let fronts: Vec<(u16, String)> = internal
            .iter()
            .enumerate()
            .map(|(i, port)| front(&format!("coordinator-{}", i + 1), true, i + 1, *port))
            .collect();
        let peers: Vec<String> = fronts
            .iter()
            .enumerate()
            .map(|(i, (p, _))| format!("{{ id = {}, addr = \"127.0.0.1:{p}\" }}", i + 1))
            .collect();
        let peers = peers.join(", ");
        // Segment files are read in 16 KiB pieces: a test's small files
        // still stream as many pieces, as large ones do.
        let common = format!(
            "[cluster]\ncoordinators = [{peers}]\nworker_timeout_ms = {worker_timeout_ms}\n\
             query_timeout_ms = 2000\nwrite_timeout_ms = 30000\n\
             transfer_chunk_kib = 16\n{cluster_extra}\n"
        );
        // Bulk segments go through a directory every node reads: object
        // storage on the local filesystem.
        let index = format!(
            "[index]\nseal_threshold = 400\nmax_degree = 16\nbuild_list_size = 32\n\
             pq_bytes = 4\n{index_extra}\n\n[storage]\nsegments_uri = {:?}\n\
             local_roots = [{}]\n{storage_extra}\n\n\
             [security]\napi_key = {api_key:?}\ncluster_secret = {cluster_secret:?}\n\
             {tls_section}\n{sections}\n",
            segments_uri.map_or_else(
                || dir.path().join("segment-store").display().to_string(),
                str::to_string
            ),
            roots.join(", ")
        );
        let embedders = if embedder {
            let shipped =
                std::fs::read_to_string(super::repo_root().join("config/embedded.toml")).unwrap();
            let section = &shipped[shipped.find("[embedders.default]").unwrap()..];
            let model =
                super::repo_root().join("models/efficientnet-lite0/efficientnet-lite0.onnx");
            section.replace(
                "model_path = \"models/efficientnet-lite0/efficientnet-lite0.onnx\"",
                &format!("model_path = {:?}", model.display().to_string()),
            )
        } else {
            String::new()
        };
        let mut coordinators = Vec::new();
        for (i, port) in internal.iter().enumerate() {
            let id = i + 1;
            let data = dir.path().join(format!("coordinator-{id}"));
            let config = dir.path().join(format!("coordinator-{id}.toml"));
            std::fs::write(
                &config,
                format!(
                    "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = {:?}\n\n{common}\
                     node_id = {id}\ninternal_listen = \"127.0.0.1:{port}\"\n{}\n\
                     [collections]\nreplication = 2\n\n{index}\n{embedders}",
                    data.display().to_string(),
                    fronts[i].1
                ),
            )
            .unwrap();
            let log = dir.path().join(format!("coordinator-{id}.log"));
            coordinators.push(Proc::start(
                &format!("coordinator-{id}"),
                "coordinator",
                &config,
                &log,
            ));
        }
        let mut workers = Vec::new();
        for id in 1..=3 {
            let data = dir.path().join(format!("worker-{id}"));
            let config = dir.path().join(format!("worker-{id}.toml"));
            std::fs::write(&config, {
                let port = free_port();
                let (_, lines) = front(&format!("worker-{id}"), false, id, port);
                format!(
                    "[server]\ndata_dir = {:?}\n\n{common}node_id = {id}\n\
                     internal_listen = \"127.0.0.1:{port}\"\n{lines}\n{index}",
                    data.display().to_string(),
                )
            })
            .unwrap();
            let log = dir.path().join(format!("worker-{id}.log"));
            workers.push(Proc::start(
                &format!("worker-{id}"),
                "worker",
                &config,
                &log,
            ));
        }
        let builder = match &certs {
            Some(certs) => certs.client(),
            None => reqwest::blocking::Client::builder(),
        };
        let cluster = Cluster {
            http: keyed_client(builder, &api_key, Duration::from_secs(60)),
            tls: certs,
            net,
            api_key,
            cluster_secret,
            dir,
            coordinators,
            workers,
        };
        cluster.wait_ready(3, Duration::from_secs(60));
        cluster
    }

    /// Runs `engramctl --server <base> args...` with the cluster's API key
    /// (from the environment, as an operator would): (exit ok, stdout +
    /// stderr).
    pub fn engramctl(&self, base: &str, args: &[&str]) -> (bool, String) {
        let ca = self.tls.as_ref().map(|certs| certs.ca.as_path());
        engramctl_trusting(&self.api_key, ca, base, args)
    }

    pub fn live_coordinators(&self) -> Vec<&str> {
        self.coordinators
            .iter()
            .filter(|c| c.alive())
            .map(|c| c.base.as_deref().unwrap())
            .collect()
    }

    pub fn status(&self, base: &str) -> Option<Value> {
        let response = self.http.get(format!("{base}/v1/cluster")).send().ok()?;
        response.json().ok()
    }

    /// Every live coordinator knows the same leader and sees `workers` healthy.
    pub fn wait_ready(&self, workers: usize, within: Duration) -> u64 {
        let deadline = Instant::now() + within;
        loop {
            let statuses: Vec<Option<Value>> = self
                .live_coordinators()
                .iter()
                .map(|b| self.status(b))
                .collect();
            let leaders: BTreeSet<u64> = statuses
                .iter()
                .filter_map(|s| s.as_ref()?["leader"].as_u64())
                .collect();
            let healthy = statuses.iter().all(|s| {
                s.as_ref().is_some_and(|s| {
                    s["workers"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .filter(|w| w["healthy"] == json!(true))
                        .count()
                        == workers
                })
            });
            let leader_alive = leaders.len() == 1
                && self.coordinators[*leaders.first().unwrap() as usize - 1].alive();
            if healthy && leader_alive && statuses.iter().all(Option::is_some) {
                return *leaders.first().unwrap();
            }
            assert!(Instant::now() < deadline, "cluster not ready: {statuses:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// POSTs to the live coordinators in turn until one answers.
    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.post_from(0, path, body)
    }

    /// [`Cluster::post`], starting at live coordinator `first` (modulo).
    pub fn post_from(&self, first: usize, path: &str, body: &Value) -> (u16, Value) {
        let mut last = String::new();
        let mut live = self.live_coordinators();
        let n = live.len().max(1);
        live.rotate_left(first % n);
        for base in live {
            match self.http.post(format!("{base}{path}")).json(body).send() {
                Ok(r) => {
                    let status = r.status().as_u16();
                    return (status, r.json().unwrap_or(Value::Null));
                }
                Err(e) => last = e.to_string(),
            }
        }
        panic!("no coordinator answered {path}: {last}");
    }

    /// The `/metrics` page of the coordinator whose public API is `base`.
    pub fn coordinator_metrics(&self, base: &str) -> String {
        self.http
            .get(format!("{base}/metrics"))
            .send()
            .unwrap()
            .text()
            .unwrap()
    }

    /// The `/metrics` page of worker `index` (0-based), fetched with the
    /// cluster secret from its internal port.
    pub fn worker_metrics(&self, index: usize) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let addr = self.workers[index].internal_addr();
        let response = self
            .http
            .get(format!("{scheme}://{addr}/metrics"))
            .bearer_auth(&self.cluster_secret)
            .send()
            .unwrap();
        assert_eq!(response.status(), 200, "{addr}");
        response.text().unwrap()
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        let base = self.live_coordinators()[0];
        let r = self.http.get(format!("{base}{path}")).send().unwrap();
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(Value::Null))
    }

    pub fn delete(&self, path: &str) -> (u16, Value) {
        let base = self.live_coordinators()[0];
        let r = self.http.delete(format!("{base}{path}")).send().unwrap();
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(Value::Null))
    }
}

/// How the copies of a cluster healed, from the workers' logs (every
/// "replica caught up" line a primary wrote, across restarts): catch-ups
/// and bytes sent by kind.
#[derive(Debug, Default, Clone, Copy)]
pub struct Heals {
    pub delta: u64,
    pub segments: u64,
    pub object_store: u64,
    pub rows: u64,
    pub delta_bytes: u64,
    pub segments_bytes: u64,
    pub object_store_bytes: u64,
    pub rows_bytes: u64,
}

impl Cluster {
    pub fn heals(&self) -> Heals {
        let mut heals = Heals::default();
        for worker in &self.workers {
            let log = std::fs::read_to_string(&worker.log).unwrap_or_default();
            for line in log.lines().filter(|l| l.contains("replica caught up")) {
                let field = |name: &str| {
                    line.split_whitespace()
                        .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
                        .map(|v| v.trim_matches('"').to_string())
                };
                let bytes: u64 = field("bytes").and_then(|b| b.parse().ok()).unwrap_or(0);
                match field("kind").as_deref() {
                    Some("delta") => {
                        heals.delta += 1;
                        heals.delta_bytes += bytes;
                    }
                    Some("segments") => {
                        heals.segments += 1;
                        heals.segments_bytes += bytes;
                    }
                    Some("object_store") => {
                        heals.object_store += 1;
                        heals.object_store_bytes += bytes;
                    }
                    Some("rows") => {
                        heals.rows += 1;
                        heals.rows_bytes += bytes;
                    }
                    _ => {}
                }
            }
        }
        heals
    }
}

/// The value of the sample `series` (name and labels as Prometheus
/// prints them, e.g. `engram_catch_ups_total{kind="delta"}`) on a metrics
/// page; 0 when absent.
pub fn metric(page: &str, series: &str) -> f64 {
    page.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |value| value.trim().parse().unwrap())
}

/// Whether a `GET /v1/cluster` answer shows a healed cluster: a leader,
/// all three workers healthy, and every shard with its primary and one
/// in-sync replica (replication 2) and nothing out of sync.
pub fn healed(status: &Value) -> bool {
    healed_with(status, 1)
}

/// [`healed`] for collections whose shards have `replicas` replicas
/// beside their primary (replication `replicas + 1`).
pub fn healed_with(status: &Value, replicas: usize) -> bool {
    let workers_ok = status["workers"]
        .as_array()
        .is_some_and(|w| w.iter().filter(|w| w["healthy"] == json!(true)).count() == 3);
    let in_sync = status["collections"].as_array().is_some_and(|cs| {
        cs.iter().all(|c| {
            c["shards"].as_array().unwrap().iter().all(|s| {
                s["out_of_sync"].as_array().unwrap().is_empty()
                    && s["replicas"].as_array().unwrap().len() == replicas
            })
        })
    });
    status["leader"].is_u64() && workers_ok && in_sync
}

/// A distinct pseudo-random vector per id (splitmix64 per coordinate).
pub fn vector(id: u64) -> Vec<f32> {
    (0..DIM as u64)
        .map(|d| {
            let mut x = id.wrapping_mul(0x9e37_79b9_7f4a_7c15)
                ^ (d + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (x >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect()
}

/// A Parquet file of `ids` (label `label`, `vector(id)`) at `path`.
pub fn write_parquet(path: &std::path::Path, ids: &[u64], label: &str) {
    write_parquet_of(path, ids, label, vector);
}

/// A Parquet file of `ids` (label `label`, `vector_of(id)`) at `path`, in
/// row groups of 500 rows.
pub fn write_parquet_of(
    path: &std::path::Path,
    ids: &[u64],
    label: &str,
    vector_of: impl Fn(u64) -> Vec<f32>,
) {
    use arrow_array::builder::{FixedSizeListBuilder, Float32Builder};
    use arrow_array::{ArrayRef, RecordBatch, StringArray, UInt64Array};
    let mut list = FixedSizeListBuilder::new(Float32Builder::new(), DIM as i32);
    for id in ids {
        list.values().append_slice(&vector_of(*id));
        list.append(true);
    }
    let batch = RecordBatch::try_from_iter([
        (
            "id",
            std::sync::Arc::new(UInt64Array::from(ids.to_vec())) as ArrayRef,
        ),
        (
            "label",
            std::sync::Arc::new(StringArray::from_iter_values(ids.iter().map(|_| label)))
                as ArrayRef,
        ),
        ("embedding", std::sync::Arc::new(list.finish()) as ArrayRef),
    ])
    .unwrap();
    let props = parquet::file::properties::WriterProperties::builder()
        .set_max_row_group_row_count(Some(500))
        .build();
    let file = std::fs::File::create(path).unwrap();
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(file, batch.schema(), Some(props)).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}
