//! Interned labels with live item counts.

use std::collections::HashMap;
use std::sync::Arc;

/// Labels interned to dense `u32` ids, with how many live items carry each.
#[derive(Debug, Default, Clone)]
pub struct Vocabulary {
    labels: Vec<Arc<str>>,
    ids: HashMap<Arc<str>, u32, foldhash::quality::RandomState>,
    counts: Vec<u64>,
}

impl Vocabulary {
    /// The id of `label`, interning it if new.
    pub fn intern(&mut self, label: &Arc<str>) -> u32 {
        if let Some(id) = self.ids.get(label) {
            return *id;
        }
        let id = self.labels.len() as u32;
        self.labels.push(label.clone());
        self.ids.insert(label.clone(), id);
        self.counts.push(0);
        id
    }

    pub fn id_of(&self, label: &str) -> Option<u32> {
        self.ids.get(label).copied()
    }

    pub fn label(&self, id: u32) -> &Arc<str> {
        &self.labels[id as usize]
    }

    pub(crate) fn add(&mut self, id: u32, delta: i64) {
        let count = &mut self.counts[id as usize];
        *count = count
            .checked_add_signed(delta)
            .expect("label count stays non-negative");
    }

    /// `(label, live items)` for every label with at least one live item.
    pub fn counts(&self) -> impl Iterator<Item = (&Arc<str>, u64)> {
        self.labels
            .iter()
            .zip(self.counts.iter().copied())
            .filter(|(_, c)| *c > 0)
    }
}
