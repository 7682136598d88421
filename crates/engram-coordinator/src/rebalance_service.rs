//! Rebalancing through the API: the plan (the pure planner over the live
//! shard map and each shard's item count) and one move at a time.
//!
//! A move of a shard copy from worker A to worker B: B is added as an
//! out-of-sync host through Raft; its agent opens the shard and catches up
//! from the primary (which holds the shard's writes during the transfer);
//! once B is in sync, one Raft entry removes A (a primary hands over to an
//! in-sync replica, new epoch), and A's agent drops its files. Queries go
//! to in-sync copies only and writes are replicated to every in-sync copy,
//! so both are served throughout.

use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

use engram_core::placement::{ShardPlacement, WorkerId};
use engram_core::rebalance::{self, Plan, ShardLoad};
use engram_meta::{Command, MetaError};

use crate::error::{ApiError, ErrorCode, Result};
use crate::service::{Engram, blocking};

/// How long a new copy may take to catch up before the move is abandoned:
/// as long as its own catch-up may take (the worker agent's bound), since a
/// copy rebuilt row by row (`cluster.catch_up = "rows"`, or a primary
/// without sealed segments) takes about 11 minutes per million 128-d rows
/// on 2 cores; a move of shipped segments takes seconds.
const CATCH_UP_DEADLINE: Duration = Duration::from_secs(12 * 3600);

/// How long the target may stay failed over before the move is abandoned.
const TARGET_DOWN_GRACE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanQuery {
    /// Comma-separated worker ids to empty.
    #[serde(default)]
    pub drain: Option<String>,
    #[serde(default)]
    pub max_moves: Option<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoveRequest {
    pub collection: String,
    pub shard: u32,
    pub from: WorkerId,
    pub to: WorkerId,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MoveDone {
    pub collection: String,
    pub shard: u32,
    pub placement: ShardPlacement,
    pub seconds: f64,
}

impl Engram {
    /// The moves that would even out the load (and empty `drain`).
    pub async fn rebalance_plan(&self, query: PlanQuery) -> Result<Plan> {
        let cluster = self.require_cluster()?;
        let drain: Vec<WorkerId> = match &query.drain {
            None => Vec::new(),
            Some(list) => list
                .split(',')
                .filter(|s| !s.trim().is_empty())
                .map(|s| {
                    s.trim().parse().map_err(|_| {
                        ApiError::invalid(format!("`drain` lists worker ids, got {s:?}"))
                    })
                })
                .collect::<Result<_>>()?,
        };
        let state = cluster.state();
        for w in &drain {
            if !state.workers.contains_key(w) {
                return Err(ApiError::not_found(format!("no worker {w}")));
            }
        }
        let live: Vec<WorkerId> = state
            .workers
            .values()
            .filter(|w| w.alive)
            .map(|w| w.id)
            .collect();
        let mut shards = Vec::new();
        // Current layouts only: a resharding's target is filled in place.
        for (key, meta) in &state.collections {
            let Some((public, false)) = state.public_name(key) else {
                continue;
            };
            let name = key.clone();
            let collection = self.inner.backend.collection(public)?;
            let stats = blocking(move || Ok(collection.stats()?)).await?;
            for (i, placement) in meta.shards.iter().enumerate() {
                let items = stats
                    .shards
                    .iter()
                    .find(|s| s.shard == i as u32)
                    .map_or(0, |s| s.items);
                shards.push(ShardLoad {
                    collection: name.clone(),
                    shard: i as u32,
                    placement: placement.clone(),
                    weight: items + 1,
                });
            }
        }
        Ok(rebalance::plan(
            &shards,
            &live,
            &drain,
            query.max_moves.unwrap_or(usize::MAX),
        ))
    }

    /// Moves one shard copy (see the module doc); returns once the shard
    /// map no longer has it on `from`.
    pub async fn move_copy(&self, request: MoveRequest) -> Result<MoveDone> {
        let cluster = self.require_cluster()?;
        let started = Instant::now();
        let MoveRequest {
            collection,
            shard,
            from,
            to,
        } = request;
        // A public name stands for its current layout's key.
        let collection = cluster.state().key_of(&collection).to_string();
        let placement = |state: &engram_meta::ClusterState| {
            state
                .placement(&collection, shard)
                .cloned()
                .ok_or_else(|| ApiError::not_found(format!("no shard {shard} in `{collection}`")))
        };
        let current = placement(&cluster.state())?;
        if !current.hosts(from) {
            return Err(ApiError::invalid(format!(
                "worker {from} does not host shard {shard} of `{collection}`"
            )));
        }
        if !current.hosts(to) {
            let add = Command::AddHost {
                collection: collection.clone(),
                shard,
                worker: to,
                epoch: current.epoch,
            };
            cluster.meta().write(add).await?;
        }
        // The new copy catches up on its own (its agent asks the primary).
        let deadline = Instant::now() + CATCH_UP_DEADLINE;
        let mut down_since: Option<Instant> = None;
        loop {
            let state = cluster.state();
            let now = placement(&state)?;
            if now.is_in_sync(to) {
                break;
            }
            if !now.hosts(to) {
                return Err(ApiError::new(
                    ErrorCode::Unavailable,
                    format!(
                        "worker {to} stopped hosting shard {shard} of `{collection}` while catching up"
                    ),
                ));
            }
            // A target failed over meanwhile catches up again when it
            // returns; give it a while before abandoning the move.
            if state.workers.get(&to).is_some_and(|w| w.alive) {
                down_since = None;
            } else if down_since.get_or_insert_with(Instant::now).elapsed() > TARGET_DOWN_GRACE {
                return Err(ApiError::new(
                    ErrorCode::Unavailable,
                    format!(
                        "worker {to} has been down for {TARGET_DOWN_GRACE:?} while catching up shard {shard} of `{collection}`"
                    ),
                ));
            }
            if Instant::now() > deadline {
                return Err(ApiError::new(
                    ErrorCode::Unavailable,
                    format!(
                        "worker {to} did not catch up shard {shard} of `{collection}` within {CATCH_UP_DEADLINE:?}"
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The flip: one entry, retried if the epoch moved meanwhile (a
        // failover, another move).
        loop {
            let now = placement(&cluster.state())?;
            if !now.hosts(from) {
                break;
            }
            let remove = Command::RemoveHost {
                collection: collection.clone(),
                shard,
                worker: from,
                epoch: now.epoch,
            };
            match cluster.meta().write(remove).await {
                Ok(_) => break,
                Err(MetaError::Refused(reason)) if reason.contains("epoch") => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(MetaError::Refused(reason)) => return Err(ApiError::invalid(reason)),
                Err(e) => return Err(e.into()),
            }
        }
        let placement = placement(&cluster.state())?;
        tracing::info!(%collection, shard, from, to, epoch = placement.epoch, "shard copy moved");
        Ok(MoveDone {
            collection,
            shard,
            placement,
            seconds: started.elapsed().as_secs_f64(),
        })
    }
}
