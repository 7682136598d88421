//! One function per route.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde_json::json;

use super::json::{ApiJson, ApiPath};
use super::{DECISION_PAGE, OPENAPI_JSON};
use crate::cluster_service::{AddCoordinator, ClusterStatus};
use crate::dto::*;
use crate::error::{ApiError, ErrorCode, Result};
use crate::service::Engram;

pub async fn create_collection(
    State(engram): State<Engram>,
    ApiJson(request): ApiJson<CreateCollection>,
) -> Result<(StatusCode, Json<CollectionInfo>)> {
    Ok((
        StatusCode::CREATED,
        Json(engram.create_collection(request).await?),
    ))
}

pub async fn list_collections(State(engram): State<Engram>) -> Result<Json<CollectionList>> {
    Ok(Json(engram.list_collections().await?))
}

pub async fn get_collection(
    State(engram): State<Engram>,
    ApiPath(collection): ApiPath<String>,
) -> Result<Json<CollectionInfo>> {
    Ok(Json(engram.get_collection(&collection).await?))
}

pub async fn delete_collection(
    State(engram): State<Engram>,
    ApiPath(collection): ApiPath<String>,
) -> Result<StatusCode> {
    engram.delete_collection(&collection).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn add_items(
    State(engram): State<Engram>,
    ApiPath(collection): ApiPath<String>,
    ApiJson(request): ApiJson<AddItems>,
) -> Result<Json<Added>> {
    Ok(Json(engram.add_items(&collection, request).await?))
}

pub async fn get_item(
    State(engram): State<Engram>,
    ApiPath((collection, id)): ApiPath<(String, String)>,
    query: std::result::Result<Query<ItemQuery>, QueryRejection>,
) -> Result<Json<ItemInfo>> {
    let Query(query) = query.map_err(|e| ApiError::invalid(format!("query string: {e}")))?;
    let id: u64 = id.parse().map_err(|_| {
        ApiError::invalid(format!(
            "item id must be an unsigned 64-bit integer, got {id:?}"
        ))
    })?;
    Ok(Json(engram.get_item(&collection, id, query.vector).await?))
}

/// The item's thumbnail (JPEG), kept when it was added as an image.
pub async fn thumbnail(
    State(engram): State<Engram>,
    ApiPath((collection, id)): ApiPath<(String, String)>,
) -> Result<impl IntoResponse> {
    let id: u64 = id.parse().map_err(|_| {
        ApiError::invalid(format!(
            "item id must be an unsigned 64-bit integer, got {id:?}"
        ))
    })?;
    let jpeg = engram.thumbnail(&collection, id).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/jpeg"),
            // Re-adding the item replaces its picture; deleting it removes
            // it: a browser revalidates rather than keep an old one.
            (header::CACHE_CONTROL, "private, no-cache"),
        ],
        jpeg.to_vec(),
    ))
}

pub async fn delete_items(
    State(engram): State<Engram>,
    ApiPath(collection): ApiPath<String>,
    ApiJson(request): ApiJson<DeleteItems>,
) -> Result<Json<Deleted>> {
    Ok(Json(engram.delete_items(&collection, request).await?))
}

/// The body is optional: an empty one compacts every segment with a deletion.
pub async fn compact(
    State(engram): State<Engram>,
    ApiPath(collection): ApiPath<String>,
    body: axum::body::Bytes,
) -> Result<Json<Compacted>> {
    let request: CompactRequest = if body.iter().all(u8::is_ascii_whitespace) {
        CompactRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")))?
    };
    Ok(Json(engram.compact(&collection, request).await?))
}

/// Starts an online resharding; answers 202 with its job.
pub async fn reshard(
    State(engram): State<Engram>,
    ApiPath(collection): ApiPath<String>,
    ApiJson(request): ApiJson<ReshardRequest>,
) -> Result<(axum::http::StatusCode, Json<crate::jobs::JobStatus>)> {
    let job = engram.reshard(&collection, request).await?;
    Ok((axum::http::StatusCode::ACCEPTED, Json(job)))
}

pub async fn search(
    State(engram): State<Engram>,
    ApiPath(collection): ApiPath<String>,
    ApiJson(request): ApiJson<SearchRequest>,
) -> Result<Json<SearchResponse>> {
    Ok(Json(engram.search(&collection, request).await?))
}

pub async fn classify(
    State(engram): State<Engram>,
    ApiPath(collection): ApiPath<String>,
    ApiJson(request): ApiJson<ClassifyRequest>,
) -> Result<Json<ClassifyResponse>> {
    Ok(Json(engram.classify(&collection, request).await?))
}

pub async fn classify_batch(
    State(engram): State<Engram>,
    ApiPath(collection): ApiPath<String>,
    ApiJson(request): ApiJson<ClassifyBatchRequest>,
) -> Result<Json<ClassifyBatchResponse>> {
    Ok(Json(engram.classify_batch(&collection, request).await?))
}

pub async fn embed(
    State(engram): State<Engram>,
    ApiPath(collection): ApiPath<String>,
    ApiJson(request): ApiJson<EmbedRequest>,
) -> Result<Json<EmbedResponse>> {
    Ok(Json(engram.embed(&collection, request).await?))
}

pub async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON)
}

pub async fn metrics(State(engram): State<Engram>) -> impl IntoResponse {
    let body = tokio::task::spawn_blocking(move || engram.render_metrics())
        .await
        .unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}

pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

pub async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such route; see /v1/openapi.json")
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "method not allowed on this route; see /v1/openapi.json",
    )
}

fn parse_number(what: &str, raw: &str) -> Result<u64> {
    raw.parse().map_err(|_| {
        ApiError::invalid(format!(
            "{what} must be an unsigned 64-bit integer, got {raw:?}"
        ))
    })
}

pub async fn intervene(
    State(engram): State<Engram>,
    ApiPath(collection): ApiPath<String>,
    ApiJson(request): ApiJson<InterventionRequest>,
) -> Result<Json<engram_core::AuditEntry>> {
    Ok(Json(engram.intervene(&collection, request).await?))
}

pub async fn curation(
    State(engram): State<Engram>,
    ApiPath(collection): ApiPath<String>,
) -> Result<Json<CurationView>> {
    Ok(Json(engram.curation(&collection).await?))
}

pub async fn pruning(
    State(engram): State<Engram>,
    ApiPath(collection): ApiPath<String>,
) -> Result<Json<PruningSummary>> {
    Ok(Json(engram.pruning(&collection).await?))
}

pub async fn clear_pruning(
    State(engram): State<Engram>,
    ApiPath(collection): ApiPath<String>,
) -> Result<StatusCode> {
    engram.clear_pruning(&collection).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn unlearning(
    State(engram): State<Engram>,
    ApiPath((collection, receipt)): ApiPath<(String, String)>,
) -> Result<Json<UnlearningStatus>> {
    let receipt = parse_number("receipt", &receipt)?;
    Ok(Json(engram.unlearning(&collection, receipt).await?))
}

/// Every receipt of the collection (`?overdue=true`: only those past
/// their erasure deadline with bytes still stored).
pub async fn unlearning_list(
    State(engram): State<Engram>,
    ApiPath(collection): ApiPath<String>,
    query: std::result::Result<Query<UnlearningQuery>, QueryRejection>,
) -> Result<Json<UnlearningList>> {
    let Query(query) = query.map_err(|e| ApiError::invalid(format!("query string: {e}")))?;
    Ok(Json(
        engram
            .unlearning_list(&collection, query.overdue.unwrap_or(false))
            .await?,
    ))
}

/// Does the work that erases a receipt's bytes now, instead of when its
/// deadline comes near; answers with the receipt as checked afterwards.
pub async fn erase_now(
    State(engram): State<Engram>,
    ApiPath((collection, receipt)): ApiPath<(String, String)>,
) -> Result<Json<UnlearningStatus>> {
    let receipt = parse_number("receipt", &receipt)?;
    Ok(Json(engram.erase_now(&collection, receipt).await?))
}

pub async fn start_job(
    State(engram): State<Engram>,
    ApiPath(collection): ApiPath<String>,
    ApiJson(request): ApiJson<JobRequest>,
) -> Result<(StatusCode, Json<crate::jobs::JobStatus>)> {
    Ok((
        StatusCode::ACCEPTED,
        Json(engram.start_job(&collection, request).await?),
    ))
}

pub async fn jobs(
    State(engram): State<Engram>,
    ApiPath(collection): ApiPath<String>,
) -> Result<Json<JobList>> {
    Ok(Json(engram.jobs(&collection)?))
}

pub async fn job(
    State(engram): State<Engram>,
    ApiPath((collection, job)): ApiPath<(String, String)>,
) -> Result<Json<crate::jobs::JobStatus>> {
    let job = parse_number("job id", &job)?;
    Ok(Json(engram.job(&collection, job)?))
}

pub async fn cancel_job(
    State(engram): State<Engram>,
    ApiPath((collection, job)): ApiPath<(String, String)>,
) -> Result<Json<crate::jobs::JobStatus>> {
    let job = parse_number("job id", &job)?;
    Ok(Json(engram.cancel_job(&collection, job).await?))
}

pub async fn resume_job(
    State(engram): State<Engram>,
    ApiPath((collection, job)): ApiPath<(String, String)>,
) -> Result<Json<crate::jobs::JobStatus>> {
    let job = parse_number("job id", &job)?;
    Ok(Json(engram.resume_job(&collection, job).await?))
}

/// The decision page (see docs/api.md, "The decision page").
pub async fn page() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        DECISION_PAGE,
    )
}

pub async fn to_page() -> impl IntoResponse {
    axum::response::Redirect::to("/ui")
}

pub async fn readyz(State(engram): State<Engram>) -> Result<Json<serde_json::Value>> {
    engram.ready()?;
    Ok(Json(json!({ "status": "ready" })))
}

pub async fn cluster_status(State(engram): State<Engram>) -> Json<ClusterStatus> {
    Json(engram.cluster_status())
}

pub async fn add_coordinator(
    State(engram): State<Engram>,
    ApiJson(request): ApiJson<AddCoordinator>,
) -> Result<Json<ClusterStatus>> {
    Ok(Json(engram.add_coordinator(request).await?))
}

pub async fn remove_coordinator(
    State(engram): State<Engram>,
    ApiPath(id): ApiPath<u64>,
) -> Result<Json<ClusterStatus>> {
    Ok(Json(engram.remove_coordinator(id).await?))
}

pub async fn rebalance_plan(
    State(engram): State<Engram>,
    query: std::result::Result<Query<crate::rebalance_service::PlanQuery>, QueryRejection>,
) -> Result<Json<engram_core::rebalance::Plan>> {
    let Query(query) = query.map_err(|e| ApiError::invalid(format!("query string: {e}")))?;
    Ok(Json(engram.rebalance_plan(query).await?))
}

pub async fn move_copy(
    State(engram): State<Engram>,
    ApiJson(request): ApiJson<crate::rebalance_service::MoveRequest>,
) -> Result<Json<crate::rebalance_service::MoveDone>> {
    Ok(Json(engram.move_copy(request).await?))
}

pub async fn create_snapshot(
    State(engram): State<Engram>,
    ApiJson(request): ApiJson<crate::snapshot_service::SnapshotRequest>,
) -> Result<(StatusCode, Json<crate::snapshot_service::SnapshotSummary>)> {
    Ok((
        StatusCode::CREATED,
        Json(engram.create_snapshot(request).await?),
    ))
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotListQuery {
    uri: String,
}

pub async fn list_snapshots(
    State(engram): State<Engram>,
    query: std::result::Result<Query<SnapshotListQuery>, QueryRejection>,
) -> Result<Json<crate::snapshot_service::SnapshotList>> {
    let Query(query) = query.map_err(|e| ApiError::invalid(format!("query string: {e}")))?;
    Ok(Json(engram.list_snapshots(&query.uri).await?))
}

pub async fn restore_snapshot(
    State(engram): State<Engram>,
    ApiJson(request): ApiJson<crate::snapshot_service::RestoreRequest>,
) -> Result<Json<crate::snapshot_service::SnapshotSummary>> {
    Ok(Json(engram.restore_snapshot(request).await?))
}
