//! The query operations of the public API: search, classify (votes, then
//! the re-ranker a collection or request names) and embed.

use base64::Engine as _;
use std::collections::HashSet;
use std::sync::Arc;

use engram_core::vector::prepare;
use engram_core::{
    Adjustment, BlockedNeighbor, CollectionSpec, Neighbor, VoteParams, counterfactual, decide,
};
use engram_index::SearchTuning;
use engram_ingest::IngestError;
use engram_worker::{SearchFilter, SearchResults};

use crate::backend::Collection;
use crate::dto::*;
use crate::error::{ApiError, ErrorCode, Result};
use crate::service::{Engram, QueryInput, admit_filter, blocking};
use engram_core::Admission;

/// Most ids one query may exclude.
const MAX_EXCLUDE_IDS: usize = 10_000;

impl Engram {
    // ----- queries -----------------------------------------------------

    pub async fn search(&self, collection: &str, request: SearchRequest) -> Result<SearchResponse> {
        let hosted = self.hosted(collection)?;
        let (query, k, list_size, require_complete) = request.into_parts();
        let k = self.check_k(k.unwrap_or(hosted.spec().default_k))?;
        let tuning = tuning(list_size)?;
        let mut results = self
            .search_queries(&hosted, vec![query], k, tuning, "query")
            .await?;
        check_complete(&results, require_complete)?;
        let neighbors = results
            .lists
            .pop()
            .unwrap_or_default()
            .into_iter()
            .map(|n| NeighborOut {
                id: n.id,
                label: n.label,
                distance: n.distance,
                weight: n.weight,
                source: n.source,
            })
            .collect();
        Ok(SearchResponse {
            neighbors,
            partial: !results.incomplete_shards.is_empty(),
            missing_shards: results.incomplete_shards,
        })
    }

    pub async fn classify(
        &self,
        collection: &str,
        request: ClassifyRequest,
    ) -> Result<ClassifyResponse> {
        let (query, options) = request.into_parts();
        let mut batch = self
            .classify_queries(collection, vec![query], options, "query")
            .await?;
        batch
            .results
            .pop()
            .ok_or_else(|| ApiError::internal("classify produced no result"))
    }

    pub async fn classify_batch(
        &self,
        collection: &str,
        request: ClassifyBatchRequest,
    ) -> Result<ClassifyBatchResponse> {
        let (queries, options) = request.into_parts();
        if queries.is_empty() {
            return Err(ApiError::invalid("`queries` is empty"));
        }
        let limit = self.inner.config.limits.max_queries_per_batch;
        if queries.len() > limit {
            return Err(ApiError::invalid(format!(
                "{} queries in one batch; the limit is {limit}",
                queries.len()
            )));
        }
        self.classify_queries(collection, queries, options, "query")
            .await
    }

    /// Embeds images with the collection's embedder (an extension of the
    /// v1 contract, so that clients can embed once and query many times).
    pub async fn embed(&self, collection: &str, request: EmbedRequest) -> Result<EmbedResponse> {
        let hosted = self.hosted(collection)?;
        if request.images.is_empty() {
            return Err(ApiError::invalid("`images` is empty"));
        }
        if request.images.len() > self.inner.config.limits.max_items_per_request {
            return Err(ApiError::invalid("too many images in one request"));
        }
        let inputs = request.images.into_iter().map(QueryInput::Image).collect();
        let vectors = self
            .resolve_vectors(&hosted.spec(), inputs, "image")
            .await?;
        Ok(EmbedResponse { vectors })
    }

    async fn classify_queries(
        &self,
        collection: &str,
        queries: Vec<Query>,
        options: VoteOptions,
        what: &'static str,
    ) -> Result<ClassifyBatchResponse> {
        let hosted = self.hosted(collection)?;
        let spec = hosted.spec();
        let k = self.check_k(options.k.unwrap_or(spec.default_k))?;
        let defaults = VoteParams::default();
        let params = VoteParams {
            rule: match &options.rule {
                Some(r) => r.parse()?,
                None => spec.default_rule,
            },
            alpha: options.alpha.unwrap_or(defaults.alpha),
            tau: options.tau.unwrap_or(defaults.tau),
            xi: options.xi.unwrap_or(defaults.xi),
        };
        params.validate()?;
        let tuning = tuning(options.search_list_size)?;
        let explain = options.explain.unwrap_or(false);
        let curation = self.inner.meta.curation(collection)?;
        let pruning = self.inner.meta.pruning(collection)?;
        let reranker = self.chosen_reranker(options.rerank.as_ref(), &curation)?;
        let images: Vec<Option<String>> = match &reranker {
            Some(name) if self.reranker_wants_image(name) => {
                queries.iter().map(|q| q.image.clone()).collect()
            }
            _ => Vec::new(),
        };
        let (vectors, excludes) = self.prepare_queries(&hosted.spec(), queries, what).await?;
        // A counterfactual needs the neighbours that would move up when
        // voters are removed: fetch at least 100 more (a confident decision
        // may need most of its voters removed, and each removal lets one in).
        let fetch = if explain {
            k + k.max(COUNTERFACTUAL_EXTRA)
        } else {
            k
        };
        let admit = admit_filter(&curation);
        let found = self
            .search_vectors(
                &hosted,
                vectors.clone(),
                excludes.clone(),
                fetch,
                tuning,
                admit,
            )
            .await?;
        // Explanations list the blocked items that would otherwise have voted.
        let unblocked = if explain && curation.blocks_anything() {
            Some(
                self.search_vectors(&hosted, vectors.clone(), excludes, k, tuning, None)
                    .await?
                    .lists,
            )
        } else {
            None
        };
        check_complete(&found, options.require_complete.unwrap_or(false))?;
        let partial = !found.incomplete_shards.is_empty();
        let vote = tracing::debug_span!("vote", queries = found.lists.len(), k);
        let voting = vote.enter();
        let mut results: Vec<ClassifyResponse> = found
            .lists
            .into_iter()
            .enumerate()
            .map(|(q, neighbors)| {
                let (ranked, adjustments): (Vec<Neighbor>, Vec<Vec<Adjustment>>) = neighbors
                    .into_iter()
                    .map(|n| curation.curate(n, pruning.as_deref()))
                    .unzip();
                let voters = k.min(ranked.len());
                let mut decision = decide(ranked[..voters].to_vec(), &params);
                for (voted, adjusted) in decision.neighbors.iter_mut().zip(adjustments) {
                    voted.adjustments = adjusted;
                }
                // Fewer than asked for: the list is the whole memory.
                let complete = ranked.len() < fetch;
                let counterfactual = explain
                    .then(|| counterfactual(&ranked, k, complete, &params))
                    .flatten();
                let blocked = unblocked.as_ref().map(|lists| {
                    lists[q]
                        .iter()
                        .filter_map(|n| {
                            let reason =
                                curation.block_reason(n.id, &n.label, n.source.as_deref())?;
                            Some(BlockedNeighbor {
                                neighbor: n.clone(),
                                reason,
                            })
                        })
                        .collect()
                });
                ClassifyResponse {
                    decision,
                    partial,
                    missing_shards: found.incomplete_shards.clone(),
                    blocked,
                    counterfactual,
                    rerank: None,
                }
            })
            .collect();
        drop(voting);
        if let Some(name) = &reranker {
            let call = crate::rerank::Call {
                collection,
                name,
                k,
                curation: &curation,
                vectors,
                images: &images,
            };
            self.rerank(call, &mut results).await;
        }
        self.inner.metrics.queries_classified(results.len());
        Ok(ClassifyBatchResponse { results })
    }

    /// Resolves queries to vectors and searches them, honouring each
    /// query's `exclude_ids`.
    async fn search_queries(
        &self,
        hosted: &Collection,
        queries: Vec<Query>,
        k: usize,
        tuning: SearchTuning,
        what: &'static str,
    ) -> Result<SearchResults> {
        let (vectors, excludes) = self.prepare_queries(&hosted.spec(), queries, what).await?;
        self.search_vectors(hosted, vectors, excludes, k, tuning, None)
            .await
    }

    /// Checks each query's `exclude_ids` and turns its vector or image into
    /// a prepared vector.
    async fn prepare_queries(
        &self,
        spec: &CollectionSpec,
        queries: Vec<Query>,
        what: &'static str,
    ) -> Result<(Vec<Vec<f32>>, Vec<HashSet<u64>>)> {
        let mut inputs = Vec::with_capacity(queries.len());
        let mut excludes = Vec::with_capacity(queries.len());
        for (i, query) in queries.into_iter().enumerate() {
            let exclude: HashSet<u64> = query.exclude_ids.unwrap_or_default().into_iter().collect();
            if exclude.len() > MAX_EXCLUDE_IDS {
                return Err(ApiError::invalid(format!(
                    "{what} {i}: at most {MAX_EXCLUDE_IDS} exclude_ids"
                )));
            }
            excludes.push(exclude);
            inputs.push(
                QueryInput::from_parts(query.vector, query.image)
                    .map_err(|m| ApiError::invalid(format!("{what} {i}: {m}")))?,
            );
        }
        let vectors = self.resolve_vectors(spec, inputs, what).await?;
        Ok((vectors, excludes))
    }

    /// The `k` nearest admitted items to each vector, each query skipping
    /// its own excluded ids.
    pub(crate) async fn search_vectors(
        &self,
        hosted: &Collection,
        vectors: Vec<Vec<f32>>,
        mut excludes: Vec<HashSet<u64>>,
        k: usize,
        tuning: SearchTuning,
        admit: Option<Arc<Admission>>,
    ) -> Result<SearchResults> {
        let queries_len = vectors.len();
        let hosted = hosted.clone();
        let results = blocking(move || {
            let _span = tracing::debug_span!("search", queries = vectors.len(), k).entered();
            let refs: Vec<&[f32]> = vectors.iter().map(Vec::as_slice).collect();
            if excludes.len() == 1 || excludes.iter().all(HashSet::is_empty) {
                let filter = SearchFilter {
                    exclude: excludes.pop().unwrap_or_default(),
                    admit,
                };
                return Ok(hosted.search_batch(&refs, k, &filter, tuning));
            }
            // Different queries exclude different ids: fetch enough extra
            // neighbours that k remain after each query drops its own.
            let extra = excludes.iter().map(HashSet::len).max().unwrap_or(0);
            let filter = SearchFilter {
                exclude: HashSet::new(),
                admit,
            };
            let mut results = hosted.search_batch(&refs, k + extra, &filter, tuning);
            results.lists = std::mem::take(&mut results.lists)
                .into_iter()
                .zip(&excludes)
                .map(|(list, exclude)| {
                    list.into_iter()
                        .filter(|n| !exclude.contains(&n.id))
                        .take(k)
                        .collect()
                })
                .collect();
            Ok(results)
        })
        .await?;
        if !results.incomplete_shards.is_empty() {
            self.inner.metrics.partial_answers(queries_len);
        }
        Ok(results)
    }

    /// Turns vectors and images into prepared vectors for `spec`. Images
    /// are decoded, preprocessed and embedded in batches off the async
    /// runtime.
    async fn resolve_vectors(
        &self,
        spec: &CollectionSpec,
        inputs: Vec<QueryInput>,
        what: &'static str,
    ) -> Result<Vec<Vec<f32>>> {
        Ok(self
            .resolve_vectors_with_thumbnails(spec, inputs, what, 0)
            .await?
            .0)
    }

    /// [`Self::resolve_vectors`], and for each image input (with
    /// `thumbnail_px > 0`) its thumbnail, aligned with `inputs`.
    pub(crate) async fn resolve_vectors_with_thumbnails(
        &self,
        spec: &CollectionSpec,
        inputs: Vec<QueryInput>,
        what: &'static str,
        thumbnail_px: u32,
    ) -> Result<(Vec<Vec<f32>>, engram_ingest::embedder::Thumbnails)> {
        let mut thumbnails = vec![None; inputs.len()];
        let mut vectors: Vec<Option<Vec<f32>>> = Vec::with_capacity(inputs.len());
        let mut images: Vec<(usize, Vec<u8>)> = Vec::new();
        for (i, input) in inputs.into_iter().enumerate() {
            match input {
                QueryInput::Vector(v) => {
                    let v = prepare(spec.metric, v, spec.dim)
                        .map_err(|e| ApiError::invalid(format!("{what} {i}: {e}")))?;
                    vectors.push(Some(v));
                }
                QueryInput::Image(b64) => {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(b64.trim())
                        .map_err(|e| {
                            ApiError::invalid(format!(
                                "{what} {i}: `image` is not valid base64: {e}"
                            ))
                        })?;
                    images.push((i, bytes));
                    vectors.push(None);
                }
            }
        }
        if !images.is_empty() {
            let embedder = match &spec.embedder {
                Some(name) => self.embedder(name)?,
                None => {
                    return Err(ApiError::invalid(format!(
                        "collection `{}` has no embedder; send `vector` instead of `image`",
                        spec.name
                    )));
                }
            };
            let count = images.len();
            let (positions, embedded) = blocking(move || {
                let refs: Vec<&[u8]> = images.iter().map(|(_, b)| b.as_slice()).collect();
                let positions: Vec<usize> = images.iter().map(|(i, _)| *i).collect();
                let _span = tracing::debug_span!("embed", images = refs.len()).entered();
                match embedder.embed_images_with_thumbnails(&refs, thumbnail_px) {
                    Ok(embedded) => Ok((positions, embedded)),
                    Err(IngestError::BadImage { index, reason }) => Err(ApiError::invalid(
                        format!("{what} {}: {reason}", positions[index]),
                    )),
                    Err(e) => Err(e.into()),
                }
            })
            .await?;
            self.inner.metrics.images_embedded(count);
            let (embedded, made) = embedded;
            for ((position, vector), thumbnail) in positions.into_iter().zip(embedded).zip(made) {
                vectors[position] = Some(prepare(spec.metric, vector, spec.dim)?);
                thumbnails[position] = thumbnail;
            }
        }
        let vectors = vectors
            .into_iter()
            .map(|v| v.ok_or_else(|| ApiError::internal("a query was not resolved to a vector")))
            .collect::<Result<Vec<_>>>()?;
        Ok((vectors, thumbnails))
    }

    fn check_k(&self, k: usize) -> Result<usize> {
        let max = self.inner.config.limits.max_k;
        if k == 0 || k > max {
            return Err(ApiError::invalid(format!(
                "k must be between 1 and {max}, got {k}"
            )));
        }
        Ok(k)
    }
}

/// A request that asked for completeness fails instead of answering
/// without some shard.
fn check_complete(results: &SearchResults, required: bool) -> Result<()> {
    if required && !results.incomplete_shards.is_empty() {
        return Err(ApiError::new(
            ErrorCode::Unavailable,
            format!(
                "shards {:?} could not be searched and `require_complete` is set",
                results.incomplete_shards
            ),
        ));
    }
    Ok(())
}

/// Neighbours fetched beyond k (at least) when a decision is explained.
const COUNTERFACTUAL_EXTRA: usize = 100;

/// Largest per-query DiskANN candidate list.
const MAX_SEARCH_LIST_SIZE: u32 = 10_000;

fn tuning(list_size: Option<u32>) -> Result<SearchTuning> {
    if let Some(l) = list_size
        && !(1..=MAX_SEARCH_LIST_SIZE).contains(&l)
    {
        return Err(ApiError::invalid(format!(
            "search_list_size must be between 1 and {MAX_SEARCH_LIST_SIZE}, got {l}"
        )));
    }
    Ok(SearchTuning { list_size })
}
