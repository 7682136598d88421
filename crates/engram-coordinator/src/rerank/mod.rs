//! Re-rankers: the paper's second stage over a classification's
//! neighbours. The votes decide first; a re-ranker named by the request
//! (`"rerank": "<name>"`) or by the collection (`set_reranker`) scores the
//! labels, its scores are curated like votes and fused with the vote
//! shares (`engram_core::rerank`). Whatever goes wrong, the votes decide
//! and the answer says so (`fallback` or `skipped`, with the reason).
//!
//! Kinds: `http` (any model behind the documented JSON contract,
//! [`contract`]) and `head` (a linear classifier trained from the memory
//! by a `train_head` job, [`train`], and subject to unlearning).

mod breaker;
pub mod contract;
mod head;
mod http;
pub(crate) mod metrics;
pub(crate) mod train;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use engram_core::Curation;
use engram_core::config::{EngramConfig, HeadRerankerConfig, RerankerConfig};
use engram_core::rerank::{curate_scores, fuse, normalize};

use crate::dto::{ClassifyResponse, HeadVersion, RerankAnswer, RerankOption, RerankStatus};
use crate::error::{ApiError, Result};
use crate::service::Engram;
use contract::{RerankNeighbor, RerankQuery, RerankRequest};
pub(crate) use http::CallFailure;

/// The configured re-rankers, built once at start.
#[derive(Default)]
pub(crate) struct Rerankers {
    by_name: BTreeMap<String, Reranker>,
}

pub(crate) enum Reranker {
    Http {
        client: Arc<http::HttpReranker>,
        mix: f64,
    },
    Head(HeadRerankerConfig),
}

impl Rerankers {
    pub(crate) fn from_config(config: &EngramConfig) -> Result<Rerankers> {
        let mut by_name = BTreeMap::new();
        for (name, reranker) in &config.rerankers {
            let built = match reranker {
                RerankerConfig::Http(http) => Reranker::Http {
                    client: http::HttpReranker::new(name, http).map_err(ApiError::internal)?,
                    mix: http.mix,
                },
                RerankerConfig::Head(head) => Reranker::Head(head.clone()),
            };
            metrics::export(name, built.kind());
            by_name.insert(name.clone(), built);
        }
        Ok(Rerankers { by_name })
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Reranker> {
        self.by_name.get(name)
    }

    fn names(&self) -> Vec<&str> {
        self.by_name.keys().map(String::as_str).collect()
    }
}

impl Reranker {
    fn kind(&self) -> &'static str {
        match self {
            Reranker::Http { .. } => "http",
            Reranker::Head(_) => "head",
        }
    }

    fn mix(&self) -> f64 {
        match self {
            Reranker::Http { mix, .. } => *mix,
            Reranker::Head(head) => head.mix,
        }
    }

    pub(crate) fn wants_image(&self) -> bool {
        matches!(self, Reranker::Http { client, .. } if client.wants_image())
    }
}

/// What one classify call hands the second stage besides its decisions.
pub(crate) struct Call<'a> {
    pub collection: &'a str,
    /// The chosen re-ranker's name.
    pub name: &'a str,
    pub k: usize,
    pub curation: &'a Curation,
    /// The queries' prepared vectors, in order (handed over: a head
    /// predicts from them on a blocking thread without a copy).
    pub vectors: Vec<Vec<f32>>,
    /// The queries' images as sent (empty unless the re-ranker wants them).
    pub images: &'a [Option<String>],
}

/// A re-ranker's answer for a whole call, before curation and fusion.
enum Outcome {
    Scores(Vec<BTreeMap<String, f64>>),
    Fallback(CallFailure),
    Skipped(CallFailure),
}

fn skipped(class: &'static str, detail: impl Into<String>) -> Outcome {
    Outcome::Skipped(CallFailure {
        class,
        detail: detail.into(),
    })
}

impl Engram {
    /// The re-ranker that takes part: the request's (which must be
    /// configured), none for `false`, else the collection's default.
    pub(crate) fn chosen_reranker(
        &self,
        requested: Option<&RerankOption>,
        curation: &Curation,
    ) -> Result<Option<String>> {
        match requested {
            Some(RerankOption::Flag(false)) => Ok(None),
            Some(RerankOption::Flag(true)) => Err(ApiError::invalid(
                "`rerank` takes a configured re-ranker's name, or false for the votes alone",
            )),
            Some(RerankOption::Named(name)) => {
                if self.inner.rerankers.get(name).is_none() {
                    return Err(ApiError::invalid(format!(
                        "unknown re-ranker `{name}`; configured: {:?}",
                        self.inner.rerankers.names()
                    )));
                }
                Ok(Some(name.clone()))
            }
            None => Ok(curation.reranker.as_ref().map(|a| a.value.clone())),
        }
    }

    /// Whether re-ranker `name` is configured and wants the query images.
    pub(crate) fn reranker_wants_image(&self, name: &str) -> bool {
        self.inner
            .rerankers
            .get(name)
            .is_some_and(Reranker::wants_image)
    }

    /// Lets re-ranker `name` take part in every decision of `results`
    /// (one call for the batch), fusing where it answered.
    pub(crate) async fn rerank(&self, call: Call<'_>, results: &mut [ClassifyResponse]) {
        let Call {
            collection,
            name,
            k,
            curation,
            vectors,
            images,
        } = call;
        let started = Instant::now();
        let reranker = self.inner.rerankers.get(name);
        let (kind, mix) = reranker.map_or(("unknown", 0.0), |r| (r.kind(), r.mix()));
        let mut head = None;
        let outcome = match reranker {
            None => skipped(
                "unknown",
                format!("the collection's default re-ranker `{name}` is not configured here"),
            ),
            Some(Reranker::Http { client, .. }) => {
                let request = http_request(collection, name, k, &vectors, images, results);
                match client.call(&request).await {
                    Ok(answer) => {
                        Outcome::Scores(answer.results.into_iter().map(|r| r.scores).collect())
                    }
                    Err(failure) => Outcome::Fallback(failure),
                }
            }
            Some(Reranker::Head(config)) => {
                let (outcome, version) = self
                    .head_scores(collection, name, config, curation, vectors)
                    .await;
                head = version;
                outcome
            }
        };
        let latency = started.elapsed();
        metrics::LATENCY
            .with_label_values(&[name])
            .observe(latency.as_secs_f64());
        if let Outcome::Fallback(f) | Outcome::Skipped(f) = &outcome {
            metrics::FALLBACKS.with_label_values(&[name, f.class]).inc();
            tracing::debug!(reranker = name, reason = %f.detail, "votes decide");
        }
        for (i, result) in results.iter_mut().enumerate() {
            let answer = decide(result, &outcome, i, curation, mix);
            let answer = RerankAnswer {
                name: name.to_string(),
                kind: kind.to_string(),
                latency_ms: latency.as_secs_f64() * 1e3,
                mix,
                head: head.clone(),
                ..answer
            };
            metrics::DECISIONS
                .with_label_values(&[name, kind, status_name(answer.status)])
                .inc();
            if answer.status == RerankStatus::Fallback && matches!(outcome, Outcome::Scores(_)) {
                metrics::FALLBACKS
                    .with_label_values(&[name, "all_blocked"])
                    .inc();
            }
            result.rerank = Some(answer);
        }
    }

    /// The head's probabilities for each vector, unless it is missing or
    /// stale (and not to be served stale).
    async fn head_scores(
        &self,
        collection: &str,
        name: &str,
        config: &HeadRerankerConfig,
        curation: &Curation,
        vectors: Vec<Vec<f32>>,
    ) -> (Outcome, Option<HeadVersion>) {
        let meta = &self.inner.meta;
        let found = meta
            .heads(collection)
            .and_then(|heads| Ok((heads.get(name).cloned(), meta.newest_receipt(collection)?)));
        let (trained, newest_receipt) = match found {
            Ok((Some(trained), newest)) => (trained, newest),
            Ok((None, _)) => {
                return (
                    skipped(
                        "untrained",
                        format!(
                            "no head trained for `{name}` on `{collection}`: start a train_head job"
                        ),
                    ),
                    None,
                );
            }
            Err(e) => {
                return (
                    Outcome::Fallback(CallFailure {
                        class: "internal",
                        detail: e.to_string(),
                    }),
                    None,
                );
            }
        };
        let stale = trained.stale_reason(newest_receipt, curation);
        let version = HeadVersion {
            job: trained.job,
            trained_at: trained.trained_at.clone(),
            version: trained.version,
            stale: stale.is_some(),
        };
        if let Some(reason) = stale
            && !config.serve_stale
        {
            return (
                skipped(
                    "stale",
                    format!("the head is stale: {reason}; retrain it (train_head job)"),
                ),
                Some(version),
            );
        }
        // Microseconds for a small head and one query; a batch against a
        // head of many classes is milliseconds of arithmetic: off the
        // async workers either way.
        let outcome =
            crate::service::blocking(move || Ok(head::predict_all(&trained.head, &vectors)))
                .await
                .unwrap_or_else(|e| {
                    Outcome::Fallback(CallFailure {
                        class: "internal",
                        detail: e.to_string(),
                    })
                });
        (outcome, Some(version))
    }
}

fn status_name(status: RerankStatus) -> &'static str {
    match status {
        RerankStatus::Ok => "ok",
        RerankStatus::Fallback => "fallback",
        RerankStatus::Skipped => "skipped",
    }
}

/// Curates and fuses query `i`'s scores into `result` (its `label` and
/// `confidence` become the fused decision); the answer's name, kind and
/// latency are the caller's to fill.
fn decide(
    result: &mut ClassifyResponse,
    outcome: &Outcome,
    i: usize,
    curation: &Curation,
    mix: f64,
) -> RerankAnswer {
    let mut answer = RerankAnswer {
        name: String::new(),
        kind: String::new(),
        status: RerankStatus::Ok,
        reason: None,
        latency_ms: 0.0,
        scores: BTreeMap::new(),
        reranker_label: None,
        mix,
        fused: BTreeMap::new(),
        vote_label: result.decision.label.clone(),
        vote_confidence: result.decision.confidence,
        head: None,
    };
    let scores = match outcome {
        Outcome::Scores(all) => all.get(i),
        Outcome::Fallback(f) | Outcome::Skipped(f) => {
            answer.status = if matches!(outcome, Outcome::Skipped(_)) {
                RerankStatus::Skipped
            } else {
                RerankStatus::Fallback
            };
            answer.reason = Some(f.detail.clone());
            return answer;
        }
    };
    let shares = scores.and_then(|s| normalize(&curate_scores(s, curation)));
    let Some(shares) = shares else {
        answer.status = RerankStatus::Fallback;
        answer.reason = Some("every label the re-ranker scored is blocked".into());
        return answer;
    };
    let fused = fuse(&result.decision.votes, &shares, mix);
    answer.reranker_label = shares
        .iter()
        .max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(a.0)))
        .map(|(label, _)| label.clone());
    result.decision.label = fused.label;
    result.decision.confidence = fused.confidence;
    answer.scores = shares;
    answer.fused = fused.scores;
    answer
}

/// The contract's request for `results` (their voters, nearest first).
fn http_request(
    collection: &str,
    name: &str,
    k: usize,
    vectors: &[Vec<f32>],
    images: &[Option<String>],
    results: &[ClassifyResponse],
) -> RerankRequest {
    let queries = results
        .iter()
        .enumerate()
        .map(|(i, result)| RerankQuery {
            vector: vectors.get(i).cloned().unwrap_or_default(),
            image: images.get(i).cloned().flatten(),
            neighbors: result
                .decision
                .neighbors
                .iter()
                .map(|n| RerankNeighbor {
                    id: n.neighbor.id,
                    label: n.neighbor.label.clone(),
                    distance: n.neighbor.distance,
                    weight: n.neighbor.weight,
                    vote: n.vote,
                    source: n.neighbor.source.clone(),
                })
                .collect(),
            votes: result.decision.votes.clone(),
        })
        .collect();
    RerankRequest {
        reranker: name.to_string(),
        collection: collection.to_string(),
        k,
        queries,
    }
}
