//! Mapping item ids to virtual shards.

/// Finalizer of splitmix64: spreads sequential ids (0, 1, 2, ...) over the
/// whole key space before hashing, so shards fill evenly whatever the ids.
#[inline]
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Jump consistent hash (Lamping and Veach, 2014): when the number of
/// buckets grows from n to n+1 only 1/(n+1) of the keys move.
pub fn jump_consistent_hash(mut key: u64, buckets: u32) -> u32 {
    assert!(buckets > 0, "jump hash needs at least one bucket");
    let mut b: i64 = -1;
    let mut j: i64 = 0;
    while j < i64::from(buckets) {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = (((b + 1) as f64) * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b as u32
}

/// The virtual shard that holds item `id`.
#[inline]
pub fn shard_of(id: u64, shards: u32) -> u32 {
    jump_consistent_hash(mix(id), shards)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sequential_ids_spread_evenly() {
        let mut counts = [0u32; 64];
        for id in 0..64_000u64 {
            counts[shard_of(id, 64) as usize] += 1;
        }
        assert!(counts.iter().all(|c| (800..1200).contains(c)), "{counts:?}");
    }

    proptest! {
        #[test]
        fn in_range_and_moves_only_to_the_new_bucket(id: u64, n in 1u32..500) {
            let before = shard_of(id, n);
            let after = shard_of(id, n + 1);
            prop_assert!(before < n);
            prop_assert!(after == before || after == n);
        }
    }
}
