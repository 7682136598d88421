//! Pure planning of a fan-out: which replica serves which shard, given the
//! shard map, which workers are healthy and which already failed this
//! request.

use std::collections::{BTreeMap, BTreeSet};

use engram_core::placement::{ShardPlacement, WorkerId};

/// One request per worker, listing its shards; plus the shards that no
/// healthy, untried in-sync replica can serve.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    pub requests: BTreeMap<WorkerId, Vec<u32>>,
    pub unserved: Vec<u32>,
}

/// Assigns each of `shards` to an in-sync replica that is healthy and not in
/// `tried[shard]`. Among candidates it rotates by `(shard + salt)` so that
/// successive queries spread over the replicas.
pub fn plan(
    placements: &[ShardPlacement],
    shards: impl IntoIterator<Item = u32>,
    healthy: impl Fn(WorkerId) -> bool,
    tried: &BTreeMap<u32, BTreeSet<WorkerId>>,
    salt: usize,
) -> Plan {
    let mut plan = Plan::default();
    for shard in shards {
        let Some(placement) = placements.get(shard as usize) else {
            plan.unserved.push(shard);
            continue;
        };
        let candidates: Vec<WorkerId> = placement
            .in_sync()
            .filter(|w| healthy(*w) && !tried.get(&shard).is_some_and(|t| t.contains(w)))
            .collect();
        if candidates.is_empty() {
            plan.unserved.push(shard);
        } else {
            let chosen = candidates[(shard as usize + salt) % candidates.len()];
            plan.requests.entry(chosen).or_default().push(shard);
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use engram_core::placement::assign;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn every_shard_goes_to_a_healthy_untried_in_sync_replica_or_is_unserved(
            shards in 1u32..40,
            replication in 1u32..4,
            dead in proptest::collection::btree_set(0u64..5, 0..5),
            tried_worker in 0u64..5,
            salt in 0usize..10,
        ) {
            let placements = assign(shards, replication, &[0, 1, 2, 3, 4]).unwrap();
            let tried: BTreeMap<u32, BTreeSet<u64>> =
                (0..shards).map(|s| (s, BTreeSet::from([tried_worker]))).collect();
            let plan = plan(&placements, 0..shards, |w| !dead.contains(&w), &tried, salt);
            let mut seen = BTreeSet::new();
            for (worker, list) in &plan.requests {
                prop_assert!(!dead.contains(worker));
                prop_assert!(*worker != tried_worker);
                for s in list {
                    prop_assert!(placements[*s as usize].is_in_sync(*worker));
                    prop_assert!(seen.insert(*s), "shard planned twice");
                }
            }
            for s in &plan.unserved {
                prop_assert!(seen.insert(*s));
                prop_assert!(placements[*s as usize]
                    .in_sync()
                    .all(|w| dead.contains(&w) || w == tried_worker));
            }
            prop_assert_eq!(seen.len(), shards as usize);
        }
    }

    #[test]
    fn rotation_spreads_queries_over_replicas() {
        let placements = assign(1, 3, &[1, 2, 3]).unwrap();
        let chosen: BTreeSet<u64> = (0..3)
            .map(|salt| {
                *plan(&placements, [0], |_| true, &BTreeMap::new(), salt)
                    .requests
                    .keys()
                    .next()
                    .unwrap()
            })
            .collect();
        assert_eq!(chosen.len(), 3);
    }
}
