//! `engramctl compact`: rewrite sealed segments past a deleted share, per
//! collection, and report what it reclaimed.

use clap::Args;
use serde_json::{Value, json};

use engram_cli::table::Table;

use crate::status::bytes;
use crate::{Ctx, Output};

#[derive(Args)]
pub struct CompactArgs {
    /// Only this collection (default: every collection).
    #[arg(long)]
    collection: Option<String>,
    /// Rewrite segments whose deleted share exceeds this (0 = any deletion).
    #[arg(long, default_value_t = 0.2)]
    min_deleted: f64,
}

pub fn run(ctx: &Ctx, args: CompactArgs) -> anyhow::Result<Output> {
    if !(0.0..1.0).contains(&args.min_deleted) {
        anyhow::bail!("--min-deleted must be at least 0 and below 1");
    }
    let names: Vec<String> = match args.collection {
        Some(name) => vec![name],
        None => ctx.collection_names()?,
    };
    let mut reports = Vec::new();
    let mut table = Table::new([
        "COLLECTION",
        "REWRITTEN",
        "SEGMENTS",
        "RECLAIMED",
        "SEALED NOW",
        "TOMBSTONES",
    ]);
    for name in names {
        let path = format!("/v1/collections/{name}");
        let spinner = ctx.spinner(&format!("compacting {name}"));
        let compacted = ctx.client.send(
            reqwest::Method::POST,
            &format!("{path}/compact"),
            Some(&json!({ "min_deleted_fraction": args.min_deleted })),
        );
        spinner.finish_and_clear();
        let compacted = compacted?;
        let after = ctx.client.send(reqwest::Method::GET, &path, None)?;
        let reclaimed = compacted["bytes_reclaimed"].as_u64().unwrap_or(0);
        let sealed_now = after["sealed_bytes"].as_u64().unwrap_or(0);
        table.row([
            name.clone(),
            compacted["segments_rewritten"].to_string(),
            compacted["sealed_segments"].to_string(),
            bytes(reclaimed),
            bytes(sealed_now),
            after["tombstones"].to_string(),
        ]);
        reports.push(json!({
            "collection": name,
            "segments_rewritten": compacted["segments_rewritten"],
            "sealed_segments": compacted["sealed_segments"],
            "bytes_reclaimed": reclaimed,
            "sealed_bytes_after": sealed_now,
            "tombstones_after": after["tombstones"],
        }));
    }
    Ok(Output {
        json: Value::Array(reports),
        human: table.render(),
    })
}
