//! The segment indexes' process-wide counts ([`engram_index::activity`])
//! as Prometheus series, for the worker's `/metrics` and the embedded
//! node's alike:
//! - `engram_segment_searches_total{served_from}` and
//!   `engram_segment_sector_reads_total{served_from}` (`disk`, `node_cache`,
//!   `memory`): reads per search by residency is what the segment cache
//!   saves, and the share of searches served from RAM its hit rate;
//! - `engram_segment_builds_total{kind}`, `engram_segment_build_rows_total{kind}`
//!   and `engram_segment_build_seconds_total{kind}` (`seal`, `merge`, `bulk`):
//!   mean build time and rows/s are ratios of their rates;
//! - `engram_codebooks_trained_total{reason}` (`first`, `grown`, `drift`,
//!   `requested`): PQ codebooks trained for shards and bulk jobs; every
//!   other build reuses one.

use prometheus::{CounterVec, IntCounterVec, Opts, Registry};

pub struct IndexActivityMetrics {
    searches: IntCounterVec,
    sector_reads: IntCounterVec,
    builds: IntCounterVec,
    build_rows: IntCounterVec,
    build_seconds: CounterVec,
    codebooks: IntCounterVec,
}

fn counter(name: &str, help: &str, label: &str) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric")
}

impl IndexActivityMetrics {
    /// The series, registered into `registry` (whose prefix is `engram`).
    pub fn register(registry: &Registry) -> IndexActivityMetrics {
        let metrics = IndexActivityMetrics {
            searches: counter(
                "segment_searches_total",
                "Sealed-segment searches, by where the segment is served from: disk, node_cache (graph nodes near the entry in RAM), memory",
                "served_from",
            ),
            sector_reads: counter(
                "segment_sector_reads_total",
                "Sectors those searches read (DiskANN I/O operations), by where the segment is served from",
                "served_from",
            ),
            builds: counter(
                "segment_builds_total",
                "DiskANN segment builds, by kind: seal (growing segment), merge (compaction), bulk (ingestion job)",
                "kind",
            ),
            build_rows: counter(
                "segment_build_rows_total",
                "Rows of the segments built, by kind",
                "kind",
            ),
            build_seconds: CounterVec::new(
                Opts::new(
                    "segment_build_seconds_total",
                    "Seconds spent building segments, by kind",
                ),
                &["kind"],
            )
            .expect("valid metric"),
            codebooks: counter(
                "codebooks_trained_total",
                "PQ codebooks trained for shards and bulk jobs, by reason: first, grown (more rows than it saw), drift (quantisation error past index.codebook_drift), requested",
                "reason",
            ),
        };
        for collector in [
            Box::new(metrics.searches.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(metrics.sector_reads.clone()),
            Box::new(metrics.builds.clone()),
            Box::new(metrics.build_rows.clone()),
            Box::new(metrics.build_seconds.clone()),
            Box::new(metrics.codebooks.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric registered once");
        }
        metrics.sync();
        metrics
    }

    /// Brings every series up to the process's counts (at each scrape).
    pub fn sync(&self) {
        let bring_up = |counter: prometheus::IntCounter, total: u64| {
            counter.inc_by(total.saturating_sub(counter.get()));
        };
        for (served_from, searches, reads) in engram_index::activity::searches() {
            bring_up(self.searches.with_label_values(&[served_from]), searches);
            bring_up(self.sector_reads.with_label_values(&[served_from]), reads);
        }
        for (kind, builds, rows, seconds) in engram_index::activity::builds() {
            bring_up(self.builds.with_label_values(&[kind]), builds);
            bring_up(self.build_rows.with_label_values(&[kind]), rows);
            let counter = self.build_seconds.with_label_values(&[kind]);
            let behind = seconds - counter.get();
            if behind > 0.0 {
                counter.inc_by(behind);
            }
        }
        for (reason, trained) in engram_index::activity::codebooks() {
            bring_up(self.codebooks.with_label_values(&[reason]), trained);
        }
    }
}
