//! `engram embed`: a stateless batch step that turns image Parquet on object
//! storage into embedding Parquet, one part of N per process (see
//! `engram_ingest::embed_part`). Runs without a server; meant to be run by
//! Kubernetes Indexed Jobs, Spark or Ray, one process per part.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use engram_ingest::OnnxEmbedder;
use engram_ingest::embed_part::{PartJob, part_name, run_part};
use engram_ingest::rows::Columns;
use engram_ingest::source::Source;
use engram_store::ObjectLocation;

#[derive(clap::Args)]
pub struct EmbedArgs {
    /// Image Parquet files (`image` or `image_uri` column): `s3://bucket/prefix`,
    /// `gs://...`, `az://...`, a directory or a glob.
    input: String,
    /// Where the embedding Parquet parts and their manifests go.
    output: String,
    /// This process's part, `i/N` (0-based): N processes cover the input once.
    #[arg(long, default_value = "0/1")]
    part: String,
    /// Config file: the embedder and `[storage]` settings (ENGRAM_* variables apply).
    #[arg(long, default_value = "config/embedded.toml")]
    config: PathBuf,
    /// Which `[embedders.<name>]` to use.
    #[arg(long, default_value = "default")]
    embedder: String,
    /// Images per model run (overrides the embedder's batch_size).
    #[arg(long)]
    batch: Option<usize>,
    /// ONNX Runtime intra-op threads (0: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Execution provider: cpu, cuda or tensorrt (falls back to cpu, with a
    /// warning, where the ONNX Runtime library lacks it).
    #[arg(long)]
    provider: Option<String>,
    /// Rows read per Parquet batch.
    #[arg(long, default_value_t = 256)]
    batch_rows: usize,
    /// Column names when they differ: e.g. `--column label=class`.
    #[arg(long = "column", value_name = "NAME=COLUMN")]
    columns: Vec<String>,
    /// Scratch directory for the part's files before upload.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Print the part's manifest as JSON.
    #[arg(long)]
    json: bool,
}

fn parse_part(text: &str) -> anyhow::Result<(usize, usize)> {
    let (i, n) = text
        .split_once('/')
        .ok_or_else(|| anyhow::anyhow!("--part takes i/N, got {text:?}"))?;
    let (i, n): (usize, usize) = (i.trim().parse()?, n.trim().parse()?);
    if n == 0 || i >= n {
        anyhow::bail!("--part {text}: need 0 <= i < N");
    }
    Ok((i, n))
}

fn columns(pairs: &[String]) -> anyhow::Result<Columns> {
    let mut map = serde_json::Map::new();
    for pair in pairs {
        let (name, column) = pair
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--column takes NAME=COLUMN, got {pair:?}"))?;
        map.insert(name.into(), serde_json::Value::String(column.into()));
    }
    serde_json::from_value(serde_json::Value::Object(map)).context("--column")
}

pub fn run(args: EmbedArgs) -> anyhow::Result<()> {
    let (part, parts) = parse_part(&args.part)?;
    let config = engram_cli::config::load(&args.config)?;
    let mut embedder_config = config
        .embedders
        .get(&args.embedder)
        .cloned()
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no [embedders.{}] in {}",
                args.embedder,
                args.config.display()
            )
        })?;
    if let Some(batch) = args.batch {
        embedder_config.batch_size = batch;
    }
    if let Some(threads) = args.threads {
        embedder_config.threads = threads;
    }
    if let Some(provider) = &args.provider {
        embedder_config.provider = provider.clone();
    }
    embedder_config
        .validate()
        .map_err(|e| anyhow::anyhow!("embedder {}: {e}", args.embedder))?;
    let model_sha256 = engram_ingest::model_file::expected_sha256(
        &embedder_config.model_path,
        embedder_config.sha256.as_deref(),
    )?;
    let embedder = Arc::new(OnnxEmbedder::load(
        &embedder_config,
        config.limits.max_image_pixels,
    )?);
    let columns = columns(&args.columns)?;
    let input = Source::parse(&args.input, &config.storage)?;
    let output = ObjectLocation::parse(&args.output, &config.storage)?;
    let work_dir = args.work_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!(
            "engram-embed-{}-{}",
            part_name(part, parts),
            std::process::id()
        ))
    });
    let runtime = tokio::runtime::Runtime::new()?;
    let outcome = runtime.block_on(run_part(PartJob {
        input: &input,
        output: &output,
        columns: &columns,
        embedder: embedder.clone(),
        model_sha256,
        part,
        parts,
        batch_rows: args.batch_rows.max(1),
        work_dir: &work_dir,
    }));
    let _ = fs_err::remove_dir_all(&work_dir);
    let outcome = outcome?;
    let m = &outcome.manifest;
    if args.json {
        println!("{}", serde_json::to_string_pretty(m)?);
    } else if outcome.skipped {
        println!(
            "part {part}/{parts}: already complete ({} rows written, {} rejected); skipped",
            m.rows_written, m.rejected
        );
    } else {
        println!(
            "part {part}/{parts}: {} row groups, {} rows read, {} written, {} rejected in {:.1} s",
            m.units.len(),
            m.rows_read,
            m.rows_written,
            m.rejected,
            m.seconds
        );
    }
    if !outcome.skipped {
        eprintln!(
            "embed provider={} batch={} images_per_s={:.1} part={part}/{parts} rows={}",
            m.provider,
            embedder.batch_size(),
            m.rows_read as f64 / m.seconds.max(1e-9),
            m.rows_read
        );
    }
    Ok(())
}
