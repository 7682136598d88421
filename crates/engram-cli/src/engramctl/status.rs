//! `engramctl status`.

use serde_json::{Value, json};
use std::fmt::Write as _;

use engram_cli::table::Table;

use crate::{Ctx, Output};

pub fn run(ctx: &Ctx) -> anyhow::Result<Output> {
    let cluster = ctx.client.send(reqwest::Method::GET, "/v1/cluster", None)?;
    let collections = ctx
        .client
        .send(reqwest::Method::GET, "/v1/collections", None)?;
    let human = render(&cluster, &collections);
    Ok(Output {
        json: json!({ "cluster": cluster, "collections": collections["collections"] }),
        human,
    })
}

fn num(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn ids(v: &Value) -> String {
    let list: Vec<String> = v
        .as_array()
        .map(|a| a.iter().map(|x| x.to_string()).collect())
        .unwrap_or_default();
    if list.is_empty() {
        "-".into()
    } else {
        list.join(",")
    }
}

/// Bytes as B, KiB, MiB or GiB.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

pub fn render(cluster: &Value, collections: &Value) -> String {
    let mut out = String::new();
    let clustered = cluster["mode"] == "cluster";
    if clustered {
        let leader = cluster["leader"].as_u64();
        let _ = writeln!(
            out,
            "cluster: node {} answering, Raft leader {}, applied index {}\n",
            cluster["node_id"],
            leader.map_or("none".to_string(), |l| l.to_string()),
            cluster["applied_index"]
        );
        let mut members = Table::new(["COORDINATOR", "RAFT ADDRESS", "ROLE"]);
        for c in cluster["coordinators"].as_array().into_iter().flatten() {
            let role = if c["id"].as_u64() == leader {
                "leader"
            } else {
                "follower"
            };
            members.row([
                c["id"].to_string(),
                c["addr"].as_str().unwrap_or("").into(),
                role.into(),
            ]);
        }
        let _ = writeln!(out, "{members}");
        let mut workers = Table::new([
            "WORKER",
            "ADDRESS",
            "ALIVE",
            "HEALTHY",
            "PRIMARIES",
            "COPIES",
        ]);
        for w in cluster["workers"].as_array().into_iter().flatten() {
            let id = w["id"].as_u64();
            let (mut primaries, mut copies) = (0, 0);
            for c in cluster["collections"].as_array().into_iter().flatten() {
                for s in c["shards"].as_array().into_iter().flatten() {
                    primaries += usize::from(s["primary"].as_u64() == id);
                    copies += usize::from(s["primary"].as_u64() == id)
                        + s["replicas"]
                            .as_array()
                            .map_or(0, |r| r.iter().filter(|x| x.as_u64() == id).count());
                }
            }
            workers.row([
                w["id"].to_string(),
                w["addr"].as_str().unwrap_or("").into(),
                yes(&w["alive"]),
                yes(&w["healthy"]),
                primaries.to_string(),
                copies.to_string(),
            ]);
        }
        let _ = writeln!(out, "{workers}");
    } else {
        let _ = writeln!(out, "embedded node (one process; no Raft group)\n");
    }
    for c in collections["collections"].as_array().into_iter().flatten() {
        let name = c["name"].as_str().unwrap_or("");
        let share = c["tombstone_share"].as_f64().unwrap_or(0.0);
        let _ = writeln!(
            out,
            "collection {name}: {} items, dim {}, {} shards x {} copies, {} sealed segments ({}), tombstones {:.1}%",
            num(&c["items"]),
            num(&c["dim"]),
            num(&c["shards"]),
            num(&c["replication"]),
            num(&c["sealed_segments"]),
            bytes(num(&c["sealed_bytes"])),
            100.0 * share
        );
        let placements = cluster["collections"]
            .as_array()
            .and_then(|list| list.iter().find(|p| p["name"] == name))
            .map(|p| p["shards"].clone())
            .unwrap_or(Value::Null);
        let mut shards = Table::new([
            "SHARD",
            "EPOCH",
            "PRIMARY",
            "REPLICAS",
            "OUT OF SYNC",
            "ITEMS",
            "SEGMENTS",
            "TOMBSTONES",
        ]);
        for s in c["shard_stats"].as_array().into_iter().flatten() {
            let placement = &placements[num(&s["shard"]) as usize];
            let sealed = num(&s["sealed_rows"]);
            let tombstones = num(&s["tombstones"]);
            shards.row([
                s["shard"].to_string(),
                placement["epoch"]
                    .as_u64()
                    .map_or("-".into(), |e| e.to_string()),
                placement["primary"]
                    .as_u64()
                    .map_or("-".into(), |p| p.to_string()),
                ids(&placement["replicas"]),
                ids(&placement["out_of_sync"]),
                num(&s["items"]).to_string(),
                num(&s["sealed_segments"]).to_string(),
                if sealed == 0 {
                    "-".to_string()
                } else {
                    format!("{:.1}%", 100.0 * tombstones as f64 / sealed as f64)
                },
            ]);
        }
        let _ = writeln!(out, "{shards}");
    }
    out
}

fn yes(v: &Value) -> String {
    if v.as_bool().unwrap_or(false) {
        "yes".into()
    } else {
        "NO".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes_read_well() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
    }

    #[test]
    fn a_cluster_status_lists_members_workers_and_shards() {
        let cluster = json!({
            "mode": "cluster", "node_id": 2, "leader": 1, "applied_index": 40,
            "coordinators": [{"id": 1, "addr": "127.0.0.1:7800"}, {"id": 2, "addr": "127.0.0.1:7801"}],
            "workers": [{"id": 5, "addr": "127.0.0.1:7810", "alive": true, "healthy": false}],
            "collections": [{"name": "c", "shards": [
                {"epoch": 3, "primary": 5, "replicas": [], "out_of_sync": [6], "segments": {}}
            ]}]
        });
        let collections = json!({"collections": [{
            "name": "c", "items": 10, "dim": 4, "shards": 1, "replication": 2,
            "sealed_segments": 1, "sealed_bytes": 2048, "tombstone_share": 0.25,
            "shard_stats": [{"shard": 0, "items": 10, "sealed_segments": 1, "sealed_rows": 8, "tombstones": 2, "sealed_bytes": 2048}]
        }]});
        let text = render(&cluster, &collections);
        assert!(text.contains("Raft leader 1"), "{text}");
        assert!(
            text.contains("1            127.0.0.1:7800  leader"),
            "{text}"
        );
        assert!(
            text.contains("5       127.0.0.1:7810  yes    NO       1          1"),
            "{text}"
        );
        assert!(
            text.contains("0      3      5        -         6            10     1         25.0%"),
            "{text}"
        );
        assert!(text.contains("2.0 KiB"), "{text}");
    }
}
