//! Serving a trained head: its class probabilities for each query vector,
//! in process (microseconds for a few thousand weights).

use engram_core::LinearHead;

use super::{CallFailure, Outcome};

pub(super) fn predict_all(head: &LinearHead, vectors: &[Vec<f32>]) -> Outcome {
    let mut all = Vec::with_capacity(vectors.len());
    for vector in vectors {
        match head.predict(vector) {
            Ok(scores) => all.push(scores),
            Err(e) => {
                return Outcome::Fallback(CallFailure {
                    class: "dimension",
                    detail: e.to_string(),
                });
            }
        }
    }
    Outcome::Scores(all)
}
