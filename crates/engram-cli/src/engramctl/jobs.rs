//! `engramctl jobs list|show|cancel`.

use clap::Subcommand;
use serde_json::{Value, json};

use engram_cli::table::Table;

use crate::{Ctx, Output, text};

#[derive(Subcommand)]
pub enum JobsCommand {
    /// Jobs of one collection, or of every collection.
    List {
        #[arg(long)]
        collection: Option<String>,
    },
    /// One job's status, counts and report.
    Show { collection: String, id: u64 },
    /// Ask a running job to stop (any coordinator reaches its owner).
    Cancel { collection: String, id: u64 },
    /// Run a failed or cancelled ingest job on from its checkpoint (on the
    /// coordinator that ran it).
    Resume { collection: String, id: u64 },
}

pub fn run(ctx: &Ctx, command: JobsCommand) -> anyhow::Result<Output> {
    match command {
        JobsCommand::List { collection } => {
            let names = match collection {
                Some(c) => vec![c],
                None => ctx.collection_names()?,
            };
            let mut jobs = Vec::new();
            for name in names {
                let list = ctx.client.send(
                    reqwest::Method::GET,
                    &format!("/v1/collections/{name}/jobs"),
                    None,
                )?;
                jobs.extend(list["jobs"].as_array().cloned().unwrap_or_default());
            }
            let mut table = Table::new([
                "COLLECTION",
                "ID",
                "KIND",
                "STATE",
                "PROGRESS",
                "STARTED",
                "FINISHED",
            ]);
            for j in &jobs {
                table.row([
                    text(&j["collection"]),
                    j["id"].to_string(),
                    text(&j["kind"]),
                    text(&j["state"]),
                    progress(j),
                    text(&j["started_at"]),
                    text(&j["finished_at"]),
                ]);
            }
            Ok(Output {
                json: json!({ "jobs": jobs }),
                human: table.render(),
            })
        }
        JobsCommand::Show { collection, id } => {
            let job = ctx.client.send(
                reqwest::Method::GET,
                &format!("/v1/collections/{collection}/jobs/{id}"),
                None,
            )?;
            Ok(Output {
                human: detail(&job),
                json: job,
            })
        }
        JobsCommand::Resume { collection, id } => {
            let job = ctx.client.send(
                reqwest::Method::POST,
                &format!("/v1/collections/{collection}/jobs/{id}/resume"),
                Some(&json!({})),
            )?;
            Ok(Output {
                human: format!(
                    "job {id} of `{collection}` runs again from its checkpoint ({})\n",
                    progress(&job)
                ),
                json: job,
            })
        }
        JobsCommand::Cancel { collection, id } => {
            let job = ctx.client.send(
                reqwest::Method::POST,
                &format!("/v1/collections/{collection}/jobs/{id}/cancel"),
                Some(&json!({})),
            )?;
            Ok(Output {
                human: format!(
                    "asked job {id} of `{collection}` to stop (state now: {})\n",
                    text(&job["state"])
                ),
                json: job,
            })
        }
    }
}

fn progress(job: &Value) -> String {
    let (done, total) = (
        job["done"].as_u64().unwrap_or(0),
        job["total"].as_u64().unwrap_or(0),
    );
    if total == 0 {
        format!("{done}")
    } else {
        format!(
            "{done}/{total} ({:.0}%)",
            100.0 * done as f64 / total as f64
        )
    }
}

fn detail(job: &Value) -> String {
    let mut table = Table::new(["FIELD", "VALUE"]);
    for key in [
        "id",
        "collection",
        "kind",
        "state",
        "started_at",
        "finished_at",
        "error",
    ] {
        table.row([key.to_string(), text(&job[key])]);
    }
    table.row(["progress".to_string(), progress(job)]);
    for key in ["params", "counts", "report"] {
        if !job[key].is_null() {
            table.row([key.to_string(), job[key].to_string()]);
        }
    }
    table.render()
}
