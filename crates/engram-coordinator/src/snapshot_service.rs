//! Snapshots: every collection's spec, curation and items, written to
//! object storage (or a local directory), and restored into an empty
//! deployment.
//!
//! Layout under the URI: `<id>/<collection>/<shard>.bin` (bincode items,
//! their CRC32 in the manifest) and `<id>/manifest.json`, written last: a
//! snapshot without a manifest is incomplete and never listed. Each shard
//! is copied at one instant (its writes wait meanwhile), so every write
//! acknowledged before the snapshot began is in it; shards are copied one
//! after another, so a write acknowledged during the snapshot may be in
//! some shards' copies and not others'. Restoring checks every CRC32
//! before anything is written and refuses a damaged snapshot.
//!
//! Unlearning (`engram_core::deletion_log`): every snapshot is recorded in
//! the deployment's deletion log before its first shard is copied, so a
//! delete acknowledged while it is written is logged for it too. Restoring
//! leaves out the rows of every id deleted since the snapshot was taken
//! (and says how many), and a receipt's erasure rewrites the snapshot's
//! shard files without its rows (`snapshot_erasure.rs`).

use bytes::Bytes;
use object_store::ObjectStoreExt;
use object_store::path::Path as ObjectPath;
use serde::{Deserialize, Serialize};
use std::time::Instant;

use engram_core::{CollectionSpec, Curation, PruningWeights, SnapshotRecord};
use engram_ingest::source::Source;
use engram_store::WalOp;
use std::collections::{BTreeMap, HashSet};

use crate::error::{ApiError, ErrorCode, Result};
use crate::meta::now;
use crate::service::{Engram, blocking};

pub(crate) const MANIFEST: &str = "manifest.json";
/// 2: items carry their thumbnails. Snapshots of format 1 (without) are
/// still restored.
const FORMAT: u32 = 2;
/// Items per write while restoring.
const RESTORE_BATCH: usize = 1_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRequest {
    /// Where: `s3://bucket/prefix`, `gs://...`, `az://...`, or a path.
    pub uri: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    pub uri: String,
    pub id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub id: String,
    pub created_at: String,
    pub collections: Vec<CollectionSnapshot>,
    /// Per collection, the unlearning receipts whose rows were removed
    /// from this snapshot's files after it was written.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub erased_receipts: BTreeMap<String, Vec<u64>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CollectionSnapshot {
    pub spec: CollectionSpec,
    pub curation: Curation,
    pub pruning: Option<PruningWeights>,
    pub shards: Vec<ShardFile>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardFile {
    pub shard: u32,
    pub file: String,
    pub items: u64,
    pub bytes: u64,
    pub crc32: u32,
}

/// One item as a snapshot stores it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StoredItem {
    pub(crate) id: u64,
    label: String,
    weight: f32,
    source: Option<String>,
    vector: Vec<f32>,
    thumbnail: Option<Vec<u8>>,
}

/// One item as a format-1 snapshot stored it (before thumbnails).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredItemV1 {
    id: u64,
    label: String,
    weight: f32,
    source: Option<String>,
    vector: Vec<f32>,
}

/// A shard file's items, as its snapshot's `format` wrote them.
pub(crate) fn decode_items(
    format: u32,
    bytes: &[u8],
) -> std::result::Result<Vec<StoredItem>, String> {
    if format == 1 {
        let old: Vec<StoredItemV1> = bincode::deserialize(bytes).map_err(|e| e.to_string())?;
        return Ok(old
            .into_iter()
            .map(|i| StoredItem {
                id: i.id,
                label: i.label,
                weight: i.weight,
                source: i.source,
                vector: i.vector,
                thumbnail: None,
            })
            .collect());
    }
    bincode::deserialize(bytes).map_err(|e| e.to_string())
}

/// A shard file's bytes for a snapshot of `format` (a rewrite keeps the
/// snapshot's format: its manifest names one for every file).
pub(crate) fn encode_items(
    format: u32,
    items: &[StoredItem],
) -> std::result::Result<Vec<u8>, String> {
    if format == 1 {
        let old: Vec<StoredItemV1> = items
            .iter()
            .map(|i| StoredItemV1 {
                id: i.id,
                label: i.label.clone(),
                weight: i.weight,
                source: i.source.clone(),
                vector: i.vector.clone(),
            })
            .collect();
        return bincode::serialize(&old).map_err(|e| e.to_string());
    }
    bincode::serialize(items).map_err(|e| e.to_string())
}

/// What a created, listed or restored snapshot holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotSummary {
    pub id: String,
    pub created_at: String,
    pub collections: Vec<String>,
    pub items: u64,
    pub bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub seconds: Option<f64>,
    /// Restored: rows left out because their ids were deleted after the
    /// snapshot was taken (the deletion log of this deployment).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reapplied_deletions: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotList {
    pub snapshots: Vec<SnapshotSummary>,
}

impl Manifest {
    fn summary(&self, seconds: Option<f64>) -> SnapshotSummary {
        let shards = self.collections.iter().flat_map(|c| &c.shards);
        SnapshotSummary {
            id: self.id.clone(),
            created_at: self.created_at.clone(),
            collections: self
                .collections
                .iter()
                .map(|c| c.spec.name.clone())
                .collect(),
            items: shards.clone().map(|s| s.items).sum(),
            bytes: shards.map(|s| s.bytes).sum(),
            seconds,
            reapplied_deletions: None,
        }
    }
}

pub(crate) fn storage_error(uri: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::Unavailable, format!("{uri}: {e}"))
}

impl Engram {
    pub(crate) fn snapshot_store(&self, uri: &str) -> Result<Source> {
        self.open_request_source(uri)
    }

    /// Copies every collection to `uri` under a new snapshot id.
    pub async fn create_snapshot(&self, request: SnapshotRequest) -> Result<SnapshotSummary> {
        let started = Instant::now();
        let source = self.snapshot_store(&request.uri)?;
        let id = format!(
            "{}-{:04}",
            now().replace([':', '-'], ""),
            std::process::id() % 10_000
        );
        let root = child(&source.prefix, &id);
        let mut manifest = Manifest {
            format: FORMAT,
            id: id.clone(),
            created_at: now(),
            collections: Vec::new(),
            erased_receipts: BTreeMap::new(),
        };
        let record = SnapshotRecord {
            uri: request.uri.clone(),
            id: id.clone(),
            created_at: manifest.created_at.clone(),
            collections: self.inner.backend.names(),
        };
        self.inner.meta.record_snapshot(record).await?;
        let written = self
            .write_snapshot(&source, &root, &request.uri, &mut manifest)
            .await;
        if let Err(error) = written {
            if let Err(e) = self.inner.meta.forget_snapshot(&request.uri, &id).await {
                tracing::warn!(id = %id, error = %e, "a failed snapshot stays in the deletion log");
            }
            return Err(error);
        }
        let summary = manifest.summary(Some(started.elapsed().as_secs_f64()));
        tracing::info!(id = %summary.id, uri = %request.uri, items = summary.items, "snapshot written");
        Ok(summary)
    }

    /// Copies every collection below `root` and writes the manifest last.
    async fn write_snapshot(
        &self,
        source: &Source,
        root: &ObjectPath,
        uri: &str,
        manifest: &mut Manifest,
    ) -> Result<()> {
        for name in self.inner.backend.names() {
            let collection = self.hosted(&name)?;
            let spec = collection.spec();
            if let Some(to) = collection.reshard_target() {
                return Err(ApiError::new(
                    ErrorCode::Conflict,
                    format!(
                        "`{name}` is being resharded to {to} shards; take the snapshot once it has finished"
                    ),
                ));
            }
            let mut shards = Vec::new();
            for shard in 0..spec.shards {
                let copy = collection.clone();
                let items = blocking(move || Ok(copy.snapshot_shard(shard)?)).await?;
                let stored: Vec<StoredItem> = items
                    .into_iter()
                    .map(|i| StoredItem {
                        id: i.id,
                        label: i.label.to_string(),
                        weight: i.weight,
                        source: i.source.map(|s| s.to_string()),
                        vector: i.vector,
                        thumbnail: i.thumbnail.map(|t| t.to_vec()),
                    })
                    .collect();
                let bytes =
                    bincode::serialize(&stored).map_err(|e| ApiError::internal(e.to_string()))?;
                let file = format!("{name}/{shard:04}.bin");
                let entry = ShardFile {
                    shard,
                    file: file.clone(),
                    items: stored.len() as u64,
                    bytes: bytes.len() as u64,
                    crc32: crc32fast::hash(&bytes),
                };
                source
                    .store
                    .put(&child(root, &file), Bytes::from(bytes).into())
                    .await
                    .map_err(|e| storage_error(uri, e))?;
                shards.push(entry);
            }
            if collection.spec().shards != spec.shards {
                return Err(ApiError::new(
                    ErrorCode::Conflict,
                    format!("`{name}` was resharded while the snapshot read it; take it again"),
                ));
            }
            manifest.collections.push(CollectionSnapshot {
                curation: (*self.inner.meta.curation(&name)?).clone(),
                pruning: self.inner.meta.pruning(&name)?.map(|p| (*p).clone()),
                spec,
                shards,
            });
        }
        write_manifest(source, root, uri, manifest).await
    }

    /// The complete snapshots under `uri`, oldest first.
    pub async fn list_snapshots(&self, uri: &str) -> Result<SnapshotList> {
        let source = self.snapshot_store(uri)?;
        let listing = source
            .store
            .list_with_delimiter(Some(&source.prefix))
            .await
            .map_err(|e| storage_error(uri, e))?;
        let mut snapshots = Vec::new();
        for dir in listing.common_prefixes {
            let Some(id) = dir.filename() else { continue };
            if let Ok(manifest) = read_manifest(&source, id).await {
                snapshots.push(manifest.summary(None));
            }
        }
        snapshots.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(SnapshotList { snapshots })
    }

    /// Restores snapshot `id` into this deployment, which must have no
    /// collections: every file is read and checked first, then the
    /// collections are created, their items written through the normal
    /// durable path and their curation put back.
    pub async fn restore_snapshot(&self, request: RestoreRequest) -> Result<SnapshotSummary> {
        let started = Instant::now();
        let source = self.snapshot_store(&request.uri)?;
        if !engram_core::plain_file_name(&request.id) {
            return Err(ApiError::invalid(format!(
                "snapshot id {:?} is not a plain name (no `/`, no `..`)",
                request.id
            )));
        }
        let existing = self.inner.backend.names();
        if !existing.is_empty() {
            return Err(ApiError::new(
                ErrorCode::AlreadyExists,
                format!("restore needs an empty deployment; it has collections {existing:?}"),
            ));
        }
        let manifest = read_manifest(&source, &request.id).await?;
        if !(1..=FORMAT).contains(&manifest.format) {
            return Err(ApiError::invalid(format!(
                "snapshot format {} is not one this node reads (1 to {FORMAT})",
                manifest.format
            )));
        }
        let root = child(&source.prefix, &request.id);
        // Every file is verified before anything changes.
        let mut contents: Vec<Vec<Vec<StoredItem>>> = Vec::new();
        for c in &manifest.collections {
            let mut shards = Vec::new();
            for s in &c.shards {
                // `<collection>/<shard>.bin`: each part one plain name.
                if !s.file.split('/').all(engram_core::plain_file_name) {
                    return Err(ApiError::new(
                        ErrorCode::Corrupted,
                        format!(
                            "snapshot manifest lists {:?}, which is not a path of plain names; nothing was restored",
                            s.file
                        ),
                    ));
                }
                let bytes = source
                    .store
                    .get(&child(&root, &s.file))
                    .await
                    .map_err(|e| storage_error(&request.uri, e))?
                    .bytes()
                    .await
                    .map_err(|e| storage_error(&request.uri, e))?;
                if crc32fast::hash(&bytes) != s.crc32 || bytes.len() as u64 != s.bytes {
                    return Err(ApiError::new(
                        ErrorCode::Corrupted,
                        format!(
                            "snapshot file {} fails its checksum; nothing was restored",
                            s.file
                        ),
                    ));
                }
                let items = decode_items(manifest.format, &bytes).map_err(|e| {
                    ApiError::new(
                        ErrorCode::Corrupted,
                        format!("snapshot file {}: {e}", s.file),
                    )
                })?;
                shards.push(items);
            }
            contents.push(shards);
        }
        let log = self.inner.meta.deletion_log()?;
        let mut reapplied = 0u64;
        for (c, shards) in manifest.collections.iter().zip(contents) {
            let deleted: HashSet<u64> = log
                .deleted_since(&c.spec.name, &manifest.created_at)
                .into_iter()
                .collect();
            let mut spec = c.spec.clone();
            if self.cluster().is_none() {
                // The embedded node has one worker: one copy of each shard.
                spec.replication = 1;
            }
            self.create_collection_from_spec(spec).await?;
            let collection = self.hosted(&c.spec.name)?;
            for mut items in shards {
                let before = items.len();
                items.retain(|i| !deleted.contains(&i.id));
                reapplied += (before - items.len()) as u64;
                for batch in items.chunks(RESTORE_BATCH) {
                    let ops: Vec<WalOp> = batch
                        .iter()
                        .map(|i| WalOp::Upsert {
                            id: i.id,
                            label: i.label.as_str().into(),
                            weight: i.weight,
                            source: i.source.as_deref().map(Into::into),
                            vector: i.vector.clone(),
                            thumbnail: i.thumbnail.as_deref().map(Into::into),
                        })
                        .collect();
                    let target = collection.clone();
                    blocking(move || Ok(target.write(ops)?)).await?;
                }
            }
            self.inner
                .meta
                .restore(&c.spec.name, c.curation.clone(), c.pruning.clone())
                .await?;
        }
        // Restored from, it may be restored again: deletions from now on
        // are logged for it.
        let record = SnapshotRecord {
            uri: request.uri.clone(),
            id: manifest.id.clone(),
            created_at: manifest.created_at.clone(),
            collections: manifest
                .collections
                .iter()
                .map(|c| c.spec.name.clone())
                .collect(),
        };
        if !log.snapshots.contains(&record) {
            self.inner.meta.record_snapshot(record).await?;
        }
        let mut summary = manifest.summary(Some(started.elapsed().as_secs_f64()));
        summary.reapplied_deletions = Some(reapplied);
        tracing::info!(id = %summary.id, uri = %request.uri, items = summary.items, reapplied, "snapshot restored");
        Ok(summary)
    }
}

/// Writes `manifest` to `<root>/manifest.json` (one put: it replaces an
/// older one whole).
pub(crate) async fn write_manifest(
    source: &Source,
    root: &ObjectPath,
    uri: &str,
    manifest: &Manifest,
) -> Result<()> {
    let json =
        serde_json::to_vec_pretty(manifest).map_err(|e| ApiError::internal(e.to_string()))?;
    source
        .store
        .put(&child(root, MANIFEST), Bytes::from(json).into())
        .await
        .map_err(|e| storage_error(uri, e))?;
    Ok(())
}

pub(crate) fn child(prefix: &ObjectPath, rest: &str) -> ObjectPath {
    let mut path = prefix.clone();
    for part in rest.split('/').filter(|p| !p.is_empty()) {
        path = path.clone().join(part);
    }
    path
}

pub(crate) async fn read_manifest(source: &Source, id: &str) -> Result<Manifest> {
    let path = child(&child(&source.prefix, id), MANIFEST);
    let bytes = source
        .store
        .get(&path)
        .await
        .map_err(|e| match e {
            object_store::Error::NotFound { .. } => {
                ApiError::not_found(format!("no complete snapshot `{id}` at {}", source.uri))
            }
            e => storage_error(&source.uri, e),
        })?
        .bytes()
        .await
        .map_err(|e| storage_error(&source.uri, e))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::new(ErrorCode::Corrupted, format!("manifest of `{id}`: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_1_shard_files_still_restore_and_format_2_keeps_thumbnails() {
        let old = vec![StoredItemV1 {
            id: 7,
            label: "boot".into(),
            weight: 1.0,
            source: None,
            vector: vec![0.5, 0.25],
        }];
        let items = decode_items(1, &bincode::serialize(&old).unwrap()).unwrap();
        assert_eq!((items[0].id, items[0].vector.len()), (7, 2));
        assert!(items[0].thumbnail.is_none());
        let new = vec![StoredItem {
            thumbnail: Some(vec![0xff, 0xd8, 0xff]),
            ..items[0].clone()
        }];
        let items = decode_items(FORMAT, &bincode::serialize(&new).unwrap()).unwrap();
        assert_eq!(items[0].thumbnail.as_deref(), Some(&[0xff, 0xd8, 0xff][..]));
        // A format-1 file read as format 2 is refused, not misread.
        assert!(decode_items(FORMAT, &bincode::serialize(&old).unwrap()).is_err());
    }
}
