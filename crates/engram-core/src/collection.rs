//! A collection's fixed properties, chosen at creation.

use serde::{Deserialize, Serialize};

/// Longest item label, in bytes (API, ingestion and the embed step).
pub const MAX_LABEL_BYTES: usize = 256;
/// Longest item source, in bytes.
pub const MAX_SOURCE_BYTES: usize = 4096;

use crate::distance::Metric;
use crate::error::{CoreError, Result};
use crate::voting::VotingRule;

/// Largest dimension accepted; well above any image embedding in use.
pub const MAX_DIM: usize = 65_536;
/// Largest number of virtual shards a collection may be split into.
pub const MAX_SHARDS: u32 = 4_096;

/// What a collection is: set once at creation and never changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectionSpec {
    pub name: String,
    pub dim: usize,
    pub metric: Metric,
    /// Name of the embedder (from the config) that turns images into vectors;
    /// `None` for vector-only collections.
    pub embedder: Option<String>,
    /// Number of virtual shards; items map to them by jump consistent hash.
    pub shards: u32,
    pub replication: u32,
    /// Neighbours used by classify when the request gives no `k`.
    pub default_k: usize,
    pub default_rule: VotingRule,
}

impl CollectionSpec {
    pub fn validate(&self) -> Result<()> {
        validate_collection_name(&self.name)?;
        if self.dim == 0 || self.dim > MAX_DIM {
            return Err(CoreError::invalid(
                "dim",
                format!("must be between 1 and {MAX_DIM}, got {}", self.dim),
            ));
        }
        if self.shards == 0 || self.shards > MAX_SHARDS {
            return Err(CoreError::invalid(
                "shards",
                format!("must be between 1 and {MAX_SHARDS}, got {}", self.shards),
            ));
        }
        if self.replication == 0 {
            return Err(CoreError::invalid("replication", "must be at least 1"));
        }
        if self.default_k == 0 {
            return Err(CoreError::invalid("k", "must be at least 1"));
        }
        Ok(())
    }
}

/// Names are used in URLs and directory names: 1-64 of `[A-Za-z0-9_-]`,
/// starting with a letter or digit.
/// Whether `key` names one of `collection`'s shard layouts: the
/// collection's name until it is first resharded, `<name>@<generation>`
/// after (the cluster's layout keys; also the prefixes of its uploads).
pub fn is_layout_of(key: &str, collection: &str) -> bool {
    key.strip_prefix(collection)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('@'))
}

pub fn validate_collection_name(name: &str) -> Result<()> {
    let ok_len = (1..=64).contains(&name.len());
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    let ok_start = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric());
    if ok_len && ok_chars && ok_start {
        Ok(())
    } else {
        Err(CoreError::invalid(
            "name",
            format!(
                "collection names are 1-64 characters of letters, digits, '_' and '-', starting with a letter or digit; got {name:?}"
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_keys_of_a_collection() {
        assert!(is_layout_of("faces", "faces"));
        assert!(is_layout_of("faces@3", "faces"));
        assert!(!is_layout_of("faces-x", "faces"));
        assert!(!is_layout_of("faces-x@2", "faces"));
        assert!(!is_layout_of("face", "faces"));
    }

    #[test]
    fn names() {
        for good in ["a", "fashion-mnist", "Imagenet_1k", "0x"] {
            validate_collection_name(good).unwrap();
        }
        for bad in ["", "-a", "a/b", "..", "a b", &"x".repeat(65), "é"] {
            assert!(validate_collection_name(bad).is_err(), "{bad}");
        }
    }
}
