//! `engramctl reshard --collection c --shards N`: changes a collection's
//! shard count online (writes and queries go on) and follows the job.

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use std::time::Duration;

use crate::{Ctx, Output, text};

#[derive(Args)]
pub struct ReshardArgs {
    #[arg(long)]
    collection: String,
    /// The shard count to reach.
    #[arg(long)]
    shards: u32,
    /// Start the job and return at once (follow it with `engramctl jobs show`).
    #[arg(long)]
    no_wait: bool,
}

pub fn run(ctx: &Ctx, args: ReshardArgs) -> anyhow::Result<Output> {
    let collection = &args.collection;
    let job = ctx.client.send(
        reqwest::Method::POST,
        &format!("/v1/collections/{collection}/reshard"),
        Some(&json!({ "shards": args.shards })),
    )?;
    let id = job["id"].as_u64().unwrap_or(0);
    if args.no_wait {
        return Ok(Output {
            human: format!(
                "resharding `{collection}` to {} shards: job {id} (engramctl jobs show {collection} {id})\n",
                args.shards
            ),
            json: job,
        });
    }
    let bar = if ctx.json {
        ProgressBar::hidden()
    } else {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} resharding {msg} [{bar:30}] {pos}/{len} rows ({elapsed})",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_message(format!("`{collection}` to {} shards", args.shards));
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    };
    let finished = loop {
        let status = ctx.client.send(
            reqwest::Method::GET,
            &format!("/v1/collections/{collection}/jobs/{id}"),
            None,
        )?;
        bar.set_length(status["total"].as_u64().unwrap_or(0));
        bar.set_position(status["done"].as_u64().unwrap_or(0));
        if status["state"] != "running" {
            break status;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    bar.finish_and_clear();
    if finished["state"] != "succeeded" {
        anyhow::bail!(
            "resharding job {id} of `{collection}` ended {}: {}",
            text(&finished["state"]),
            text(&finished["error"])
        );
    }
    let report = &finished["report"];
    Ok(Output {
        human: summary(collection, report),
        json: finished,
    })
}

fn summary(collection: &str, report: &Value) -> String {
    format!(
        "`{collection}` now has {} shards (was {}): {} rows read and copied in {:.1} s\n",
        report["to_shards"],
        report["from_shards"],
        report["rows_read"],
        report["seconds"].as_f64().unwrap_or(0.0)
    )
}
