//! Counterfactual explanations: the smallest set of neighbours whose
//! removal from memory would change a decision.
//!
//! Removing a neighbour lets the next one in line enter the top k, so the
//! search hands over more than k neighbours (best first) and every candidate
//! set is re-decided exactly as the server would decide it.
//!
//! Sets are tried by size, smallest first. While the number of sets of a
//! size stays within a budget every set is tried (so the answer is proven
//! minimal); beyond it the winning label's largest votes are removed first
//! (for plurality, distance and softmax that is optimal up to exact ties,
//! since removing any other neighbour lets the same one in without lowering
//! the winner; under the rank rule removals also shift ranks), and the answer
//! says it is not proven minimal.

use serde::{Deserialize, Serialize};

use crate::neighbor::Neighbor;
use crate::voting::{VoteParams, decide};

/// Candidate sets tried per size before falling back to greedy order.
const EXHAUSTIVE_BUDGET: u64 = 20_000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Counterfactual {
    /// Ids whose removal changes the decision.
    pub remove: Vec<u64>,
    /// The label decided without them (`None`: nothing left to vote).
    pub label: Option<String>,
    /// Proven minimal: every smaller set was tried and none changes the
    /// decision. False when the search had to fall back to greedy removal.
    pub minimal: bool,
}

/// `ranked`: the curated neighbours best first, at least the `k` that voted
/// and ideally `k` more. `complete` says `ranked` is the whole memory; if it
/// is not, only sets small enough that every neighbour that would move up is
/// in `ranked` are tried. `None` when there is no decision to change or no
/// such set changes it.
pub fn counterfactual(
    ranked: &[Neighbor],
    k: usize,
    complete: bool,
    params: &VoteParams,
) -> Option<Counterfactual> {
    let k = k.min(ranked.len());
    let most = if complete {
        ranked.len()
    } else {
        ranked.len() - k
    };
    let winner = decide(ranked[..k].to_vec(), params).label?;
    let changes = |removed: &[usize]| -> Option<Option<String>> {
        let kept: Vec<Neighbor> = ranked
            .iter()
            .enumerate()
            .filter(|(i, _)| !removed.contains(i))
            .map(|(_, n)| n.clone())
            .take(k)
            .collect();
        let label = decide(kept, params).label;
        (label.as_deref() != Some(winner.as_str())).then_some(label)
    };
    let vote =
        |i: usize| params.rule_weight(i, ranked[i].distance) * f64::from(ranked[i].weight.max(0.0));
    let winners = ranked.iter().filter(|n| n.label == winner).count();
    let mut exhaustive = true;
    for size in 1..=winners.min(most) {
        // With `size` removals only the first k + size neighbours can vote.
        let reach = (k + size).min(ranked.len());
        if exhaustive && binomial(reach, size) <= EXHAUSTIVE_BUDGET {
            let pool: Vec<usize> = (0..reach).collect();
            let mut found = None;
            for_each_subset(&pool, size, &mut |set| {
                found = changes(set).map(|label| (set.to_vec(), label));
                found.is_some()
            });
            if let Some((set, label)) = found {
                return Some(answer(ranked, set, label, true));
            }
        } else {
            exhaustive = false;
            let mut candidates: Vec<usize> =
                (0..reach).filter(|i| ranked[*i].label == winner).collect();
            if candidates.len() < size {
                continue;
            }
            candidates.sort_by(|a, b| vote(*b).total_cmp(&vote(*a)).then(a.cmp(b)));
            let set = &candidates[..size];
            if let Some(label) = changes(set) {
                return Some(answer(ranked, set.to_vec(), label, false));
            }
        }
    }
    None
}

fn answer(
    ranked: &[Neighbor],
    mut set: Vec<usize>,
    label: Option<String>,
    minimal: bool,
) -> Counterfactual {
    set.sort_unstable();
    Counterfactual {
        remove: set.into_iter().map(|i| ranked[i].id).collect(),
        label,
        minimal,
    }
}

/// `n choose k`, saturating once past the budget.
fn binomial(n: usize, k: usize) -> u64 {
    if k > n {
        return 0;
    }
    let k = k.min(n - k) as u64;
    let mut c: u64 = 1;
    for i in 0..k {
        c = c.saturating_mul(n as u64 - i) / (i + 1);
        if c > EXHAUSTIVE_BUDGET {
            return c;
        }
    }
    c
}

/// Calls `f` on every `size`-subset of `items` (in lexicographic order of
/// positions) until it returns true.
fn for_each_subset(items: &[usize], size: usize, f: &mut impl FnMut(&[usize]) -> bool) {
    let n = items.len();
    if size == 0 || size > n {
        return;
    }
    let mut positions: Vec<usize> = (0..size).collect();
    let mut set = vec![0; size];
    loop {
        for (slot, p) in set.iter_mut().zip(&positions) {
            *slot = items[*p];
        }
        if f(&set) {
            return;
        }
        // Advance the rightmost position that still can.
        let mut i = size;
        while i > 0 && positions[i - 1] == n - size + (i - 1) {
            i -= 1;
        }
        if i == 0 {
            return;
        }
        positions[i - 1] += 1;
        for j in i..size {
            positions[j] = positions[j - 1] + 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::voting::VotingRule;
    use proptest::prelude::*;

    fn n(id: u64, label: &str, distance: f32) -> Neighbor {
        Neighbor {
            id,
            label: label.into(),
            distance,
            weight: 1.0,
            source: None,
        }
    }

    #[test]
    fn plurality_needs_the_margin_removed() {
        // 3 a, 2 b in the top 5; then b, b waiting.
        let ranked = vec![
            n(1, "a", 0.1),
            n(2, "b", 0.2),
            n(3, "a", 0.3),
            n(4, "a", 0.4),
            n(5, "b", 0.5),
            n(6, "b", 0.6),
            n(7, "b", 0.7),
        ];
        let params = VoteParams {
            rule: VotingRule::Plurality,
            ..VoteParams::default()
        };
        let cf = counterfactual(&ranked, 5, true, &params).unwrap();
        // Removing one `a` lets b at rank 6 in: a 2, b 3.
        assert_eq!(cf.remove.len(), 1);
        assert_eq!(cf.label.as_deref(), Some("b"));
        assert!(cf.minimal);
    }

    #[test]
    fn no_decision_no_counterfactual() {
        assert!(counterfactual(&[], 5, true, &VoteParams::default()).is_none());
    }

    #[test]
    fn subsets_are_enumerated_completely() {
        let mut seen = Vec::new();
        for_each_subset(&[10, 11, 12, 13], 2, &mut |s| {
            seen.push(s.to_vec());
            false
        });
        assert_eq!(seen.len(), 6);
        assert_eq!(seen[0], vec![10, 11]);
        assert_eq!(seen[5], vec![12, 13]);
        let mut count = 0;
        for_each_subset(&[1, 2, 3], 3, &mut |_| {
            count += 1;
            false
        });
        assert_eq!(count, 1);
        assert_eq!(binomial(5, 2), 10);
        assert_eq!(binomial(2, 5), 0);
    }

    fn arb_ranked() -> impl Strategy<Value = Vec<Neighbor>> {
        prop::collection::vec((0u8..3, 0.0f32..1.0), 1..14).prop_map(|rows| {
            let mut rows: Vec<(u8, f32)> = rows;
            rows.sort_by(|a, b| a.1.total_cmp(&b.1));
            rows.into_iter()
                .enumerate()
                .map(|(i, (l, d))| n(i as u64, ["a", "b", "c"][l as usize], d))
                .collect()
        })
    }

    proptest! {
        /// The answer really changes the decision, and when it says minimal,
        /// no smaller set of neighbours does (brute force).
        #[test]
        fn counterfactuals_change_the_decision_and_minimal_means_minimal(
            ranked in arb_ranked(),
            k in 1usize..8,
            rule in prop::sample::select(VotingRule::ALL.to_vec()),
        ) {
            let params = VoteParams { rule, ..VoteParams::default() };
            let k = k.min(ranked.len());
            let winner = decide(ranked[..k].to_vec(), &params).label;
            let Some(cf) = counterfactual(&ranked, k, true, &params) else {
                prop_assert!(winner.is_none(), "removing every winning neighbour always changes the decision");
                return Ok(());
            };
            // With only part of the memory, sets never reach past it.
            if let Some(part) = counterfactual(&ranked, k, false, &params) {
                prop_assert!(k + part.remove.len() <= ranked.len());
            }
            let without: Vec<Neighbor> = ranked.iter().filter(|n| !cf.remove.contains(&n.id)).take(k).cloned().collect();
            let label = decide(without, &params).label;
            prop_assert_eq!(&label, &cf.label);
            prop_assert_ne!(&label, &winner);
            if cf.minimal {
                for size in 1..cf.remove.len() {
                    let pool: Vec<usize> = (0..(k + size).min(ranked.len())).collect();
                    let mut smaller = false;
                    for_each_subset(&pool, size, &mut |set| {
                        let kept: Vec<Neighbor> = ranked.iter().enumerate().filter(|(i, _)| !set.contains(i)).map(|(_, n)| n.clone()).take(k).collect();
                        smaller = decide(kept, &params).label != winner;
                        smaller
                    });
                    prop_assert!(!smaller, "a set of {} changes the decision; the answer had {}", size, cf.remove.len());
                }
            }
        }
    }
}
