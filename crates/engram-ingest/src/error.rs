//! Errors of ingestion.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("image {index}: {reason}")]
    BadImage { index: usize, reason: String },
    #[error("model file {path} has sha256 {actual}, expected {expected}; refusing to load it")]
    ModelChecksum {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("model file {path}: {reason}")]
    Model { path: PathBuf, reason: String },
    #[error("ONNX Runtime: {0}")]
    Runtime(String),
    #[error("dataset file {path}: {reason}")]
    Dataset { path: PathBuf, reason: String },
    #[error("source {uri}: {reason}")]
    Source { uri: String, reason: String },
    #[error("Parquet file {path}: {reason}")]
    Parquet { path: String, reason: String },
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Store(#[from] engram_store::StoreError),
    #[error(transparent)]
    Index(#[from] engram_index::IndexError),
}

pub type Result<T> = std::result::Result<T, IngestError>;

impl<R> From<ort::Error<R>> for IngestError {
    fn from(e: ort::Error<R>) -> Self {
        IngestError::Runtime(e.to_string())
    }
}
