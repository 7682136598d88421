//! Online resharding of a cluster collection, driven by the coordinator
//! that runs its job.
//!
//! 1. **Begin** (`BeginReshard` through Raft): a target layout of `m`
//!    shards is placed over the live workers like a collection of its own
//!    (replicated, failed over and caught up by the same machinery), whose
//!    copies are *receiving* (`Shard::copy_in`, tombstones); every shard of
//!    the current layout moves to a new epoch in the same entry. From the
//!    moment a coordinator sees that entry it writes every operation to both
//!    layouts (`collection.rs`).
//! 2. **Fence**: each current primary adopts the new epoch (an empty write
//!    under its order lock). Writes ordered before it are complete; any
//!    later one comes from a coordinator that knows the target, since
//!    older epochs are refused. So every write a scan below misses reaches
//!    the target by the dual write.
//! 3. **Copy**: each current shard is read page by page from an in-sync
//!    replica and its rows sent to the target's primaries, which apply
//!    only the ids they have seen no write or delete of.
//! 4. **Flip** (`FinishReshard`): the target becomes the collection's
//!    layout under its public name, at new epochs; its primaries hold
//!    acknowledgements for one read lease, so copies of the old layout that
//!    have not seen the flip yet answer no read after a newer write is
//!    acknowledged. Workers drop the old layout's copies when they see it.
//!
//! Every step can be repeated: a job resumed after its coordinator
//! restarts runs them all again (the copy is idempotent).

use std::time::{Duration, Instant};

use engram_meta::{Command, CommandResult, MetaError};
use engram_worker::{ReshardHooks, ReshardReport, Result, ScannedItem, WorkerError};

use super::collection::{Layouts, RemoteCollection};

/// How long a coordinator waits for its own shard map to show a Raft
/// entry it just wrote.
const STATE_WAIT: Duration = Duration::from_secs(30);

fn meta_error(e: MetaError) -> WorkerError {
    match e {
        MetaError::Refused(why) => WorkerError::Invalid(why),
        other => WorkerError::Unavailable(other.to_string()),
    }
}

pub(super) fn run(
    collection: &RemoteCollection,
    shards: u32,
    hooks: &dyn ReshardHooks,
) -> Result<ReshardReport> {
    let started = Instant::now();
    let now = collection.layouts()?;
    if now.target.is_none() && now.current.spec().shards == shards {
        // A resumed job whose flip had landed before its coordinator died.
        return Ok(ReshardReport {
            from_shards: shards,
            to_shards: shards,
            rows_read: 0,
            rows_copied: 0,
            rows_skipped: 0,
            seconds: 0.0,
        });
    }
    let layouts = begin(collection, shards)?;
    let Some(target) = &layouts.target else {
        return Err(WorkerError::Unavailable(
            "the resharding's target layout is not in the shard map".into(),
        ));
    };
    let from = layouts.current.spec().shards;
    collection
        .runtime
        .block_on(collection.cluster.host(&target.spec().name, true))
        .map_err(|e| WorkerError::Unavailable(e.to_string()))?;
    for shard in layouts.current.all_shards() {
        layouts.current.fence(shard)?;
    }
    tracing::info!(collection = %collection.name, from, to = shards, "resharding: writes reach both layouts; copying");
    let total = layouts.current.stats()?.items;
    hooks.progress(0, total);
    let mut read = 0u64;
    for shard in layouts.current.all_shards() {
        layouts
            .current
            .scan_shard(shard, &mut |rows: Vec<ScannedItem>| {
                if hooks.cancelled() {
                    return Err(WorkerError::Invalid("resharding cancelled".into()));
                }
                read += rows.len() as u64;
                target.copy_in(rows)?;
                hooks.progress(read, total.max(read));
                Ok(())
            })?;
    }
    write(
        collection,
        Command::FinishReshard {
            collection: collection.name.clone(),
        },
    )?;
    wait_for(collection, |layouts| {
        layouts.target.is_none() && layouts.current.spec().shards == shards
    })?;
    tracing::info!(collection = %collection.name, from, to = shards, rows = read, "resharding finished");
    Ok(ReshardReport {
        from_shards: from,
        to_shards: shards,
        rows_read: read,
        // Copies are resolved by each target primary; the split between
        // rows written and rows found newer there is not reported back.
        rows_copied: read,
        rows_skipped: 0,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The layouts with the target to `shards`: started now, or the one a
/// previous run of the job started.
fn begin(collection: &RemoteCollection, shards: u32) -> Result<Layouts> {
    let layouts = collection.layouts()?;
    match &layouts.target {
        Some(target) if target.spec().shards == shards => return Ok(layouts),
        Some(target) => {
            return Err(WorkerError::Invalid(format!(
                "`{}` is being resharded to {} shards; cancel that job first",
                collection.name,
                target.spec().shards
            )));
        }
        None => {}
    }
    write(
        collection,
        Command::BeginReshard {
            collection: collection.name.clone(),
            shards,
        },
    )?;
    wait_for(collection, |layouts| {
        layouts
            .target
            .as_ref()
            .is_some_and(|t| t.spec().shards == shards)
    })
}

/// Drops the target layout of a resharding under way.
pub(super) fn abandon(collection: &RemoteCollection) -> Result<()> {
    write(
        collection,
        Command::AbortReshard {
            collection: collection.name.clone(),
        },
    )?;
    wait_for(collection, |layouts| layouts.target.is_none()).map(|_| ())
}

fn write(collection: &RemoteCollection, command: Command) -> Result<()> {
    let meta = collection.cluster.meta().clone();
    match collection.runtime.block_on(meta.write(command)) {
        Ok(CommandResult::Refused(why)) => Err(WorkerError::Invalid(why)),
        Ok(_) => Ok(()),
        Err(e) => Err(meta_error(e)),
    }
}

/// Waits until this coordinator's shard map satisfies `ready`.
fn wait_for(collection: &RemoteCollection, ready: impl Fn(&Layouts) -> bool) -> Result<Layouts> {
    let deadline = Instant::now() + STATE_WAIT;
    loop {
        let layouts = collection.layouts()?;
        if ready(&layouts) {
            return Ok(layouts);
        }
        if Instant::now() >= deadline {
            return Err(WorkerError::Unavailable(
                "this coordinator's shard map did not reach the resharding's entry in time".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
