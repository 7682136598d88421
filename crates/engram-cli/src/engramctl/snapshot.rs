//! `engramctl snapshot create|list|restore`: every collection's items,
//! specs and curation to object storage (or a directory), and back into an
//! empty deployment.

use clap::Subcommand;
use serde_json::{Value, json};

use engram_cli::table::Table;

use crate::status::bytes;
use crate::{Ctx, Output, text};

#[derive(Subcommand)]
pub enum SnapshotCommand {
    /// Write a snapshot under URI (s3://bucket/prefix, gs://, az://, or a
    /// path the server can write).
    Create {
        #[arg(long)]
        uri: String,
    },
    /// The complete snapshots under URI.
    List {
        #[arg(long)]
        uri: String,
    },
    /// Restore snapshot ID into this (empty) deployment.
    Restore {
        #[arg(long)]
        uri: String,
        #[arg(long)]
        id: String,
    },
}

pub fn run(ctx: &Ctx, command: SnapshotCommand) -> anyhow::Result<Output> {
    match command {
        SnapshotCommand::Create { uri } => {
            let spinner = ctx.spinner("writing snapshot");
            let made = ctx.client.send(
                reqwest::Method::POST,
                "/v1/snapshots",
                Some(&json!({ "uri": uri })),
            );
            spinner.finish_and_clear();
            let made = made?;
            Ok(Output {
                human: format!(
                    "snapshot {} written: {} items of {} ({}) in {:.1} s\n",
                    text(&made["id"]),
                    made["items"],
                    names(&made),
                    bytes(made["bytes"].as_u64().unwrap_or(0)),
                    made["seconds"].as_f64().unwrap_or(0.0)
                ),
                json: made,
            })
        }
        SnapshotCommand::List { uri } => {
            let list = ctx.client.send(
                reqwest::Method::GET,
                &format!("/v1/snapshots?uri={}", encode(&uri)),
                None,
            )?;
            let mut table = Table::new(["ID", "CREATED", "COLLECTIONS", "ITEMS", "SIZE"]);
            for s in list["snapshots"].as_array().into_iter().flatten() {
                table.row([
                    text(&s["id"]),
                    text(&s["created_at"]),
                    names(s),
                    s["items"].to_string(),
                    bytes(s["bytes"].as_u64().unwrap_or(0)),
                ]);
            }
            Ok(Output {
                human: table.render(),
                json: list,
            })
        }
        SnapshotCommand::Restore { uri, id } => {
            let spinner = ctx.spinner("restoring snapshot");
            let restored = ctx.client.send(
                reqwest::Method::POST,
                "/v1/snapshots/restore",
                Some(&json!({ "uri": uri, "id": id })),
            );
            spinner.finish_and_clear();
            let restored = restored?;
            Ok(Output {
                human: format!(
                    "snapshot {} restored: {} items of {} in {:.1} s\n",
                    text(&restored["id"]),
                    restored["items"],
                    names(&restored),
                    restored["seconds"].as_f64().unwrap_or(0.0)
                ),
                json: restored,
            })
        }
    }
}

fn names(v: &Value) -> String {
    v["collections"]
        .as_array()
        .map(|a| a.iter().map(text).collect::<Vec<_>>().join(","))
        .unwrap_or_default()
}

/// Percent-encodes a query value (URIs carry `:` and `/`).
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn uris_are_encoded_for_the_query_string() {
        assert_eq!(super::encode("s3://b/p q"), "s3%3A%2F%2Fb%2Fp%20q");
    }
}
