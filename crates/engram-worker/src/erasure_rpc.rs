//! The worker's side of unlearning receipts: where its copies still hold
//! deleted rows (each copy judged from its own files), and erasing them.

use std::collections::BTreeSet;

use crate::node::{WorkerNode, blocking, internal};
use crate::presence::{CopyPresence, Leftover, PresenceReport, QuarantinedCopy};
use crate::shard::{Presence, holds_files};
use crate::wire::{EraseReply, EraseRequest, PresenceReply, PresenceRequest, RpcError, RpcResult};

impl WorkerNode {
    /// Every copy of the asked shards this worker hosts, with where it
    /// still holds the deleted rows; segment files staged here for a copy
    /// being rebuilt; shard directories of the collection's other layouts
    /// or of no hosted copy; and the quarantined copies of those shards. A shard it neither
    /// hosts nor receives is left out (the coordinator knows which copies
    /// it expected).
    pub async fn presence(self, request: PresenceRequest) -> RpcResult<PresenceReply> {
        let node = self.clone();
        blocking(move || {
            let host = &node.inner.host;
            let me = Some(node.inner.id);
            let mut report = PresenceReport::default();
            for d in &request.deletions {
                // Segment files staged here for a copy of the shard being
                // rebuilt (hosted or not yet).
                let shipping = host.shipping_dir(&request.collection, d.shard);
                let staged: Vec<String> = holds_files(&shipping)
                    .then(|| shipping.display().to_string())
                    .into_iter()
                    .collect();
                match host.get(&request.collection, d.shard) {
                    Ok(replica) => {
                        let mut presence = replica.shard.presence(d).map_err(internal)?;
                        presence.staged.extend(staged);
                        report.copies.push(CopyPresence {
                            worker: me,
                            layout: request.collection.clone(),
                            shard: d.shard,
                            presence: Some(presence),
                            unchecked: None,
                            held_keys: replica.shard.segment_keys().map_err(internal)?,
                        });
                    }
                    Err(_) if !staged.is_empty() => {
                        report.copies.push(CopyPresence {
                            worker: me,
                            layout: request.collection.clone(),
                            shard: d.shard,
                            presence: Some(Presence {
                                staged,
                                ..Presence::default()
                            }),
                            unchecked: None,
                            held_keys: Vec::new(),
                        });
                    }
                    Err(_) => {}
                }
            }
            for (layout, dir, hosted) in host.layout_dirs(&request.collection).map_err(internal)? {
                if hosted && layout == request.collection {
                    continue; // the copies above
                }
                report.leftovers.push(Leftover {
                    worker: me,
                    layout,
                    path: dir.display().to_string(),
                    hosted,
                });
            }
            let asked: BTreeSet<u32> = request.deletions.iter().map(|d| d.shard).collect();
            for (shard, dir) in host.quarantined(&request.collection).map_err(internal)? {
                if asked.contains(&shard) {
                    report.quarantined.push(QuarantinedCopy {
                        worker: me,
                        shard,
                        path: dir.display().to_string(),
                    });
                }
            }
            Ok(PresenceReply { report })
        })
        .await
    }

    /// Rewrites, in every copy hosted here of the asked shards, what holds
    /// the deleted rows (`Shard::erase`), and deletes the quarantined
    /// copies of those shards.
    pub async fn erase(self, request: EraseRequest) -> RpcResult<EraseReply> {
        let node = self.clone();
        blocking(move || {
            let host = &node.inner.host;
            let mut reply = EraseReply::default();
            for d in &request.deletions {
                let Ok(replica) = host.get(&request.collection, d.shard) else {
                    continue;
                };
                match replica.unless_retired(|shard| shard.erase(&d.ids).map_err(internal)) {
                    Ok(done) => reply.compaction = reply.compaction + done,
                    // Replaced by a transfer meanwhile: its successor is
                    // checked (and erased) on its own.
                    Err(RpcError::Unavailable(_)) => continue,
                    Err(e) => return Err(e),
                }
            }
            let shards: BTreeSet<u32> = request.deletions.iter().map(|d| d.shard).collect();
            reply.quarantined_removed = host
                .remove_quarantined(&request.collection, &shards)
                .map_err(internal)?;
            Ok(reply)
        })
        .await
    }
}
