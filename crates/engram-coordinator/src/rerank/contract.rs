//! The JSON an `http` re-ranker receives and answers (docs/api.md,
//! "Re-rankers"). One POST carries every query of a classify call.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What Engram POSTs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RerankRequest {
    /// The re-ranker's name in Engram's config.
    pub reranker: String,
    pub collection: String,
    /// Neighbours per query (the classify request's k).
    pub k: usize,
    pub queries: Vec<RerankQuery>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RerankQuery {
    /// The query's embedding as searched (normalised for cosine).
    pub vector: Vec<f32>,
    /// The query's image as sent (base64), when it had one and the
    /// re-ranker's `send_image` is on.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub image: Option<String>,
    /// The k neighbours that voted, nearest first, after curation (their
    /// effective labels and weights).
    pub neighbors: Vec<RerankNeighbor>,
    /// Vote totals per label.
    pub votes: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RerankNeighbor {
    pub id: u64,
    pub label: String,
    pub distance: f32,
    pub weight: f32,
    /// What it added to its label's total.
    pub vote: f64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub source: Option<String>,
}

/// What the re-ranker answers: one result per query, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RerankResponse {
    pub results: Vec<RerankResult>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RerankResult {
    /// Non-negative, finite scores per label (any labels, not only the
    /// neighbours'); Engram normalises them to sum 1.
    pub scores: BTreeMap<String, f64>,
}

/// Most labels one result may score.
pub const MAX_LABELS: usize = 10_000;

impl RerankResponse {
    /// Checks the answer against the request: one result per query, each
    /// with at least one positive score, none negative or not finite.
    pub fn check(&self, queries: usize) -> Result<(), String> {
        if self.results.len() != queries {
            return Err(format!(
                "{} results for {queries} queries",
                self.results.len()
            ));
        }
        for (i, result) in self.results.iter().enumerate() {
            if result.scores.len() > MAX_LABELS {
                return Err(format!("result {i}: more than {MAX_LABELS} labels"));
            }
            if let Some(label) = result
                .scores
                .keys()
                .find(|l| l.len() > crate::service::MAX_LABEL_BYTES)
            {
                return Err(format!(
                    "result {i}: label {:?}... too long",
                    label.chars().take(16).collect::<String>()
                ));
            }
            if engram_core::rerank::normalize(&result.scores).is_none() {
                return Err(format!(
                    "result {i}: scores must be finite, >= 0 and not all 0"
                ));
            }
        }
        Ok(())
    }
}
