//! [`Shared`]: a value the state machine holds behind an `Arc` and encodes as
//! JSON inside its bincode log entries and snapshots.
//!
//! Why both: curation state (audit trails, pruning weights, receipts) can be
//! large, and applying any command clones the state while readers hold the
//! old one, so it must be cheap to clone; and those types use serde's tagged
//! and flattened forms, which bincode cannot decode, while JSON can.

use serde::de::{self, DeserializeOwned, Deserializer};
use serde::ser::{self, Serializer};
use serde::{Deserialize, Serialize};
use std::ops::Deref;
use std::sync::Arc;

#[derive(Debug, Default, PartialEq)]
pub struct Shared<T>(pub Arc<T>);

impl<T> Shared<T> {
    pub fn new(value: T) -> Shared<T> {
        Shared(Arc::new(value))
    }

    pub fn arc(&self) -> Arc<T> {
        self.0.clone()
    }
}

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Shared(self.0.clone())
    }
}

impl<T> Deref for Shared<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: Serialize> Serialize for Shared<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let json = serde_json::to_string(self.0.as_ref()).map_err(ser::Error::custom)?;
        serializer.serialize_str(&json)
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Shared<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let json = String::deserialize(deserializer)?;
        serde_json::from_str(&json)
            .map(Shared::new)
            .map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use engram_core::{AuditEntry, Curation, Intervention};

    #[test]
    fn tagged_and_flattened_types_survive_bincode() {
        let mut curation = Curation::default();
        let entry: AuditEntry = curation
            .apply(
                Intervention::BlockClass {
                    label: "cat".into(),
                },
                "mislabelled batch",
                "2026-11-29T00:00:00Z".into(),
            )
            .unwrap();
        let value = (Shared::new(curation), Shared::new(entry));
        let bytes = bincode::serialize(&value).unwrap();
        let back: (Shared<Curation>, Shared<AuditEntry>) = bincode::deserialize(&bytes).unwrap();
        assert_eq!(back, value);
        // Why the wrapper exists: plain bincode cannot carry the entry.
        let plain = bincode::serialize(&*value.1)
            .and_then(|bytes| bincode::deserialize::<AuditEntry>(&bytes));
        assert!(plain.is_err());
    }
}
