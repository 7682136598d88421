//! What a search returns.

use serde::{Deserialize, Serialize};
use std::cmp::Ordering;

/// An index hit before the item table is consulted: an external id and its
/// distance to the query. Ordered by distance, then id, so that merges and
/// ties are deterministic.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScoredId {
    pub id: u64,
    pub distance: f32,
}

impl ScoredId {
    pub fn rank_cmp(&self, other: &Self) -> Ordering {
        self.distance
            .total_cmp(&other.distance)
            .then(self.id.cmp(&other.id))
    }
}

/// A search result with the item's metadata: what voting and explanations use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Neighbor {
    pub id: u64,
    pub label: String,
    pub distance: f32,
    pub weight: f32,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub source: Option<String>,
}

impl Neighbor {
    pub fn scored(&self) -> ScoredId {
        ScoredId {
            id: self.id,
            distance: self.distance,
        }
    }
}
