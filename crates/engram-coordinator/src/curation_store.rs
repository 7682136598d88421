//! Where a collection's curation lives: the embedded node's checksummed
//! files ([`MetaStore`]) or the cluster's Raft state machine. The service
//! reads and changes it through this one interface.
//!
//! Reads are in-memory snapshots either way (`Arc`s), so a decision never
//! waits for a curator. A Raft change returns once this coordinator has
//! applied it, so the caller's next request here sees it; other
//! coordinators see it as soon as they apply the entry.

use std::collections::BTreeMap;
use std::sync::Arc;

use engram_core::ShardDeletion;
use engram_core::{
    AuditEntry, Curation, DeletionLog, Intervention, PruningWeights, Receipt, Selector,
    SnapshotRecord, TrainedHead,
};
use engram_meta::{Command, CommandResult, MetaError, MetaNode, Shared};

use crate::error::{ApiError, Result};
use crate::meta::{MetaStore, now};
use crate::service::blocking;

pub(crate) enum CurationStore {
    Local(MetaStore),
    Raft(MetaNode),
}

impl CurationStore {
    pub(crate) fn curation(&self, collection: &str) -> Result<Arc<Curation>> {
        match self {
            CurationStore::Local(store) => Ok(store.get(collection)?.curation()),
            CurationStore::Raft(node) => raft_curation(node, collection, |c| c.curation.arc()),
        }
    }

    pub(crate) fn pruning(&self, collection: &str) -> Result<Option<Arc<PruningWeights>>> {
        match self {
            CurationStore::Local(store) => Ok(store.get(collection)?.pruning()),
            CurationStore::Raft(node) => {
                raft_curation(node, collection, |c| c.pruning.as_ref().map(|p| p.arc()))
            }
        }
    }

    pub(crate) async fn intervene(
        &self,
        collection: &str,
        intervention: Intervention,
        reason: String,
    ) -> Result<AuditEntry> {
        match self {
            CurationStore::Local(store) => {
                let meta = store.get(collection)?;
                blocking(move || meta.intervene(intervention, &reason)).await
            }
            CurationStore::Raft(node) => {
                let command = Command::Intervene {
                    collection: collection.to_string(),
                    intervention: Shared::new(intervention),
                    reason,
                    at: now(),
                };
                match write(node, command).await? {
                    CommandResult::Audit(entry) => Ok((*entry).clone()),
                    other => Err(unexpected(other)),
                }
            }
        }
    }

    pub(crate) async fn set_pruning(
        &self,
        collection: &str,
        weights: Option<PruningWeights>,
    ) -> Result<()> {
        match self {
            CurationStore::Local(store) => {
                let meta = store.get(collection)?;
                blocking(move || meta.set_pruning(weights)).await
            }
            CurationStore::Raft(node) => {
                let command = Command::SetPruning {
                    collection: collection.to_string(),
                    weights: weights.map(Shared::new),
                };
                write(node, command).await.map(|_| ())
            }
        }
    }

    /// Records an unlearning request whose deletes are durable.
    pub(crate) async fn record_deletion(
        &self,
        collection: &str,
        selector: Selector,
        log: Vec<ShardDeletion>,
        erase_by: Option<String>,
    ) -> Result<Receipt> {
        match self {
            CurationStore::Local(store) => {
                let meta = store.get(collection)?;
                // Logged for restores first: a crash before the receipt
                // leaves a deletion logged twice at worst, never missing.
                let ids: Vec<u64> = log.iter().flat_map(|d| d.ids.iter().copied()).collect();
                let at = now();
                store.change_deletion_log(|l| l.record_deletion(collection, &at, ids))?;
                blocking(move || meta.record_deletion(selector, log, erase_by)).await
            }
            CurationStore::Raft(node) => {
                let command = Command::RecordUnlearning {
                    collection: collection.to_string(),
                    selector: Shared::new(selector),
                    log,
                    at: now(),
                    erase_by,
                };
                match write(node, command).await? {
                    CommandResult::Receipt(receipt) => Ok((*receipt).clone()),
                    other => Err(unexpected(other)),
                }
            }
        }
    }

    /// The snapshots the deployment wrote and the deletions since each.
    pub(crate) fn deletion_log(&self) -> Result<Arc<DeletionLog>> {
        match self {
            CurationStore::Local(store) => store.deletion_log(),
            CurationStore::Raft(node) => Ok(node.state().deletion_log.arc()),
        }
    }

    /// Records a snapshot the deployment wrote.
    pub(crate) async fn record_snapshot(&self, snapshot: SnapshotRecord) -> Result<()> {
        match self {
            CurationStore::Local(store) => {
                store.change_deletion_log(|log| log.record_snapshot(snapshot))
            }
            CurationStore::Raft(node) => {
                let command = Command::RecordSnapshot {
                    snapshot: Shared::new(snapshot),
                };
                write(node, command).await.map(|_| ())
            }
        }
    }

    /// Forgets a recorded snapshot (deleted, or found gone).
    pub(crate) async fn forget_snapshot(&self, uri: &str, id: &str) -> Result<()> {
        match self {
            CurationStore::Local(store) => {
                store.change_deletion_log(|log| log.forget_snapshot(uri, id))
            }
            CurationStore::Raft(node) => {
                let command = Command::ForgetSnapshot {
                    uri: uri.to_string(),
                    id: id.to_string(),
                };
                write(node, command).await.map(|_| ())
            }
        }
    }

    /// Replaces `collection`'s curation and pruning weights (a restored
    /// snapshot).
    pub(crate) async fn restore(
        &self,
        collection: &str,
        curation: Curation,
        pruning: Option<PruningWeights>,
    ) -> Result<()> {
        match self {
            CurationStore::Local(store) => {
                let meta = store.get(collection)?;
                blocking(move || meta.restore(curation, pruning)).await
            }
            CurationStore::Raft(node) => {
                let command = Command::RestoreCuration {
                    collection: collection.to_string(),
                    curation: Shared::new(curation),
                    pruning: pruning.map(Shared::new),
                };
                write(node, command).await.map(|_| ())
            }
        }
    }

    /// Removes the embedded node's files of `collection` (in a cluster its
    /// curation goes with the collection's Raft entry).
    pub(crate) fn remove_local(&self, collection: &str) -> Result<()> {
        match self {
            CurationStore::Local(store) => store.remove(collection),
            CurationStore::Raft(_) => Ok(()),
        }
    }

    /// The trained heads of `collection` by re-ranker name.
    pub(crate) fn heads(&self, collection: &str) -> Result<BTreeMap<String, Arc<TrainedHead>>> {
        match self {
            CurationStore::Local(store) => Ok(store.get(collection)?.heads()),
            CurationStore::Raft(node) => {
                let state = node.state();
                if state.collection(collection).is_none() {
                    return Err(ApiError::not_found(format!(
                        "collection `{collection}` does not exist"
                    )));
                }
                Ok(state
                    .heads
                    .get(collection)
                    .map(|heads| heads.iter().map(|(n, h)| (n.clone(), h.arc())).collect())
                    .unwrap_or_default())
            }
        }
    }

    /// Stores (replacing) or removes a trained head.
    pub(crate) async fn set_head(
        &self,
        collection: &str,
        reranker: &str,
        head: Option<TrainedHead>,
    ) -> Result<()> {
        match self {
            CurationStore::Local(store) => {
                let meta = store.get(collection)?;
                let name = reranker.to_string();
                blocking(move || meta.set_head(&name, head)).await
            }
            CurationStore::Raft(node) => {
                let command = Command::SetHead {
                    collection: collection.to_string(),
                    reranker: reranker.to_string(),
                    head: head.map(Shared::new),
                };
                write(node, command).await.map(|_| ())
            }
        }
    }

    /// The newest unlearning receipt's number of `collection` (0: none).
    pub(crate) fn newest_receipt(&self, collection: &str) -> Result<u64> {
        match self {
            CurationStore::Local(store) => Ok(store.get(collection)?.newest_receipt()),
            CurationStore::Raft(node) => raft_curation(node, collection, |c| {
                c.receipts.keys().next_back().copied().unwrap_or(0)
            }),
        }
    }

    /// The numbers of `collection`'s receipts, ascending.
    pub(crate) fn receipt_ids(&self, collection: &str) -> Result<Vec<u64>> {
        match self {
            CurationStore::Local(store) => Ok(store.get(collection)?.receipt_ids()?),
            CurationStore::Raft(node) => raft_curation(node, collection, |c| {
                c.receipts.keys().copied().collect::<Vec<u64>>()
            }),
        }
    }

    pub(crate) fn receipt(&self, collection: &str, id: u64) -> Result<Option<Receipt>> {
        match self {
            CurationStore::Local(store) => store.get(collection)?.receipt(id),
            CurationStore::Raft(node) => raft_curation(node, collection, |c| {
                c.receipts.get(&id).map(|r| (**r).clone())
            }),
        }
    }
}

/// Reads one piece of `collection`'s curation from this coordinator's Raft
/// state (on every decision: it takes `Arc`s, never copies the record).
fn raft_curation<T>(
    node: &MetaNode,
    collection: &str,
    read: impl FnOnce(&engram_meta::CollectionCuration) -> T,
) -> Result<T> {
    node.state()
        .collection(collection)
        .map(|c| read(&c.curation))
        .ok_or_else(|| ApiError::not_found(format!("collection `{collection}` does not exist")))
}

async fn write(node: &MetaNode, command: Command) -> Result<CommandResult> {
    match node.write(command).await {
        Ok(result) => Ok(result),
        // The state machine applies the same rules as the embedded node;
        // what it refuses is the caller's mistake (or a dropped collection).
        Err(MetaError::Refused(reason)) if reason.contains("does not exist") => {
            Err(ApiError::not_found(reason))
        }
        Err(MetaError::Refused(reason)) => Err(ApiError::invalid(reason)),
        Err(e) => Err(e.into()),
    }
}

fn unexpected(result: CommandResult) -> ApiError {
    ApiError::internal(format!(
        "unexpected answer from the state machine: {result:?}"
    ))
}
