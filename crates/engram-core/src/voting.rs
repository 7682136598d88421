//! The decision rules of "Towards flexible perception with visual memory".
//!
//! Neighbours are ranked best first (i = 0, 1, ...). Each adds
//! `rule_weight(i, d_i) * item_weight` to its label; the label with the largest
//! total wins. Ties go to the label that reached the top score first, which is
//! what a running leader that only changes on a strictly larger score gives.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;

use crate::error::{CoreError, Result};
use crate::neighbor::Neighbor;

/// How much a neighbour's vote counts, before its item weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VotingRule {
    /// `1 / (alpha + i)`: the paper's best rule; stays accurate as k grows.
    #[default]
    Rank,
    /// `exp((1 - d_i) / tau)` with `d_i` clamped to `[0, 1]`.
    Softmax,
    /// `exp(-d_i)^xi`.
    Distance,
    /// `1`.
    Plurality,
}

impl VotingRule {
    pub const ALL: [VotingRule; 4] = [
        VotingRule::Rank,
        VotingRule::Softmax,
        VotingRule::Distance,
        VotingRule::Plurality,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            VotingRule::Rank => "rank",
            VotingRule::Softmax => "softmax",
            VotingRule::Distance => "distance",
            VotingRule::Plurality => "plurality",
        }
    }
}

impl FromStr for VotingRule {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self> {
        VotingRule::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| CoreError::UnknownRule(s.to_string()))
    }
}

/// A rule with its parameters. Defaults are the paper's: alpha = 2,
/// tau = 0.07, xi = 1.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct VoteParams {
    pub rule: VotingRule,
    pub alpha: f64,
    pub tau: f64,
    pub xi: f64,
}

impl Default for VoteParams {
    fn default() -> Self {
        VoteParams {
            rule: VotingRule::Rank,
            alpha: 2.0,
            tau: 0.07,
            xi: 1.0,
        }
    }
}

/// The smallest tau accepted: `exp(1 / tau)` must stay finite in f64.
pub const MIN_TAU: f64 = 1.0 / 700.0;

impl VoteParams {
    pub fn validate(&self) -> Result<()> {
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(CoreError::invalid(
                "alpha",
                format!("must be a finite number > 0, got {}", self.alpha),
            ));
        }
        if !(self.tau.is_finite() && self.tau >= MIN_TAU) {
            return Err(CoreError::invalid(
                "tau",
                format!("must be a finite number >= {MIN_TAU:.6}, got {}", self.tau),
            ));
        }
        if !(self.xi.is_finite() && self.xi >= 0.0) {
            return Err(CoreError::invalid(
                "xi",
                format!("must be a finite number >= 0, got {}", self.xi),
            ));
        }
        Ok(())
    }

    /// The vote of the neighbour at `rank` (0-based) at `distance`, before
    /// its item weight is applied.
    pub fn rule_weight(&self, rank: usize, distance: f32) -> f64 {
        let d = distance as f64;
        match self.rule {
            VotingRule::Plurality => 1.0,
            VotingRule::Distance => (-d * self.xi).exp(),
            VotingRule::Softmax => ((1.0 - d.clamp(0.0, 1.0)) / self.tau).exp(),
            VotingRule::Rank => 1.0 / (self.alpha + rank as f64),
        }
    }
}

/// One neighbour as it took part in a decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VotedNeighbor {
    pub rank: usize,
    #[serde(flatten)]
    pub neighbor: Neighbor,
    /// What it added to its label's total: rule weight times item weight.
    pub vote: f64,
    /// What curation changed about this neighbour's label or weight, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub adjustments: Vec<crate::curation::Adjustment>,
}

/// What the memory decided, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// The winning label; `None` when no neighbour cast a positive vote
    /// (empty memory, or every neighbour weighted 0).
    pub label: Option<String>,
    /// The winner's share of the total vote, in `[0, 1]`.
    pub confidence: f64,
    pub votes: BTreeMap<String, f64>,
    pub neighbors: Vec<VotedNeighbor>,
}

/// Lets `neighbors` (best first) vote under `params`.
pub fn decide(neighbors: Vec<Neighbor>, params: &VoteParams) -> Decision {
    let mut totals: HashMap<&str, f64> = HashMap::new();
    let mut leader: Option<(&str, f64)> = None;
    let mut total_vote = 0.0f64;
    let mut votes_in_order = Vec::with_capacity(neighbors.len());
    for (rank, n) in neighbors.iter().enumerate() {
        let vote = params.rule_weight(rank, n.distance) * f64::from(n.weight.max(0.0));
        votes_in_order.push(vote);
        total_vote += vote;
        let score = totals.entry(n.label.as_str()).or_insert(0.0);
        *score += vote;
        let takes_lead = match leader {
            None => *score > 0.0,
            Some((_, best)) => *score > best,
        };
        if takes_lead {
            leader = Some((n.label.as_str(), *score));
        }
    }
    let label = leader.map(|(l, _)| l.to_string());
    let confidence = match leader {
        Some((_, best)) if total_vote > 0.0 => (best / total_vote).clamp(0.0, 1.0),
        _ => 0.0,
    };
    let votes: BTreeMap<String, f64> = totals
        .into_iter()
        .map(|(l, v)| (l.to_string(), v))
        .collect();
    let neighbors = neighbors
        .into_iter()
        .zip(votes_in_order)
        .enumerate()
        .map(|(rank, (neighbor, vote))| VotedNeighbor {
            rank,
            neighbor,
            vote,
            adjustments: Vec::new(),
        })
        .collect();
    Decision {
        label,
        confidence,
        votes,
        neighbors,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn n(id: u64, label: &str, distance: f32) -> Neighbor {
        Neighbor {
            id,
            label: label.to_string(),
            distance,
            weight: 1.0,
            source: None,
        }
    }

    fn params(rule: VotingRule) -> VoteParams {
        VoteParams {
            rule,
            ..VoteParams::default()
        }
    }

    #[test]
    fn rule_weights_follow_the_paper() {
        let p = VoteParams::default();
        assert_eq!(p.rule_weight(0, 0.3), 0.5);
        assert_eq!(p.rule_weight(3, 0.3), 0.2);
        let soft = params(VotingRule::Softmax);
        assert!((soft.rule_weight(0, 0.3) / (0.7f64 / 0.07).exp() - 1.0).abs() < 1e-6);
        // Distances outside [0, 1] are clamped for softmax.
        assert_eq!(soft.rule_weight(0, 1.7), 1.0);
        assert_eq!(soft.rule_weight(0, -0.1), (1.0f64 / 0.07).exp());
        let dist = VoteParams {
            rule: VotingRule::Distance,
            xi: 2.0,
            ..VoteParams::default()
        };
        assert!((dist.rule_weight(5, 0.25f32) - (-0.5f64).exp()).abs() < 1e-7);
        assert_eq!(params(VotingRule::Plurality).rule_weight(9, 0.9), 1.0);
    }

    #[test]
    fn rank_rule_lets_close_neighbours_outvote_many_far_ones() {
        // a at ranks 0, 1: 1/2 + 1/3 = 0.833; b at ranks 2..5: 1/4+1/5+1/6+1/7 = 0.759
        let ns = vec![
            n(1, "a", 0.1),
            n(2, "a", 0.2),
            n(3, "b", 0.3),
            n(4, "b", 0.3),
            n(5, "b", 0.4),
            n(6, "b", 0.4),
        ];
        let d = decide(ns.clone(), &VoteParams::default());
        assert_eq!(d.label.as_deref(), Some("a"));
        assert_eq!(
            decide(ns, &params(VotingRule::Plurality)).label.as_deref(),
            Some("b")
        );
    }

    #[test]
    fn tie_goes_to_label_that_reached_top_score_first() {
        // Both end at 2 votes; y reaches 2 at rank 2, x only at rank 3.
        let ns = vec![
            n(1, "x", 0.1),
            n(2, "y", 0.1),
            n(3, "y", 0.2),
            n(4, "x", 0.2),
        ];
        let d = decide(ns, &params(VotingRule::Plurality));
        assert_eq!(d.label.as_deref(), Some("y"));
        assert_eq!(d.confidence, 0.5);
        // Mirror image: now x gets there first.
        let ns = vec![
            n(1, "y", 0.1),
            n(2, "x", 0.1),
            n(3, "x", 0.2),
            n(4, "y", 0.2),
        ];
        assert_eq!(
            decide(ns, &params(VotingRule::Plurality)).label.as_deref(),
            Some("x")
        );
        // A tie at the first vote keeps the first label.
        let ns = vec![n(1, "y", 0.1), n(2, "x", 0.1)];
        assert_eq!(
            decide(ns, &params(VotingRule::Plurality)).label.as_deref(),
            Some("y")
        );
    }

    #[test]
    fn item_weights_multiply_votes_and_zero_weights_abstain() {
        let mut ns = vec![n(1, "a", 0.1), n(2, "b", 0.2)];
        ns[0].weight = 0.0;
        let d = decide(ns, &VoteParams::default());
        assert_eq!(d.label.as_deref(), Some("b"));
        assert_eq!(d.neighbors[0].vote, 0.0);
        assert_eq!(d.neighbors[1].vote, 1.0 / 3.0);
        assert_eq!(d.confidence, 1.0);

        let mut ns = vec![n(1, "a", 0.1), n(2, "b", 0.2)];
        ns[1].weight = 2.0;
        let d = decide(ns, &VoteParams::default());
        assert_eq!(d.label.as_deref(), Some("b"));
        assert!((d.votes["b"] - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn empty_or_all_zero_gives_no_label() {
        let d = decide(vec![], &VoteParams::default());
        assert_eq!(d.label, None);
        assert_eq!(d.confidence, 0.0);
        let mut only = n(1, "a", 0.0);
        only.weight = 0.0;
        assert_eq!(decide(vec![only], &VoteParams::default()).label, None);
    }

    #[test]
    fn validation_rejects_bad_parameters() {
        for bad in [
            VoteParams {
                alpha: 0.0,
                ..VoteParams::default()
            },
            VoteParams {
                alpha: f64::NAN,
                ..VoteParams::default()
            },
            VoteParams {
                tau: 0.0,
                ..VoteParams::default()
            },
            VoteParams {
                tau: 1e-9,
                ..VoteParams::default()
            },
            VoteParams {
                xi: -1.0,
                ..VoteParams::default()
            },
            VoteParams {
                xi: f64::INFINITY,
                ..VoteParams::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        VoteParams::default().validate().unwrap();
        assert_eq!("softmax".parse::<VotingRule>(), Ok(VotingRule::Softmax));
        assert!("majority".parse::<VotingRule>().is_err());
    }

    fn arb_neighbors() -> impl Strategy<Value = Vec<Neighbor>> {
        prop::collection::vec((0u8..5, 0f32..2.0, 0f32..3.0), 0..60).prop_map(|raw| {
            let mut ns: Vec<Neighbor> = raw
                .into_iter()
                .enumerate()
                .map(|(i, (label, distance, weight))| Neighbor {
                    id: i as u64,
                    label: format!("c{label}"),
                    distance,
                    weight,
                    source: None,
                })
                .collect();
            ns.sort_by(|a, b| a.distance.total_cmp(&b.distance));
            ns
        })
    }

    fn arb_params() -> impl Strategy<Value = VoteParams> {
        (0usize..4, 0.1f64..10.0, 0.01f64..2.0, 0f64..5.0).prop_map(|(r, alpha, tau, xi)| {
            VoteParams {
                rule: VotingRule::ALL[r],
                alpha,
                tau,
                xi,
            }
        })
    }

    proptest! {
        #[test]
        fn winner_has_the_largest_total_and_votes_add_up(ns in arb_neighbors(), p in arb_params()) {
            let d = decide(ns.clone(), &p);
            prop_assert_eq!(d.neighbors.len(), ns.len());
            let total: f64 = d.neighbors.iter().map(|v| v.vote).sum();
            let by_label: f64 = d.votes.values().sum();
            prop_assert!((total - by_label).abs() <= 1e-9 * total.max(1.0));
            for (i, v) in d.neighbors.iter().enumerate() {
                prop_assert_eq!(v.rank, i);
                let expected = p.rule_weight(i, v.neighbor.distance) * v.neighbor.weight as f64;
                prop_assert_eq!(v.vote, expected);
            }
            match &d.label {
                Some(label) => {
                    let best = d.votes[label];
                    prop_assert!(d.votes.values().all(|v| *v <= best));
                    prop_assert!((d.confidence - best / total).abs() < 1e-9);
                }
                None => prop_assert!(d.votes.values().all(|v| *v == 0.0)),
            }
            prop_assert!((0.0..=1.0).contains(&d.confidence));
        }

        #[test]
        fn scaling_all_item_weights_keeps_the_decision(ns in arb_neighbors(), p in arb_params(), scale in 0.1f32..10.0) {
            let scaled: Vec<Neighbor> = ns.iter().cloned().map(|mut n| { n.weight *= scale; n }).collect();
            let a = decide(ns, &p);
            let b = decide(scaled, &p);
            // Equal totals may differ after scaling by float rounding; compare only clear wins.
            if let (Some(la), Some(lb)) = (&a.label, &b.label) {
                let margin = a.votes.iter().filter(|(l, _)| *l != la).map(|(_, v)| *v).fold(0.0, f64::max);
                if a.votes[la] > margin * (1.0 + 1e-6) + 1e-12 {
                    prop_assert_eq!(la, lb);
                }
            }
        }
    }
}
