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
use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use crate::error::Result;
use crate::service::Engram;
use crate::unlearning::{erasure_due, unix_s};

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

/// Receipts this node has seen `erased`, by collection and number.
#[derive(Default)]
pub(crate) struct ReceiptWatch {
    erased: Mutex<HashSet<(String, u64)>>,
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
        self.erased.lock().insert((collection.to_string(), number));
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
    /// Checks every receipt not yet known erased, and publishes the counts.
    pub async fn check_receipts(&self) -> Result<UnlearningView> {
        let watch = &self.inner.receipts;
        let mut view = UnlearningView::default();
        for collection in self.inner.backend.names() {
            let Ok(ids) = self.inner.meta.receipt_ids(&collection) else {
                continue; // deleted meanwhile
            };
            for id in ids {
                if watch.erased.lock().contains(&(collection.clone(), id)) {
                    view.erased += 1;
                    continue;
                }
                let status = match self.check_receipt(&collection, id).await {
                    Ok(status) => status,
                    Err(error) => {
                        tracing::warn!(collection = %collection, receipt = id, %error, "cannot check an unlearning receipt; counted as not erased");
                        view.deleted += 1;
                        continue;
                    }
                };
                if status.status == "erased" {
                    watch.erased.lock().insert((collection.clone(), id));
                    view.erased += 1;
                } else {
                    view.deleted += 1;
                    view.oldest_pending_s = view.oldest_pending_s.max(age_s(&status.at));
                    if status.overdue {
                        view.overdue += 1;
                        tracing::error!(
                            collection = %collection,
                            receipt = id,
                            erase_by = status.erase_by.as_deref().unwrap_or(""),
                            places = status.places.len(),
                            "unlearning receipt past its erasure deadline: deleted bytes are still stored"
                        );
                    }
                }
            }
        }
        self.inner.metrics.set_unlearning(&view);
        Ok(view)
    }

    /// Checks one receipt, and when its erasure work is due, does it and
    /// checks again.
    async fn check_receipt(
        &self,
        collection: &str,
        id: u64,
    ) -> Result<crate::dto::UnlearningStatus> {
        let inspection = self.inspect_receipt(collection, id).await?;
        let status = &inspection.status;
        let deadline = status.erase_by.as_deref().and_then(unix_s);
        let (Some(erase_by), Some(at)) = (deadline, unix_s(&status.at)) else {
            return Ok(inspection.status);
        };
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let every = self.config().curation.receipt_check_s;
        // In a cluster only the Raft leader does the work (every
        // coordinator checks): one writer per snapshot manifest, one
        // request per copy.
        let leads = self.cluster().is_none_or(|c| c.meta().is_leader());
        if !leads || status.status == "erased" || !erasure_due(at, erase_by, now, every) {
            return Ok(inspection.status);
        }
        if let Err(error) = self.erase_receipt(collection, &inspection).await {
            tracing::warn!(collection, receipt = id, %error, "erasing an unlearning receipt's rows failed; the next round tries again");
        }
        Ok(self.inspect_receipt(collection, id).await?.status)
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
