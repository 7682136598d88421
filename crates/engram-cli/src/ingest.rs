//! `engram ingest`: submits an ingestion job to a running server and
//! follows it to the end with a progress bar (rate and ETA); exits non-zero
//! if the job fails.

use serde_json::{Map, Value, json};

use crate::prune::follow_job;
use engram_cli::client::{Client, ServerArgs};

#[derive(clap::Args)]
pub struct IngestArgs {
    /// Parquet files: `s3://bucket/prefix`, `gs://...`, `az://...`, a local
    /// directory or file; the last segment may be a glob (`part-*.parquet`).
    uri: String,
    #[arg(long)]
    collection: String,
    #[command(flatten)]
    server: ServerArgs,
    /// Column names when they differ from id, label, embedding, image,
    /// image_uri, source, weight: e.g. `--column label=class`.
    #[arg(long = "column", value_name = "NAME=COLUMN")]
    columns: Vec<String>,
    /// Fail once rejected rows exceed this share of the rows read.
    #[arg(long, default_value_t = 0.01)]
    max_reject_share: f64,
    /// Rows per batch (bounds the server's memory).
    #[arg(long, default_value_t = 1024)]
    batch_rows: usize,
    /// Build sealed segments straight from the rows and attach them (the
    /// bulk path: no WAL, memory bounded by one segment); for large loads.
    #[arg(long)]
    bulk: bool,
    /// With --bulk: rows per shard that make a segment (default: the
    /// server's largest merged segment, `index.merge_max_segment_mb`).
    #[arg(long, requires = "bulk")]
    segment_rows: Option<usize>,
    /// Print the final job status as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: IngestArgs) -> anyhow::Result<()> {
    let client = Client::connect(&args.server)?;
    let mut columns = Map::new();
    for pair in &args.columns {
        let (name, column) = pair
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--column takes NAME=COLUMN, got {pair:?}"))?;
        columns.insert(name.to_string(), Value::String(column.to_string()));
    }
    let uri = server_side_uri(&args.uri)?;
    let mut body = json!({
        "kind": "ingest",
        "uri": uri,
        "max_reject_share": args.max_reject_share,
        "batch_rows": args.batch_rows,
    });
    if !columns.is_empty() {
        body["columns"] = Value::Object(columns);
    }
    if args.bulk {
        body["bulk"] = json!(true);
    }
    if let Some(rows) = args.segment_rows {
        body["segment_rows"] = json!(rows);
    }
    let job = client
        .send(
            reqwest::Method::POST,
            &format!("/v1/collections/{}/jobs", args.collection),
            Some(&body),
        )
        .map_err(|e| outside_roots_hint(e, &uri))?;
    let id = job["id"].as_u64().unwrap_or(0);
    let status = follow_job(&client, &args.collection, id, "ingesting rows")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    let r = &status["report"];
    println!(
        "ingest job {id}: {} rows from {} files; {} items written{}, {} rejected ({:.0} rows/s){}",
        r["rows_read"],
        r["files"],
        r["items_written"],
        match r["segments"].as_u64() {
            Some(n) if n > 0 => format!(" in {n} sealed segments"),
            _ => String::new(),
        },
        r["rejected"],
        r["rows_per_s"].as_f64().unwrap_or(0.0),
        r["rejects_file"]
            .as_str()
            .map(|f| format!("; rejects in {f}"))
            .unwrap_or_default()
    );
    Ok(())
}

/// A local path as the server must see it: absolute (the server's working
/// directory is not the caller's). Other URIs pass as they are.
fn server_side_uri(uri: &str) -> anyhow::Result<String> {
    if uri.contains("://") {
        return Ok(uri.to_string());
    }
    Ok(std::path::absolute(uri)?.display().to_string())
}

/// Adds what a newcomer does next when the server refused a local path
/// outside its roots (403): the server's own message names the roots.
fn outside_roots_hint(error: anyhow::Error, uri: &str) -> anyhow::Error {
    let refused = error.to_string().contains(" 403 permission_denied");
    if refused && !uri.contains("://") {
        error.context(format!(
            "the server reads local files only under its local roots: move {uri} under one of them \
             (by default <data_dir>/import), or restart the server with its directory among them: \
             ENGRAM_STORAGE__LOCAL_ROOTS=<that dir>,<data_dir>/import,<data_dir>/snapshots \
             (the list replaces the defaults)"
        ))
    } else {
        error
    }
}
