//! Unlearning receipts: where a delete's bytes still are, checked place by
//! place from the things themselves (each copy's own files, the object
//! listing, running jobs, recorded snapshots' manifests), and the work
//! that removes them by the receipt's erasure deadline
//! (`curation.erase_within_s`, or the delete's own).

mod deadline;
mod places;

use std::collections::{BTreeMap, BTreeSet};

pub use deadline::{deadline_after, erasure_due, unix_s};
pub use places::Place;

use engram_core::shard::shard_of;
use engram_core::{Receipt, ShardDeletion};
use engram_store::ObjectLocation;

use crate::dto::{LogPosition, PresentIn, SegmentRef, UnlearningList, UnlearningStatus};
use crate::error::{ApiError, Result};
use crate::jobs::JobState;
use crate::meta::now;
use crate::service::{Engram, blocking};

/// Seconds an unreferenced uploaded segment must be older than the check
/// that found it before the node deletes it: more than the clocks of the
/// object store and this node may differ, so that a segment uploaded after
/// the copies were asked (which they hold, but did not report) is never
/// taken for garbage.
const CLOCK_SKEW_S: i64 = 30;

/// A receipt as checked now, and what the node may do about it.
pub(crate) struct Inspection {
    pub status: UnlearningStatus,
    log: Vec<ShardDeletion>,
    deletable_objects: Vec<String>,
}

/// Now, in Unix seconds.
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Engram {
    /// The erasure deadline of a delete asking for `within` seconds (the
    /// configured `curation.erase_within_s` when it names none; none at 0).
    pub(crate) fn erase_by(&self, within: Option<u64>) -> Option<String> {
        let within = within.unwrap_or(self.config().curation.erase_within_s);
        (within > 0).then(|| deadline_after(within))
    }

    /// Where the items of an unlearning receipt may still be physically
    /// present, place by place; `erased` when nowhere.
    pub async fn unlearning(&self, collection: &str, receipt: u64) -> Result<UnlearningStatus> {
        Ok(self.inspect_receipt(collection, receipt).await?.status)
    }

    /// Every receipt of `collection`, oldest first (`overdue`: only those
    /// past their deadline). Receipts known `erased` are not checked again
    /// (nothing brings deleted bytes back).
    pub async fn unlearning_list(&self, collection: &str, overdue: bool) -> Result<UnlearningList> {
        self.hosted_collection(collection)?;
        let mut receipts = Vec::new();
        for number in self.inner.meta.receipt_ids(collection)? {
            let status = if self.inner.receipts.is_erased(collection, number) {
                self.erased_status(collection, number)?
            } else {
                let status = self.unlearning(collection, number).await?;
                if status.status == "erased" {
                    self.inner.receipts.mark_erased(collection, number);
                }
                status
            };
            if !overdue || status.overdue {
                receipts.push(status);
            }
        }
        Ok(UnlearningList { receipts })
    }

    /// Does the work that erases `number`'s bytes now (see
    /// [`Self::erase_receipt`]) and checks it again.
    pub async fn erase_now(&self, collection: &str, number: u64) -> Result<UnlearningStatus> {
        let inspection = self.inspect_receipt(collection, number).await?;
        if inspection.status.status != "erased" {
            self.erase_receipts(collection, std::slice::from_ref(&inspection))
                .await?;
        }
        self.unlearning(collection, number).await
    }

    /// A receipt already seen `erased`, without asking anyone again.
    fn erased_status(&self, collection: &str, number: u64) -> Result<UnlearningStatus> {
        Ok(status_of(
            &self.receipt(collection, number)?,
            Vec::new(),
            false,
        ))
    }

    fn receipt(&self, collection: &str, number: u64) -> Result<Receipt> {
        self.inner.meta.receipt(collection, number)?.ok_or_else(|| {
            ApiError::not_found(format!("no unlearning receipt {number} in `{collection}`"))
        })
    }

    pub(crate) async fn inspect_receipt(
        &self,
        collection: &str,
        number: u64,
    ) -> Result<Inspection> {
        let hosted = self.hosted_collection(collection)?;
        let receipt = self.receipt(collection, number)?;
        let started = unix_now();
        let spec = hosted.spec();
        let mut touched = BTreeSet::new();
        for shards in std::iter::once(spec.shards).chain(hosted.reshard_target()) {
            touched.extend(receipt.ids().map(|id| shard_of(id, shards)));
        }
        let log = receipt.log.clone();
        let report = {
            let (hosted, log) = (hosted.clone(), log.clone());
            blocking(move || Ok(hosted.presence(&log)?)).await?
        };
        let (shard_objects, job_objects) = self.segment_objects(collection).await?;
        let receipt_at = unix_s(&receipt.at).unwrap_or(i64::MAX);
        let running_jobs: BTreeSet<u64> = self
            .jobs(collection)?
            .jobs
            .into_iter()
            .filter(|j| {
                j.kind == "ingest"
                    && j.state == JobState::Running
                    && j.params.get("bulk").and_then(|b| b.as_bool()) == Some(true)
                    && unix_s(&j.started_at).is_some_and(|at| at <= receipt_at)
            })
            .map(|j| j.id)
            .collect();
        let snapshots = self
            .snapshots_holding(collection, number, &receipt.at)
            .await?
            .into_iter()
            .map(|s| (s.uri, s.id))
            .collect();
        let heads = self
            .inner
            .meta
            .heads(collection)?
            .values()
            .map(|h| places::HeadFound {
                reranker: h.reranker.clone(),
                job: h.job,
                trained_at: h.trained_at.clone(),
                trained_after_receipt: h.version.receipt,
            })
            .collect();
        let plan = places::plan(&places::Found {
            collection,
            receipt: number,
            heads,
            touched,
            report,
            shard_objects,
            job_objects,
            running_jobs,
            snapshots,
            deletable_before: started - CLOCK_SKEW_S,
        });
        let erased = plan.places.is_empty();
        let overdue = !erased
            && receipt
                .erase_by
                .as_deref()
                .and_then(unix_s)
                .is_some_and(|by| by < unix_now());
        let status = status_of(&receipt, plan.places, overdue);
        Ok(Inspection {
            status,
            log,
            deletable_objects: plan.deletable_objects,
        })
    }

    /// The work that removes what `inspections` (receipts of one
    /// collection) found and the node can remove, in one batch: every copy
    /// rewrites exactly the segments and WAL that hold the rows (and drops
    /// quarantined copies of their shards), each snapshot taken before the
    /// deletes is rewritten once without them, and uploaded segments no
    /// copy holds any more are deleted. Transfers in flight, running jobs,
    /// leftover directories and copies that did not answer are waited for.
    pub(crate) async fn erase_receipts(
        &self,
        collection: &str,
        inspections: &[Inspection],
    ) -> Result<()> {
        let places = || inspections.iter().flat_map(|i| &i.status.places);
        let in_copies = places().any(|p| {
            matches!(
                p,
                Place::Wal { .. } | Place::Segment { .. } | Place::Quarantined { .. }
            )
        });
        let receipts: Vec<u64> = inspections.iter().map(|i| i.status.receipt).collect();
        if in_copies {
            let hosted = self.hosted_collection(collection)?;
            let log: Vec<ShardDeletion> = inspections
                .iter()
                .flat_map(|i| i.log.iter().cloned())
                .collect();
            let done = blocking(move || Ok(hosted.erase(&log)?)).await?;
            tracing::info!(
                collection,
                receipts = ?receipts,
                segments_rewritten = done.segments_rewritten,
                wals_rewritten = done.wals_rewritten,
                bytes_reclaimed = done.bytes_reclaimed,
                "erasing unlearning receipts' rows"
            );
        }
        let log = self.inner.meta.deletion_log()?;
        let mut snapshots: BTreeMap<(String, String), (Vec<u64>, Vec<u64>)> = BTreeMap::new();
        for inspection in inspections {
            for place in &inspection.status.places {
                if let Place::Snapshot { uri, id } = place {
                    let entry = snapshots.entry((uri.clone(), id.clone())).or_default();
                    entry.0.push(inspection.status.receipt);
                    entry.1.extend(&inspection.status.ids);
                }
            }
        }
        for ((uri, id), (numbers, ids)) in snapshots {
            let Some(snapshot) = log.snapshots.iter().find(|s| s.uri == uri && s.id == id) else {
                continue;
            };
            self.erase_from_snapshot(snapshot, collection, &numbers, &ids)
                .await?;
        }
        let heads: BTreeSet<&String> = places()
            .filter_map(|p| match p {
                Place::Head { reranker, .. } => Some(reranker),
                _ => None,
            })
            .collect();
        for reranker in heads {
            self.retrain_head(collection, reranker, &receipts).await?;
        }
        let objects: BTreeSet<&String> = inspections
            .iter()
            .flat_map(|i| &i.deletable_objects)
            .collect();
        if !objects.is_empty()
            && let Some(location) = self.segments_location()?
        {
            for object in &objects {
                location.delete(object).await?;
            }
            tracing::info!(
                collection,
                receipts = ?receipts,
                objects = objects.len(),
                "deleted uploaded segments that may hold unlearned rows"
            );
        }
        Ok(())
    }

    /// `storage.segments_uri`, opened, when set.
    fn segments_location(&self) -> Result<Option<ObjectLocation>> {
        let storage = &self.config().storage;
        storage
            .segments_uri
            .as_deref()
            .map(|uri| ObjectLocation::parse(uri, storage).map_err(ApiError::from))
            .transpose()
    }

    /// The uploaded segments of `collection`: its shards' (by primaries,
    /// below `shards/<layout>/` for each of its layouts) and its bulk
    /// jobs'. Nothing without `storage.segments_uri`.
    async fn segment_objects(
        &self,
        collection: &str,
    ) -> Result<(Vec<places::Listed>, Vec<places::Listed>)> {
        let Some(location) = self.segments_location()? else {
            return Ok((Vec::new(), Vec::new()));
        };
        let mut shards = Vec::new();
        for layout in layouts_below(&location, collection).await? {
            shards.extend(location.list(&format!("shards/{layout}")).await?);
        }
        let jobs = location.list(collection).await?;
        Ok((shards, jobs))
    }
}

impl Engram {
    /// After `collection` was dropped: deletes, in the background, its
    /// uploaded segments (every layout's) and its bulk jobs' objects last
    /// written before now (its receipts went with it, so nothing else
    /// would; a collection created again under the name keeps its own
    /// newer uploads).
    pub(crate) fn sweep_dropped_uploads(&self, collection: &str) {
        let Ok(Some(location)) = self.segments_location() else {
            return;
        };
        let collection = collection.to_string();
        let before = unix_now();
        tokio::spawn(async move {
            let swept =
                async {
                    let mut objects = Vec::new();
                    for layout in layouts_below(&location, &collection).await? {
                        objects.extend(location.list(&format!("shards/{layout}")).await?);
                    }
                    objects.extend(location.list(&collection).await?.into_iter().filter(
                        |(key, _)| {
                            key.strip_prefix(&format!("{collection}/"))
                                .is_some_and(|rest| rest.starts_with("job-"))
                        },
                    ));
                    let mut deleted = 0usize;
                    for (key, modified) in objects {
                        if modified <= before {
                            location.delete(&key).await?;
                            deleted += 1;
                        }
                    }
                    Ok::<usize, ApiError>(deleted)
                };
            match swept.await {
                Ok(objects) => {
                    tracing::info!(collection = %collection, objects, "deleted a dropped collection's uploaded segments")
                }
                Err(error) => {
                    tracing::warn!(collection = %collection, %error, "could not delete a dropped collection's uploaded segments")
                }
            }
        });
    }
}

/// The layout keys with uploads below `shards/` that are `collection`'s:
/// its name and `<name>@<generation>` (one per resharding).
pub(crate) async fn layouts_below(
    location: &ObjectLocation,
    collection: &str,
) -> Result<Vec<String>> {
    let listing = location
        .store
        .list_with_delimiter(Some(&location.object("shards")))
        .await
        .map_err(|e| {
            ApiError::new(
                crate::error::ErrorCode::Unavailable,
                format!("{}: {e}", location.uri_of("shards")),
            )
        })?;
    Ok(listing
        .common_prefixes
        .iter()
        .filter_map(|p| p.filename().map(str::to_string))
        .filter(|layout| engram_core::collection::is_layout_of(layout, collection))
        .collect())
}

/// `receipt` as checked now: `erased` when `places` is empty.
fn status_of(receipt: &Receipt, places: Vec<Place>, overdue: bool) -> UnlearningStatus {
    let erased = places.is_empty();
    UnlearningStatus {
        receipt: receipt.receipt,
        at: receipt.at.clone(),
        selector: receipt.selector.clone(),
        deleted: receipt.deleted,
        status: if erased { "erased" } else { "deleted" }.to_string(),
        present_in: present_in(&places),
        places,
        erase_by: receipt.erase_by.clone(),
        overdue,
        checked_at: now(),
        log_positions: receipt
            .log
            .iter()
            .map(|d| LogPosition {
                shard: d.shard,
                wal_generation: d.wal_generation,
                wal_offset: d.wal_offset,
            })
            .collect(),
        ids: receipt.ids().collect(),
        stale_pruning_weights: receipt.stale_pruning_weights,
    }
}

/// The places in the receipt's earlier shape.
fn present_in(places: &[Place]) -> PresentIn {
    let mut wal_shards = BTreeSet::new();
    let mut segments = BTreeSet::new();
    let mut snapshots = BTreeSet::new();
    for place in places {
        match place {
            Place::Wal { shard, .. } => {
                wal_shards.insert(*shard);
            }
            Place::Segment { shard, segment, .. } => {
                segments.insert((*shard, segment.clone()));
            }
            Place::Snapshot { uri, id } => {
                snapshots.insert(format!("{uri}#{id}"));
            }
            _ => {}
        }
    }
    PresentIn {
        wal_shards: wal_shards.into_iter().collect(),
        sealed_segments: segments
            .into_iter()
            .map(|(shard, segment)| SegmentRef { shard, segment })
            .collect(),
        snapshots: snapshots.into_iter().collect(),
    }
}
