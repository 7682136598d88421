//! `engram-bench`: prepares the datasets of `make bench-index` and measures
//! Engram's segments on them. The reference systems (faiss, hnswlib, scann,
//! diskannpy) run from `benches/index_refs/` on the same files and print
//! result lines of the same shape.
//!
//! Data directory: `base.fbin`, `query.fbin` (u32 n, u32 dim, f32 rows),
//! `gt.ibin` (u32 nq, u32 k, u32 ids of the exact nearest neighbours by
//! squared L2), `meta.json`. Cosine data is stored unit-length, so every
//! system searches by squared L2 and ranks like cosine.

mod data;
mod http_load;
mod measure;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "engram-bench")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fashion-MNIST embedded by the default model (unit vectors, 1280-d).
    Fmnist {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 60_000)]
        memory: usize,
        #[arg(long, default_value_t = 10_000)]
        queries: usize,
        #[arg(long, default_value_t = 128)]
        image_size: u32,
    },
    /// Clustered Gaussian vectors (L2).
    Synthetic {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 1_000_000)]
        n: usize,
        #[arg(long, default_value_t = 1_000)]
        queries: usize,
        #[arg(long, default_value_t = 128)]
        dim: usize,
    },
    /// Measures an Engram segment on a data directory. `build` and `serve`
    /// run in separate processes so serving RSS excludes the build.
    Run {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        work: PathBuf,
        /// `sealed` or `growing`.
        #[arg(long)]
        index: String,
        /// `build`, `serve`, or `all` (growing segments only live in memory).
        #[arg(long, default_value = "all")]
        phase: String,
        /// Sealed segments: cache budgets to serve with, as fractions of
        /// the segment's sector file (0 = disk, 1 = all in memory).
        #[arg(long, value_delimiter = ',', default_value = "0")]
        cache: Vec<f64>,
    },
    /// Loads a data directory into a new collection of a running server
    /// (embedded or a cluster coordinator) and seals it.
    Load {
        #[arg(long)]
        url: String,
        #[arg(long)]
        collection: String,
        #[arg(long)]
        data: PathBuf,
        /// Shards of the new collection (default: the server's choice).
        #[arg(long)]
        shards: Option<u32>,
        #[arg(long, default_value_t = 1)]
        replication: u32,
        /// Add the rows in this many parts, each sealed into one segment
        /// per shard; 0 adds them all and compacts as a user would (empty
        /// body: the server seals growing segments past the merge floor).
        #[arg(long, default_value_t = 1)]
        sealed_parts: usize,
    },
    /// Compacts (and merges) a collection of a running server.
    Compact {
        #[arg(long)]
        url: String,
        #[arg(long)]
        collection: String,
    },
    /// Query latency (one client) and throughput (`concurrency` clients)
    /// through a server's public API; prints `<label> p50_ms= p99_ms= qps=`.
    Query {
        #[arg(long)]
        url: String,
        #[arg(long)]
        collection: String,
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        label: String,
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Fmnist {
            out,
            memory,
            queries,
            image_size,
        } => data::fashion_mnist(&out, memory, queries, image_size),
        Command::Synthetic {
            out,
            n,
            queries,
            dim,
        } => data::synthetic(&out, n, queries, dim),
        Command::Run {
            data,
            work,
            index,
            phase,
            cache,
        } => measure::run(&data, &work, &index, &phase, &cache),
        Command::Load {
            url,
            collection,
            data,
            shards,
            replication,
            sealed_parts,
        } => http_load::load(
            &url,
            &collection,
            &data,
            http_load::LoadShape {
                shards,
                replication,
                sealed_parts,
            },
        ),
        Command::Compact { url, collection } => http_load::compact(&url, &collection),
        Command::Query {
            url,
            collection,
            data,
            label,
            concurrency,
            seconds,
        } => http_load::query(&url, &collection, &data, &label, concurrency, seconds),
    }
}
