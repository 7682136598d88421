//! Curation: what curators changed about how the memory votes.
//!
//! Interventions never touch stored items; they apply at decision time, so
//! every one of them can be undone and shows in the explanation of every
//! decision it changed. The state is metadata (the Raft state machine in a
//! cluster, a checksummed file on the embedded node) with an audit trail.
//!
//! Order of application for a neighbour: relabel (its label for this
//! decision), block (by its effective label or by its source: the neighbour
//! does not vote and the search fetches another in its place), then its
//! weight: the item's stored weight, or a curator's weight if set, times the
//! soft-pruning factor gamma, times its class's scale.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};

use crate::error::{CoreError, Result};
use crate::neighbor::Neighbor;

/// One change a curator can make. Each has an inverse (`clear_*`, `unblock_*`,
/// `scale_class` with factor 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum Intervention {
    /// The item votes with `weight` instead of its stored weight.
    SetWeight {
        id: u64,
        weight: f32,
    },
    ClearWeight {
        id: u64,
    },
    /// The item votes for `label` instead of its stored label.
    Relabel {
        id: u64,
        label: String,
    },
    ClearRelabel {
        id: u64,
    },
    /// Items of this (effective) label take no part in decisions.
    BlockClass {
        label: String,
    },
    UnblockClass {
        label: String,
    },
    /// Items from this source take no part in decisions.
    BlockSource {
        source: String,
    },
    UnblockSource {
        source: String,
    },
    /// Every vote for this label is multiplied by `factor` (1 removes it).
    ScaleClass {
        label: String,
        factor: f64,
    },
    /// The re-ranker (a `[rerankers.<name>]` of the config) that decides
    /// after the votes when a classify request names none; `null` clears it.
    SetReranker {
        reranker: Option<String>,
    },
}

/// One line of the audit trail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: u64,
    /// RFC 3339, UTC.
    pub at: String,
    #[serde(flatten)]
    pub intervention: Intervention,
    pub reason: String,
}

/// An active intervention's value with the audit entry that set it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Active<T> {
    pub value: T,
    pub reason: String,
    pub seq: u64,
}

/// Everything curators have set for one collection.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Curation {
    pub weights: BTreeMap<u64, Active<f32>>,
    pub relabels: BTreeMap<u64, Active<String>>,
    pub blocked_classes: BTreeMap<String, Active<()>>,
    pub blocked_sources: BTreeMap<String, Active<()>>,
    pub class_scales: BTreeMap<String, Active<f64>>,
    /// The collection's default re-ranker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reranker: Option<Active<String>>,
    pub audit: Vec<AuditEntry>,
}

/// Who may vote: the blocking part of a [`Curation`], in a form a search
/// request carries to the shards (which apply it inside the index search,
/// so `k` admitted items come back however many are blocked).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Admission {
    /// Relabels decide an item's effective label, which class blocks see.
    pub relabels: HashMap<u64, String>,
    pub blocked_classes: HashSet<String>,
    pub blocked_sources: HashSet<String>,
}

impl Admission {
    /// Same answer as [`Curation::admits`] for the curation it came from.
    pub fn admits(&self, id: u64, label: &str, source: Option<&str>) -> bool {
        let label = self.relabels.get(&id).map_or(label, String::as_str);
        !self.blocked_classes.contains(label)
            && source.is_none_or(|s| !self.blocked_sources.contains(s))
    }
}

/// How an intervention or pruning changed one neighbour's vote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Adjustment {
    Relabelled {
        from: String,
        reason: String,
    },
    Weight {
        from: f32,
        to: f32,
        reason: String,
    },
    /// Soft pruning: `v` wrong-label appearances gave factor `gamma`.
    Pruned {
        v: u32,
        gamma: f32,
        /// A query that counted towards `v` has since been unlearned.
        stale: bool,
    },
    ClassScaled {
        factor: f64,
        reason: String,
    },
}

/// A neighbour that was within reach but did not vote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlockedNeighbor {
    #[serde(flatten)]
    pub neighbor: Neighbor,
    pub reason: String,
}

fn nonempty(what: &'static str, s: &str) -> Result<()> {
    if s.trim().is_empty() {
        return Err(CoreError::invalid(what, "must not be empty"));
    }
    Ok(())
}

impl Intervention {
    /// Its `action` as the API writes it (`relabel`, `block_source`, ...).
    pub fn action(&self) -> &'static str {
        match self {
            Intervention::SetWeight { .. } => "set_weight",
            Intervention::ClearWeight { .. } => "clear_weight",
            Intervention::Relabel { .. } => "relabel",
            Intervention::ClearRelabel { .. } => "clear_relabel",
            Intervention::BlockClass { .. } => "block_class",
            Intervention::UnblockClass { .. } => "unblock_class",
            Intervention::BlockSource { .. } => "block_source",
            Intervention::UnblockSource { .. } => "unblock_source",
            Intervention::ScaleClass { .. } => "scale_class",
            Intervention::SetReranker { .. } => "set_reranker",
        }
    }

    /// The item a weight or relabel applies to (which must exist).
    pub fn item(&self) -> Option<u64> {
        match self {
            Intervention::SetWeight { id, .. } | Intervention::Relabel { id, .. } => Some(*id),
            _ => None,
        }
    }

    pub fn validate(&self) -> Result<()> {
        match self {
            Intervention::SetWeight { weight, .. } => {
                if !(weight.is_finite() && *weight >= 0.0) {
                    return Err(CoreError::invalid(
                        "weight",
                        format!("must be a finite number >= 0, got {weight}"),
                    ));
                }
            }
            Intervention::Relabel { label, .. }
            | Intervention::BlockClass { label }
            | Intervention::UnblockClass { label } => nonempty("label", label)?,
            Intervention::BlockSource { source } | Intervention::UnblockSource { source } => {
                nonempty("source", source)?
            }
            Intervention::ScaleClass { label, factor } => {
                nonempty("label", label)?;
                if !(factor.is_finite() && *factor >= 0.0) {
                    return Err(CoreError::invalid(
                        "factor",
                        format!("must be a finite number >= 0, got {factor}"),
                    ));
                }
            }
            Intervention::SetReranker { reranker } => {
                if let Some(name) = reranker {
                    nonempty("reranker", name)?;
                }
            }
            Intervention::ClearWeight { .. } | Intervention::ClearRelabel { .. } => {}
        }
        Ok(())
    }
}

impl Curation {
    /// Applies `intervention` and records it; returns the audit entry.
    /// Nothing changes if it is invalid.
    pub fn apply(
        &mut self,
        intervention: Intervention,
        reason: &str,
        at: String,
    ) -> Result<AuditEntry> {
        intervention.validate()?;
        nonempty("reason", reason)?;
        let seq = self.audit.last().map_or(1, |e| e.seq + 1);
        let active = |value| Active {
            value,
            reason: reason.to_string(),
            seq,
        };
        match &intervention {
            Intervention::SetWeight { id, weight } => {
                self.weights.insert(*id, active(*weight));
            }
            Intervention::ClearWeight { id } => {
                self.weights.remove(id);
            }
            Intervention::Relabel { id, label } => {
                self.relabels.insert(
                    *id,
                    Active {
                        value: label.clone(),
                        reason: reason.to_string(),
                        seq,
                    },
                );
            }
            Intervention::ClearRelabel { id } => {
                self.relabels.remove(id);
            }
            Intervention::BlockClass { label } => {
                self.blocked_classes
                    .insert(label.clone(), active_unit(reason, seq));
            }
            Intervention::UnblockClass { label } => {
                self.blocked_classes.remove(label);
            }
            Intervention::BlockSource { source } => {
                self.blocked_sources
                    .insert(source.clone(), active_unit(reason, seq));
            }
            Intervention::UnblockSource { source } => {
                self.blocked_sources.remove(source);
            }
            Intervention::ScaleClass { label, factor } => {
                if *factor == 1.0 {
                    self.class_scales.remove(label);
                } else {
                    self.class_scales.insert(
                        label.clone(),
                        Active {
                            value: *factor,
                            reason: reason.to_string(),
                            seq,
                        },
                    );
                }
            }
            Intervention::SetReranker { reranker } => {
                self.reranker = reranker.clone().map(|value| Active {
                    value,
                    reason: reason.to_string(),
                    seq,
                });
            }
        }
        let entry = AuditEntry {
            seq,
            at,
            intervention,
            reason: reason.to_string(),
        };
        self.audit.push(entry.clone());
        Ok(entry)
    }

    /// Whether any intervention can block a neighbour (searches then filter).
    pub fn blocks_anything(&self) -> bool {
        !self.blocked_classes.is_empty() || !self.blocked_sources.is_empty()
    }

    /// The admission rule of this curation, `None` when nothing is blocked
    /// (relabels travel only when some class is blocked: only then can
    /// they change who votes).
    pub fn admission(&self) -> Option<Admission> {
        if !self.blocks_anything() {
            return None;
        }
        let relabels = if self.blocked_classes.is_empty() {
            HashMap::new()
        } else {
            self.relabels
                .iter()
                .map(|(id, a)| (*id, a.value.clone()))
                .collect()
        };
        Some(Admission {
            relabels,
            blocked_classes: self.blocked_classes.keys().cloned().collect(),
            blocked_sources: self.blocked_sources.keys().cloned().collect(),
        })
    }

    /// The label `id` votes for, given its stored `label`.
    pub fn effective_label<'a>(&'a self, id: u64, label: &'a str) -> &'a str {
        self.relabels.get(&id).map_or(label, |a| a.value.as_str())
    }

    /// Why an item may not vote, if it may not.
    pub fn block_reason(&self, id: u64, label: &str, source: Option<&str>) -> Option<String> {
        let label = self.effective_label(id, label);
        if let Some(block) = self.blocked_classes.get(label) {
            return Some(format!("class `{label}` is blocked: {}", block.reason));
        }
        if let Some(source) = source
            && let Some(block) = self.blocked_sources.get(source)
        {
            return Some(format!("source `{source}` is blocked: {}", block.reason));
        }
        None
    }

    /// Whether an item may vote.
    pub fn admits(&self, id: u64, label: &str, source: Option<&str>) -> bool {
        self.block_reason(id, label, source).is_none()
    }

    /// The neighbour as it votes (label and weight after interventions and
    /// soft pruning), with what changed and why.
    pub fn curate(
        &self,
        mut neighbor: Neighbor,
        pruning: Option<&PruningWeights>,
    ) -> (Neighbor, Vec<Adjustment>) {
        let mut adjustments = Vec::new();
        if let Some(relabel) = self.relabels.get(&neighbor.id) {
            adjustments.push(Adjustment::Relabelled {
                from: std::mem::replace(&mut neighbor.label, relabel.value.clone()),
                reason: relabel.reason.clone(),
            });
        }
        if let Some(weight) = self.weights.get(&neighbor.id) {
            adjustments.push(Adjustment::Weight {
                from: neighbor.weight,
                to: weight.value,
                reason: weight.reason.clone(),
            });
            neighbor.weight = weight.value;
        }
        if let Some(pruning) = pruning
            && let Some((v, gamma)) = pruning.factor(neighbor.id)
        {
            adjustments.push(Adjustment::Pruned {
                v,
                gamma,
                stale: pruning.stale.contains(&neighbor.id),
            });
            neighbor.weight *= gamma;
        }
        if let Some(scale) = self.class_scales.get(&neighbor.label) {
            adjustments.push(Adjustment::ClassScaled {
                factor: scale.value,
                reason: scale.reason.clone(),
            });
            neighbor.weight = (f64::from(neighbor.weight) * scale.value) as f32;
        }
        (neighbor, adjustments)
    }
}

fn active_unit(reason: &str, seq: u64) -> Active<()> {
    Active {
        value: (),
        reason: reason.to_string(),
        seq,
    }
}

/// The soft-pruning factor of the paper: `1.75 / (1 + v)`, and 1 when
/// `v = 0` (an item never seen with a wrong label keeps its full vote).
pub fn soft_pruning_gamma(v: u32) -> f32 {
    if v == 0 { 1.0 } else { 1.75 / (1.0 + v as f32) }
}

/// Pruning scores of a memory, computed by querying it against itself.
///
/// `v` of an item = the number of queries (other memory items) whose
/// neighbours included it with a label different from the query's. The
/// queries that counted towards each item are kept, so that unlearning a
/// query item can mark the weights it influenced as stale.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PruningScores {
    /// `v` per item; items with `v = 0` are absent.
    pub v: HashMap<u64, u32>,
    /// For each query item, the items it counted against (with repeats
    /// removed per query).
    pub counted_by: HashMap<u64, Vec<u64>>,
    /// Items scored (the memory's size at the time).
    pub items: u64,
}

impl PruningScores {
    /// Adds one query's neighbours: those with a label other than the
    /// query's count once each.
    pub fn add_query(&mut self, query: u64, query_label: &str, neighbors: &[(u64, &str)]) {
        self.items += 1;
        let mut counted = Vec::new();
        let mut seen = HashSet::new();
        for (id, label) in neighbors {
            if *id != query && *label != query_label && seen.insert(*id) {
                *self.v.entry(*id).or_insert(0) += 1;
                counted.push(*id);
            }
        }
        if !counted.is_empty() {
            self.counted_by.insert(query, counted);
        }
    }

    /// Items with `v >= threshold`, largest `v` first (ties by id).
    pub fn at_least(&self, threshold: u32) -> Vec<(u64, u32)> {
        let mut out: Vec<(u64, u32)> = self
            .v
            .iter()
            .filter(|(_, v)| **v >= threshold.max(1))
            .map(|(id, v)| (*id, *v))
            .collect();
        out.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        out
    }
}

/// The weights soft pruning set: one factor per item with `v > 0`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PruningWeights {
    /// The job that computed them.
    pub job: u64,
    pub at: String,
    pub k: usize,
    pub v: HashMap<u64, u32>,
    pub counted_by: HashMap<u64, Vec<u64>>,
    /// Items whose `v` was counted by a query item that has since been
    /// unlearned: their weight no longer reflects the memory (rerun pruning).
    pub stale: HashSet<u64>,
}

impl PruningWeights {
    pub fn new(job: u64, at: String, k: usize, scores: PruningScores) -> PruningWeights {
        PruningWeights {
            job,
            at,
            k,
            v: scores.v,
            counted_by: scores.counted_by,
            stale: HashSet::new(),
        }
    }

    /// `(v, gamma)` for an item with `v > 0`.
    pub fn factor(&self, id: u64) -> Option<(u32, f32)> {
        self.v.get(&id).map(|v| (*v, soft_pruning_gamma(*v)))
    }

    /// Records that `deleted` items are gone: their own weights are dropped,
    /// and the weights their queries counted towards become stale. Returns
    /// how many weights became stale.
    pub fn forget(&mut self, deleted: &[u64]) -> usize {
        for id in deleted {
            self.v.remove(id);
            self.stale.remove(id);
        }
        let mut newly = 0;
        for id in deleted {
            for counted in self.counted_by.remove(id).unwrap_or_default() {
                if self.v.contains_key(&counted) && self.stale.insert(counted) {
                    newly += 1;
                }
            }
        }
        newly
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(id: u64, label: &str, weight: f32, source: Option<&str>) -> Neighbor {
        Neighbor {
            id,
            label: label.into(),
            distance: 0.1,
            weight,
            source: source.map(str::to_string),
        }
    }

    #[test]
    fn interventions_apply_in_order_and_say_why() {
        let mut c = Curation::default();
        c.apply(
            Intervention::Relabel {
                id: 1,
                label: "cat".into(),
            },
            "mislabelled",
            "t1".into(),
        )
        .unwrap();
        c.apply(
            Intervention::SetWeight { id: 1, weight: 0.5 },
            "low quality",
            "t2".into(),
        )
        .unwrap();
        c.apply(
            Intervention::ScaleClass {
                label: "cat".into(),
                factor: 2.0,
            },
            "rare class",
            "t3".into(),
        )
        .unwrap();
        let (voting, why) = c.curate(n(1, "dog", 1.0, None), None);
        assert_eq!(voting.label, "cat");
        assert_eq!(voting.weight, 1.0, "0.5 then x2");
        assert_eq!(why.len(), 3);
        assert!(matches!(&why[0], Adjustment::Relabelled { from, .. } if from == "dog"));
        assert_eq!(
            c.audit.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );

        // Blocking follows the effective label.
        c.apply(
            Intervention::BlockClass {
                label: "cat".into(),
            },
            "audit",
            "t4".into(),
        )
        .unwrap();
        assert!(!c.admits(1, "dog", None));
        assert!(c.admits(2, "dog", None));
        c.apply(
            Intervention::BlockSource {
                source: "scraped".into(),
            },
            "licence",
            "t5".into(),
        )
        .unwrap();
        assert!(
            c.block_reason(3, "dog", Some("scraped"))
                .unwrap()
                .contains("licence")
        );
        c.apply(
            Intervention::UnblockClass {
                label: "cat".into(),
            },
            "done",
            "t6".into(),
        )
        .unwrap();
        c.apply(Intervention::ClearRelabel { id: 1 }, "undo", "t7".into())
            .unwrap();
        c.apply(
            Intervention::ScaleClass {
                label: "cat".into(),
                factor: 1.0,
            },
            "undo",
            "t8".into(),
        )
        .unwrap();
        assert!(c.admits(1, "dog", None));
        assert!(c.class_scales.is_empty());
        assert_eq!(c.audit.len(), 8);
    }

    #[test]
    fn invalid_interventions_change_nothing() {
        let mut c = Curation::default();
        for bad in [
            Intervention::SetWeight {
                id: 1,
                weight: f32::NAN,
            },
            Intervention::SetWeight {
                id: 1,
                weight: -1.0,
            },
            Intervention::ScaleClass {
                label: "a".into(),
                factor: f64::INFINITY,
            },
            Intervention::Relabel {
                id: 1,
                label: " ".into(),
            },
            Intervention::BlockSource {
                source: String::new(),
            },
        ] {
            assert!(c.apply(bad, "why", "t".into()).is_err());
        }
        assert!(
            c.apply(Intervention::ClearWeight { id: 1 }, "", "t".into())
                .is_err()
        );
        assert_eq!(c, Curation::default());
    }

    #[test]
    fn pruning_scores_count_wrong_label_appearances_once_per_query() {
        let mut s = PruningScores::default();
        s.add_query(1, "a", &[(2, "b"), (3, "a"), (2, "b"), (1, "b")]);
        s.add_query(3, "a", &[(2, "b"), (4, "c")]);
        s.add_query(2, "b", &[(3, "a")]);
        assert_eq!(s.v[&2], 2);
        assert_eq!(s.v[&4], 1);
        assert_eq!(s.v[&3], 1);
        assert!(!s.v.contains_key(&1), "self-matches never count");
        assert_eq!(s.at_least(2), vec![(2, 2)]);
        assert_eq!(soft_pruning_gamma(0), 1.0);
        assert_eq!(soft_pruning_gamma(1), 0.875);
        assert_eq!(soft_pruning_gamma(6), 0.25);

        let mut w = PruningWeights::new(1, "t".into(), 10, s);
        assert_eq!(w.factor(2), Some((2, 1.75 / 3.0)));
        // Unlearning query 3 makes the weights it counted towards stale.
        assert_eq!(w.forget(&[3]), 2);
        assert!(w.stale.contains(&2) && w.stale.contains(&4));
        assert!(w.factor(3).is_none());
        let (_, why) = Curation::default().curate(n(2, "b", 1.0, None), Some(&w));
        assert!(matches!(
            why[0],
            Adjustment::Pruned {
                v: 2,
                stale: true,
                ..
            }
        ));
    }

    proptest::proptest! {
        #[test]
        fn admission_admits_exactly_what_the_curation_admits(
            relabels in proptest::collection::vec((0u64..8, 0u8..3), 0..6),
            classes in proptest::collection::vec(0u8..3, 0..3),
            sources in proptest::collection::vec(0u8..3, 0..3),
            probes in proptest::collection::vec((0u64..8, 0u8..3, proptest::option::of(0u8..3)), 1..20),
        ) {
            let mut curation = Curation::default();
            let at = || "2026-11-29T00:00:00Z".to_string();
            for (id, l) in relabels {
                curation.apply(Intervention::Relabel { id, label: format!("l{l}") }, "r", at()).unwrap();
            }
            for l in classes {
                curation.apply(Intervention::BlockClass { label: format!("l{l}") }, "r", at()).unwrap();
            }
            for s in sources {
                curation.apply(Intervention::BlockSource { source: format!("s{s}") }, "r", at()).unwrap();
            }
            let admission = curation.admission();
            proptest::prop_assert_eq!(admission.is_some(), curation.blocks_anything());
            for (id, l, s) in probes {
                let label = format!("l{l}");
                let source = s.map(|s| format!("s{s}"));
                let expected = curation.admits(id, &label, source.as_deref());
                let got = admission.as_ref().is_none_or(|a| a.admits(id, &label, source.as_deref()));
                proptest::prop_assert_eq!(got, expected);
            }
        }
    }
}
