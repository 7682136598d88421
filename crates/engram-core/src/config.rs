//! Configuration types with their defaults. Loading (TOML file, then
//! `ENGRAM_*` environment variables) happens in the binary; validation here.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::error::{CoreError, Result};
pub use crate::reranker_config::{HeadRerankerConfig, HttpRerankerConfig, RerankerConfig};
use crate::voting::VotingRule;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct EngramConfig {
    pub server: ServerConfig,
    pub limits: LimitsConfig,
    pub collections: CollectionDefaults,
    pub index: IndexParams,
    /// Named embedders; a collection created with `"embedder": "<name>"` uses one.
    pub embedders: BTreeMap<String, EmbedderConfig>,
    /// Object storage that ingestion jobs read from.
    pub storage: StorageConfig,
    /// Role in a cluster; the default is the embedded single node.
    pub cluster: ClusterConfig,
    /// RAM this node spends on serving sealed segments faster.
    pub cache: CacheConfig,
    /// Who may call the public API.
    pub security: SecurityConfig,
    /// Where this node's trace spans go, besides its log.
    pub telemetry: TelemetryConfig,
    /// Following unlearning receipts.
    pub curation: CurationConfig,
    /// Named second stages over a classification's neighbours
    /// (`[rerankers.<name>]`, `kind = "http"` or `"head"`).
    pub rerankers: BTreeMap<String, RerankerConfig>,
}

/// How the node follows unlearning receipts until their bytes are gone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CurationConfig {
    /// Seconds between checks of the receipts not yet `erased` (each
    /// asks every shard copy where the deleted rows' bytes still are); the
    /// results feed `engram_unlearning_*`. 0 turns the checks off (and
    /// with them the work that meets erasure deadlines).
    pub receipt_check_s: u64,
    /// The erasure deadline of a delete that names none: seconds from the
    /// delete by which every byte of the deleted items must be gone from
    /// every copy, segment, WAL, uploaded object, quarantined copy and
    /// snapshot Engram knows of. The node schedules the rewrites and
    /// deletions that meet it; a receipt past it is reported overdue.
    /// 0: no deadline (bytes go with compactions by policy).
    pub erase_within_s: u64,
}

impl Default for CurationConfig {
    fn default() -> Self {
        CurationConfig {
            receipt_check_s: 60,
            erase_within_s: 86_400,
        }
    }
}

/// An OpenTelemetry exporter for the node's spans (request, embed, search,
/// fan-out, per-shard calls and searches, merge, vote), off by default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// OTLP over HTTP (protobuf): the collector's traces URL, e.g.
    /// `http://127.0.0.1:4318/v1/traces` (`ENGRAM_TELEMETRY__OTLP_ENDPOINT`).
    /// Unset: no exporter.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported spans; unset: `engram-<role>`.
    pub service_name: Option<String>,
    /// Spans exported: an `EnvFilter` directive (`debug` exports every
    /// span Engram makes; the log's own level stays `ENGRAM_LOG`'s).
    pub otlp_filter: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_endpoint: None,
            service_name: None,
            otlp_filter: "info,engram_coordinator=debug,engram_worker=debug,engram_meta=debug"
                .to_string(),
        }
    }
}

impl TelemetryConfig {
    pub fn validate(&self) -> Result<()> {
        if let Some(endpoint) = &self.otlp_endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            return Err(CoreError::invalid(
                "telemetry.otlp_endpoint",
                format!("must be an http:// or https:// URL, not {endpoint:?}"),
            ));
        }
        Ok(())
    }
}

/// Keys of the public API. With neither set every caller has full access
/// (the embedded default on loopback); with either set every route but
/// `/healthz`, `/readyz` and the decision page's static HTML needs one.
/// Never printed: `Debug` shows only whether a key is set.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecurityConfig {
    /// Full access to every route (`ENGRAM_SECURITY__API_KEY`).
    pub api_key: Option<String>,
    /// Search, classify, embed and reads only
    /// (`ENGRAM_SECURITY__READ_ONLY_API_KEY`).
    pub read_only_api_key: Option<String>,
    /// Shared by every process of a cluster: sent with, and required on,
    /// every internal request (Raft, worker RPC, transfers, ATTACH)
    /// (`ENGRAM_SECURITY__CLUSTER_SECRET`). A coordinator or worker
    /// refuses to start without one unless `--insecure` is given.
    pub cluster_secret: Option<String>,
    /// Accepted on internal requests as well as `cluster_secret`, never
    /// sent: the other half of a rotation without downtime (first every
    /// node accepts the new secret, then every node sends it, then the old
    /// one is dropped; docs/security.md)
    /// (`ENGRAM_SECURITY__ACCEPTED_CLUSTER_SECRET`).
    pub accepted_cluster_secret: Option<String>,
    /// Accepted as well as `api_key` (full access), never required: the
    /// old key while clients move to a new one (docs/security.md)
    /// (`ENGRAM_SECURITY__ACCEPTED_API_KEY`).
    pub accepted_api_key: Option<String>,
    /// Accepted as well as `read_only_api_key`, for its rotation
    /// (`ENGRAM_SECURITY__ACCEPTED_READ_ONLY_API_KEY`).
    pub accepted_read_only_api_key: Option<String>,
    /// Signs and verifies scoped tokens: credentials limited to some
    /// collections and a lifetime, minted with `engram token`
    /// (`ENGRAM_SECURITY__TOKEN_SIGNING_KEY`; docs/security.md).
    pub token_signing_key: Option<String>,
    /// TLS on this node's listeners and, with a CA, mutual TLS between
    /// peers.
    pub tls: TlsConfig,
}

/// Certificates, as PEM files (`ENGRAM_SECURITY__TLS__CERT`, `..__KEY`,
/// `..__CA`). `cert` and `key` make every listener of the node serve HTTPS
/// (the public API; in a cluster role also the internal port). `ca` is the
/// cluster's own authority: internal listeners require a client
/// certificate it signed (mutual TLS) and internal clients trust only
/// certificates it signed, presenting the node's own `cert` as theirs. A
/// coordinator or worker with `cert` needs `ca` (internal traffic is never
/// left in the clear beside an encrypted public port).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// The node's certificate chain, leaf first.
    pub cert: Option<PathBuf>,
    /// The private key of `cert` (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// The CA every peer's certificate chains to.
    pub ca: Option<PathBuf>,
}

impl TlsConfig {
    /// Whether listeners serve HTTPS.
    pub fn enabled(&self) -> bool {
        self.cert.is_some()
    }

    pub fn validate(&self) -> Result<()> {
        if self.cert.is_some() != self.key.is_some() {
            return Err(CoreError::invalid(
                "security.tls",
                "cert and key go together: set both or neither",
            ));
        }
        if self.ca.is_some() && self.cert.is_none() {
            return Err(CoreError::invalid(
                "security.tls.ca",
                "needs security.tls.cert and key: mutual TLS presents the node's own certificate",
            ));
        }
        Ok(())
    }
}

/// Shortest key accepted: 16 bytes is 128 bits when random.
pub const MIN_API_KEY_BYTES: usize = 16;

impl std::fmt::Debug for SecurityConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = |key: &Option<String>| key.as_ref().map(|_| "<set>");
        f.debug_struct("SecurityConfig")
            .field("api_key", &shown(&self.api_key))
            .field("read_only_api_key", &shown(&self.read_only_api_key))
            .field("cluster_secret", &shown(&self.cluster_secret))
            .field(
                "accepted_cluster_secret",
                &shown(&self.accepted_cluster_secret),
            )
            .field("accepted_api_key", &shown(&self.accepted_api_key))
            .field(
                "accepted_read_only_api_key",
                &shown(&self.accepted_read_only_api_key),
            )
            .field("token_signing_key", &shown(&self.token_signing_key))
            .field("tls", &self.tls)
            .finish()
    }
}

impl SecurityConfig {
    /// Whether the public API asks callers for a key.
    pub fn keys_required(&self) -> bool {
        self.api_key.is_some() || self.read_only_api_key.is_some()
    }

    pub fn validate(&self) -> Result<()> {
        for (name, key) in [
            ("security.api_key", &self.api_key),
            ("security.read_only_api_key", &self.read_only_api_key),
            ("security.cluster_secret", &self.cluster_secret),
            (
                "security.accepted_cluster_secret",
                &self.accepted_cluster_secret,
            ),
            ("security.accepted_api_key", &self.accepted_api_key),
            (
                "security.accepted_read_only_api_key",
                &self.accepted_read_only_api_key,
            ),
            ("security.token_signing_key", &self.token_signing_key),
        ] {
            let Some(key) = key else { continue };
            if key.len() < MIN_API_KEY_BYTES {
                return Err(CoreError::invalid(
                    name,
                    format!("must be at least {MIN_API_KEY_BYTES} bytes long"),
                ));
            }
            if !key.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(CoreError::invalid(
                    name,
                    "must be printable ASCII without spaces (it travels in an HTTP header)",
                ));
            }
        }
        if self.read_only_api_key.is_some() && self.api_key.is_none() {
            return Err(CoreError::invalid(
                "security.read_only_api_key",
                "needs security.api_key as well: otherwise nobody could write",
            ));
        }
        for (name, accepted, current, current_name) in [
            (
                "security.token_signing_key",
                &self.token_signing_key,
                &self.api_key,
                "security.api_key",
            ),
            (
                "security.accepted_api_key",
                &self.accepted_api_key,
                &self.api_key,
                "security.api_key",
            ),
            (
                "security.accepted_read_only_api_key",
                &self.accepted_read_only_api_key,
                &self.read_only_api_key,
                "security.read_only_api_key",
            ),
        ] {
            if accepted.is_some() && current.is_none() {
                return Err(CoreError::invalid(
                    name,
                    format!("needs {current_name} as well"),
                ));
            }
        }
        // One key, one access: a key listed twice would be both full and
        // read-only, and the cluster secret must never open the public API.
        let keys: Vec<(&str, &String)> = [
            ("security.api_key", &self.api_key),
            ("security.accepted_api_key", &self.accepted_api_key),
            ("security.read_only_api_key", &self.read_only_api_key),
            (
                "security.accepted_read_only_api_key",
                &self.accepted_read_only_api_key,
            ),
            ("security.token_signing_key", &self.token_signing_key),
        ]
        .into_iter()
        .filter_map(|(name, key)| key.as_ref().map(|key| (name, key)))
        .collect();
        for (i, (name, key)) in keys.iter().enumerate() {
            if let Some((other, _)) = keys[..i].iter().find(|(_, earlier)| earlier == key) {
                return Err(CoreError::invalid(
                    name,
                    format!("must differ from {other}"),
                ));
            }
            if [&self.cluster_secret, &self.accepted_cluster_secret]
                .into_iter()
                .any(|secret| secret.as_ref() == Some(*key))
            {
                return Err(CoreError::invalid(
                    name,
                    "must differ from the cluster secret: a public key must never open internal routes",
                ));
            }
        }
        self.tls.validate()?;
        if self.accepted_cluster_secret.is_some() && self.cluster_secret.is_none() {
            return Err(CoreError::invalid(
                "security.accepted_cluster_secret",
                "needs security.cluster_secret as well: it is only accepted during a rotation, never sent",
            ));
        }
        Ok(())
    }
}

/// The node's cache budget for sealed segments: whole segments held in RAM
/// (smallest first), then DiskANN's node caches around the entry points of
/// the others (`engram_core::residency`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// MiB of RAM; 0 serves every sealed segment from disk. Unset: a
    /// quarter of the machine's memory (or of its cgroup limit).
    pub budget_mb: Option<u64>,
}

/// What this process is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Coordinator and worker in one process, no Raft peers.
    #[default]
    Embedded,
    /// Public API, Raft metadata member, query fan-out.
    Coordinator,
    /// Hosts shard replicas.
    Worker,
}

/// A coordinator as the others and the workers reach it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    /// Raft node id (unique, > 0).
    pub id: u64,
    /// Internal RPC address (`host:port`).
    pub addr: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    pub role: Role,
    /// A coordinator's Raft id, or a worker's id (fixed: it names the
    /// worker in the shard map across restarts).
    pub node_id: u64,
    /// Where this node serves internal RPC (Raft, worker calls).
    pub internal_listen: String,
    /// The address others use for `internal_listen` (default: the same).
    pub advertise: Option<String>,
    /// The coordinators forming the Raft group; the one with the lowest id
    /// bootstraps it on first start. Workers heartbeat every one.
    pub coordinators: Vec<Peer>,
    /// A worker silent this long is declared dead by the Raft leader.
    pub worker_timeout_ms: u64,
    /// Deadline of one fan-out request to a worker before trying another replica.
    pub query_timeout_ms: u64,
    /// How long a write keeps retrying (failover, stale maps) before failing.
    pub write_timeout_ms: u64,
    pub raft_heartbeat_ms: u64,
    pub raft_election_min_ms: u64,
    pub raft_election_max_ms: u64,
    /// Requests the internal port handles at once (Raft, worker RPC,
    /// transfers); more are answered 503 and retried by the caller.
    pub internal_max_concurrent_requests: usize,
    /// How a primary brings a shard copy that fell behind back in sync.
    pub catch_up: CatchUpMode,
    /// Size of one read of a shipped segment file (KiB); each file
    /// travels as one stream of such pieces, and a copy keeps whatever
    /// arrived of it when the transfer is cut.
    pub transfer_chunk_kib: u64,
    /// Most MiB/s one shipped file streams at (0: as fast as the disks
    /// and network go), so that a move or rebuild leaves bandwidth to
    /// queries and replication.
    pub transfer_max_mib_per_s: u64,
    /// A running job whose coordinator has published nothing for this long
    /// is taken over by the Raft leader and run on from its last published
    /// checkpoint (ingest jobs; others are marked failed). Its owner stops
    /// the job on its own once it has reached no Raft majority for half of
    /// it, so two coordinators never run a job at once.
    pub job_takeover_s: u64,
    /// The local IP address this node's internal connections (Raft,
    /// heartbeats, replication, transfers) leave from; unset: the system's
    /// choice. For hosts with a separate cluster network.
    pub source_address: Option<std::net::IpAddr>,
}

/// How a primary brings a shard copy that fell behind back in sync.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CatchUpMode {
    /// Only the writes after the copy's position when the primary's WAL
    /// still holds them (a copy at the primary's position gets none);
    /// otherwise the whole shard: its sealed segment files as they are
    /// (no graph is rebuilt on the receiving side), then the growing
    /// segment's rows and the writes made meanwhile.
    #[default]
    Delta,
    /// Always the whole shard, row by row: what every catch-up did before
    /// write positions; kept for comparison and troubleshooting.
    Rows,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            role: Role::Embedded,
            node_id: 1,
            internal_listen: "127.0.0.1:7800".into(),
            advertise: None,
            coordinators: Vec::new(),
            worker_timeout_ms: 2_000,
            query_timeout_ms: 2_000,
            write_timeout_ms: 20_000,
            raft_heartbeat_ms: 150,
            raft_election_min_ms: 700,
            raft_election_max_ms: 1_400,
            internal_max_concurrent_requests: 1_024,
            catch_up: CatchUpMode::Delta,
            transfer_chunk_kib: 4_096,
            transfer_max_mib_per_s: 0,
            job_takeover_s: 60,
            source_address: None,
        }
    }
}

impl ClusterConfig {
    pub fn advertised(&self) -> String {
        self.advertise
            .clone()
            .unwrap_or_else(|| self.internal_listen.clone())
    }

    pub fn validate(&self) -> Result<()> {
        if self.role == Role::Embedded {
            return Ok(());
        }
        if self.node_id == 0 {
            return Err(CoreError::invalid("cluster.node_id", "must be at least 1"));
        }
        if self.coordinators.is_empty() {
            return Err(CoreError::invalid(
                "cluster.coordinators",
                "a cluster node needs the list of coordinators",
            ));
        }
        let mut ids: Vec<u64> = self.coordinators.iter().map(|p| p.id).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != self.coordinators.len() || ids.contains(&0) {
            return Err(CoreError::invalid(
                "cluster.coordinators",
                "coordinator ids must be unique and at least 1",
            ));
        }
        if self.role == Role::Coordinator && !ids.contains(&self.node_id) {
            return Err(CoreError::invalid(
                "cluster.node_id",
                "a coordinator must be listed in cluster.coordinators",
            ));
        }
        if !(self.raft_heartbeat_ms > 0
            && self.raft_heartbeat_ms < self.raft_election_min_ms
            && self.raft_election_min_ms < self.raft_election_max_ms)
        {
            return Err(CoreError::invalid(
                "cluster.raft_*",
                "need 0 < heartbeat < election_min < election_max",
            ));
        }
        if self.worker_timeout_ms == 0
            || self.query_timeout_ms == 0
            || self.write_timeout_ms == 0
            || self.job_takeover_s < 2
        {
            return Err(CoreError::invalid(
                "cluster.*_timeout_ms",
                "timeouts must be positive (job_takeover_s at least 2)",
            ));
        }
        // A piece is held in memory a few times over on each side.
        if !(1..=262_144).contains(&self.transfer_chunk_kib) {
            return Err(CoreError::invalid(
                "cluster.transfer_chunk_kib",
                "must be between 1 and 262144 (256 MiB)",
            ));
        }
        Ok(())
    }
}

/// Credentials and endpoints for `s3://`, `gs://` and `az://` URIs. Anything
/// left unset comes from the usual environment variables of each service
/// (`AWS_*`, `GOOGLE_*`, `AZURE_*`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    pub s3: S3Config,
    /// Where bulk ingestion uploads the sealed segments it builds
    /// (`s3://bucket/prefix`, `gs://`, `az://`, or a local directory);
    /// workers download them from there. Required for bulk ingestion in a
    /// cluster; on the embedded node, segments are attached from the
    /// builder's disk and only uploaded when this is set.
    pub segments_uri: Option<String>,
    /// With `segments_uri` set, a worker also uploads every sealed segment
    /// of the shards it leads there (seals, merges, compactions, attaches)
    /// and deletes those no shard holds any more, so a copy rebuilt by a
    /// full transfer downloads them instead of receiving them from its
    /// primary.
    pub upload_sealed_segments: bool,
    /// The only local directories a request (an ingest job's source, a
    /// snapshot's place) may name; anything else is refused (403) before
    /// it is read. Unset: `<data_dir>/import` and `<data_dir>/snapshots`.
    /// `ENGRAM_STORAGE__LOCAL_ROOTS=/a,/b` sets it from the environment.
    #[serde(deserialize_with = "list_or_commas")]
    pub local_roots: Option<Vec<PathBuf>>,
    /// When set, the only buckets (or Azure containers) of `s3://`, `gs://`
    /// and `az://` URIs a request may name. Unset: any the credentials
    /// reach; an empty list: none.
    /// `ENGRAM_STORAGE__BUCKETS=a,b` sets it from the environment.
    #[serde(deserialize_with = "list_or_commas")]
    pub buckets: Option<Vec<String>>,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            s3: S3Config::default(),
            segments_uri: None,
            upload_sealed_segments: true,
            local_roots: None,
            buckets: None,
        }
    }
}

impl StorageConfig {
    /// The local roots in force on a node whose data lives in `data_dir`.
    pub fn local_roots_for(&self, data_dir: &std::path::Path) -> Vec<PathBuf> {
        match &self.local_roots {
            Some(roots) => roots.clone(),
            None => vec![data_dir.join("import"), data_dir.join("snapshots")],
        }
    }
}

/// A list given as a TOML array or as one comma-separated string (as an
/// environment variable gives it).
fn list_or_commas<'de, D, T>(deserializer: D) -> std::result::Result<Option<Vec<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: From<String>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        List(Vec<String>),
        Commas(String),
    }
    let items = match Option::<Either>::deserialize(deserializer)? {
        None => return Ok(None),
        Some(Either::List(items)) => items,
        Some(Either::Commas(text)) => text
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
    };
    Ok(Some(items.into_iter().map(T::from).collect()))
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    /// e.g. `http://127.0.0.1:5055` for a local S3-compatible server.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Allow plain HTTP endpoints (local servers only).
    pub allow_http: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: String,
    pub data_dir: PathBuf,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:7700".to_string(),
            data_dir: PathBuf::from("./data"),
        }
    }
}

/// Bounds that protect the process from absurd requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    pub max_body_bytes: usize,
    pub max_k: usize,
    pub max_items_per_request: usize,
    pub max_queries_per_batch: usize,
    /// Decoded images larger than this many pixels are refused.
    pub max_image_pixels: u64,
    /// Queries (search, classify, batches, embed) in flight on this node;
    /// more are answered 429.
    pub max_concurrent_queries: usize,
    /// Queries in flight from one client address; more are answered 429.
    pub max_concurrent_queries_per_client: usize,
    /// Request body bytes in flight on this node, counted as they are
    /// read; a request whose next bytes would pass it is answered 429.
    pub max_body_bytes_in_flight: u64,
    /// A request head (request line and headers) must arrive within this,
    /// or the connection is closed; an idle keep-alive connection is closed
    /// after it too. At least 5000. Every listener, internal ones included.
    pub head_timeout_ms: u64,
    /// A request body must arrive in full within this of its head, or the
    /// request is answered 408 (`request_timeout`). Every listener.
    pub body_timeout_ms: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_body_bytes: 64 << 20,
            max_k: 1_000,
            max_items_per_request: 10_000,
            max_queries_per_batch: 1_000,
            max_image_pixels: 40_000_000,
            max_concurrent_queries: 256,
            max_concurrent_queries_per_client: 64,
            max_body_bytes_in_flight: 1 << 30,
            head_timeout_ms: 30_000,
            body_timeout_ms: 60_000,
        }
    }
}

/// Defaults for collections whose creation request leaves a field out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CollectionDefaults {
    /// Shards of a new collection created without a count; unset follows
    /// the deployment ([`CollectionDefaults::shards_for`]).
    pub shards: Option<u32>,
    pub replication: u32,
    pub k: usize,
    pub rule: VotingRule,
    /// Longest side, in pixels, of the JPEG thumbnail kept for each item
    /// added as an image (the decision page shows them); 0 keeps none.
    pub thumbnail_px: u32,
}

/// Largest `collections.thumbnail_px`: a thumbnail is for recognising the
/// picture at a glance, not a copy of it.
pub const MAX_THUMBNAIL_PX: u32 = 512;

impl Default for CollectionDefaults {
    fn default() -> Self {
        CollectionDefaults {
            shards: None,
            replication: 1,
            k: 50,
            rule: VotingRule::Rank,
            thumbnail_px: 96,
        }
    }
}

/// Shards of a collection on the embedded node when the config names none:
/// a few, so that a query searches a handful of segments; resharding
/// (`POST /v1/collections/{c}/reshard`) splits them when the memory grows.
pub const EMBEDDED_SHARDS: u32 = 2;
/// Shards per live worker of a cluster collection when the config names
/// no count: enough to spread and rebalance, few enough that a query's
/// fan-out stays a handful of searches per worker.
pub const SHARDS_PER_WORKER: u32 = 2;

impl CollectionDefaults {
    /// The shard count of a new collection created without one: the
    /// configured default, else one that follows the deployment (`workers`:
    /// live workers in a cluster, `None` on the embedded node).
    pub fn shards_for(&self, workers: Option<usize>) -> u32 {
        if let Some(shards) = self.shards {
            return shards;
        }
        match workers {
            None => EMBEDDED_SHARDS,
            Some(n) => (SHARDS_PER_WORKER * n.max(1) as u32).min(crate::collection::MAX_SHARDS),
        }
    }
}

/// DiskANN parameters of the segments of every shard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IndexParams {
    /// Graph degree R.
    pub max_degree: u32,
    /// Candidate list size while building (L_build).
    pub build_list_size: u32,
    /// Pruning parameter alpha (>= 1; larger keeps longer edges).
    pub alpha: f32,
    /// Bytes of PQ code per vector kept in RAM by sealed segments.
    pub pq_bytes: usize,
    /// Candidate list size while searching (L_search); a query may override it.
    pub search_list_size: u32,
    /// Sectors read in parallel per search step.
    pub beam_width: usize,
    /// Items in a growing segment at which it is sealed.
    pub seal_threshold: usize,
    /// Threads used to build a sealed segment; 0 means all cores.
    pub build_threads: usize,
    /// Sealed segments whose deleted fraction exceeds this are rewritten
    /// without their deleted rows by automatic compaction.
    pub compact_deleted_fraction: f64,
    /// Seconds between automatic maintenance (merges and compaction) runs;
    /// 0 turns them off (`POST /v1/collections/{c}/compact` still works).
    pub compaction_interval_s: u64,
    /// Sealed segments of one size tier merged into one (the tiered merge
    /// policy, `engram_core::merge_policy`).
    pub merge_segments_per_tier: usize,
    /// Segments up to this many live rows are all in the lowest tier.
    pub merge_floor_rows: u64,
    /// Largest merged segment, in MiB of full vectors (a build holds them
    /// in RAM); larger segments are only rewritten to drop deleted rows.
    pub merge_max_segment_mb: u64,
    /// Rows a PQ codebook is trained on (an even sample of the rows at
    /// hand). A shard or bulk job trains one and every later segment build
    /// reuses it (`engram_index::disk::codebook`).
    pub codebook_sample_rows: usize,
    /// A shard retrains its codebook when rows about to be sealed quantise
    /// this many times worse than the codebook's own training sample
    /// (relative error); 0 never retrains on drift.
    pub codebook_drift: f64,
}

impl Default for IndexParams {
    fn default() -> Self {
        IndexParams {
            max_degree: 64,
            build_list_size: 100,
            alpha: 1.2,
            pq_bytes: 64,
            search_list_size: 100,
            beam_width: 4,
            seal_threshold: 100_000,
            build_threads: 0,
            compact_deleted_fraction: 0.2,
            compaction_interval_s: 60,
            merge_segments_per_tier: 4,
            merge_floor_rows: 10_000,
            merge_max_segment_mb: 2_048,
            codebook_sample_rows: 50_000,
            codebook_drift: 1.5,
        }
    }
}

impl IndexParams {
    /// The merge policy for segments of `dim`-dimensional rows; segments
    /// with more than `deleted_fraction` of their rows deleted are rewritten.
    pub fn merge_policy(
        &self,
        dim: usize,
        deleted_fraction: f64,
    ) -> crate::merge_policy::MergePolicy {
        crate::merge_policy::MergePolicy {
            segments_per_tier: self.merge_segments_per_tier,
            floor_rows: self.merge_floor_rows,
            max_segment_rows: (self.merge_max_segment_mb << 20) / (dim.max(1) as u64 * 4),
            deleted_fraction,
        }
    }

    pub fn validate(&self) -> Result<()> {
        if !(4..=512).contains(&self.max_degree) {
            return Err(CoreError::invalid(
                "index.max_degree",
                "must be between 4 and 512",
            ));
        }
        if self.build_list_size < self.max_degree {
            return Err(CoreError::invalid(
                "index.build_list_size",
                "must be at least index.max_degree",
            ));
        }
        if !(self.alpha.is_finite() && self.alpha >= 1.0) {
            return Err(CoreError::invalid(
                "index.alpha",
                "must be a finite number >= 1",
            ));
        }
        if !(0.0..1.0).contains(&self.compact_deleted_fraction) {
            return Err(CoreError::invalid(
                "index.compact_deleted_fraction",
                "must be at least 0 and below 1",
            ));
        }
        if self.merge_segments_per_tier < 2 {
            return Err(CoreError::invalid(
                "index.merge_segments_per_tier",
                "must be at least 2",
            ));
        }
        if self.merge_max_segment_mb == 0 {
            return Err(CoreError::invalid(
                "index.merge_max_segment_mb",
                "must be at least 1",
            ));
        }
        if self.codebook_sample_rows < 256 {
            return Err(CoreError::invalid(
                "index.codebook_sample_rows",
                "must be at least 256 (one row per PQ centre)",
            ));
        }
        if !(self.codebook_drift == 0.0 || self.codebook_drift > 1.0) {
            return Err(CoreError::invalid(
                "index.codebook_drift",
                "must be 0 (never retrain on drift) or above 1",
            ));
        }
        if self.pq_bytes == 0
            || self.search_list_size == 0
            || self.beam_width == 0
            || self.seal_threshold == 0
        {
            return Err(CoreError::invalid(
                "index",
                "pq_bytes, search_list_size, beam_width and seal_threshold must be at least 1",
            ));
        }
        Ok(())
    }
}

/// An ONNX image embedder and the preprocessing its model expects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbedderConfig {
    pub model_path: PathBuf,
    /// Expected sha256 of the model file; when absent, `<model_path>.sha256`
    /// must exist. A model whose checksum does not match is refused.
    pub sha256: Option<String>,
    pub input_name: String,
    pub output_name: String,
    pub dim: usize,
    /// Images are resized (short side) and centre-cropped to this square size.
    pub image_size: u32,
    /// Fraction of the resized short side kept by the centre crop
    /// (0.875 is the classic 256 -> 224; 1.0 keeps the whole image).
    pub crop_fraction: f32,
    /// Per-channel normalisation applied to pixels scaled to [0, 1].
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub batch_size: usize,
    /// ONNX Runtime intra-op threads; 0 lets it choose.
    pub threads: usize,
    /// Execution provider: `cpu`, `cuda` or `tensorrt`. One the ONNX Runtime
    /// library in use lacks (or that fails to start) falls back to CPU with
    /// a warning naming it.
    pub provider: String,
    /// ONNX Runtime's shared library (`libonnxruntime.so.1.*`), when
    /// `ORT_DYLIB_PATH` does not name one; without either, the one `make
    /// setup` installed into the project's `.venv` is used. The runtime is
    /// loaded once per process: the first embedder loaded decides.
    pub runtime_path: Option<PathBuf>,
}

/// The execution providers an embedder may ask for.
pub const EXECUTION_PROVIDERS: [&str; 3] = ["cpu", "cuda", "tensorrt"];

impl Default for EmbedderConfig {
    fn default() -> Self {
        EmbedderConfig {
            model_path: PathBuf::from("models/efficientnet-lite0/efficientnet-lite0.onnx"),
            sha256: None,
            input_name: "input".to_string(),
            output_name: "embedding".to_string(),
            dim: 1280,
            image_size: 224,
            crop_fraction: 1.0,
            // EfficientNet-Lite was trained on (x - 127) / 128 of 0..255
            // pixels; on the [0, 1] scale that is this mean and std.
            mean: [127.0 / 255.0; 3],
            std: [128.0 / 255.0; 3],
            batch_size: 32,
            threads: 0,
            provider: "cpu".to_string(),
            runtime_path: None,
        }
    }
}

impl EngramConfig {
    pub fn validate(&self) -> Result<()> {
        if self.limits.max_concurrent_queries == 0
            || self.limits.max_concurrent_queries_per_client == 0
        {
            return Err(CoreError::invalid(
                "limits.max_concurrent_queries",
                "the query limits must be at least 1",
            ));
        }
        if self.limits.head_timeout_ms < 5_000 {
            // Engram's clients keep idle connections for 4 s: a shorter
            // head timeout would close connections they are about to use.
            return Err(CoreError::invalid(
                "limits.head_timeout_ms",
                "must be at least 5000",
            ));
        }
        if self.limits.body_timeout_ms == 0 {
            return Err(CoreError::invalid(
                "limits.body_timeout_ms",
                "must be at least 1",
            ));
        }
        if self.cluster.internal_max_concurrent_requests == 0 {
            return Err(CoreError::invalid(
                "cluster.internal_max_concurrent_requests",
                "must be at least 1",
            ));
        }
        if self.limits.max_k == 0 {
            return Err(CoreError::invalid("limits.max_k", "must be at least 1"));
        }
        if self.collections.k == 0 || self.collections.k > self.limits.max_k {
            return Err(CoreError::invalid(
                "collections.k",
                format!("must be between 1 and limits.max_k ({})", self.limits.max_k),
            ));
        }
        if self.collections.thumbnail_px > MAX_THUMBNAIL_PX {
            return Err(CoreError::invalid(
                "collections.thumbnail_px",
                format!("must be 0 (none) to {MAX_THUMBNAIL_PX}"),
            ));
        }
        self.index.validate()?;
        for (name, reranker) in &self.rerankers {
            reranker.validate(name)?;
        }
        self.cluster.validate()?;
        self.security.validate()?;
        self.telemetry.validate()?;
        for (name, e) in &self.embedders {
            e.validate().map_err(|err| CoreError::InvalidParameter {
                name: "embedders",
                reason: format!("embedder `{name}`: {err}"),
            })?;
        }
        Ok(())
    }
}

impl EmbedderConfig {
    pub fn validate(&self) -> Result<()> {
        if !(8..=1024).contains(&self.image_size) {
            return Err(CoreError::invalid(
                "image_size",
                "must be between 8 and 1024",
            ));
        }
        if !(self.crop_fraction > 0.0 && self.crop_fraction <= 1.0) {
            return Err(CoreError::invalid("crop_fraction", "must be in (0, 1]"));
        }
        if self.std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(CoreError::invalid("std", "must be finite and > 0"));
        }
        if self.batch_size == 0 || self.dim == 0 {
            return Err(CoreError::invalid("batch_size/dim", "must be at least 1"));
        }
        if !EXECUTION_PROVIDERS.contains(&self.provider.as_str()) {
            return Err(CoreError::invalid(
                "provider",
                "must be one of cpu, cuda, tensorrt",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_keys_are_checked_and_never_printed() {
        let key = "k".repeat(MIN_API_KEY_BYTES);
        let ok = SecurityConfig {
            api_key: Some(key.clone()),
            read_only_api_key: Some("r".repeat(20)),
            cluster_secret: Some("s".repeat(20)),
            accepted_cluster_secret: Some("p".repeat(20)),
            accepted_api_key: Some("a".repeat(20)),
            accepted_read_only_api_key: Some("b".repeat(20)),
            token_signing_key: Some("t".repeat(32)),
            tls: TlsConfig::default(),
        };
        ok.validate().unwrap();
        assert!(ok.keys_required());
        assert!(!SecurityConfig::default().keys_required());
        let printed = format!(
            "{:?}",
            EngramConfig {
                security: ok.clone(),
                ..EngramConfig::default()
            }
        );
        for secret in [
            &key,
            &"r".repeat(20),
            &"s".repeat(20),
            &"p".repeat(20),
            &"a".repeat(20),
            &"b".repeat(20),
            &"t".repeat(32),
        ] {
            assert!(
                !printed.contains(secret.as_str()) && printed.contains("<set>"),
                "{printed}"
            );
        }
        for bad in [
            SecurityConfig {
                api_key: Some("short".into()),
                ..Default::default()
            },
            SecurityConfig {
                api_key: Some(format!("{key} x")),
                ..Default::default()
            },
            SecurityConfig {
                read_only_api_key: Some(key.clone()),
                ..Default::default()
            },
            SecurityConfig {
                api_key: Some(key.clone()),
                read_only_api_key: Some(key.clone()),
                ..Default::default()
            },
            SecurityConfig {
                cluster_secret: Some("short".into()),
                ..Default::default()
            },
            SecurityConfig {
                accepted_cluster_secret: Some(key.clone()),
                ..Default::default()
            },
            SecurityConfig {
                api_key: Some(key.clone()),
                cluster_secret: Some(key.clone()),
                ..Default::default()
            },
            // A rotation's other key needs the current one, and differs
            // from every other key and from the secret.
            SecurityConfig {
                accepted_api_key: Some(key.clone()),
                ..Default::default()
            },
            SecurityConfig {
                api_key: Some(key.clone()),
                accepted_read_only_api_key: Some("b".repeat(20)),
                ..Default::default()
            },
            SecurityConfig {
                api_key: Some(key.clone()),
                accepted_api_key: Some(key.clone()),
                ..Default::default()
            },
            SecurityConfig {
                api_key: Some(key.clone()),
                read_only_api_key: Some("r".repeat(20)),
                accepted_read_only_api_key: Some(key.clone()),
                ..Default::default()
            },
            SecurityConfig {
                api_key: Some(key.clone()),
                accepted_api_key: Some("s".repeat(20)),
                cluster_secret: Some("t".repeat(20)),
                accepted_cluster_secret: Some("s".repeat(20)),
                ..Default::default()
            },
            SecurityConfig {
                token_signing_key: Some("t".repeat(32)),
                ..Default::default()
            },
            SecurityConfig {
                api_key: Some(key.clone()),
                token_signing_key: Some(key.clone()),
                ..Default::default()
            },
            SecurityConfig {
                tls: TlsConfig {
                    cert: Some("/c.pem".into()),
                    ..Default::default()
                },
                ..Default::default()
            },
            SecurityConfig {
                tls: TlsConfig {
                    ca: Some("/ca.pem".into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn storage_lists_come_as_arrays_or_commas() {
        for text in [
            r#"{"local_roots": ["/a", "/b"], "buckets": "x, y"}"#,
            r#"{"local_roots": "/a,/b", "buckets": ["x", "y"]}"#,
        ] {
            let storage: StorageConfig = serde_json::from_str(text).unwrap();
            assert_eq!(
                storage.local_roots,
                Some(vec![PathBuf::from("/a"), PathBuf::from("/b")])
            );
            assert_eq!(storage.buckets, Some(vec!["x".into(), "y".into()]));
        }
        let default = StorageConfig::default();
        assert_eq!(
            default.local_roots_for(std::path::Path::new("/d")),
            [PathBuf::from("/d/import"), PathBuf::from("/d/snapshots")]
        );
    }

    #[test]
    fn defaults_are_valid_and_round_trip() {
        let mut c = EngramConfig::default();
        c.embedders
            .insert("default".into(), EmbedderConfig::default());
        c.validate().unwrap();
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<EngramConfig>(&json).unwrap(), c);
    }

    #[test]
    fn rejects_inconsistent_limits() {
        let mut c = EngramConfig::default();
        c.collections.k = c.limits.max_k + 1;
        assert!(c.validate().is_err());
    }
}
