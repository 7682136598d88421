//! `engramctl node add|remove|drain`: coordinators joining or leaving the
//! Raft group, and a worker emptied of shard copies. (Workers join by
//! starting with the coordinators' addresses.)

use clap::Subcommand;
use serde_json::{Value, json};

use engram_cli::table::Table;

use crate::{Ctx, Output};

#[derive(Subcommand)]
pub enum NodeCommand {
    /// Add a started coordinator (empty data directory, this node id) as a
    /// Raft voter.
    Add {
        /// Its node id (`cluster.node_id` in its config).
        #[arg(long)]
        id: u64,
        /// Its internal (Raft) address, host:port.
        #[arg(long)]
        addr: String,
    },
    /// Remove a coordinator from the Raft voters.
    Remove {
        /// Its node id.
        id: u64,
    },
    /// Move every shard copy off a worker (before retiring it).
    Drain {
        /// The worker's id.
        worker: u64,
    },
}

pub fn run(ctx: &Ctx, command: NodeCommand) -> anyhow::Result<Output> {
    let status = match command {
        NodeCommand::Drain { worker } => {
            return crate::rebalance::run(ctx, crate::rebalance::RebalanceArgs::drain(worker));
        }
        NodeCommand::Add { id, addr } => ctx.client.send(
            reqwest::Method::POST,
            "/v1/cluster/coordinators",
            Some(&json!({ "id": id, "addr": addr })),
        )?,
        NodeCommand::Remove { id } => ctx.client.send(
            reqwest::Method::DELETE,
            &format!("/v1/cluster/coordinators/{id}"),
            None,
        )?,
    };
    Ok(Output {
        human: members(&status),
        json: status,
    })
}

fn members(status: &Value) -> String {
    let mut table = Table::new(["COORDINATOR", "RAFT ADDRESS"]);
    for c in status["coordinators"].as_array().into_iter().flatten() {
        table.row([c["id"].to_string(), c["addr"].as_str().unwrap_or("").into()]);
    }
    table.render()
}
