//! A linear head: multinomial logistic regression on the memory's
//! embeddings, the built-in re-ranker (`kind = "head"`).
//!
//! It is knowledge derived from the memory, so it carries the memory
//! version it was trained on ([`MemoryVersion`]): a delete, a relabel or a
//! change of which sources vote after that version makes it stale
//! ([`TrainedHead::stale_reason`]), and an unlearning receipt newer than
//! its version lists it as a place still holding the deleted rows until a
//! head is trained again without them.
//!
//! Training is deterministic for a given seed: mini-batch Adam on the
//! softmax cross-entropy with L2 regularisation, the learning rate
//! decaying linearly to a tenth over the epochs.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::curation::{Curation, Intervention};
use crate::error::{CoreError, Result};
pub use crate::rng::SplitMix64;

/// How a head is trained (the job's parameters, defaults filled in).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeadTraining {
    pub epochs: u32,
    pub learning_rate: f32,
    /// L2 penalty on the weights.
    pub l2: f32,
    pub batch_size: u32,
    /// Most rows trained on, sampled uniformly from the memory (a head over
    /// billions of rows needs a sample, not all of them). The training job
    /// holds them in RAM: rows x dim x 4 bytes (100,000 x 1280: 512 MB).
    pub max_rows: u64,
    pub seed: u64,
}

impl Default for HeadTraining {
    fn default() -> Self {
        HeadTraining {
            epochs: 20,
            learning_rate: 0.01,
            l2: 1e-4,
            batch_size: 128,
            max_rows: 100_000,
            seed: 7,
        }
    }
}

impl HeadTraining {
    pub fn validate(&self) -> Result<()> {
        if !(1..=1_000).contains(&self.epochs) {
            return Err(CoreError::invalid("epochs", "must be between 1 and 1000"));
        }
        if !(self.learning_rate.is_finite()
            && self.learning_rate > 0.0
            && self.learning_rate <= 1.0)
        {
            return Err(CoreError::invalid(
                "learning_rate",
                "must be a number in (0, 1]",
            ));
        }
        if !(self.l2.is_finite() && self.l2 >= 0.0) {
            return Err(CoreError::invalid("l2", "must be a finite number >= 0"));
        }
        if !(1..=65_536).contains(&self.batch_size) {
            return Err(CoreError::invalid(
                "batch_size",
                "must be between 1 and 65536",
            ));
        }
        if !(1..=100_000_000).contains(&self.max_rows) {
            return Err(CoreError::invalid(
                "max_rows",
                "must be between 1 and 100000000",
            ));
        }
        Ok(())
    }
}

/// Softmax regression weights: `weights[c * dim + j]` for class `c`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinearHead {
    pub labels: Vec<String>,
    pub dim: usize,
    pub weights: Vec<f32>,
    pub bias: Vec<f32>,
}

/// Rows to train on: `vectors` holds `classes.len()` rows of `dim`.
pub struct TrainingSet<'a> {
    pub dim: usize,
    pub vectors: &'a [f32],
    /// Index into `labels` per row.
    pub classes: &'a [u32],
    pub labels: Vec<String>,
}

impl LinearHead {
    /// Trains on `set`; `progress` is called after each epoch with the
    /// epochs done (and may stop the training by returning `false`, which
    /// answers `None`).
    pub fn train(
        set: &TrainingSet<'_>,
        training: &HeadTraining,
        progress: &mut dyn FnMut(u32) -> bool,
    ) -> Result<Option<LinearHead>> {
        training.validate()?;
        let (dim, n, c) = (set.dim, set.classes.len(), set.labels.len());
        if n == 0 || c == 0 {
            return Err(CoreError::invalid(
                "rows",
                "a head needs at least one labelled row",
            ));
        }
        if set.vectors.len() != n * dim || set.classes.iter().any(|&k| k as usize >= c) {
            return Err(CoreError::invalid(
                "rows",
                "vectors, classes and labels disagree",
            ));
        }
        let mut head = LinearHead {
            labels: set.labels.clone(),
            dim,
            weights: vec![0.0; c * dim],
            bias: vec![0.0; c],
        };
        let mut adam_w = Adam::new(c * dim);
        let mut adam_b = Adam::new(c);
        let mut order: Vec<usize> = (0..n).collect();
        let mut rng = SplitMix64(training.seed);
        let batch = training.batch_size as usize;
        let mut grad_w = vec![0.0f32; c * dim];
        let mut grad_b = vec![0.0f32; c];
        let mut probs = vec![0.0f32; c];
        for epoch in 0..training.epochs {
            shuffle(&mut order, &mut rng);
            let decay = 1.0 - 0.9 * epoch as f32 / training.epochs as f32;
            let lr = training.learning_rate * decay;
            for rows in order.chunks(batch) {
                grad_w.iter_mut().for_each(|g| *g = 0.0);
                grad_b.iter_mut().for_each(|g| *g = 0.0);
                for &row in rows {
                    let x = &set.vectors[row * dim..(row + 1) * dim];
                    head.logits_into(x, &mut probs);
                    softmax_in_place(&mut probs);
                    probs[set.classes[row] as usize] -= 1.0;
                    for (class, &g) in probs.iter().enumerate() {
                        if g == 0.0 {
                            continue;
                        }
                        grad_b[class] += g;
                        let gw = &mut grad_w[class * dim..(class + 1) * dim];
                        for (w, &xj) in gw.iter_mut().zip(x) {
                            *w += g * xj;
                        }
                    }
                }
                let scale = 1.0 / rows.len() as f32;
                for (g, w) in grad_w.iter_mut().zip(&head.weights) {
                    *g = *g * scale + training.l2 * w;
                }
                grad_b.iter_mut().for_each(|g| *g *= scale);
                adam_w.step(&mut head.weights, &grad_w, lr);
                adam_b.step(&mut head.bias, &grad_b, lr);
            }
            if !progress(epoch + 1) {
                return Ok(None);
            }
        }
        Ok(Some(head))
    }

    fn logits_into(&self, x: &[f32], out: &mut [f32]) {
        for (class, logit) in out.iter_mut().enumerate() {
            let w = &self.weights[class * self.dim..(class + 1) * self.dim];
            *logit = self.bias[class] + w.iter().zip(x).map(|(a, b)| a * b).sum::<f32>();
        }
    }

    /// Class probabilities for one (prepared) vector.
    pub fn predict(&self, x: &[f32]) -> Result<BTreeMap<String, f64>> {
        if x.len() != self.dim {
            return Err(CoreError::invalid(
                "vector",
                format!("the head takes {} dimensions, got {}", self.dim, x.len()),
            ));
        }
        let mut probs = vec![0.0f32; self.labels.len()];
        self.logits_into(x, &mut probs);
        softmax_in_place(&mut probs);
        Ok(self
            .labels
            .iter()
            .cloned()
            .zip(probs.iter().map(|&p| f64::from(p)))
            .collect())
    }

    /// The share of `set`'s rows whose most probable class is their own.
    pub fn accuracy(&self, set: &TrainingSet<'_>) -> f64 {
        let n = set.classes.len();
        if n == 0 {
            return 0.0;
        }
        let mut logits = vec![0.0f32; self.labels.len()];
        let correct = (0..n)
            .filter(|&row| {
                self.logits_into(
                    &set.vectors[row * set.dim..(row + 1) * set.dim],
                    &mut logits,
                );
                argmax(&logits) == Some(set.classes[row] as usize)
            })
            .count();
        correct as f64 / n as f64
    }
}

/// What the memory was when a head was trained: the newest unlearning
/// receipt, the newest audit entry and the item count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryVersion {
    /// The newest receipt number of the collection (0: none yet). Every
    /// receipt up to it was durable before the training read a row, so
    /// none of their rows is in the head.
    pub receipt: u64,
    /// The newest audit entry's sequence number (0: none yet).
    pub audit_seq: u64,
    pub items: u64,
}

/// A trained head as stored (Raft state in a cluster, a checksummed file
/// on the embedded node).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainedHead {
    /// The re-ranker (config name) it serves.
    pub reranker: String,
    pub job: u64,
    /// RFC 3339, UTC: when training finished.
    pub trained_at: String,
    pub version: MemoryVersion,
    /// Rows trained on (after sampling).
    pub rows: u64,
    /// Accuracy on its own training rows.
    pub train_accuracy: f64,
    pub training: HeadTraining,
    pub head: LinearHead,
}

impl TrainedHead {
    /// Why the head no longer matches the memory, if it does not: an
    /// unlearning receipt after its version, or an intervention that
    /// changed which rows vote or with which label (relabels, blocked
    /// sources). Blocked and scaled classes are applied to its output
    /// instead (see `rerank::curate_scores`), so they leave it current.
    pub fn stale_reason(&self, newest_receipt: u64, curation: &Curation) -> Option<String> {
        if newest_receipt > self.version.receipt {
            return Some(format!(
                "trained before unlearning receipt {newest_receipt} (memory version: receipt {})",
                self.version.receipt
            ));
        }
        curation
            .audit
            .iter()
            .filter(|e| e.seq > self.version.audit_seq)
            .find(|e| {
                matches!(
                    e.intervention,
                    Intervention::Relabel { .. }
                        | Intervention::ClearRelabel { .. }
                        | Intervention::BlockSource { .. }
                        | Intervention::UnblockSource { .. }
                )
            })
            .map(|e| {
                format!(
                    "trained before intervention {} ({})",
                    e.seq,
                    e.intervention.action()
                )
            })
    }

    /// Whether the head was trained on rows of receipt `number` (trained
    /// before the receipt existed).
    pub fn holds_receipt(&self, number: u64) -> bool {
        self.version.receipt < number
    }
}

fn argmax(xs: &[f32]) -> Option<usize> {
    xs.iter()
        .enumerate()
        .fold(None, |best: Option<(usize, f32)>, (i, &x)| match best {
            Some((_, b)) if b >= x => best,
            _ => Some((i, x)),
        })
        .map(|(i, _)| i)
}

fn softmax_in_place(xs: &mut [f32]) {
    let max = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for x in xs.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    xs.iter_mut().for_each(|x| *x /= sum);
}

/// Adam's moment estimates for one parameter vector.
struct Adam {
    m: Vec<f32>,
    v: Vec<f32>,
    t: i32,
}

impl Adam {
    const BETA1: f32 = 0.9;
    const BETA2: f32 = 0.999;
    const EPS: f32 = 1e-8;

    fn new(n: usize) -> Adam {
        Adam {
            m: vec![0.0; n],
            v: vec![0.0; n],
            t: 0,
        }
    }

    fn step(&mut self, params: &mut [f32], grads: &[f32], lr: f32) {
        self.t += 1;
        let c1 = 1.0 - Self::BETA1.powi(self.t);
        let c2 = 1.0 - Self::BETA2.powi(self.t);
        for ((p, &g), (m, v)) in params
            .iter_mut()
            .zip(grads)
            .zip(self.m.iter_mut().zip(self.v.iter_mut()))
        {
            *m = Self::BETA1 * *m + (1.0 - Self::BETA1) * g;
            *v = Self::BETA2 * *v + (1.0 - Self::BETA2) * g * g;
            *p -= lr * (*m / c1) / ((*v / c2).sqrt() + Self::EPS);
        }
    }
}

fn shuffle(xs: &mut [usize], rng: &mut SplitMix64) {
    for i in (1..xs.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        xs.swap(i, j);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Three well separated clusters in 4 dimensions.
    fn clusters(per: usize, seed: u64) -> (Vec<f32>, Vec<u32>) {
        let centres = [
            [1.0, 0.0, 0.0, 0.2],
            [0.0, 1.0, 0.0, 0.2],
            [0.0, 0.0, 1.0, 0.2],
        ];
        let mut rng = SplitMix64(seed);
        let (mut vectors, mut classes) = (Vec::new(), Vec::new());
        for (c, centre) in centres.iter().enumerate() {
            for _ in 0..per {
                for x in centre {
                    vectors.push(x + (rng.below(1000) as f32 / 1000.0 - 0.5) * 0.3);
                }
                classes.push(c as u32);
            }
        }
        (vectors, classes)
    }

    fn labels() -> Vec<String> {
        ["a", "b", "c"].iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn learns_separable_classes() {
        let (vectors, classes) = clusters(50, 1);
        let set = TrainingSet {
            dim: 4,
            vectors: &vectors,
            classes: &classes,
            labels: labels(),
        };
        // 150 rows are two steps an epoch: give it enough of them.
        let training = HeadTraining {
            epochs: 300,
            ..Default::default()
        };
        let head = LinearHead::train(&set, &training, &mut |_| true)
            .unwrap()
            .unwrap();
        assert!(head.accuracy(&set) > 0.99, "{}", head.accuracy(&set));
        let p = head.predict(&[0.0, 0.95, 0.05, 0.2]).unwrap();
        assert!(p["b"] > 0.8, "{p:?}");
        assert!((p.values().sum::<f64>() - 1.0).abs() < 1e-5);
    }

    #[test]
    fn training_is_deterministic_and_can_stop() {
        let (vectors, classes) = clusters(10, 2);
        let set = TrainingSet {
            dim: 4,
            vectors: &vectors,
            classes: &classes,
            labels: labels(),
        };
        let t = HeadTraining::default();
        let a = LinearHead::train(&set, &t, &mut |_| true).unwrap();
        let b = LinearHead::train(&set, &t, &mut |_| true).unwrap();
        assert_eq!(a, b);
        let mut epochs = 0;
        let stopped = LinearHead::train(&set, &t, &mut |e| {
            epochs = e;
            e < 3
        })
        .unwrap();
        assert!(stopped.is_none());
        assert_eq!(epochs, 3);
    }

    #[test]
    fn refuses_inconsistent_sets_and_dimensions() {
        let set = TrainingSet {
            dim: 4,
            vectors: &[0.0; 7],
            classes: &[0, 1],
            labels: labels(),
        };
        assert!(LinearHead::train(&set, &HeadTraining::default(), &mut |_| true).is_err());
        let (vectors, classes) = clusters(2, 3);
        let set = TrainingSet {
            dim: 4,
            vectors: &vectors,
            classes: &classes,
            labels: labels(),
        };
        let head = LinearHead::train(
            &set,
            &HeadTraining {
                epochs: 1,
                ..Default::default()
            },
            &mut |_| true,
        )
        .unwrap()
        .unwrap();
        assert!(head.predict(&[1.0, 0.0]).is_err());
        let bad = HeadTraining {
            learning_rate: 0.0,
            ..Default::default()
        };
        assert!(bad.validate().is_err());
    }

    fn trained(receipt: u64, audit_seq: u64) -> TrainedHead {
        TrainedHead {
            reranker: "head".into(),
            job: 1,
            trained_at: "t".into(),
            version: MemoryVersion {
                receipt,
                audit_seq,
                items: 10,
            },
            rows: 10,
            train_accuracy: 1.0,
            training: HeadTraining::default(),
            head: LinearHead {
                labels: labels(),
                dim: 1,
                weights: vec![0.0; 3],
                bias: vec![0.0; 3],
            },
        }
    }

    #[test]
    fn deletes_relabels_and_source_blocks_make_it_stale_class_blocks_do_not() {
        let mut curation = Curation::default();
        let head = trained(2, 0);
        assert_eq!(head.stale_reason(2, &curation), None);
        assert!(
            head.stale_reason(3, &curation)
                .unwrap()
                .contains("receipt 3")
        );
        assert!(head.holds_receipt(3) && !head.holds_receipt(2));
        curation
            .apply(
                Intervention::BlockClass { label: "a".into() },
                "r",
                "t".into(),
            )
            .unwrap();
        assert_eq!(head.stale_reason(2, &curation), None);
        curation
            .apply(
                Intervention::Relabel {
                    id: 1,
                    label: "b".into(),
                },
                "r",
                "t".into(),
            )
            .unwrap();
        assert!(head.stale_reason(2, &curation).unwrap().contains("relabel"));
        // A head trained after the relabel is current.
        assert_eq!(trained(2, 2).stale_reason(2, &curation), None);
        curation
            .apply(
                Intervention::BlockSource { source: "s".into() },
                "r",
                "t".into(),
            )
            .unwrap();
        assert!(
            trained(2, 2)
                .stale_reason(2, &curation)
                .unwrap()
                .contains("block_source")
        );
    }

    proptest! {
        #[test]
        fn predictions_are_distributions(
            weights in proptest::collection::vec(-5.0f32..5.0, 6),
            bias in proptest::collection::vec(-5.0f32..5.0, 3),
            x in proptest::collection::vec(-1.0f32..1.0, 2),
        ) {
            let head = LinearHead { labels: labels(), dim: 2, weights, bias };
            let p = head.predict(&x).unwrap();
            prop_assert_eq!(p.len(), 3);
            prop_assert!(p.values().all(|v| (0.0..=1.0).contains(v)));
            prop_assert!((p.values().sum::<f64>() - 1.0).abs() < 1e-4);
        }
    }
}
