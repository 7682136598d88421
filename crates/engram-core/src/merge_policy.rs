//! Which sealed segments of a shard to rewrite together: the pure planner
//! behind segment merging and tombstone compaction, which are one path.
//!
//! Every sealed segment costs each query one graph search, so a shard that
//! only ever adds segments (a seal at every threshold, a bulk generation,
//! a compaction) gets slower as it grows. The policy is tiered, as
//! Lucene's: segments are sorted into tiers by live rows (tier `t` holds
//! up to `floor_rows * segments_per_tier^t` rows); once a tier holds
//! `segments_per_tier` segments, its smallest ones are merged into one of
//! the next tier. A shard of `n` rows then holds at most about
//! `(segments_per_tier - 1) * log(n / floor_rows)` segments, and each row
//! is rewritten about `log(n)` times. Merged segments stop at
//! `max_segment_rows` (a DiskANN build holds its rows in RAM). Rewriting a
//! segment drops its deleted rows, so a segment whose deleted share passes
//! `deleted_fraction` is rewritten even when its tier is not full.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MergePolicy {
    /// Segments of one tier merged into one (at least 2).
    pub segments_per_tier: usize,
    /// Live rows up to which every segment is in the lowest tier.
    pub floor_rows: u64,
    /// Largest merge result in rows: segments this large are only
    /// rewritten to drop deleted rows.
    pub max_segment_rows: u64,
    /// A segment with a larger share of deleted rows is rewritten.
    pub deleted_fraction: f64,
}

/// What the planner needs of one sealed segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentSize {
    /// Rows in its files, deleted ones included.
    pub rows: u64,
    /// Rows not deleted.
    pub live: u64,
}

impl SegmentSize {
    fn deleted_fraction(&self) -> f64 {
        if self.rows == 0 {
            0.0
        } else {
            1.0 - self.live as f64 / self.rows as f64
        }
    }
}

impl MergePolicy {
    /// The tier of a segment with `live` rows.
    pub fn tier(&self, live: u64) -> u32 {
        let factor = self.segments_per_tier.max(2) as u64;
        let mut bound = self.floor_rows.max(1);
        let mut tier = 0;
        while live > bound {
            bound = bound.saturating_mul(factor);
            tier += 1;
        }
        tier
    }
}

/// Which growing segments a compaction seals before it plans merges.
///
/// Automatic maintenance never seals (the seal threshold does). A user's
/// compaction (`POST .../compact` without `"seal"`) is a request to make
/// the collection fast now: it seals a growing segment that holds at least
/// a merge tier's floor of rows, since a sealed segment of that size is
/// served from the cache budget's memory or merged into larger ones, while
/// a small one stays growing instead of adding a tiny segment to every
/// query. `"seal": true` seals every non-empty one, `false` none.
/// What one compaction asks of every shard copy: which segments and WALs
/// to rewrite, which growing segments to seal first, and whether the next
/// segment build trains a new PQ codebook.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct CompactOptions {
    /// Rewrite sealed segments and WALs whose deleted share exceeds this.
    pub min_deleted_fraction: f64,
    pub seal: SealGrowing,
    pub retrain_codebook: bool,
}

impl CompactOptions {
    /// Automatic maintenance: rewrites past `min_deleted_fraction` and
    /// merges, nothing sealed, the codebook kept.
    pub fn maintenance(min_deleted_fraction: f64) -> Self {
        CompactOptions {
            min_deleted_fraction,
            ..CompactOptions::default()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum SealGrowing {
    /// Only the seal threshold seals.
    #[default]
    Never,
    /// Growing segments holding at least `floor_rows` rows.
    Large,
    /// Every non-empty growing segment.
    All,
}

impl SealGrowing {
    /// What a public compaction request's `seal` field asks for.
    pub fn from_request(seal: Option<bool>) -> Self {
        match seal {
            None => Self::Large,
            Some(true) => Self::All,
            Some(false) => Self::Never,
        }
    }

    /// Whether a growing segment of `rows` rows is sealed under `policy`.
    pub fn seals(self, rows: u64, policy: &MergePolicy) -> bool {
        match self {
            Self::Never => false,
            Self::Large => rows > 0 && rows >= policy.floor_rows,
            Self::All => rows > 0,
        }
    }
}

/// Groups of segments (indexes into `segments`) to rewrite, each into one
/// new segment (or none, when nothing in it is live). Groups are disjoint;
/// a group of several never holds more than `max_segment_rows` live rows.
/// Applying a plan and planning again converges: see the tests.
pub fn plan(segments: &[SegmentSize], policy: &MergePolicy) -> Vec<Vec<usize>> {
    let per_tier = policy.segments_per_tier.max(2);
    let mut taken = vec![false; segments.len()];
    let mut groups: Vec<Vec<usize>> = Vec::new();
    // Segments with nothing live are simply dropped.
    for (i, s) in segments.iter().enumerate() {
        if s.live == 0 {
            taken[i] = true;
            groups.push(vec![i]);
        }
    }
    let mut by_tier: std::collections::BTreeMap<u32, Vec<usize>> = Default::default();
    for (i, s) in segments.iter().enumerate() {
        if !taken[i] && s.live < policy.max_segment_rows {
            by_tier.entry(policy.tier(s.live)).or_default().push(i);
        }
    }
    for members in by_tier.values_mut() {
        members.sort_by_key(|i| (segments[*i].live, *i));
        // A full tier merges its smallest segments, as many as fit under
        // the cap (at least two).
        while members.len() >= per_tier {
            let mut live = 0u64;
            let fitting = members
                .iter()
                .take(per_tier)
                .take_while(|i| {
                    live += segments[**i].live;
                    live <= policy.max_segment_rows
                })
                .count();
            if fitting < 2 {
                break;
            }
            let group: Vec<usize> = members.drain(..fitting).collect();
            for i in &group {
                taken[*i] = true;
            }
            groups.push(group);
        }
    }
    for (i, s) in segments.iter().enumerate() {
        if !taken[i] && s.deleted_fraction() > policy.deleted_fraction {
            taken[i] = true;
            groups.push(vec![i]);
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy() -> MergePolicy {
        MergePolicy {
            segments_per_tier: 4,
            floor_rows: 1_000,
            max_segment_rows: 1_000_000,
            deleted_fraction: 0.2,
        }
    }

    fn live(n: u64) -> SegmentSize {
        SegmentSize { rows: n, live: n }
    }

    /// Applies plans until none is left, as a shard's maintenance does.
    fn settle(mut segments: Vec<SegmentSize>, policy: &MergePolicy) -> (Vec<SegmentSize>, usize) {
        let mut rounds = 0;
        loop {
            let groups = plan(&segments, policy);
            if groups.is_empty() {
                return (segments, rounds);
            }
            rounds += 1;
            assert!(rounds < 100, "plans do not converge");
            let mut taken = vec![false; segments.len()];
            let mut next = Vec::new();
            for group in &groups {
                let merged: u64 = group.iter().map(|i| segments[*i].live).sum();
                for i in group {
                    assert!(!taken[*i], "segment {i} in two groups");
                    taken[*i] = true;
                }
                if merged > 0 {
                    next.push(live(merged));
                }
            }
            next.extend(
                segments
                    .iter()
                    .zip(&taken)
                    .filter(|(_, t)| !**t)
                    .map(|(s, _)| *s),
            );
            segments = next;
        }
    }

    #[test]
    fn tiers_grow_by_the_factor() {
        let p = policy();
        assert_eq!(p.tier(0), 0);
        assert_eq!(p.tier(1_000), 0);
        assert_eq!(p.tier(1_001), 1);
        assert_eq!(p.tier(4_000), 1);
        assert_eq!(p.tier(16_001), 3);
    }

    #[test]
    fn sixteen_equal_segments_end_as_one_and_deletes_are_dropped() {
        let (after, rounds) = settle(vec![live(10_000); 16], &policy());
        assert_eq!(after, vec![live(160_000)]);
        assert_eq!(rounds, 2, "16 -> 4 -> 1");
        // Three small segments wait for a fourth.
        assert!(plan(&[live(10); 3], &policy()).is_empty());
        // A segment mostly deleted is rewritten alone; an empty one dropped.
        let mostly_deleted = SegmentSize {
            rows: 100_000,
            live: 10_000,
        };
        let gone = SegmentSize { rows: 500, live: 0 };
        let groups = plan(&[live(50_000), mostly_deleted, gone], &policy());
        assert!(groups.contains(&vec![1]) && groups.contains(&vec![2]));
        assert!(!groups.iter().flatten().any(|i| *i == 0));
        let (after, _) = settle(vec![live(50_000), mostly_deleted, gone], &policy());
        assert_eq!(after.iter().map(|s| s.live).sum::<u64>(), 60_000);
    }

    #[test]
    fn merges_stop_at_the_largest_segment() {
        let p = MergePolicy {
            max_segment_rows: 25_000,
            ..policy()
        };
        let (after, _) = settle(vec![live(10_000); 8], &p);
        assert!(after.iter().all(|s| s.live <= 25_000), "{after:?}");
        // Pairs fit under the cap, fours do not; the last two wait for a
        // full tier again.
        assert_eq!(after.len(), 5, "{after:?}");
    }

    #[test]
    fn a_user_compaction_seals_only_growing_segments_of_a_tier_floor() {
        let policy = MergePolicy {
            segments_per_tier: 4,
            floor_rows: 1000,
            max_segment_rows: 1_000_000,
            deleted_fraction: 0.2,
        };
        let user = SealGrowing::from_request(None);
        assert!(!user.seals(0, &policy));
        assert!(!user.seals(999, &policy));
        assert!(user.seals(1000, &policy));
        assert!(user.seals(50_000, &policy));
        assert!(SealGrowing::from_request(Some(true)).seals(1, &policy));
        assert!(!SealGrowing::from_request(Some(true)).seals(0, &policy));
        assert!(!SealGrowing::from_request(Some(false)).seals(50_000, &policy));
        assert!(!SealGrowing::default().seals(u64::MAX, &policy));
    }

    proptest! {
        #[test]
        fn settled_shards_hold_logarithmically_many_segments(
            sizes in prop::collection::vec((1u64..200_000, 0u64..100), 0..120),
            per_tier in 2usize..8,
        ) {
            let policy = MergePolicy { segments_per_tier: per_tier, ..policy() };
            let segments: Vec<SegmentSize> = sizes.iter().map(|(rows, deleted_pct)| SegmentSize {
                rows: *rows,
                live: rows - rows * deleted_pct / 100,
            }).collect();
            let total: u64 = segments.iter().map(|s| s.live).sum();
            for group in plan(&segments, &policy) {
                let live: u64 = group.iter().map(|i| segments[*i].live).sum();
                prop_assert!(group.len() == 1 || live <= policy.max_segment_rows);
            }
            let (after, _) = settle(segments, &policy);
            // Rows are neither lost nor invented.
            prop_assert_eq!(after.iter().map(|s| s.live).sum::<u64>(), total);
            let tiers = u64::from(policy.tier(policy.max_segment_rows)) + 1;
            let bound = (per_tier as u64 - 1) * tiers
                + per_tier as u64 * total / policy.max_segment_rows + 1;
            prop_assert!(after.len() as u64 <= bound, "{} segments, bound {}", after.len(), bound);
            prop_assert!(after.iter().all(|s| s.live > 0));
        }
    }
}
