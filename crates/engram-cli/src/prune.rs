//! `engram prune`: memory pruning as a job on a running server, followed
//! to the end with a progress bar.

use anyhow::bail;
use serde_json::{Value, json};
use std::time::Duration;

use engram_cli::client::{Client, ServerArgs, progress};

#[derive(clap::Args)]
pub struct PruneArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[arg(long)]
    collection: String,
    /// `dry_run` lists what scores at or above the threshold; `hard` deletes
    /// it (with an unlearning receipt); `soft` weights every item's vote by
    /// 1.75 / (1 + v).
    #[arg(long, default_value = "dry_run")]
    mode: String,
    /// Neighbours per item when the memory is queried against itself.
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// Items with v at or above this are listed (dry run) or deleted (hard).
    #[arg(long, default_value_t = 3)]
    threshold: u32,
    /// Print the final job status as JSON instead of a summary.
    #[arg(long)]
    json: bool,
}

pub fn run(args: PruneArgs) -> anyhow::Result<()> {
    let client = Client::connect(&args.server)?;
    let job = client.post(
        &format!("/v1/collections/{}/jobs", args.collection),
        &json!({ "kind": "prune", "mode": args.mode, "k": args.k, "threshold": args.threshold }),
    )?;
    let id = job["id"].as_u64().unwrap_or(0);
    let status = follow_job(&client, &args.collection, id, "pruning")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    let report = &status["report"];
    println!(
        "prune job {id} ({}): {} items scored; {} at or above v={}",
        args.mode, report["items_scored"], report["at_or_above_threshold"], args.threshold
    );
    println!("v histogram: {}", report["v_histogram"]);
    if let Some(deleted) = report.get("deleted") {
        println!(
            "deleted {deleted} items; unlearning receipt {}",
            report["receipt"]
        );
    }
    if let Some(weighted) = report.get("weighted_items") {
        println!(
            "soft-pruning weights set on {weighted} items (smallest gamma {})",
            report["gamma_min"]
        );
    }
    for top in report["top"].as_array().into_iter().flatten().take(10) {
        println!(
            "  id {:>10}  v {:>4}  label {}",
            top["id"], top["v"], top["label"]
        );
    }
    Ok(())
}

/// Polls a job until it ends, showing its progress; fails unless it
/// succeeded. Returns its final status.
pub fn follow_job(client: &Client, collection: &str, id: u64, what: &str) -> anyhow::Result<Value> {
    let bar = progress(0, what);
    loop {
        let status = client.get(&format!("/v1/collections/{collection}/jobs/{id}"))?;
        bar.set_length(status["total"].as_u64().unwrap_or(0));
        bar.set_position(status["done"].as_u64().unwrap_or(0));
        match status["state"].as_str() {
            Some("running") => std::thread::sleep(Duration::from_millis(250)),
            Some("succeeded") => {
                bar.finish();
                return Ok(status);
            }
            _ => {
                bar.abandon();
                bail!("job {id} ended {}: {}", status["state"], status["error"]);
            }
        }
    }
}
