//! Per re-ranker metrics, registered with the node's other metrics.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts};
use std::sync::LazyLock;

/// Decisions each re-ranker took part in, by status (ok, fallback,
/// skipped).
pub(crate) static DECISIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    IntCounterVec::new(
        Opts::new(
            "rerank_decisions_total",
            "Decisions a re-ranker was chosen for, by re-ranker, kind and status (ok, fallback, skipped)",
        ),
        &["reranker", "kind", "status"],
    )
    .expect("valid metric")
});

/// Why decisions fell back or skipped (timeout, http_status, malformed,
/// connect, breaker_open, busy, stale, untrained, ...).
pub(crate) static FALLBACKS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    IntCounterVec::new(
        Opts::new(
            "rerank_fallbacks_total",
            "Calls of a re-ranker that left the decision to the votes, by re-ranker and reason",
        ),
        &["reranker", "reason"],
    )
    .expect("valid metric")
});

pub(crate) static LATENCY: LazyLock<HistogramVec> = LazyLock::new(|| {
    HistogramVec::new(
        HistogramOpts::new(
            "rerank_call_duration_seconds",
            "Wall time of each re-ranker call (one per classify request or batch)",
        )
        .buckets(vec![
            0.00001, 0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            2.5,
        ]),
        &["reranker"],
    )
    .expect("valid metric")
});

pub(crate) static BREAKER_OPEN: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    IntGaugeVec::new(
        Opts::new(
            "rerank_breaker_open",
            "1 while an http re-ranker's circuit breaker is open (calls fall back at once); 0 otherwise, and always for a head",
        ),
        &["reranker"],
    )
    .expect("valid metric")
});

/// Creates every series of a configured re-ranker at 0, so that
/// dashboards and alerts see it before its first decision (a head, which
/// has no breaker, reports its breaker closed).
pub(crate) fn export(reranker: &str, kind: &str) {
    for status in ["ok", "fallback", "skipped"] {
        DECISIONS.with_label_values(&[reranker, kind, status]);
    }
    let reasons: &[&str] = match kind {
        "http" => &[
            "timeout",
            "http_status",
            "malformed",
            "connect",
            "breaker_open",
            "busy",
            "all_blocked",
        ],
        _ => &["untrained", "stale", "dimension", "internal", "all_blocked"],
    };
    for reason in reasons {
        FALLBACKS.with_label_values(&[reranker, reason]);
    }
    LATENCY.with_label_values(&[reranker]);
    BREAKER_OPEN.with_label_values(&[reranker]).set(0);
}

/// The collectors to register.
pub(crate) fn collectors() -> Vec<Box<dyn prometheus::core::Collector>> {
    vec![
        Box::new(DECISIONS.clone()),
        Box::new(FALLBACKS.clone()),
        Box::new(LATENCY.clone()),
        Box::new(BREAKER_OPEN.clone()),
    ]
}
