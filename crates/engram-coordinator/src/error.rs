//! The closed set of error codes shared by every interface, and the one
//! place where they become HTTP statuses.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use engram_core::CoreError;
use engram_ingest::IngestError;
use engram_store::StoreError;
use engram_worker::WorkerError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    PayloadTooLarge,
    UnsupportedMediaType,
    MethodNotAllowed,
    Corrupted,
    Internal,
    /// No replica or no Raft leader could serve in time.
    Unavailable,
    /// Too much in flight (back-pressure); retry after a moment.
    ResourceExhausted,
    /// The collection is in a state that does not allow this now (a
    /// resharding under way); retry once it has finished.
    Conflict,
    /// No API key, or not one of the configured keys (401).
    Unauthenticated,
    /// The read-only key on a write or admin route (403).
    PermissionDenied,
    /// The request body did not arrive within `limits.body_timeout_ms`.
    RequestTimeout,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::NotFound => "not_found",
            ErrorCode::AlreadyExists => "already_exists",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Corrupted => "data_corrupted",
            ErrorCode::Internal => "internal",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::ResourceExhausted => "resource_exhausted",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::RequestTimeout => "request_timeout",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::InvalidArgument => StatusCode::BAD_REQUEST,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::AlreadyExists => StatusCode::CONFLICT,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::Corrupted | ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorCode::Conflict => StatusCode::CONFLICT,
            ErrorCode::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorCode::PermissionDenied => StatusCode::FORBIDDEN,
        }
    }
}

/// An error as the API reports it: `{"error": {"code", "message"}}`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

pub type Result<T> = std::result::Result<T, ApiError>;

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::InvalidArgument, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::NotFound, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::Internal, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.code.status().is_server_error() {
            tracing::error!(code = self.code.as_str(), message = %self.message, "request failed");
        }
        let body = json!({ "error": { "code": self.code.as_str(), "message": self.message } });
        (self.code.status(), Json(body)).into_response()
    }
}

impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> Self {
        ApiError::invalid(e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Corrupted { .. } => ApiError::new(ErrorCode::Corrupted, e.to_string()),
            StoreError::Io(_) => ApiError::internal(e.to_string()),
            StoreError::Remote { .. } => ApiError::new(ErrorCode::Unavailable, e.to_string()),
            StoreError::Refused(_) => ApiError::new(ErrorCode::PermissionDenied, e.to_string()),
        }
    }
}

impl From<engram_index::IndexError> for ApiError {
    fn from(e: engram_index::IndexError) -> Self {
        match e {
            engram_index::IndexError::DimensionMismatch { .. }
            | engram_index::IndexError::Invalid(_) => ApiError::invalid(e.to_string()),
            engram_index::IndexError::Corrupted { .. } => {
                ApiError::new(ErrorCode::Corrupted, e.to_string())
            }
            _ => ApiError::internal(e.to_string()),
        }
    }
}

impl From<WorkerError> for ApiError {
    fn from(e: WorkerError) -> Self {
        match e {
            WorkerError::UnknownCollection(name) => {
                ApiError::not_found(format!("collection `{name}` does not exist"))
            }
            WorkerError::CollectionExists(name) => ApiError::new(
                ErrorCode::AlreadyExists,
                format!("collection `{name}` already exists"),
            ),
            WorkerError::Store(e) => e.into(),
            WorkerError::Index(e) => e.into(),
            WorkerError::Io(e) => ApiError::internal(e.to_string()),
            WorkerError::Invalid(m) => ApiError::invalid(m),
            WorkerError::Unavailable(m) => ApiError::new(ErrorCode::Unavailable, m),
            WorkerError::Remote(m) => ApiError::internal(m),
            // Between a primary and its replicas only; never a caller's doing.
            e @ WorkerError::OutOfOrder { .. } => ApiError::internal(e.to_string()),
        }
    }
}

impl From<IngestError> for ApiError {
    fn from(e: IngestError) -> Self {
        match e {
            IngestError::BadImage { .. } | IngestError::Source { .. } => {
                ApiError::invalid(e.to_string())
            }
            IngestError::Store(store) => store.into(),
            _ => ApiError::internal(e.to_string()),
        }
    }
}
