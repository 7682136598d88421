//! The second stage's arithmetic: a re-ranker's label scores, curated like
//! votes, fused with the vote shares into the decision.
//!
//! Pure, so that the rule that turns "votes + a model's opinion" into a
//! label can be tested exhaustively and is the same for every re-ranker
//! kind.

use std::collections::BTreeMap;

use crate::curation::Curation;

/// A fused decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Fused {
    /// `None` when neither votes nor scores name any label.
    pub label: Option<String>,
    /// The winner's fused share, in `[0, 1]`.
    pub confidence: f64,
    /// `(1 - mix) * vote share + mix * score share`, per label.
    pub scores: BTreeMap<String, f64>,
}

/// `scores` scaled to sum 1; `None` when any is negative or not finite, or
/// none is positive (nothing to normalise).
pub fn normalize(scores: &BTreeMap<String, f64>) -> Option<BTreeMap<String, f64>> {
    if scores.values().any(|s| !s.is_finite() || *s < 0.0) {
        return None;
    }
    let total: f64 = scores.values().sum();
    if !(total > 0.0 && total.is_finite()) {
        return None;
    }
    Some(
        scores
            .iter()
            .map(|(label, s)| (label.clone(), s / total))
            .collect(),
    )
}

/// Applies the class interventions to a re-ranker's scores as they apply
/// to votes: blocked classes get nothing, scaled classes are scaled.
/// (Relabels and blocked sources concern rows, which a re-ranker's output
/// does not name; heads trained before them are stale instead.)
pub fn curate_scores(scores: &BTreeMap<String, f64>, curation: &Curation) -> BTreeMap<String, f64> {
    scores
        .iter()
        .filter(|(label, _)| !curation.blocked_classes.contains_key(*label))
        .map(|(label, s)| {
            let factor = curation.class_scales.get(label).map_or(1.0, |a| a.value);
            (label.clone(), s * factor)
        })
        .collect()
}

/// Fuses vote totals with re-ranker scores: each is turned into shares,
/// mixed `(1 - mix) : mix`, and the largest wins (ties: the larger vote
/// share, then the label's order). `mix` is clamped to `[0, 1]`. A side
/// with nothing positive contributes nothing.
pub fn fuse(votes: &BTreeMap<String, f64>, scores: &BTreeMap<String, f64>, mix: f64) -> Fused {
    let mix = if mix.is_finite() {
        mix.clamp(0.0, 1.0)
    } else {
        1.0
    };
    let vote_shares = normalize(votes).unwrap_or_default();
    let score_shares = normalize(scores).unwrap_or_default();
    let mut fused: BTreeMap<String, f64> = BTreeMap::new();
    for (label, share) in &vote_shares {
        *fused.entry(label.clone()).or_default() += (1.0 - mix) * share;
    }
    for (label, share) in &score_shares {
        *fused.entry(label.clone()).or_default() += mix * share;
    }
    let total: f64 = fused.values().sum();
    let mut best: Option<(&String, f64, f64)> = None;
    for (label, &value) in &fused {
        let vote = vote_shares.get(label).copied().unwrap_or(0.0);
        let better = match best {
            None => value > 0.0,
            Some((_, v, bv)) => value > v || (value == v && vote > bv),
        };
        if better {
            best = Some((label, value, vote));
        }
    }
    Fused {
        label: best.map(|(l, _, _)| l.clone()),
        confidence: match best {
            Some((_, v, _)) if total > 0.0 => v / total,
            _ => 0.0,
        },
        scores: fused,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::curation::Intervention;
    use proptest::prelude::*;

    fn map(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
        pairs.iter().map(|(l, s)| (l.to_string(), *s)).collect()
    }

    #[test]
    fn mix_moves_the_decision_from_votes_to_scores() {
        let votes = map(&[("cat", 3.0), ("dog", 1.0)]);
        let scores = map(&[("dog", 0.9), ("cat", 0.1)]);
        assert_eq!(fuse(&votes, &scores, 0.0).label.as_deref(), Some("cat"));
        assert_eq!(fuse(&votes, &scores, 1.0).label.as_deref(), Some("dog"));
        // 0.5 * 0.75 + 0.5 * 0.1 = 0.425 against 0.5 * 0.25 + 0.5 * 0.9 = 0.575.
        let half = fuse(&votes, &scores, 0.5);
        assert_eq!(half.label.as_deref(), Some("dog"));
        assert!((half.confidence - 0.575).abs() < 1e-12);
        // A re-ranker may name a label no neighbour carried.
        let other = fuse(&votes, &map(&[("fox", 1.0)]), 0.8);
        assert_eq!(other.label.as_deref(), Some("fox"));
    }

    #[test]
    fn bad_scores_do_not_normalise() {
        assert!(normalize(&map(&[("a", -1.0), ("b", 2.0)])).is_none());
        assert!(normalize(&map(&[("a", f64::NAN)])).is_none());
        assert!(normalize(&map(&[("a", 0.0)])).is_none());
        assert!(normalize(&BTreeMap::new()).is_none());
        assert_eq!(fuse(&BTreeMap::new(), &BTreeMap::new(), 0.5).label, None);
    }

    #[test]
    fn class_interventions_apply_to_scores() {
        let mut curation = Curation::default();
        curation
            .apply(
                Intervention::BlockClass {
                    label: "cat".into(),
                },
                "r",
                "t".into(),
            )
            .unwrap();
        curation
            .apply(
                Intervention::ScaleClass {
                    label: "dog".into(),
                    factor: 0.5,
                },
                "r",
                "t".into(),
            )
            .unwrap();
        let curated = curate_scores(&map(&[("cat", 0.7), ("dog", 0.2), ("fox", 0.1)]), &curation);
        assert_eq!(curated, map(&[("dog", 0.1), ("fox", 0.1)]));
    }

    proptest! {
        #[test]
        fn fused_scores_are_shares_and_the_ends_agree_with_each_side(
            votes in proptest::collection::btree_map("[a-e]", 0.0f64..10.0, 0..5),
            scores in proptest::collection::btree_map("[a-g]", 0.0f64..1.0, 0..7),
            mix in 0.0f64..=1.0,
        ) {
            let fused = fuse(&votes, &scores, mix);
            let total: f64 = fused.scores.values().sum();
            let sides = normalize(&votes).is_some() as u8 + normalize(&scores).is_some() as u8;
            if sides == 2 {
                prop_assert!((total - 1.0).abs() < 1e-9);
            }
            prop_assert!((0.0..=1.0 + 1e-12).contains(&fused.confidence));
            if let Some(label) = &fused.label {
                let top = fused.scores.values().copied().fold(0.0, f64::max);
                prop_assert!((fused.scores[label] - top).abs() < 1e-12);
            }
            if normalize(&votes).is_some() {
                let at_zero = fuse(&votes, &scores, 0.0);
                let top = votes.values().copied().fold(0.0, f64::max);
                prop_assert!((votes[at_zero.label.as_ref().unwrap()] - top).abs() < 1e-12);
            }
            if normalize(&scores).is_some() {
                let at_one = fuse(&votes, &scores, 1.0);
                let top = scores.values().copied().fold(0.0, f64::max);
                prop_assert!((scores[at_one.label.as_ref().unwrap()] - top).abs() < 1e-12);
            }
        }
    }
}
