//! `engramctl`: operate an Engram deployment (a cluster's coordinators or
//! the embedded node) over its public HTTP API, and nothing else.
//!
//! Every verb prints a human table by default and its JSON with `--json`;
//! a failed call exits non-zero with the server's error message.

mod collections;
mod compact;
mod jobs;
mod nodes;
mod rebalance;
mod reshard;
mod snapshot;
mod status;
mod unlearning;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use std::time::Duration;

use engram_cli::client::Client;

#[derive(Parser)]
#[command(
    name = "engramctl",
    version,
    about = "Operate an Engram cluster (or embedded node) over its HTTP API"
)]
struct Cli {
    /// Any coordinator's public API (or the embedded node's).
    #[arg(
        long,
        global = true,
        env = "ENGRAMCTL_SERVER",
        default_value = "http://127.0.0.1:7700"
    )]
    server: String,
    /// API key of the server (`[security] api_key`, or the read-only one
    /// for reads).
    #[arg(long, global = true, env = "ENGRAM_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// PEM file of the CA that signed the server's certificate (an
    /// `https://` server with a private CA), trusted beside the system's
    /// roots.
    #[arg(long, global = true, env = "ENGRAM_CA_CERT")]
    ca_cert: Option<std::path::PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Raft members and leader, workers and their health, and per
    /// collection and shard: placement, items, segments, tombstones.
    Status,
    /// Coordinators joining or leaving the Raft group.
    #[command(subcommand)]
    Node(nodes::NodeCommand),
    /// Even out the load over the workers (and empty `--drain` ones) by
    /// moving shard copies; `--plan` prints the moves, `--apply` makes them.
    Rebalance(rebalance::RebalanceArgs),
    /// Rewrite sealed segments whose deleted share passes the threshold, so
    /// deleted vectors leave every file; reports the bytes reclaimed.
    Compact(compact::CompactArgs),
    /// Change a collection's shard count online (writes and queries go on);
    /// waits for the job with a progress bar unless --no-wait.
    Reshard(reshard::ReshardArgs),
    /// Snapshots of every collection to object storage, and restoring one.
    #[command(subcommand)]
    Snapshot(snapshot::SnapshotCommand),
    /// Ingestion and pruning jobs.
    #[command(subcommand)]
    Jobs(jobs::JobsCommand),
    /// Create, inspect and delete collections.
    #[command(subcommand)]
    Collections(collections::CollectionsCommand),
    /// Look at stored items.
    #[command(subcommand)]
    Items(collections::ItemsCommand),
    /// Unlearning receipts: erasure deadlines, and every place deleted
    /// bytes still are (copies, WAL, segments, uploaded objects,
    /// quarantined copies, snapshots); `--erase N` erases one now.
    Unlearning(unlearning::UnlearningArgs),
}

/// What a verb prints: JSON for scripts, text for people.
pub struct Output {
    pub json: Value,
    pub human: String,
}

fn main() {
    let cli = Cli::parse();
    let result = Client::new(&cli.server, cli.api_key.as_deref(), cli.ca_cert.as_deref()).and_then(
        |client| {
            let ctx = Ctx {
                client,
                json: cli.json,
            };
            match cli.command {
                Command::Status => status::run(&ctx),
                Command::Node(command) => nodes::run(&ctx, command),
                Command::Rebalance(args) => rebalance::run(&ctx, args),
                Command::Compact(args) => compact::run(&ctx, args),
                Command::Reshard(args) => reshard::run(&ctx, args),
                Command::Snapshot(command) => snapshot::run(&ctx, command),
                Command::Jobs(command) => jobs::run(&ctx, command),
                Command::Collections(command) => collections::run(&ctx, command),
                Command::Items(command) => collections::run_items(&ctx, command),
                Command::Unlearning(args) => unlearning::run(&ctx, args),
            }
        },
    );
    match result {
        Ok(output) if cli.json => println!(
            "{}",
            serde_json::to_string_pretty(&output.json).unwrap_or_default()
        ),
        Ok(output) => print!("{}", output.human),
        Err(error) => {
            eprintln!("engramctl: {error:#}");
            std::process::exit(1);
        }
    }
}

/// What every verb gets: the API client, and whether output is JSON (long
/// operations then show no progress bar).
pub struct Ctx {
    pub client: Client,
    pub json: bool,
}

impl Ctx {
    /// The names of every collection.
    pub fn collection_names(&self) -> anyhow::Result<Vec<String>> {
        Ok(self
            .client
            .send(reqwest::Method::GET, "/v1/collections", None)?["collections"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(String::from))
            .collect())
    }

    /// A spinner on stderr while one long call runs (hidden with --json or
    /// when stderr is not a terminal).
    pub fn spinner(&self, message: &str) -> ProgressBar {
        if self.json {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg} ({elapsed})").expect("valid template"),
        );
        bar.set_message(message.to_string());
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    }
}

/// A JSON value as a table cell: strings bare, null as `-`.
pub fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}
