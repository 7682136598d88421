//! `engramctl collections ...` and `engramctl items get`.

use clap::Subcommand;
use serde_json::{Value, json};

use engram_cli::table::Table;

use crate::status::bytes;
use crate::{Ctx, Output};

#[derive(Subcommand)]
pub enum CollectionsCommand {
    /// Every collection with its counts.
    List,
    /// One collection: counts per label and per shard.
    Show { name: String },
    /// Create a collection.
    Create {
        name: String,
        #[arg(long)]
        dim: usize,
        /// cosine | l2
        #[arg(long, default_value = "cosine")]
        metric: String,
        /// Virtual shards (fixed at creation; server default if absent).
        #[arg(long)]
        shards: Option<u32>,
        /// Copies of each shard (cluster mode).
        #[arg(long)]
        replication: Option<u32>,
        /// Name of a configured embedder (for image items).
        #[arg(long)]
        embedder: Option<String>,
    },
    /// Delete a collection and everything in it.
    Delete {
        name: String,
        /// Required: deleting cannot be undone.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand)]
pub enum ItemsCommand {
    /// One item's label, weight and source.
    Get { collection: String, id: u64 },
}

pub fn run(ctx: &Ctx, command: CollectionsCommand) -> anyhow::Result<Output> {
    match command {
        CollectionsCommand::List => {
            let list = ctx
                .client
                .send(reqwest::Method::GET, "/v1/collections", None)?;
            let mut table = Table::new([
                "NAME",
                "DIM",
                "METRIC",
                "SHARDS",
                "COPIES",
                "ITEMS",
                "LABELS",
                "SEGMENTS",
                "SEALED",
                "TOMBSTONES",
            ]);
            for c in list["collections"].as_array().into_iter().flatten() {
                table.row([
                    c["name"].as_str().unwrap_or("").to_string(),
                    c["dim"].to_string(),
                    c["metric"].as_str().unwrap_or("").to_string(),
                    c["shards"].to_string(),
                    c["replication"].to_string(),
                    c["items"].to_string(),
                    c["labels"].as_object().map_or(0, |l| l.len()).to_string(),
                    c["sealed_segments"].to_string(),
                    bytes(c["sealed_bytes"].as_u64().unwrap_or(0)),
                    format!(
                        "{:.1}%",
                        100.0 * c["tombstone_share"].as_f64().unwrap_or(0.0)
                    ),
                ]);
            }
            Ok(Output {
                human: table.render(),
                json: list,
            })
        }
        CollectionsCommand::Show { name } => {
            let c = ctx.client.send(
                reqwest::Method::GET,
                &format!("/v1/collections/{name}"),
                None,
            )?;
            Ok(Output {
                human: show(&c),
                json: c,
            })
        }
        CollectionsCommand::Create {
            name,
            dim,
            metric,
            shards,
            replication,
            embedder,
        } => {
            let mut body = json!({ "name": name, "dim": dim, "metric": metric });
            for (key, value) in [
                ("shards", shards.map(Value::from)),
                ("replication", replication.map(Value::from)),
                ("embedder", embedder.map(Value::from)),
            ] {
                if let Some(value) = value {
                    body[key] = value;
                }
            }
            let c = ctx
                .client
                .send(reqwest::Method::POST, "/v1/collections", Some(&body))?;
            Ok(Output {
                human: format!(
                    "created `{}`: dim {}, {}, {} shards x {} copies\n",
                    name, c["dim"], c["metric"], c["shards"], c["replication"]
                ),
                json: c,
            })
        }
        CollectionsCommand::Delete { name, yes } => {
            if !yes {
                anyhow::bail!("deleting `{name}` cannot be undone; add --yes to go ahead");
            }
            ctx.client.send(
                reqwest::Method::DELETE,
                &format!("/v1/collections/{name}"),
                None,
            )?;
            Ok(Output {
                human: format!("deleted `{name}`\n"),
                json: json!({ "deleted": name }),
            })
        }
    }
}

pub fn run_items(ctx: &Ctx, command: ItemsCommand) -> anyhow::Result<Output> {
    let ItemsCommand::Get { collection, id } = command;
    let item = ctx.client.send(
        reqwest::Method::GET,
        &format!("/v1/collections/{collection}/items/{id}"),
        None,
    )?;
    let mut table = Table::new(["ID", "LABEL", "WEIGHT", "SOURCE"]);
    table.row([
        item["id"].to_string(),
        item["label"].as_str().unwrap_or("").to_string(),
        item["weight"].to_string(),
        item["source"].as_str().unwrap_or("-").to_string(),
    ]);
    Ok(Output {
        human: table.render(),
        json: item,
    })
}

fn show(c: &Value) -> String {
    let mut out = format!(
        "{}: {} items, dim {}, {}, {} shards x {} copies, {} sealed segments ({}), tombstones {:.1}%\n\n",
        c["name"].as_str().unwrap_or(""),
        c["items"],
        c["dim"],
        c["metric"].as_str().unwrap_or(""),
        c["shards"],
        c["replication"],
        c["sealed_segments"],
        bytes(c["sealed_bytes"].as_u64().unwrap_or(0)),
        100.0 * c["tombstone_share"].as_f64().unwrap_or(0.0)
    );
    let mut labels = Table::new(["LABEL", "ITEMS"]);
    for (label, n) in c["labels"].as_object().into_iter().flatten() {
        labels.row([label.clone(), n.to_string()]);
    }
    out.push_str(&labels.render());
    out.push('\n');
    let mut shards = Table::new([
        "SHARD",
        "ITEMS",
        "GROWING",
        "SEGMENTS",
        "SEALED ROWS",
        "TOMBSTONES",
        "BYTES",
    ]);
    let mut segments = Table::new([
        "SHARD",
        "SEGMENT",
        "ROWS",
        "DELETED",
        "BYTES",
        "SERVED FROM",
    ]);
    for s in c["shard_stats"].as_array().into_iter().flatten() {
        shards.row([
            s["shard"].to_string(),
            s["items"].to_string(),
            s["growing_rows"].as_u64().unwrap_or(0).to_string(),
            s["sealed_segments"].to_string(),
            s["sealed_rows"].to_string(),
            s["tombstones"].to_string(),
            bytes(s["sealed_bytes"].as_u64().unwrap_or(0)),
        ]);
        for segment in s["segments"].as_array().into_iter().flatten() {
            segments.row([
                s["shard"].to_string(),
                segment["name"].as_str().unwrap_or("").to_string(),
                segment["rows"].to_string(),
                segment["deleted"].to_string(),
                bytes(segment["bytes"].as_u64().unwrap_or(0)),
                served_from(segment),
            ]);
        }
    }
    out.push_str(&shards.render());
    if !segments.is_empty() {
        out.push('\n');
        out.push_str(&segments.render());
    }
    out
}

/// `memory`, `disk`, or `node cache (N nodes)`.
fn served_from(segment: &Value) -> String {
    match (
        segment["served_from"].as_str(),
        segment["cached_nodes"].as_u64(),
    ) {
        (Some("node_cache"), Some(nodes)) => format!("node cache ({nodes} nodes)"),
        (Some(tier), _) => tier.to_string(),
        (None, _) => "-".to_string(),
    }
}
