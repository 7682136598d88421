//! `engramctl unlearning`: every unlearning receipt, its deadline and where
//! the deleted bytes still are; `--erase N` does a receipt's erasure work
//! now instead of when its deadline nears.

use clap::Args;
use serde_json::{Value, json};

use engram_cli::table::Table;

use crate::{Ctx, Output, text};

#[derive(Args)]
pub struct UnlearningArgs {
    /// Only this collection (default: every collection).
    #[arg(long)]
    collection: Option<String>,
    /// Only receipts past their erasure deadline with bytes still stored.
    #[arg(long)]
    overdue: bool,
    /// Erase this receipt now (needs --collection); prints it afterwards.
    #[arg(long, requires = "collection")]
    erase: Option<u64>,
}

pub fn run(ctx: &Ctx, args: UnlearningArgs) -> anyhow::Result<Output> {
    if let (Some(receipt), Some(collection)) = (args.erase, &args.collection) {
        let spinner = ctx.spinner(&format!("erasing receipt {receipt} of {collection}"));
        let status = ctx.client.send(
            reqwest::Method::POST,
            &format!("/v1/collections/{collection}/unlearning/{receipt}/erase"),
            Some(&json!({})),
        );
        spinner.finish_and_clear();
        let status = status?;
        return Ok(render(vec![(collection.clone(), status)]));
    }
    let names = match &args.collection {
        Some(name) => vec![name.clone()],
        None => ctx.collection_names()?,
    };
    let mut receipts = Vec::new();
    for name in names {
        let query = if args.overdue { "?overdue=true" } else { "" };
        let list = ctx.client.send(
            reqwest::Method::GET,
            &format!("/v1/collections/{name}/unlearning{query}"),
            None,
        )?;
        for receipt in list["receipts"].as_array().into_iter().flatten() {
            receipts.push((name.clone(), receipt.clone()));
        }
    }
    Ok(render(receipts))
}

/// One row per receipt, then one line per place where bytes still are.
fn render(receipts: Vec<(String, Value)>) -> Output {
    let mut table = Table::new([
        "COLLECTION",
        "RECEIPT",
        "DELETED",
        "AT",
        "ERASE BY",
        "STATUS",
        "PLACES",
    ]);
    let mut places = String::new();
    let mut json = Vec::new();
    for (collection, r) in receipts {
        let status = match (r["status"].as_str(), r["overdue"].as_bool()) {
            (Some(s), Some(true)) => format!("{s} OVERDUE"),
            (Some(s), _) => s.to_string(),
            _ => "-".into(),
        };
        let listed = r["places"].as_array().cloned().unwrap_or_default();
        table.row([
            collection.clone(),
            text(&r["receipt"]),
            text(&r["deleted"]),
            text(&r["at"]),
            text(&r["erase_by"]),
            status,
            listed.len().to_string(),
        ]);
        for place in &listed {
            places.push_str(&format!(
                "  {collection} receipt {}: {}\n",
                text(&r["receipt"]),
                describe(place)
            ));
        }
        let mut r = r;
        r["collection"] = json!(collection);
        json.push(r);
    }
    let mut human = table.render();
    if !places.is_empty() {
        human.push_str("\nwhere deleted bytes still are:\n");
        human.push_str(&places);
    }
    Output {
        json: Value::Array(json),
        human,
    }
}

/// A place in a line: its kind, then its fields.
fn describe(place: &Value) -> String {
    let kind = text(&place["kind"]);
    let fields: Vec<String> = place
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| k.as_str() != "kind")
        .map(|(k, v)| format!("{k}={}", text(v)))
        .collect();
    format!("{kind} {}", fields.join(" "))
}
