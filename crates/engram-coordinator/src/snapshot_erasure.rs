//! Snapshots as places of unlearned rows: which recorded snapshots still
//! hold a receipt's rows (read from each snapshot's own manifest and
//! listing), and rewriting a snapshot's shard files without them.
//!
//! A rewrite writes each changed shard file under a new name, then the
//! manifest naming the new files and the receipt as erased, then deletes
//! the old files. A rewrite cut short leaves files the manifest does not
//! name: the snapshot still counts as a place until a rewrite deletes
//! them, and it stays restorable throughout (its manifest only ever names
//! complete files with their checksums).
//!
//! One writer is expected (the receipt watch rewrites only on the Raft
//! leader; an operator's `erase` call is the exception). The files a
//! rewrite replaced are deleted at once, after reading the manifest back
//! and finding its own; files of unknown origin only once they are
//! [`STRAY_GRACE_S`] old, since a younger one may belong to a rewrite still
//! under way elsewhere, whose manifest is about to name it.

use bytes::Bytes;
use object_store::ObjectStoreExt;
use std::collections::{BTreeSet, HashSet};

use engram_core::SnapshotRecord;
use futures::TryStreamExt;

use crate::error::{ApiError, ErrorCode, Result};
use crate::service::{Engram, blocking};
use crate::snapshot_service::{
    MANIFEST, Manifest, StoredItem, child, decode_items, read_manifest, storage_error,
    write_manifest,
};

/// Seconds a file the manifest does not name must be old before a rewrite
/// deletes it (longer than any rewrite takes to write its manifest).
const STRAY_GRACE_S: i64 = 120;

/// What a recorded snapshot holds of a receipt's rows.
pub(crate) enum SnapshotHolds {
    /// Gone (deleted outside Engram, or never completed).
    Gone,
    /// The receipt is erased from it and no stray file is left.
    Nothing,
    /// It may hold them (taken before the delete, not rewritten since, or
    /// a rewrite left files behind).
    Rows,
}

impl Engram {
    /// Whether `snapshot` may still hold rows of `collection`'s receipt
    /// `receipt`, judged from the snapshot's own manifest and listing.
    pub(crate) async fn snapshot_holds(
        &self,
        snapshot: &SnapshotRecord,
        collection: &str,
        receipt: u64,
    ) -> Result<SnapshotHolds> {
        let source = self.snapshot_store(&snapshot.uri)?;
        let manifest = match read_manifest(&source, &snapshot.id).await {
            Ok(manifest) => manifest,
            Err(e) if e.code == ErrorCode::NotFound => {
                // Written from the start of a snapshot: a failed one left
                // files without a manifest, which still count.
                return Ok(if self.stray_files(snapshot, None).await?.is_empty() {
                    SnapshotHolds::Gone
                } else {
                    SnapshotHolds::Rows
                });
            }
            Err(e) => return Err(e),
        };
        if !manifest
            .collections
            .iter()
            .any(|c| c.spec.name == collection)
        {
            return Ok(SnapshotHolds::Nothing);
        }
        let erased = manifest
            .erased_receipts
            .get(collection)
            .is_some_and(|r| r.contains(&receipt));
        if erased
            && self
                .stray_files(snapshot, Some(&manifest))
                .await?
                .is_empty()
        {
            Ok(SnapshotHolds::Nothing)
        } else {
            Ok(SnapshotHolds::Rows)
        }
    }

    /// Objects below the snapshot's prefix that its manifest does not name
    /// (all of them when it has none).
    async fn stray_files(
        &self,
        snapshot: &SnapshotRecord,
        manifest: Option<&Manifest>,
    ) -> Result<Vec<(object_store::path::Path, i64)>> {
        let source = self.snapshot_store(&snapshot.uri)?;
        let root = child(&source.prefix, &snapshot.id);
        let named: HashSet<String> = manifest
            .iter()
            .flat_map(|m| m.collections.iter().flat_map(|c| &c.shards))
            .map(|s| child(&root, &s.file).to_string())
            .chain(manifest.map(|_| child(&root, MANIFEST).to_string()))
            .collect();
        let listed: Vec<object_store::ObjectMeta> = source
            .store
            .list(Some(&root))
            .try_collect()
            .await
            .map_err(|e| storage_error(&snapshot.uri, e))?;
        Ok(listed
            .into_iter()
            .filter(|o| !named.contains(o.location.as_ref()))
            .map(|o| (o.location, o.last_modified.timestamp()))
            .collect())
    }

    /// Rewrites `snapshot`'s shard files of `collection` without `ids` and
    /// records `receipts` as erased in its manifest; deletes what the
    /// manifest no longer names. Returns the rows removed.
    pub(crate) async fn erase_from_snapshot(
        &self,
        snapshot: &SnapshotRecord,
        collection: &str,
        receipts: &[u64],
        ids: &[u64],
    ) -> Result<u64> {
        let source = self.snapshot_store(&snapshot.uri)?;
        let uri = &snapshot.uri;
        let root = child(&source.prefix, &snapshot.id);
        let mut manifest = read_manifest(&source, &snapshot.id).await?;
        let doomed: std::sync::Arc<HashSet<u64>> =
            std::sync::Arc::new(ids.iter().copied().collect());
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let mut removed = 0u64;
        let mut replaced = Vec::new();
        let format = manifest.format;
        if let Some(c) = manifest
            .collections
            .iter_mut()
            .find(|c| c.spec.name == collection)
        {
            for shard in &mut c.shards {
                let bytes = source
                    .store
                    .get(&child(&root, &shard.file))
                    .await
                    .map_err(|e| storage_error(uri, e))?
                    .bytes()
                    .await
                    .map_err(|e| storage_error(uri, e))?;
                if crc32fast::hash(&bytes) != shard.crc32 {
                    return Err(ApiError::new(
                        ErrorCode::Corrupted,
                        format!(
                            "snapshot {} file {} fails its checksum; not rewritten",
                            snapshot.id, shard.file
                        ),
                    ));
                }
                let file = shard.file.clone();
                let doomed = doomed.clone();
                let (kept, gone) = blocking(move || {
                    let mut items: Vec<StoredItem> = decode_items(format, &bytes)
                        .map_err(|e| ApiError::new(ErrorCode::Corrupted, format!("{file}: {e}")))?;
                    let before = items.len();
                    items.retain(|i| !doomed.contains(&i.id));
                    let gone = before - items.len();
                    Ok((items, gone))
                })
                .await?;
                if gone == 0 {
                    continue;
                }
                removed += gone as u64;
                let encoded = blocking(move || {
                    crate::snapshot_service::encode_items(format, &kept)
                        .map_err(ApiError::internal)
                        .map(|b| (b, kept.len()))
                })
                .await?;
                let (bytes, items) = encoded;
                let file = format!("{collection}/{:04}.e{stamp}.bin", shard.shard);
                source
                    .store
                    .put(&child(&root, &file), Bytes::from(bytes.clone()).into())
                    .await
                    .map_err(|e| storage_error(uri, e))?;
                replaced.push(std::mem::replace(&mut shard.file, file));
                shard.items = items as u64;
                shard.bytes = bytes.len() as u64;
                shard.crc32 = crc32fast::hash(&bytes);
            }
        }
        let erased = manifest
            .erased_receipts
            .entry(collection.to_string())
            .or_default();
        for receipt in receipts {
            if !erased.contains(receipt) {
                erased.push(*receipt);
            }
        }
        erased.sort_unstable();
        write_manifest(&source, &root, uri, &manifest).await?;
        let ours = read_manifest(&source, &snapshot.id).await?;
        let named_now: HashSet<String> = ours
            .collections
            .iter()
            .flat_map(|c| &c.shards)
            .map(|s| s.file.clone())
            .collect();
        if serde_json::to_value(&ours).ok() == serde_json::to_value(&manifest).ok() {
            for file in &replaced {
                if !named_now.contains(file) {
                    source
                        .store
                        .delete(&child(&root, file))
                        .await
                        .map_err(|e| storage_error(uri, e))?;
                }
            }
        }
        let now = crate::unlearning::unix_now();
        for (stray, modified) in self.stray_files(snapshot, Some(&manifest)).await? {
            if now - modified < STRAY_GRACE_S {
                continue;
            }
            source
                .store
                .delete(&stray)
                .await
                .map_err(|e| storage_error(uri, e))?;
        }
        tracing::info!(snapshot = %snapshot.id, collection, receipts = ?receipts, removed, "unlearned rows removed from a snapshot");
        Ok(removed)
    }

    /// The recorded snapshots that may hold rows of `collection` deleted at
    /// `at`; snapshots found gone are forgotten on the way.
    pub(crate) async fn snapshots_holding(
        &self,
        collection: &str,
        receipt: u64,
        at: &str,
    ) -> Result<Vec<SnapshotRecord>> {
        let log = self.inner.meta.deletion_log()?;
        let mut holding = Vec::new();
        let mut gone = BTreeSet::new();
        for snapshot in log.snapshots_before(collection, at) {
            let holds = self
                .snapshot_holds(snapshot, collection, receipt)
                .await
                .unwrap_or_else(|error| {
                    // Unreadable is not clean: it still counts.
                    tracing::warn!(uri = %snapshot.uri, id = %snapshot.id, %error, "cannot check a snapshot for unlearned rows");
                    SnapshotHolds::Rows
                });
            match holds {
                SnapshotHolds::Rows => holding.push(snapshot.clone()),
                SnapshotHolds::Nothing => {}
                SnapshotHolds::Gone => {
                    gone.insert((snapshot.uri.clone(), snapshot.id.clone()));
                }
            }
        }
        for (uri, id) in gone {
            tracing::info!(uri = %uri, id = %id, "a recorded snapshot is gone; forgotten");
            self.inner.meta.forget_snapshot(&uri, &id).await?;
        }
        Ok(holding)
    }
}
