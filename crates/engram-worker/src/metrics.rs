//! The worker's Prometheus metrics, served at `/metrics` on its internal
//! port (behind the cluster secret, which Prometheus sends as
//! `Authorization: Bearer <secret>`; docs/operations.md).
//!
//! Counted as they happen: internal calls by route and status, and their
//! latency. Read at each scrape: every hosted shard copy's items, sealed
//! segments, growing rows, tombstones and sealed bytes, the segment
//! cache's budget and use, and the listener's own counters (cut-offs, failed TLS handshakes, requests refused for
//! lacking the secret). Counted process-wide where the work happens: the
//! segment indexes' searches and builds ([`crate::index_metrics`]) and
//! each write a primary sends to a replica (`engram_replication_*`: under
//! synchronous replication a replica's lag is this latency until a send
//! fails, and then the copy is out of sync, `engram_cluster{what=
//! "shard_copies_out_of_sync"}` on the coordinators).

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use engram_meta::serve::ServeStats;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use crate::index_metrics::IndexActivityMetrics;

use crate::node::WorkerNode;

/// Sends from a primary to its replicas: latency by route and result.
static REPLICATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    HistogramVec::new(
        HistogramOpts::new(
            "replication_duration_seconds",
            "Latency of each write (or delete, or catch-up call) a primary sent to a replica, by route and result (ok, failed: the replica is then marked out of sync)",
        )
        .buckets(vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]),
        &["route", "result"],
    )
    .expect("valid metric")
});

/// One send from a primary to a replica.
pub(crate) fn replication_sent(route: &str, ok: bool, took: Duration) {
    REPLICATION
        .with_label_values(&[route, if ok { "ok" } else { "failed" }])
        .observe(took.as_secs_f64());
}

/// Catch-ups this worker served as primary, by how: `delta` (the writes
/// after the copy's position, from the WAL), `segments` (the sealed
/// segments' files as they are, then the growing rows and a delta) or
/// `rows` (the whole shard row by row).
static CATCH_UPS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "catch_ups_total",
        "Shard copies this primary brought back in sync, by kind (delta: only the writes the copy lacked; segments: the sealed segment files, then the rest; rows: the whole shard row by row)",
        &["kind"],
    )
});

/// Bytes those catch-ups sent (request bodies).
static CATCH_UP_BYTES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "catch_up_bytes_total",
        "Bytes this primary sent to bring shard copies back in sync, by kind",
        &["kind"],
    )
});

/// How long each catch-up took, from the request to the copy in sync.
static CATCH_UP_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    HistogramVec::new(
        HistogramOpts::new(
            "catch_up_duration_seconds",
            "Time from a copy's catch-up request to it counting in sync, by kind",
        )
        .buckets(vec![
            0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
        ]),
        &["kind"],
    )
    .expect("valid metric")
});

/// One completed catch-up.
pub(crate) fn caught_up(kind: &str, bytes: u64, took: Duration) {
    CATCH_UPS.with_label_values(&[kind]).inc();
    CATCH_UP_BYTES.with_label_values(&[kind]).inc_by(bytes);
    CATCH_UP_SECONDS
        .with_label_values(&[kind])
        .observe(took.as_secs_f64());
}

pub struct WorkerMetrics {
    registry: Registry,
    index: IndexActivityMetrics,
    requests: IntCounterVec,
    latency: HistogramVec,
    shard_items: IntGaugeVec,
    shard_segments: IntGaugeVec,
    shard_growing_rows: IntGaugeVec,
    shard_tombstones: IntGaugeVec,
    shard_sealed_bytes: IntGaugeVec,
    cache: prometheus::IntGaugeVec,
    cut_off: IntCounterVec,
    tls_failures: IntCounterVec,
    secret_refused: IntCounterVec,
    listener: Arc<ServeStats>,
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
}

fn gauge(name: &str, help: &str) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), &["collection", "shard"]).expect("valid metric")
}

impl WorkerMetrics {
    /// Metrics of a worker whose listener counts into `listener`.
    pub fn new(listener: Arc<ServeStats>) -> WorkerMetrics {
        let registry = Registry::new_custom(Some("engram".into()), None).expect("valid prefix");
        let requests = counter(
            "worker_requests_total",
            "Internal calls a worker served, by route and status",
            &["route", "status"],
        );
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "worker_request_duration_seconds",
                "Latency of the internal calls a worker served, by route",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ]),
            &["route"],
        )
        .expect("valid metric");
        let shard_items = gauge("shard_items", "Live items of a shard copy on this worker");
        let shard_segments = gauge(
            "shard_sealed_segments",
            "Sealed DiskANN segments of a shard copy",
        );
        let shard_growing_rows = gauge(
            "shard_growing_rows",
            "Rows in a shard copy's growing (in-memory) segment, not sealed yet",
        );
        let shard_tombstones = gauge(
            "shard_tombstones",
            "Deleted rows still in a shard copy's sealed segments (compaction removes them)",
        );
        let shard_sealed_bytes = gauge(
            "shard_sealed_bytes",
            "Bytes of a shard copy's sealed segment files",
        );
        let cache = IntGaugeVec::new(
            Opts::new(
                "cache",
                "The node's segment cache (cache.budget_mb): budget_bytes, used_bytes, segments, in_memory (served from RAM), node_cached (graph nodes cached, vectors on disk)",
            ),
            &["what"],
        )
        .expect("valid metric");
        let cut_off = counter(
            "requests_cut_off_total",
            "Requests cut off by a listener: head_timeout, body_timeout, busy",
            &["listener", "reason"],
        );
        let tls_failures = counter(
            "tls_handshake_failures_total",
            "TLS handshakes a listener refused or that did not complete in time",
            &["listener"],
        );
        let secret_refused = counter(
            "cluster_secret_refused_total",
            "Internal requests refused for lacking the cluster secret, by reason",
            &["reason"],
        );
        for metric in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency.clone()),
            Box::new(shard_items.clone()),
            Box::new(shard_segments.clone()),
            Box::new(shard_growing_rows.clone()),
            Box::new(shard_tombstones.clone()),
            Box::new(shard_sealed_bytes.clone()),
            Box::new(cache.clone()),
            Box::new(cut_off.clone()),
            Box::new(tls_failures.clone()),
            Box::new(secret_refused.clone()),
            Box::new(REPLICATION.clone()),
            Box::new(CATCH_UPS.clone()),
            Box::new(CATCH_UP_BYTES.clone()),
            Box::new(CATCH_UP_SECONDS.clone()),
        ] {
            registry.register(metric).expect("metric registered once");
        }
        WorkerMetrics {
            index: IndexActivityMetrics::register(&registry),
            registry,
            requests,
            latency,
            shard_items,
            shard_segments,
            shard_growing_rows,
            shard_tombstones,
            shard_sealed_bytes,
            cache,
            cut_off,
            tls_failures,
            secret_refused,
            listener,
        }
    }

    fn observe(&self, route: &str, status: u16, seconds: f64) {
        self.requests
            .with_label_values(&[route, &status.to_string()])
            .inc();
        self.latency.with_label_values(&[route]).observe(seconds);
    }

    /// The text exposition, with the shard gauges and the listener's
    /// counters read now.
    pub fn render(&self, node: &WorkerNode) -> String {
        for gauge in [
            &self.shard_items,
            &self.shard_segments,
            &self.shard_growing_rows,
            &self.shard_tombstones,
            &self.shard_sealed_bytes,
        ] {
            gauge.reset();
        }
        for replica in node.host().all() {
            let stats = replica.shard.stats();
            let labels = [replica.spec.name.as_str(), &stats.shard.to_string()];
            let set = |gauge: &IntGaugeVec, value: u64| {
                gauge
                    .with_label_values(&labels)
                    .set(i64::try_from(value).unwrap_or(i64::MAX));
            };
            set(&self.shard_items, stats.items);
            set(&self.shard_segments, stats.sealed_segments as u64);
            set(&self.shard_growing_rows, stats.growing_rows);
            set(&self.shard_tombstones, stats.tombstones);
            set(&self.shard_sealed_bytes, stats.sealed_bytes);
        }
        self.index.sync();
        let usage = node.host().cache().usage();
        for (what, value) in [
            ("budget_bytes", usage.budget_bytes),
            ("used_bytes", usage.used_bytes),
            ("segments", usage.segments as u64),
            ("in_memory", usage.in_memory as u64),
            ("node_cached", usage.node_cached as u64),
        ] {
            self.cache
                .with_label_values(&[what])
                .set(i64::try_from(value).unwrap_or(i64::MAX));
        }
        let bring_up = |counter: prometheus::IntCounter, total: u64| {
            counter.inc_by(total.saturating_sub(counter.get()));
        };
        for (reason, total) in self.listener.cut_offs() {
            bring_up(self.cut_off.with_label_values(&["internal", reason]), total);
        }
        bring_up(
            self.tls_failures.with_label_values(&["internal"]),
            self.listener.tls_failures(),
        );
        let refusals = node.access().refusals();
        for (reason, total) in [("missing", refusals.missing), ("wrong", refusals.wrong)] {
            bring_up(self.secret_refused.with_label_values(&[reason]), total);
        }
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("metrics encode");
        String::from_utf8(out).expect("metrics are UTF-8")
    }
}

/// Middleware counting every internal call by its route.
pub async fn observe(
    State(metrics): State<Arc<WorkerMetrics>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    metrics.observe(
        &route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

/// `GET /metrics`.
pub async fn serve(
    State(node): State<WorkerNode>,
    axum::Extension(metrics): axum::Extension<Arc<WorkerMetrics>>,
) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        metrics.render(&node),
    )
        .into_response()
}
