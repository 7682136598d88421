//! Which workers hold which virtual shards: pure planners over the shard
//! map, used by the Raft state machine (so they must be deterministic) and
//! tested without any I/O.
//!
//! Every shard has one primary, which orders its writes, a list of in-sync
//! replicas, which hold every acknowledged write, and workers that host it
//! but are catching up (`out_of_sync`). Each change bumps the shard's epoch,
//! so a worker or coordinator acting on an older map is refused.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A worker's id, fixed in its configuration.
pub type WorkerId = u64;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardPlacement {
    pub epoch: u64,
    pub primary: WorkerId,
    /// In-sync followers: every acknowledged write is on them.
    pub replicas: Vec<WorkerId>,
    /// Hosts that missed writes and must catch up by transfer.
    pub out_of_sync: Vec<WorkerId>,
}

impl ShardPlacement {
    /// A placement from its parts (tests and tools; the state machine
    /// derives placements with the planners below).
    pub fn new(
        epoch: u64,
        primary: WorkerId,
        replicas: &[WorkerId],
        out_of_sync: &[WorkerId],
    ) -> ShardPlacement {
        ShardPlacement {
            epoch,
            primary,
            replicas: replicas.to_vec(),
            out_of_sync: out_of_sync.to_vec(),
        }
    }

    /// Primary first, then the in-sync replicas.
    pub fn in_sync(&self) -> impl Iterator<Item = WorkerId> + '_ {
        std::iter::once(self.primary).chain(self.replicas.iter().copied())
    }

    pub fn is_in_sync(&self, worker: WorkerId) -> bool {
        self.in_sync().any(|w| w == worker)
    }

    /// Every worker holding a copy: in sync first, then catching up.
    pub fn all_hosts(&self) -> impl Iterator<Item = WorkerId> + '_ {
        self.in_sync().chain(self.out_of_sync.iter().copied())
    }

    pub fn hosts(&self, worker: WorkerId) -> bool {
        self.is_in_sync(worker) || self.out_of_sync.contains(&worker)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error(
        "replication {replication} needs at least {replication} live workers, there are {workers}"
    )]
    NotEnoughWorkers { replication: u32, workers: usize },
    #[error("shard placement changed (epoch {current}, expected {expected})")]
    StaleEpoch { expected: u64, current: u64 },
    #[error("worker {0} does not host this shard")]
    NotHosted(WorkerId),
    #[error("worker {0} already hosts this shard")]
    AlreadyHosted(WorkerId),
    #[error("worker {0} holds the shard's only in-sync copy")]
    LastInSyncCopy(WorkerId),
}

/// Places `shards` shards with `replication` copies on distinct `workers`
/// (any order; duplicates ignored). Copies are dealt round-robin, so every
/// worker holds the same number of copies give or take one; each shard's
/// primary is the copy whose worker leads the fewest shards so far.
pub fn assign(
    shards: u32,
    replication: u32,
    workers: &[WorkerId],
) -> Result<Vec<ShardPlacement>, PlacementError> {
    let mut workers = workers.to_vec();
    workers.sort_unstable();
    workers.dedup();
    if replication == 0 || workers.len() < replication as usize {
        return Err(PlacementError::NotEnoughWorkers {
            replication,
            workers: workers.len(),
        });
    }
    let n = workers.len();
    let r = replication as usize;
    let mut led: BTreeMap<WorkerId, usize> = workers.iter().map(|w| (*w, 0)).collect();
    let mut placements = Vec::with_capacity(shards as usize);
    for s in 0..shards as usize {
        let copies: Vec<WorkerId> = (0..r).map(|i| workers[(s * r + i) % n]).collect();
        let primary = *copies
            .iter()
            .min_by_key(|w| (led[w], **w))
            .expect("replication >= 1");
        *led.get_mut(&primary).expect("known worker") += 1;
        placements.push(ShardPlacement {
            epoch: 1,
            primary,
            replicas: copies.into_iter().filter(|w| *w != primary).collect(),
            out_of_sync: Vec::new(),
        });
    }
    Ok(placements)
}

/// The placement after `worker` is found dead, or `None` if nothing changes.
///
/// A dead replica becomes out of sync. A dead primary is replaced by its
/// first in-sync replica and becomes out of sync; a primary without any
/// in-sync replica stays primary, because it alone holds every
/// acknowledged write (the shard is unavailable until it returns, never
/// served from a copy that may have missed writes).
pub fn fail_worker(placement: &ShardPlacement, worker: WorkerId) -> Option<ShardPlacement> {
    let mut next = placement.clone();
    if placement.primary == worker {
        if placement.replicas.is_empty() {
            return None;
        }
        next.primary = next.replicas.remove(0);
    } else if let Some(i) = placement.replicas.iter().position(|w| *w == worker) {
        next.replicas.remove(i);
    } else {
        return None;
    }
    next.out_of_sync.push(worker);
    next.epoch += 1;
    Some(next)
}

/// The placement after `worker` stops receiving writes (a replication to it
/// failed), checked against the epoch the caller acted on.
pub fn mark_out_of_sync(
    placement: &ShardPlacement,
    worker: WorkerId,
    expected_epoch: u64,
) -> Result<ShardPlacement, PlacementError> {
    if placement.primary == worker {
        check_epoch(placement, expected_epoch)?;
        return Err(PlacementError::NotHosted(worker));
    }
    // For a replica this is exactly losing its copy.
    lose_copy(placement, worker, expected_epoch)
}

/// The placement after `worker` found its copy corrupted on disk and set
/// it aside: as if that worker had failed for this shard alone (a primary
/// hands over to its first in-sync replica, the copy falls out of sync and
/// is rebuilt by catching up). A primary without an in-sync replica is
/// refused: its copy held the only record of every acknowledged write, and
/// no other copy may take over from it.
pub fn lose_copy(
    placement: &ShardPlacement,
    worker: WorkerId,
    expected_epoch: u64,
) -> Result<ShardPlacement, PlacementError> {
    check_epoch(placement, expected_epoch)?;
    if !placement.is_in_sync(worker) {
        return Err(PlacementError::NotHosted(worker));
    }
    fail_worker(placement, worker).ok_or(PlacementError::LastInSyncCopy(worker))
}

/// The placement after an out-of-sync host caught up (while its primary
/// held back writes), checked against the epoch the caller acted on.
pub fn mark_in_sync(
    placement: &ShardPlacement,
    worker: WorkerId,
    expected_epoch: u64,
) -> Result<ShardPlacement, PlacementError> {
    check_epoch(placement, expected_epoch)?;
    let Some(i) = placement.out_of_sync.iter().position(|w| *w == worker) else {
        return Err(PlacementError::NotHosted(worker));
    };
    let mut next = placement.clone();
    next.out_of_sync.remove(i);
    next.replicas.push(worker);
    next.epoch += 1;
    Ok(next)
}

/// The placement with `worker` added as a host that must catch up (the
/// first step of moving a copy onto it).
pub fn add_host(
    placement: &ShardPlacement,
    worker: WorkerId,
    expected_epoch: u64,
) -> Result<ShardPlacement, PlacementError> {
    check_epoch(placement, expected_epoch)?;
    if placement.hosts(worker) {
        return Err(PlacementError::AlreadyHosted(worker));
    }
    let mut next = placement.clone();
    next.out_of_sync.push(worker);
    next.epoch += 1;
    Ok(next)
}

/// The placement without `worker` (the last step of moving a copy off it).
/// A primary hands over to its first in-sync replica; the only in-sync
/// copy is never removed, since it alone holds every acknowledged write.
pub fn remove_host(
    placement: &ShardPlacement,
    worker: WorkerId,
    expected_epoch: u64,
) -> Result<ShardPlacement, PlacementError> {
    check_epoch(placement, expected_epoch)?;
    let mut next = placement.clone();
    if placement.primary == worker {
        if next.replicas.is_empty() {
            return Err(PlacementError::LastInSyncCopy(worker));
        }
        next.primary = next.replicas.remove(0);
    } else if let Some(i) = next.replicas.iter().position(|w| *w == worker) {
        next.replicas.remove(i);
    } else if let Some(i) = next.out_of_sync.iter().position(|w| *w == worker) {
        next.out_of_sync.remove(i);
    } else {
        return Err(PlacementError::NotHosted(worker));
    }
    next.epoch += 1;
    Ok(next)
}

/// Whether `next` drops a worker that `previous` counted as in sync: such
/// a worker may still answer reads on the view it had (see the worker's
/// read leases), so its primary holds acknowledgements back for a while.
pub fn in_sync_shrank(previous: &ShardPlacement, next: &ShardPlacement) -> bool {
    previous.in_sync().any(|w| !next.is_in_sync(w))
}

fn check_epoch(placement: &ShardPlacement, expected: u64) -> Result<(), PlacementError> {
    if placement.epoch == expected {
        Ok(())
    } else {
        Err(PlacementError::StaleEpoch {
            expected,
            current: placement.epoch,
        })
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_lost_copy_falls_out_of_sync_and_a_lost_primary_hands_over() {
        let p = ShardPlacement {
            primary: 1,
            replicas: vec![2],
            out_of_sync: vec![],
            epoch: 4,
        };
        let replica_lost = lose_copy(&p, 2, 4).unwrap();
        assert_eq!(
            (
                replica_lost.primary,
                replica_lost.replicas.clone(),
                replica_lost.out_of_sync.clone(),
                replica_lost.epoch
            ),
            (1, vec![], vec![2], 5)
        );
        let primary_lost = lose_copy(&p, 1, 4).unwrap();
        assert_eq!(
            (primary_lost.primary, primary_lost.out_of_sync.clone()),
            (2, vec![1])
        );
        // The last in-sync copy cannot be given up; a stale epoch or an
        // out-of-sync copy is refused too.
        assert_eq!(
            lose_copy(&replica_lost, 1, 5),
            Err(PlacementError::LastInSyncCopy(1))
        );
        assert!(matches!(
            lose_copy(&p, 2, 3),
            Err(PlacementError::StaleEpoch { .. })
        ));
        assert_eq!(
            lose_copy(&replica_lost, 2, 5),
            Err(PlacementError::NotHosted(2))
        );
    }
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn dropping_an_in_sync_copy_is_a_shrink_adding_one_is_not() {
        let before = ShardPlacement::new(3, 1, &[2], &[]);
        // Replica out of sync, primary failed over, copy removed.
        assert!(in_sync_shrank(
            &before,
            &ShardPlacement::new(4, 1, &[], &[2])
        ));
        assert!(in_sync_shrank(
            &before,
            &ShardPlacement::new(4, 2, &[], &[1])
        ));
        assert!(in_sync_shrank(
            &before,
            &ShardPlacement::new(4, 1, &[], &[])
        ));
        // A caught-up copy joining, a host added to catch up, a new epoch
        // with the same in-sync set (primary handed to a replica and back).
        let lagging = ShardPlacement::new(3, 1, &[], &[2]);
        assert!(!in_sync_shrank(
            &lagging,
            &ShardPlacement::new(4, 1, &[2], &[])
        ));
        assert!(!in_sync_shrank(
            &before,
            &ShardPlacement::new(4, 1, &[2], &[3])
        ));
        assert!(!in_sync_shrank(
            &before,
            &ShardPlacement::new(4, 2, &[1], &[])
        ));
    }

    fn copies_per_worker(placements: &[ShardPlacement]) -> BTreeMap<WorkerId, usize> {
        let mut load = BTreeMap::new();
        for p in placements {
            for w in p.in_sync() {
                *load.entry(w).or_default() += 1;
            }
        }
        load
    }

    proptest! {
        #[test]
        fn assignment_is_balanced_and_distinct(
            shards in 1u32..200,
            replication in 1u32..4,
            workers in proptest::collection::btree_set(0u64..50, 1..12),
        ) {
            let workers: Vec<u64> = workers.into_iter().collect();
            let result = assign(shards, replication, &workers);
            if workers.len() < replication as usize {
                prop_assert!(result.is_err());
                return Ok(());
            }
            let placements = result.unwrap();
            prop_assert_eq!(placements.len(), shards as usize);
            for p in &placements {
                let mut copies: Vec<u64> = p.in_sync().collect();
                prop_assert_eq!(copies.len(), replication as usize);
                copies.sort_unstable();
                copies.dedup();
                prop_assert_eq!(copies.len(), replication as usize, "copies on distinct workers");
                prop_assert!(copies.iter().all(|w| workers.contains(w)));
            }
            let load = copies_per_worker(&placements);
            let total = shards as usize * replication as usize;
            if total >= workers.len() {
                prop_assert_eq!(load.len(), workers.len(), "every worker used");
            }
            let max = load.values().max().unwrap();
            let min = if load.len() == workers.len() { *load.values().min().unwrap() } else { 0 };
            prop_assert!(max - min <= 1, "copies per worker {:?}", load);
            let mut led: BTreeMap<u64, usize> = BTreeMap::new();
            for p in &placements {
                *led.entry(p.primary).or_default() += 1;
            }
            let fair = (shards as usize).div_ceil(workers.len());
            prop_assert!(led.values().all(|n| *n <= fair + 1), "primaries {:?}", led);
        }

        #[test]
        fn failures_keep_every_acknowledged_copy_reachable(
            replication in 1u32..4,
            failures in proptest::collection::vec(0u64..5, 0..8),
        ) {
            let workers = [0u64, 1, 2, 3, 4];
            let mut placements = assign(16, replication, &workers).unwrap();
            for dead in failures {
                for p in placements.iter_mut() {
                    let before = p.clone();
                    if let Some(next) = fail_worker(p, dead) {
                        prop_assert_eq!(next.epoch, before.epoch + 1);
                        prop_assert!(!next.is_in_sync(dead));
                        // The new primary was in sync before: it has every acknowledged write.
                        prop_assert!(before.is_in_sync(next.primary));
                        *p = next;
                    } else {
                        prop_assert!(!before.replicas.contains(&dead));
                        prop_assert!(before.primary != dead || before.replicas.is_empty());
                    }
                    prop_assert!(p.in_sync().count() >= 1);
                }
            }
        }
    }

    proptest! {
        #[test]
        fn moving_copies_keeps_an_in_sync_copy_and_distinct_hosts(
            steps in proptest::collection::vec((any::<bool>(), 0u64..6, any::<bool>()), 0..40),
        ) {
            let mut p = assign(1, 2, &[0, 1, 2]).unwrap().remove(0);
            for (add, worker, sync) in steps {
                let before = p.clone();
                let result = if add {
                    add_host(&p, worker, p.epoch)
                } else {
                    remove_host(&p, worker, p.epoch)
                };
                match result {
                    Ok(next) => {
                        prop_assert_eq!(next.epoch, before.epoch + 1);
                        // A stale epoch is refused.
                        prop_assert!(add_host(&next, 99, before.epoch).is_err());
                        prop_assert!(before.is_in_sync(next.primary));
                        p = next;
                    }
                    Err(PlacementError::LastInSyncCopy(w)) => {
                        prop_assert!(before.primary == w && before.replicas.is_empty());
                    }
                    Err(PlacementError::AlreadyHosted(w)) => prop_assert!(before.hosts(w)),
                    Err(PlacementError::NotHosted(w)) => prop_assert!(!before.hosts(w)),
                    Err(e) => prop_assert!(false, "unexpected {e}"),
                }
                if sync && let Some(w) = p.out_of_sync.first().copied() {
                    p = mark_in_sync(&p, w, p.epoch).unwrap();
                }
                let mut hosts: Vec<u64> = p.all_hosts().collect();
                let n = hosts.len();
                hosts.sort_unstable();
                hosts.dedup();
                prop_assert_eq!(hosts.len(), n, "a worker hosts a shard once");
                prop_assert!(p.in_sync().count() >= 1);
            }
        }
    }

    #[test]
    fn catching_up_is_checked_against_the_epoch() {
        let p = assign(1, 2, &[7, 9]).unwrap().remove(0);
        assert_eq!((p.primary, p.replicas.clone()), (7, vec![9]));
        let failed = fail_worker(&p, 7).unwrap();
        assert_eq!((failed.primary, failed.out_of_sync.clone()), (9, vec![7]));
        assert_eq!(
            mark_in_sync(&failed, 7, p.epoch),
            Err(PlacementError::StaleEpoch {
                expected: 1,
                current: 2
            })
        );
        let back = mark_in_sync(&failed, 7, failed.epoch).unwrap();
        assert_eq!(
            (back.primary, back.replicas.clone(), back.epoch),
            (9, vec![7], 3)
        );
        assert!(
            mark_out_of_sync(&back, 9, back.epoch).is_err(),
            "the primary is not a replica"
        );
        let out = mark_out_of_sync(&back, 7, back.epoch).unwrap();
        assert_eq!(out.out_of_sync, vec![7]);
        // The last in-sync copy is never demoted.
        assert_eq!(fail_worker(&out, 9), None);
    }
}
