//! `[rerankers.<name>]`: the second stages a deployment offers. A request
//! or a collection names one; its endpoint is never taken from a request.

use serde::{Deserialize, Serialize};

use crate::collection::validate_collection_name;
use crate::error::{CoreError, Result};
use crate::head::HeadTraining;

/// One re-ranker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RerankerConfig {
    /// A model behind an HTTP endpoint (the contract in docs/api.md).
    Http(HttpRerankerConfig),
    /// The built-in linear head, trained from the memory by a job.
    Head(HeadRerankerConfig),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpRerankerConfig {
    /// `http://` or `https://` endpoint that takes the POST.
    pub url: String,
    /// The whole call (connect, send, answer); past it the votes decide.
    pub timeout_ms: u64,
    /// Calls in flight at once; a query finding none free falls back.
    pub max_concurrency: usize,
    /// Consecutive failures that open the circuit breaker.
    pub breaker_failures: u32,
    /// Seconds the breaker stays open before one trial call.
    pub breaker_open_s: u64,
    /// Send the query's image (base64, as given) when it had one.
    pub send_image: bool,
    /// Weight of the re-ranker's scores against the vote shares (1: the
    /// re-ranker alone decides; 0: the votes do).
    pub mix: f64,
    /// Environment variable holding a bearer token sent as
    /// `Authorization: Bearer ...` (never in the config file).
    pub token_env: Option<String>,
}

impl Default for HttpRerankerConfig {
    fn default() -> Self {
        HttpRerankerConfig {
            url: String::new(),
            timeout_ms: 250,
            max_concurrency: 16,
            breaker_failures: 5,
            breaker_open_s: 10,
            send_image: false,
            mix: 1.0,
            token_env: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeadRerankerConfig {
    /// Weight of the head's probabilities against the vote shares.
    pub mix: f64,
    /// Serve a stale head (trained before a delete or relabel) rather than
    /// skip it. Off by default: a stale head still knows unlearned rows.
    pub serve_stale: bool,
    /// Defaults of the training job (a job request may override them).
    pub training: HeadTraining,
}

impl Default for HeadRerankerConfig {
    fn default() -> Self {
        HeadRerankerConfig {
            mix: 0.5,
            serve_stale: false,
            training: HeadTraining::default(),
        }
    }
}

fn check_mix(mix: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&mix) {
        return Err(CoreError::invalid(
            "rerankers.mix",
            "must be between 0 and 1",
        ));
    }
    Ok(())
}

impl RerankerConfig {
    pub fn validate(&self, name: &str) -> Result<()> {
        validate_collection_name(name).map_err(|_| {
            CoreError::invalid(
                "rerankers",
                format!("bad re-ranker name {name:?}: 1-64 of [A-Za-z0-9_-]"),
            )
        })?;
        match self {
            RerankerConfig::Http(http) => {
                if !(http.url.starts_with("http://") || http.url.starts_with("https://")) {
                    return Err(CoreError::invalid(
                        "rerankers.url",
                        format!("re-ranker `{name}`: must be an http:// or https:// URL"),
                    ));
                }
                if !(1..=60_000).contains(&http.timeout_ms) {
                    return Err(CoreError::invalid(
                        "rerankers.timeout_ms",
                        "must be between 1 and 60000",
                    ));
                }
                if http.max_concurrency == 0 || http.breaker_failures == 0 {
                    return Err(CoreError::invalid(
                        "rerankers.max_concurrency",
                        "max_concurrency and breaker_failures must be at least 1",
                    ));
                }
                check_mix(http.mix)
            }
            RerankerConfig::Head(head) => {
                check_mix(head.mix)?;
                head.training.validate()
            }
        }
    }

    /// Its `kind` as the config writes it.
    pub fn kind(&self) -> &'static str {
        match self {
            RerankerConfig::Http(_) => "http",
            RerankerConfig::Head(_) => "head",
        }
    }

    pub fn mix(&self) -> f64 {
        match self {
            RerankerConfig::Http(http) => http.mix,
            RerankerConfig::Head(head) => head.mix,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_with_defaults_and_validate() {
        let http: RerankerConfig =
            serde_json::from_str(r#"{"kind":"http","url":"http://127.0.0.1:9/rerank"}"#).unwrap();
        assert_eq!(http.kind(), "http");
        assert_eq!(http.mix(), 1.0);
        http.validate("gemini").unwrap();
        let head: RerankerConfig =
            serde_json::from_str(r#"{"kind":"head","mix":0.3,"training":{"epochs":5}}"#).unwrap();
        let RerankerConfig::Head(h) = &head else {
            panic!("not a head")
        };
        assert_eq!(h.training.epochs, 5);
        assert_eq!(h.training.batch_size, HeadTraining::default().batch_size);
        head.validate("head").unwrap();
        let bad: RerankerConfig =
            serde_json::from_str(r#"{"kind":"http","url":"file:///etc/passwd"}"#).unwrap();
        assert!(bad.validate("x").is_err());
        assert!(head.validate("no spaces").is_err());
        assert!(serde_json::from_str::<RerankerConfig>(r#"{"kind":"http","urll":"x"}"#).is_err());
        assert!(serde_json::from_str::<RerankerConfig>(r#"{"kind":"gpt"}"#).is_err());
    }
}
