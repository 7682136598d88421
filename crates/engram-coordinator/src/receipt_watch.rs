//! Following unlearning receipts until their bytes are gone: every
//! `curation.receipt_check_s` the node asks, for each receipt not yet
//! known `erased`, where the deleted rows' bytes still are (the same check
//! as `GET .../unlearning/{n}`), and publishes how many receipts are still
//! `deleted` and how long the oldest has waited
//! (`engram_unlearning_receipts{status}`,
//! `engram_unlearning_oldest_pending_seconds`). An alert on the age says a
//! receipt is overdue: compaction is not reaching the segments or WAL that
//! still hold its rows.
//!
//! A receipt with an erasure deadline gets the work that meets it once it
//! is due (`unlearning::erasure_due`: halfway to the deadline, or a few
//! rounds before it): its copies rewrite what holds the rows, uploaded
//! segments no copy holds are deleted. A receipt past its deadline and not
//! `erased` is overdue: logged at error level every round, counted in
//! `engram_unlearning_overdue_receipts`, and flagged in its status.
//!
//! `erased` is final (nothing brings deleted bytes back), so an erased
//! receipt is remembered and never checked again; only pending ones cost
//! a check each round.

use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime};

use crate::error::Result;
use crate::service::Engram;
use crate::unlearning::{erasure_due, unix_now, unix_s};

/// What one round of checks found.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct UnlearningView {
    /// Receipts whose rows still have bytes on disk.
    pub deleted: u64,
    /// Receipts whose rows are gone from every file.
    pub erased: u64,
    /// Seconds since the oldest `deleted` receipt was issued (0 if none).
    pub oldest_pending_s: f64,
    /// `deleted` receipts past their erasure deadline.
    pub overdue: u64,
}

/// Rounds a pending receipt whose erasure is not due yet may go unchecked
/// (its age and deadline come from the record itself meanwhile): checking
/// every receipt every round asks every worker once per receipt.
const IDLE_ROUNDS: u32 = 10;

/// Receipts this node has seen `erased`, by collection and number, and
/// when pending ones were last checked.
#[derive(Default)]
pub(crate) struct ReceiptWatch {
    erased: Mutex<HashSet<(String, u64)>>,
    checked: Mutex<HashMap<(String, u64), Instant>>,
}

impl UnlearningView {
    /// Counts a receipt that is not erased (age from `at`).
    fn count_pending(&mut self, at: &str, overdue: bool) {
        self.deleted += 1;
        self.oldest_pending_s = self.oldest_pending_s.max(age_s(at));
        if overdue {
            self.overdue += 1;
        }
    }

    /// Counts a checked receipt that is not erased, loudly when overdue.
    fn count(&mut self, collection: &str, status: &crate::dto::UnlearningStatus) {
        self.count_pending(&status.at, status.overdue);
        if status.overdue {
            tracing::error!(
                collection,
                receipt = status.receipt,
                erase_by = status.erase_by.as_deref().unwrap_or(""),
                places = status.places.len(),
                "unlearning receipt past its erasure deadline: deleted bytes are still stored"
            );
        }
    }
}

impl ReceiptWatch {
    /// Whether receipt `number` of `collection` was seen `erased`.
    pub(crate) fn is_erased(&self, collection: &str, number: u64) -> bool {
        self.erased
            .lock()
            .contains(&(collection.to_string(), number))
    }

    /// Remembers that receipt `number` of `collection` is `erased` (final).
    pub(crate) fn mark_erased(&self, collection: &str, number: u64) {
        let key = (collection.to_string(), number);
        self.checked.lock().remove(&key);
        self.erased.lock().insert(key);
    }

    /// Whether a pending receipt not due for erasure should be checked
    /// this round (never checked, or not for `IDLE_ROUNDS` rounds).
    fn wants_check(&self, collection: &str, number: u64, every: Duration) -> bool {
        let key = (collection.to_string(), number);
        let mut checked = self.checked.lock();
        match checked.get(&key) {
            Some(at) if at.elapsed() < every * IDLE_ROUNDS => false,
            _ => {
                checked.insert(key, Instant::now());
                true
            }
        }
    }
}

/// Seconds from RFC 3339 `at` to now; 0 if `at` does not parse.
fn age_s(at: &str) -> f64 {
    humantime::parse_rfc3339(at)
        .ok()
        .and_then(|then| SystemTime::now().duration_since(then).ok())
        .map_or(0.0, |age| age.as_secs_f64())
}

impl Engram {
    /// Checks the receipts not yet known erased (those whose erasure is
    /// not due only every few rounds), does the erasure work of those due
    /// (on the Raft leader; one batch per collection, so a segment holding
    /// rows of many receipts is rewritten once), and publishes the counts.
    pub async fn check_receipts(&self) -> Result<UnlearningView> {
        let watch = &self.inner.receipts;
        let every = Duration::from_secs(self.config().curation.receipt_check_s.max(1));
        // In a cluster only the Raft leader does the work (every
        // coordinator checks): one writer per snapshot manifest, one
        // request per copy.
        let leads = self.cluster().is_none_or(|c| c.meta().is_leader());
        let now = unix_now();
        let mut view = UnlearningView::default();
        for collection in self.inner.backend.names() {
            let Ok(ids) = self.inner.meta.receipt_ids(&collection) else {
                continue; // deleted meanwhile
            };
            let mut due = Vec::new();
            for id in ids {
                if watch.is_erased(&collection, id) {
                    view.erased += 1;
                    continue;
                }
                let Ok(Some(receipt)) = self.inner.meta.receipt(&collection, id) else {
                    continue;
                };
                let deadline = receipt.erase_by.as_deref().and_then(unix_s);
                let is_due = match (deadline, unix_s(&receipt.at)) {
                    (Some(by), Some(at)) => leads && erasure_due(at, by, now, every.as_secs()),
                    _ => false,
                };
                if !is_due && !watch.wants_check(&collection, id, every) {
                    view.count_pending(&receipt.at, deadline.is_some_and(|by| by < now));
                    continue;
                }
                match self.inspect_receipt(&collection, id).await {
                    Ok(inspection) if inspection.status.status == "erased" => {
                        watch.mark_erased(&collection, id);
                        view.erased += 1;
                    }
                    Ok(inspection) if is_due => due.push(inspection),
                    Ok(inspection) => view.count(&collection, &inspection.status),
                    Err(error) => {
                        tracing::warn!(collection = %collection, receipt = id, %error, "cannot check an unlearning receipt; counted as not erased");
                        view.count_pending(&receipt.at, deadline.is_some_and(|by| by < now));
                    }
                }
            }
            if due.is_empty() {
                continue;
            }
            if let Err(error) = self.erase_receipts(&collection, &due).await {
                tracing::warn!(collection = %collection, receipts = due.len(), %error, "erasing unlearning receipts' rows failed; the next round tries again");
            }
            for inspection in due {
                let id = inspection.status.receipt;
                match self.inspect_receipt(&collection, id).await {
                    Ok(again) if again.status.status == "erased" => {
                        watch.mark_erased(&collection, id);
                        view.erased += 1;
                    }
                    Ok(again) => view.count(&collection, &again.status),
                    Err(_) => view.count(&collection, &inspection.status),
                }
            }
        }
        self.inner.metrics.set_unlearning(&view);
        Ok(view)
    }

    /// Runs [`Self::check_receipts`] every `curation.receipt_check_s`
    /// seconds (first at once) until the returned task is dropped or aborted.
    pub fn spawn_receipt_watch(&self) -> Option<tokio::task::JoinHandle<()>> {
        let every = self.config().curation.receipt_check_s;
        if every == 0 {
            return None;
        }
        let this = self.clone();
        Some(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_secs(every));
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                if let Err(error) = this.check_receipts().await {
                    tracing::error!(%error, "checking unlearning receipts failed; retrying next round");
                }
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_come_from_the_receipts_timestamp() {
        let hour_ago =
            humantime::format_rfc3339_seconds(SystemTime::now() - Duration::from_secs(3600))
                .to_string();
        let age = age_s(&hour_ago);
        assert!((3599.0..3700.0).contains(&age), "{age}");
        assert_eq!(age_s("not a time"), 0.0);
    }
}
