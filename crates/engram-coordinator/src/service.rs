//! Every operation of the public API, independent of HTTP.
//!
//! The embedded default runs this coordinator and one worker in one
//! process: the worker is called directly, and the collection catalog is a
//! checksummed file instead of the Raft state machine of a cluster.

use parking_lot::Mutex;
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use engram_core::config::EngramConfig;
use engram_core::merge_policy::{CompactOptions, SealGrowing};
use engram_core::{CollectionSpec, Curation, Metric, VotingRule};
use engram_ingest::OnnxEmbedder;
use engram_ingest::source::Source;
use engram_store::{StorageAccess, WalOp};
use engram_worker::{ShardedCollection, Worker};

use crate::backend::{Backend, Collection};
use crate::catalog::Catalog;
use crate::cluster::ClusterBackend;
use crate::curation_store::CurationStore;
use crate::dto::*;
use crate::error::{ApiError, ErrorCode, Result};
use crate::jobs::Jobs;
use crate::meta::MetaStore;
use crate::metrics::Metrics;
use engram_core::{Admission, Selector};

pub(crate) use engram_core::collection::{MAX_LABEL_BYTES, MAX_SOURCE_BYTES};
/// The longest erasure deadline a delete may ask for: one year.
const MAX_ERASE_WITHIN_S: u64 = 365 * 86_400;

/// The embedded Engram node. Cheap to clone.
#[derive(Clone)]
pub struct Engram {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: EngramConfig,
    pub(crate) backend: Backend,
    embedders: BTreeMap<String, Arc<OnnxEmbedder>>,
    pub(crate) metrics: Metrics,
    /// Interventions, pruning weights and receipts per collection.
    pub(crate) meta: CurationStore,
    pub(crate) jobs: Arc<Jobs>,
    /// The configured re-rankers (`[rerankers.<name>]`).
    pub(crate) rerankers: crate::rerank::Rerankers,
    /// Unlearning receipts seen erased (`receipt_watch`).
    pub(crate) receipts: crate::receipt_watch::ReceiptWatch,
    /// Where requests may make this node read and write.
    storage_access: StorageAccess,
    /// Held for the life of the process: one node per data directory.
    _data_dir_lock: std::fs::File,
}

/// The local roots (created) and buckets requests are confined to.
fn storage_access(config: &EngramConfig) -> Result<StorageAccess> {
    let storage = &config.storage;
    let roots = storage.local_roots_for(&config.server.data_dir);
    StorageAccess::new(&roots, storage.buckets.clone())
        .map_err(|e| ApiError::internal(format!("storage.local_roots: {e}")))
}

fn load_embedders(config: &EngramConfig) -> Result<BTreeMap<String, Arc<OnnxEmbedder>>> {
    let mut embedders = BTreeMap::new();
    for (name, embedder_config) in &config.embedders {
        let embedder = OnnxEmbedder::load(embedder_config, config.limits.max_image_pixels)
            .map_err(|e| ApiError::internal(format!("embedder `{name}`: {e}")))?;
        embedders.insert(name.clone(), Arc::new(embedder));
    }
    Ok(embedders)
}

impl Engram {
    /// Opens the data directory (replaying every shard's WAL) and loads the
    /// configured embedders. Fails if another process holds the directory.
    pub fn open(config: EngramConfig) -> Result<Engram> {
        config.validate()?;
        let data_dir = config.server.data_dir.clone();
        fs_err::create_dir_all(&data_dir).map_err(|e| ApiError::internal(e.to_string()))?;
        let lock = lock_data_dir(&data_dir)?;
        let data_dir = data_dir.clone();
        let catalog = Catalog::open(&data_dir)?;
        let cache = engram_index::SegmentCache::new(engram_index::SegmentCache::budget_for(
            config.cache.budget_mb,
        ));
        let worker = Worker::with_cache(&data_dir, config.index.clone(), cache)?;
        let known: HashSet<String> = catalog.specs().map(|s| s.name.clone()).collect();
        worker.remove_unknown(&known)?;
        for spec in catalog.specs() {
            let hosted = worker.host(spec.clone())?;
            tracing::info!(collection = %spec.name, items = hosted.stats().items, "collection opened");
        }
        let embedders = load_embedders(&config)?;
        let rerankers = crate::rerank::Rerankers::from_config(&config)?;
        let storage_access = storage_access(&config)?;
        Ok(Engram {
            inner: Arc::new(Inner {
                config,
                storage_access,
                backend: Backend::Embedded {
                    catalog: Mutex::new(catalog),
                    worker: Box::new(worker),
                },
                embedders,
                metrics: Metrics::new(),
                meta: CurationStore::Local(MetaStore::new(&data_dir)),
                jobs: Arc::new(Jobs::default()),
                rerankers,
                receipts: Default::default(),
                _data_dir_lock: lock,
            }),
        })
    }

    /// A coordinator of a cluster: collections live on workers, placed by
    /// the Raft shard map of `cluster`. Blocking (loads embedders).
    pub fn open_coordinator(config: EngramConfig, cluster: ClusterBackend) -> Result<Engram> {
        config.validate()?;
        let data_dir = config.server.data_dir.clone();
        fs_err::create_dir_all(&data_dir).map_err(|e| ApiError::internal(e.to_string()))?;
        let lock = lock_data_dir(&data_dir)?;
        let embedders = load_embedders(&config)?;
        let rerankers = crate::rerank::Rerankers::from_config(&config)?;
        let meta = CurationStore::Raft(cluster.meta().clone());
        let storage_access = storage_access(&config)?;
        Ok(Engram {
            inner: Arc::new(Inner {
                config,
                storage_access,
                backend: Backend::Cluster(cluster),
                embedders,
                metrics: Metrics::new(),
                meta,
                jobs: Arc::new(Jobs::default()),
                rerankers,
                receipts: Default::default(),
                _data_dir_lock: lock,
            }),
        })
    }

    /// The cluster side of a coordinator (`None` for the embedded node).
    pub fn cluster(&self) -> Option<&ClusterBackend> {
        self.inner.backend.cluster()
    }

    pub fn config(&self) -> &EngramConfig {
        &self.inner.config
    }

    /// The source or snapshot place a request names, if it may use it:
    /// 403 naming the roots (or buckets) otherwise, with nothing read.
    pub(crate) fn open_request_source(&self, uri: &str) -> Result<Source> {
        Source::open(uri, &self.config().storage, &self.inner.storage_access)
            .map_err(ApiError::from)
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Prometheus text exposition of all metrics, with live item counts.
    pub fn render_metrics(&self) -> String {
        // Cluster coordinators would ask every worker; they report what
        // they count themselves.
        for name in self.inner.backend.names() {
            if let Some(hosted) = self.inner.backend.hosted(&name) {
                self.inner.metrics.set_items(&name, hosted.stats().items);
            }
        }
        let metrics = &self.inner.metrics;
        if let Some(cluster) = self.inner.backend.cluster() {
            let refusals = cluster.secret_refusals();
            metrics.sync_cluster_secret_refused("missing", refusals.missing);
            metrics.sync_cluster_secret_refused("wrong", refusals.wrong);
            metrics.sync_cut_off("internal", &cluster.internal_listener());
            metrics.set_cluster(&cluster.view());
        }
        metrics.sync_cut_off("public", &metrics.public_listener());
        metrics.set_jobs(&self.inner.jobs.all());
        metrics.render()
    }

    // ----- collections -------------------------------------------------

    pub async fn create_collection(&self, request: CreateCollection) -> Result<CollectionInfo> {
        let defaults = &self.inner.config.collections;
        let embedder = match &request.embedder {
            Some(name) => Some(self.embedder(name)?),
            None => None,
        };
        let dim = match (request.dim, &embedder) {
            (Some(dim), Some(e)) if dim != e.dim() => {
                return Err(ApiError::invalid(format!(
                    "dim {dim} does not match embedder `{}`, which produces {}-d vectors",
                    request.embedder.as_deref().unwrap_or_default(),
                    e.dim()
                )));
            }
            (Some(dim), _) => dim,
            (None, Some(e)) => e.dim(),
            (None, None) => {
                return Err(ApiError::invalid(
                    "`dim` is required when no `embedder` is given",
                ));
            }
        };
        let metric = match &request.metric {
            Some(m) => m.parse::<Metric>()?,
            None => Metric::Cosine,
        };
        let default_rule = match &request.default_rule {
            Some(r) => r.parse::<VotingRule>()?,
            None => defaults.rule,
        };
        let spec = CollectionSpec {
            name: request.name,
            dim,
            metric,
            embedder: request.embedder,
            shards: match request.shards {
                Some(shards) => shards,
                None => defaults.shards_for(self.live_workers()),
            },
            replication: request.replication.unwrap_or(defaults.replication),
            default_k: request.default_k.unwrap_or(defaults.k),
            default_rule,
        };
        self.create_collection_from_spec(spec).await
    }

    /// Live workers of a cluster (`None` on the embedded node): what a new
    /// collection's default shard count follows.
    fn live_workers(&self) -> Option<usize> {
        match &self.inner.backend {
            Backend::Cluster(cluster) => {
                Some(cluster.state().workers.values().filter(|w| w.alive).count())
            }
            Backend::Embedded { .. } => None,
        }
    }

    /// Creates a collection from a complete spec (validated here).
    pub(crate) async fn create_collection_from_spec(
        &self,
        spec: CollectionSpec,
    ) -> Result<CollectionInfo> {
        spec.validate()?;
        if let Some(name) = &spec.embedder {
            self.embedder(name)?;
        }
        if let Backend::Cluster(cluster) = &self.inner.backend {
            if spec.default_k > self.inner.config.limits.max_k {
                return Err(ApiError::invalid(format!(
                    "default_k must be at most {}",
                    self.inner.config.limits.max_k
                )));
            }
            cluster.create(spec.clone()).await?;
            tracing::info!(collection = %spec.name, dim = spec.dim, shards = spec.shards, replication = spec.replication, "collection created");
            return self.get_collection(&spec.name).await;
        }
        if spec.replication != 1 {
            return Err(ApiError::invalid(
                "the embedded node has a single worker, so `replication` must be 1",
            ));
        }
        if spec.default_k > self.inner.config.limits.max_k {
            return Err(ApiError::invalid(format!(
                "default_k must be at most {}",
                self.inner.config.limits.max_k
            )));
        }
        let this = self.clone();
        blocking(move || {
            let Backend::Embedded { catalog, worker } = &this.inner.backend else {
                return Err(ApiError::internal("not an embedded node"));
            };
            let mut catalog = catalog.lock();
            if catalog.get(&spec.name).is_some() {
                return Err(ApiError::new(
                    ErrorCode::AlreadyExists,
                    format!("collection `{}` already exists", spec.name),
                ));
            }
            this.inner.meta.remove_local(&spec.name)?;
            let hosted = worker.host(spec.clone())?;
            if let Err(e) = catalog.insert(spec.clone()) {
                let _ = worker.drop_collection(&spec.name);
                return Err(e);
            }
            tracing::info!(collection = %spec.name, dim = spec.dim, shards = spec.shards, "collection created");
            info(hosted.as_ref())
        })
        .await
    }

    pub async fn get_collection(&self, name: &str) -> Result<CollectionInfo> {
        let hosted = self.hosted(name)?;
        blocking(move || info(hosted.as_ref())).await
    }

    pub async fn list_collections(&self) -> Result<CollectionList> {
        let hosted: Vec<Collection> = self
            .inner
            .backend
            .names()
            .iter()
            .filter_map(|n| self.inner.backend.collection(n).ok())
            .collect();
        blocking(move || {
            Ok(CollectionList {
                collections: hosted
                    .iter()
                    .map(|h| info(h.as_ref()))
                    .collect::<Result<_>>()?,
            })
        })
        .await
    }

    pub async fn delete_collection(&self, name: &str) -> Result<()> {
        if let Backend::Cluster(cluster) = &self.inner.backend {
            cluster.drop(name).await?;
            tracing::info!(collection = %name, "collection deleted");
            self.sweep_dropped_uploads(name);
            return Ok(());
        }
        let this = self.clone();
        let dropped = name.to_string();
        let name = dropped.clone();
        blocking(move || {
            let Backend::Embedded { catalog, worker } = &this.inner.backend else {
                return Err(ApiError::internal("not an embedded node"));
            };
            let mut catalog = catalog.lock();
            if catalog.remove(&name)?.is_none() {
                return Err(ApiError::not_found(format!(
                    "collection `{name}` does not exist"
                )));
            }
            worker.drop_collection(&name)?;
            this.inner.meta.remove_local(&name)?;
            tracing::info!(collection = %name, "collection deleted");
            Ok(())
        })
        .await?;
        self.sweep_dropped_uploads(&dropped);
        Ok(())
    }

    // ----- items -------------------------------------------------------

    /// Upserts items; images are embedded first. Nothing is stored unless
    /// every item is valid.
    pub async fn add_items(&self, collection: &str, request: AddItems) -> Result<Added> {
        let hosted = self.hosted(collection)?;
        let spec = hosted.spec().clone();
        let limits = &self.inner.config.limits;
        if request.items.is_empty() {
            return Err(ApiError::invalid("`items` is empty"));
        }
        if request.items.len() > limits.max_items_per_request {
            return Err(ApiError::invalid(format!(
                "{} items in one request; the limit is {}",
                request.items.len(),
                limits.max_items_per_request
            )));
        }
        let mut inputs = Vec::with_capacity(request.items.len());
        let mut meta = Vec::with_capacity(request.items.len());
        for (i, item) in request.items.into_iter().enumerate() {
            let at = |m: String| ApiError::invalid(format!("item {i} (id {}): {m}", item.id));
            if item.id == u64::MAX {
                return Err(at("id 18446744073709551615 (u64::MAX) is reserved".into()));
            }
            if item.label.is_empty() || item.label.len() > MAX_LABEL_BYTES {
                return Err(at(format!("label must be 1 to {MAX_LABEL_BYTES} bytes")));
            }
            let weight = item.weight.unwrap_or(1.0);
            if !(weight.is_finite() && weight >= 0.0) {
                return Err(at(format!(
                    "weight must be a finite number >= 0, got {weight}"
                )));
            }
            if item
                .source
                .as_ref()
                .is_some_and(|s| s.len() > MAX_SOURCE_BYTES)
            {
                return Err(at(format!(
                    "source is longer than {MAX_SOURCE_BYTES} bytes"
                )));
            }
            inputs.push(QueryInput::from_parts(item.vector, item.image).map_err(at)?);
            meta.push((item.id, item.label, weight, item.source));
        }
        let thumbnail_px = self.inner.config.collections.thumbnail_px;
        let (vectors, thumbnails) = self
            .resolve_vectors_with_thumbnails(&spec, inputs, "item", thumbnail_px)
            .await?;
        let ops: Vec<WalOp> = meta
            .into_iter()
            .zip(vectors)
            .zip(thumbnails)
            .map(
                |(((id, label, weight, source), vector), thumbnail)| WalOp::Upsert {
                    id,
                    label: label.into(),
                    weight,
                    source: source.map(Into::into),
                    vector,
                    thumbnail: thumbnail.map(Into::into),
                },
            )
            .collect();
        let added = ops.len();
        blocking(move || Ok(hosted.write(ops)?)).await?;
        self.inner.metrics.items_added(added);
        Ok(Added { added })
    }

    /// One item; with `vector`, also its stored vector (read back from its
    /// sealed segment when it has been sealed), e.g. to query by an item.
    pub async fn get_item(&self, collection: &str, id: u64, vector: bool) -> Result<ItemInfo> {
        let hosted = self.hosted(collection)?;
        let (item, vector) = blocking(move || {
            let item = hosted.get(id)?;
            let vector = match (&item, vector) {
                (Some(_), true) => hosted.get_vector(id)?,
                _ => None,
            };
            Ok((item, vector))
        })
        .await?;
        let item = item.ok_or_else(|| {
            ApiError::not_found(format!("item {id} does not exist in `{collection}`"))
        })?;
        Ok(ItemInfo {
            id,
            label: item.label.to_string(),
            weight: item.weight,
            source: item.source.map(|s| s.to_string()),
            vector,
        })
    }

    /// The thumbnail of an item added as an image (404 for an item added as
    /// a vector, or one that does not exist).
    pub async fn thumbnail(&self, collection: &str, id: u64) -> Result<Arc<[u8]>> {
        let hosted = self.hosted(collection)?;
        let found = blocking(move || {
            let item = hosted.get(id)?;
            Ok(match item {
                Some(_) => Some(hosted.thumbnail(id)?),
                None => None,
            })
        })
        .await?;
        match found {
            None => Err(ApiError::not_found(format!(
                "item {id} does not exist in `{collection}`"
            ))),
            Some(None) => Err(ApiError::not_found(format!(
                "item {id} of `{collection}` has no thumbnail: it was added as a vector (or before thumbnails, or with collections.thumbnail_px = 0)"
            ))),
            Some(Some(jpeg)) => Ok(jpeg),
        }
    }

    /// Deletes by ids, label and/or source (the union). Acknowledged only
    /// once the tombstones are durable; deleted items are never returned
    /// by a search that starts after this returns.
    pub async fn delete_items(&self, collection: &str, request: DeleteItems) -> Result<Deleted> {
        let hosted = self.hosted(collection)?;
        if request.ids.is_none() && request.label.is_none() && request.source.is_none() {
            return Err(ApiError::invalid(
                "give at least one of `ids`, `label`, `source`",
            ));
        }
        if request
            .ids
            .as_ref()
            .is_some_and(|ids| ids.len() > self.inner.config.limits.max_items_per_request)
        {
            return Err(ApiError::invalid(format!(
                "at most {} ids per request",
                self.inner.config.limits.max_items_per_request
            )));
        }
        let erase_within_s = request.erase_within_s;
        if erase_within_s.is_some_and(|s| s > MAX_ERASE_WITHIN_S) {
            return Err(ApiError::invalid(format!(
                "erase_within_s must be at most {MAX_ERASE_WITHIN_S} (one year)"
            )));
        }
        let selector = Selector {
            ids: request.ids.as_ref().map(Vec::len),
            label: request.label.clone(),
            source: request.source.clone(),
        };
        let log = blocking(move || {
            let mut log = Vec::new();
            if let Some(ids) = &request.ids {
                log.extend(hosted.delete_ids_traced(ids)?);
            }
            if let Some(label) = &request.label {
                log.extend(hosted.delete_label_traced(label)?);
            }
            if let Some(source) = &request.source {
                log.extend(hosted.delete_source_traced(source)?);
            }
            Ok(log)
        })
        .await?;
        let deleted: usize = log.iter().map(|d| d.ids.len()).sum();
        self.inner.metrics.items_deleted(deleted);
        if deleted == 0 {
            return Ok(Deleted {
                deleted,
                receipt: None,
            });
        }
        // The deletes are durable; the receipt records them. If writing it
        // fails the caller sees an error and may retry (deleting again is a
        // no-op).
        let erase_by = self.erase_by(erase_within_s);
        let receipt = self
            .inner
            .meta
            .record_deletion(collection, selector, log, erase_by)
            .await?;
        Ok(Deleted {
            deleted,
            receipt: Some(receipt.receipt),
        })
    }

    // ----- maintenance -------------------------------------------------

    /// Merges the collection's sealed segments by the merge policy and
    /// rewrites those whose deleted fraction exceeds `min_deleted_fraction`
    /// (default 0: every segment with a deletion) without their deleted
    /// rows, and WALs likewise, so that deleted vectors are physically gone
    /// from every file. Growing segments of at least a merge tier's floor of
    /// rows are sealed first, a small one only when the request asks
    /// (`"seal": true`; `false` seals none, see [`SealGrowing`]). Searches
    /// and writes go on.
    pub async fn compact(&self, collection: &str, request: CompactRequest) -> Result<Compacted> {
        let hosted = self.hosted(collection)?;
        let threshold = request.min_deleted_fraction.unwrap_or(0.0);
        if !(0.0..1.0).contains(&threshold) {
            return Err(ApiError::invalid(
                "`min_deleted_fraction` must be at least 0 and below 1",
            ));
        }
        let seal = SealGrowing::from_request(request.seal);
        let retrain = request.retrain_codebook.unwrap_or(false);
        let started = std::time::Instant::now();
        let (done, sealed) = blocking(move || {
            let done = hosted.compact(CompactOptions {
                min_deleted_fraction: threshold,
                seal,
                retrain_codebook: retrain,
            })?;
            Ok((done, hosted.stats()?.sealed_segments))
        })
        .await?;
        self.inner
            .metrics
            .segments_compacted(done.segments_rewritten);
        tracing::info!(
            collection,
            rewritten = done.segments_rewritten,
            bytes_reclaimed = done.bytes_reclaimed,
            sealed,
            seconds = started.elapsed().as_secs_f64(),
            "compaction finished"
        );
        Ok(Compacted {
            segments_rewritten: done.segments_rewritten,
            segments_written: done.segments_written,
            wals_rewritten: done.wals_rewritten,
            sealed_segments: sealed,
            bytes_reclaimed: done.bytes_reclaimed,
        })
    }

    /// One round of automatic compaction: every collection's shards that
    /// hold a sealed segment past `index.compact_deleted_fraction`.
    pub async fn compact_due(&self) -> Result<usize> {
        let threshold = self.inner.config.index.compact_deleted_fraction;
        // In a cluster, each worker compacts its own copies (its agent).
        let hosted: Vec<_> = self
            .inner
            .backend
            .names()
            .iter()
            .filter_map(|name| self.inner.backend.hosted(name))
            .collect();
        let mut total = 0;
        for collection in hosted {
            let name = collection.spec().name.clone();
            let rewritten = blocking(move || Ok(collection.compact_due(threshold)?))
                .await?
                .segments_rewritten;
            if rewritten > 0 {
                tracing::info!(collection = %name, rewritten, "automatic compaction");
            }
            total += rewritten;
        }
        self.inner.metrics.segments_compacted(total);
        Ok(total)
    }

    /// Runs [`Self::compact_due`] every `index.compaction_interval_s`
    /// seconds until the returned task is dropped or aborted.
    pub fn spawn_compaction(&self) -> Option<tokio::task::JoinHandle<()>> {
        let every = self.inner.config.index.compaction_interval_s;
        if every == 0 {
            return None;
        }
        let this = self.clone();
        Some(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(std::time::Duration::from_secs(every));
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                if let Err(error) = this.compact_due().await {
                    tracing::error!(%error, "automatic compaction failed; retrying next round");
                }
            }
        }))
    }

    pub(crate) fn hosted(&self, name: &str) -> Result<Collection> {
        self.inner.backend.collection(name)
    }

    pub(crate) fn embedder_named(&self, name: &str) -> Result<Arc<OnnxEmbedder>> {
        self.embedder(name)
    }

    pub(crate) fn embedder(&self, name: &str) -> Result<Arc<OnnxEmbedder>> {
        self.inner.embedders.get(name).cloned().ok_or_else(|| {
            let known: Vec<&str> = self.inner.embedders.keys().map(String::as_str).collect();
            ApiError::invalid(format!("unknown embedder `{name}`; configured: {known:?}"))
        })
    }

    /// Where this node keeps its data.
    pub fn data_dir(&self) -> PathBuf {
        self.inner.config.server.data_dir.clone()
    }
}

/// The search-side half of blocking: items whose class or source is
/// blocked are skipped inside the index search, so k admitted items vote.
pub(crate) fn admit_filter(curation: &Curation) -> Option<Arc<Admission>> {
    curation.admission().map(Arc::new)
}

/// What a query or item was given: a vector or an encoded image.
pub(crate) enum QueryInput {
    Vector(Vec<f32>),
    Image(String),
}

impl QueryInput {
    pub(crate) fn from_parts(
        vector: Option<Vec<f32>>,
        image: Option<String>,
    ) -> std::result::Result<Self, String> {
        match (vector, image) {
            (Some(v), None) => Ok(QueryInput::Vector(v)),
            (None, Some(i)) => Ok(QueryInput::Image(i)),
            (Some(_), Some(_)) => Err("give exactly one of `vector` and `image`, not both".into()),
            (None, None) => Err("give exactly one of `vector` and `image`".into()),
        }
    }
}

fn info(hosted: &dyn ShardedCollection) -> Result<CollectionInfo> {
    let spec = hosted.spec();
    let stats = hosted.stats()?;
    let (tombstones, sealed_rows) = (stats.tombstones, stats.sealed_rows);
    Ok(CollectionInfo {
        name: spec.name.clone(),
        dim: spec.dim,
        metric: spec.metric,
        embedder: spec.embedder.clone(),
        shards: spec.shards,
        replication: spec.replication,
        default_k: spec.default_k,
        default_rule: spec.default_rule,
        items: stats.items,
        labels: stats.labels,
        sealed_segments: stats.sealed_segments,
        tombstones,
        tombstone_share: if sealed_rows == 0 {
            0.0
        } else {
            tombstones as f64 / sealed_rows as f64
        },
        sealed_bytes: stats.sealed_bytes,
        shard_stats: stats
            .shards
            .iter()
            .map(|s| ShardInfo {
                shard: s.shard,
                items: s.items,
                sealed_segments: s.sealed_segments,
                sealed_rows: s.sealed_rows,
                tombstones: s.tombstones,
                sealed_bytes: s.sealed_bytes,
                growing_rows: s.growing_rows,
                segments: s.segments.iter().map(segment_info).collect(),
            })
            .collect(),
    })
}

fn segment_info(s: &engram_worker::shard::SegmentStats) -> crate::dto::SegmentInfo {
    use engram_core::residency::Residency;
    let (served_from, cached_nodes) = match s.served_from {
        Residency::Memory => ("memory", None),
        Residency::NodeCache { nodes } => ("node_cache", Some(nodes)),
        Residency::Disk => ("disk", None),
    };
    crate::dto::SegmentInfo {
        name: s.name.clone(),
        rows: s.rows,
        deleted: s.deleted,
        bytes: s.bytes,
        served_from: served_from.to_string(),
        cached_nodes,
    }
}

fn lock_data_dir(data_dir: &std::path::Path) -> Result<std::fs::File> {
    let path = data_dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| ApiError::internal(format!("cannot open {}: {e}", path.display())))?;
    file.try_lock().map_err(|_| {
        ApiError::internal(format!(
            "data directory {} is in use by another Engram process",
            data_dir.display()
        ))
    })?;
    Ok(file)
}

/// Runs blocking work (fsync, scans, inference) off the async runtime.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(engram_meta::request_id::in_blocking(f))
        .await
        .map_err(|e| ApiError::internal(format!("worker task failed: {e}")))?
}
