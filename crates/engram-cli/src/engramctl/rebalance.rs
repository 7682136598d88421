//! `engramctl rebalance` and `engramctl node drain`: the planner's moves,
//! printed (`--plan`) or executed one by one (`--apply`) with a progress
//! bar. Each move returns once the shard map has flipped, so stopping
//! halfway leaves a consistent, partly rebalanced cluster.

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use std::fmt::Write as _;

use engram_cli::table::Table;

use crate::{Ctx, Output};

#[derive(Args)]
pub struct RebalanceArgs {
    /// Print the moves without making them (the default).
    #[arg(long, conflicts_with = "apply")]
    plan: bool,
    /// Make the moves, one at a time.
    #[arg(long)]
    apply: bool,
    /// Workers to empty (comma-separated ids).
    #[arg(long)]
    drain: Option<String>,
    /// At most this many moves.
    #[arg(long)]
    max_moves: Option<usize>,
}

impl RebalanceArgs {
    pub fn drain(worker: u64) -> RebalanceArgs {
        RebalanceArgs {
            plan: false,
            apply: true,
            drain: Some(worker.to_string()),
            max_moves: None,
        }
    }
}

pub fn run(ctx: &Ctx, args: RebalanceArgs) -> anyhow::Result<Output> {
    let mut query = Vec::new();
    if let Some(drain) = &args.drain {
        query.push(format!("drain={drain}"));
    }
    if let Some(max) = args.max_moves {
        query.push(format!("max_moves={max}"));
    }
    let path = if query.is_empty() {
        "/v1/cluster/rebalance".to_string()
    } else {
        format!("/v1/cluster/rebalance?{}", query.join("&"))
    };
    let plan = ctx.client.send(reqwest::Method::GET, &path, None)?;
    let moves = plan["moves"].as_array().cloned().unwrap_or_default();
    let mut human = render_plan(&plan);
    if !args.apply {
        return Ok(Output { json: plan, human });
    }
    if !plan["stuck"].as_array().is_none_or(Vec::is_empty) {
        anyhow::bail!(
            "some copies on draining workers have nowhere to go: {}",
            plan["stuck"]
        );
    }
    let bar = if ctx.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(moves.len() as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("moving shard copies [{bar:40}] {pos}/{len} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let mut done = Vec::new();
    for m in &moves {
        bar.set_message(format!(
            "{}/{} {} -> {}",
            m["collection"].as_str().unwrap_or(""),
            m["shard"],
            m["from"],
            m["to"]
        ));
        let body = json!({
            "collection": m["collection"],
            "shard": m["shard"],
            "from": m["from"],
            "to": m["to"],
        });
        match ctx
            .client
            .send(reqwest::Method::POST, "/v1/cluster/moves", Some(&body))
        {
            Ok(moved) => done.push(moved),
            Err(e) => {
                bar.abandon();
                return Err(e.context(format!(
                    "stopped after {} of {} moves (the cluster is consistent; rerun to continue)",
                    done.len(),
                    moves.len()
                )));
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let _ = writeln!(human, "applied {} moves", done.len());
    Ok(Output {
        json: json!({ "plan": plan, "moved": done }),
        human,
    })
}

fn render_plan(plan: &Value) -> String {
    let mut out = String::new();
    let moves = plan["moves"].as_array().cloned().unwrap_or_default();
    if moves.is_empty() {
        out.push_str("no moves: the load is as even as the planner can make it\n");
    } else {
        let mut table = Table::new(["COLLECTION", "SHARD", "FROM", "TO", "WEIGHT"]);
        for m in &moves {
            table.row([
                m["collection"].as_str().unwrap_or("").to_string(),
                m["shard"].to_string(),
                m["from"].to_string(),
                m["to"].to_string(),
                m["weight"].to_string(),
            ]);
        }
        out.push_str(&table.render());
    }
    let mut loads = Table::new(["WORKER", "LOAD BEFORE", "LOAD AFTER"]);
    for (worker, before) in plan["before"].as_object().into_iter().flatten() {
        loads.row([
            worker.clone(),
            before.to_string(),
            plan["after"][worker].to_string(),
        ]);
    }
    let _ = write!(out, "\n{loads}");
    for s in plan["stuck"].as_array().into_iter().flatten() {
        let _ = writeln!(out, "stuck: {s} (no other live worker can take it)");
    }
    out
}
