//! Prometheus metrics of the node, served at `/metrics`.

use engram_meta::serve::ServeStats;
use engram_worker::index_metrics::IndexActivityMetrics;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use crate::jobs::{JobState, JobStatus};

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// What a coordinator sees of the cluster at a scrape.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClusterView {
    pub has_leader: bool,
    pub is_leader: bool,
    pub term: u64,
    pub applied_index: u64,
    pub voters: usize,
    pub workers_alive: usize,
    pub workers_dead: usize,
    /// Shard copies that missed writes and wait for a catch-up.
    pub copies_out_of_sync: usize,
}

/// Each call of a fan-out to one worker (its shards of a search, a get,
/// a stats read): the per-shard latency the merged answer waited on.
static FAN_OUT: LazyLock<HistogramVec> = LazyLock::new(|| {
    HistogramVec::new(
        HistogramOpts::new(
            "fanout_call_duration_seconds",
            "Latency of each fan-out call to one worker (the shards it serves of one read), by route, worker and result",
        )
        .buckets(vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]),
        &["route", "worker", "result"],
    )
    .expect("valid metric")
});

/// One fan-out call to `worker` answered (or failed) after `took`.
pub(crate) fn fan_out_call(route: &str, worker: u64, ok: bool, took: Duration) {
    FAN_OUT
        .with_label_values(&[route, &worker.to_string(), if ok { "ok" } else { "failed" }])
        .observe(took.as_secs_f64());
}

pub struct Metrics {
    registry: Registry,
    index: IndexActivityMetrics,
    unlearning_receipts: IntGaugeVec,
    unlearning_oldest_pending: prometheus::Gauge,
    unlearning_overdue: prometheus::IntGauge,
    jobs: IntGaugeVec,
    job_progress: IntGaugeVec,
    cluster: IntGaugeVec,
    requests: IntCounterVec,
    latency: HistogramVec,
    images_embedded: IntCounter,
    items_added: IntCounter,
    items_deleted: IntCounter,
    queries_classified: IntCounter,
    partial_answers: IntCounter,
    segments_compacted: IntCounter,
    jobs_taken_over: IntCounter,
    collection_items: IntGaugeVec,
    auth_refused: IntCounterVec,
    cluster_secret_refused: IntCounterVec,
    cut_off: IntCounterVec,
    tls_failures: IntCounterVec,
    /// What the public listener counts on its own (head and body
    /// timeouts), brought into `cut_off` at each render.
    public_listener: Arc<ServeStats>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("engram".into()), None).expect("valid prefix");
        let requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "HTTP requests by route, method and status",
            ),
            &["method", "route", "status"],
        )
        .expect("valid metric");
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "HTTP request latency by route",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
            &["route"],
        )
        .expect("valid metric");
        let images_embedded =
            IntCounter::new("images_embedded_total", "Images embedded").expect("valid metric");
        let items_added =
            IntCounter::new("items_upserted_total", "Items upserted").expect("valid metric");
        let items_deleted =
            IntCounter::new("items_deleted_total", "Items deleted").expect("valid metric");
        let queries_classified = IntCounter::new("queries_classified_total", "Queries classified")
            .expect("valid metric");
        let partial_answers = IntCounter::new(
            "partial_answers_total",
            "Queries answered without some sealed segment or shard",
        )
        .expect("valid metric");
        let segments_compacted = IntCounter::new(
            "segments_compacted_total",
            "Sealed segments rewritten without their deleted rows",
        )
        .expect("valid metric");
        let jobs_taken_over = IntCounter::new(
            "jobs_taken_over_total",
            "Jobs this coordinator took over from a coordinator gone for cluster.job_takeover_s",
        )
        .expect("valid metric");
        let collection_items = IntGaugeVec::new(
            Opts::new("collection_items", "Live items per collection"),
            &["collection"],
        )
        .expect("valid metric");
        let auth_refused = IntCounterVec::new(
            Opts::new(
                "auth_refused_total",
                "Requests refused for their credentials: missing, wrong, expired (a token), read_only on a write, out_of_scope (a token outside its collections)",
            ),
            &["reason"],
        )
        .expect("valid metric");
        // Every reason exported from the start at 0, so that a rate over
        // it (an alert, a dashboard) exists before the first refusal.
        for reason in ["missing", "wrong", "expired", "read_only", "out_of_scope"] {
            auth_refused.with_label_values(&[reason]);
        }
        let cluster_secret_refused = IntCounterVec::new(
            Opts::new(
                "cluster_secret_refused_total",
                "Internal requests refused for want of the cluster secret: missing or wrong",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let cut_off = IntCounterVec::new(
            Opts::new(
                "requests_cut_off_total",
                "Requests cut off by a listener: head_timeout (connection closed), body_timeout (408), busy (internal, 503)",
            ),
            &["listener", "reason"],
        )
        .expect("valid metric");
        let tls_failures = IntCounterVec::new(
            Opts::new(
                "tls_handshake_failures_total",
                "TLS handshakes a listener refused or that did not complete within the head timeout (a plain-HTTP caller, an untrusted client certificate)",
            ),
            &["listener"],
        )
        .expect("valid metric");
        let cluster = IntGaugeVec::new(
            Opts::new(
                "cluster",
                "What this coordinator sees of the cluster: raft_has_leader, raft_is_leader (0/1), raft_term, raft_applied_index, raft_voters, workers_alive, workers_dead, shard_copies_out_of_sync",
            ),
            &["what"],
        )
        .expect("valid metric");
        let jobs = IntGaugeVec::new(
            Opts::new(
                "jobs",
                "Jobs this node knows, by kind (ingest, prune) and state (running, succeeded, failed, cancelled)",
            ),
            &["kind", "state"],
        )
        .expect("valid metric");
        let job_progress = IntGaugeVec::new(
            Opts::new(
                "job_progress",
                "Units of work of each job this node knows (rows for ingestion, items for pruning): what=done or total",
            ),
            &["collection", "kind", "job", "what"],
        )
        .expect("valid metric");
        let unlearning_receipts = IntGaugeVec::new(
            Opts::new(
                "unlearning_receipts",
                "Unlearning receipts by status: deleted (some bytes of their rows still on disk), erased (none); checked every curation.receipt_check_s",
            ),
            &["status"],
        )
        .expect("valid metric");
        for status in ["deleted", "erased"] {
            unlearning_receipts.with_label_values(&[status]);
        }
        let unlearning_oldest_pending = prometheus::Gauge::new(
            "unlearning_oldest_pending_seconds",
            "Age of the oldest unlearning receipt still `deleted` (0 when none): an erasure that compaction has not reached",
        )
        .expect("valid metric");
        let unlearning_overdue = prometheus::IntGauge::new(
            "unlearning_overdue_receipts",
            "Unlearning receipts past their erasure deadline with deleted bytes still stored (alert on > 0)",
        )
        .expect("valid metric");
        for c in [
            Box::new(FAN_OUT.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(unlearning_receipts.clone()),
            Box::new(unlearning_oldest_pending.clone()),
            Box::new(unlearning_overdue.clone()),
            Box::new(jobs.clone()),
            Box::new(job_progress.clone()),
            Box::new(cluster.clone()),
            Box::new(requests.clone()),
            Box::new(cut_off.clone()),
            Box::new(tls_failures.clone()),
            Box::new(auth_refused.clone()),
            Box::new(cluster_secret_refused.clone()),
            Box::new(latency.clone()),
            Box::new(images_embedded.clone()),
            Box::new(items_added.clone()),
            Box::new(items_deleted.clone()),
            Box::new(queries_classified.clone()),
            Box::new(partial_answers.clone()),
            Box::new(segments_compacted.clone()),
            Box::new(jobs_taken_over.clone()),
            Box::new(collection_items.clone()),
        ] {
            registry.register(c).expect("metric registered once");
        }
        for c in crate::rerank::metrics::collectors() {
            registry.register(c).expect("metric registered once");
        }
        Metrics {
            index: IndexActivityMetrics::register(&registry),
            registry,
            unlearning_receipts,
            unlearning_oldest_pending,
            unlearning_overdue,
            jobs,
            job_progress,
            cluster,
            requests,
            latency,
            images_embedded,
            items_added,
            items_deleted,
            queries_classified,
            partial_answers,
            segments_compacted,
            jobs_taken_over,
            collection_items,
            auth_refused,
            cluster_secret_refused,
            cut_off,
            tls_failures,
            public_listener: Arc::new(ServeStats::default()),
        }
    }

    /// The public listener's own counters (shared with its serve loop and
    /// admission layer).
    pub fn public_listener(&self) -> Arc<ServeStats> {
        self.public_listener.clone()
    }

    /// Brings `requests_cut_off_total{listener}` and
    /// `tls_handshake_failures_total{listener}` up to what `stats` counted.
    pub fn sync_cut_off(&self, listener: &str, stats: &ServeStats) {
        for (reason, total) in stats.cut_offs() {
            let counter = self.cut_off.with_label_values(&[listener, reason]);
            counter.inc_by(total.saturating_sub(counter.get()));
        }
        let counter = self.tls_failures.with_label_values(&[listener]);
        counter.inc_by(stats.tls_failures().saturating_sub(counter.get()));
    }

    /// Brings the counter of internal refusals up to what the internal
    /// router's guard counted (it counts on its own: it sits in front of
    /// the Raft routes, which know nothing of these metrics).
    pub fn sync_cluster_secret_refused(&self, reason: &str, total: u64) {
        let counter = self.cluster_secret_refused.with_label_values(&[reason]);
        counter.inc_by(total.saturating_sub(counter.get()));
    }

    /// A request refused by the API-key layer, by `reason`
    /// (`missing`, `wrong`, `read_only`).
    pub fn auth_refused(&self, reason: &str) {
        self.auth_refused.with_label_values(&[reason]).inc();
    }

    pub fn observe_request(&self, method: &str, route: &str, status: u16, seconds: f64) {
        self.requests
            .with_label_values(&[method, route, &status.to_string()])
            .inc();
        self.latency.with_label_values(&[route]).observe(seconds);
    }

    pub fn images_embedded(&self, n: usize) {
        self.images_embedded.inc_by(n as u64);
    }

    pub fn items_added(&self, n: usize) {
        self.items_added.inc_by(n as u64);
    }

    pub fn items_deleted(&self, n: usize) {
        self.items_deleted.inc_by(n as u64);
    }

    pub fn queries_classified(&self, n: usize) {
        self.queries_classified.inc_by(n as u64);
    }

    pub fn partial_answers(&self, n: usize) {
        self.partial_answers.inc_by(n as u64);
    }

    pub fn segments_compacted(&self, n: usize) {
        self.segments_compacted.inc_by(n as u64);
    }

    pub fn job_taken_over(&self) {
        self.jobs_taken_over.inc();
    }

    pub fn set_items(&self, collection: &str, items: u64) {
        self.collection_items
            .with_label_values(&[collection])
            .set(items as i64);
    }

    /// Sets `engram_cluster{what}` from `view`.
    pub fn set_cluster(&self, view: &ClusterView) {
        let clamp = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        for (what, value) in [
            ("raft_has_leader", u64::from(view.has_leader)),
            ("raft_is_leader", u64::from(view.is_leader)),
            ("raft_term", view.term),
            ("raft_applied_index", view.applied_index),
            ("raft_voters", view.voters as u64),
            ("workers_alive", view.workers_alive as u64),
            ("workers_dead", view.workers_dead as u64),
            ("shard_copies_out_of_sync", view.copies_out_of_sync as u64),
        ] {
            self.cluster.with_label_values(&[what]).set(clamp(value));
        }
    }

    /// Sets `engram_jobs{kind,state}` and, for every job this node knows
    /// (running or ended: a stalled one is seen not to move),
    /// `engram_job_progress{collection,kind,job,what}` from `jobs`.
    pub fn set_jobs(&self, jobs: &[JobStatus]) {
        self.jobs.reset();
        self.job_progress.reset();
        for kind in ["ingest", "prune"] {
            for state in ["running", "succeeded", "failed", "cancelled"] {
                self.jobs.with_label_values(&[kind, state]);
            }
        }
        for job in jobs {
            let state = match job.state {
                JobState::Running => "running",
                JobState::Succeeded => "succeeded",
                JobState::Failed => "failed",
                JobState::Cancelled => "cancelled",
            };
            self.jobs.with_label_values(&[&job.kind, state]).inc();
            let id = job.id.to_string();
            for (what, value) in [("done", job.done), ("total", job.total)] {
                self.job_progress
                    .with_label_values(&[&job.collection, &job.kind, &id, what])
                    .set(i64::try_from(value).unwrap_or(i64::MAX));
            }
        }
    }

    /// Sets `engram_unlearning_*` from one round of receipt checks.
    pub fn set_unlearning(&self, view: &crate::receipt_watch::UnlearningView) {
        let clamp = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.unlearning_receipts
            .with_label_values(&["deleted"])
            .set(clamp(view.deleted));
        self.unlearning_receipts
            .with_label_values(&["erased"])
            .set(clamp(view.erased));
        self.unlearning_oldest_pending.set(view.oldest_pending_s);
        self.unlearning_overdue.set(clamp(view.overdue));
    }

    pub fn render(&self) -> String {
        self.index.sync();
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("text encoding into memory cannot fail");
        String::from_utf8(buffer).expect("prometheus text is UTF-8")
    }
}
