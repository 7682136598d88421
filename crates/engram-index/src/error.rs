//! Errors of segment indexes.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("vector has dimension {actual}, the index holds dimension {expected}")]
    DimensionMismatch { expected: usize, actual: usize },
    #[error("the index is full ({capacity} vectors)")]
    Full { capacity: usize },
    #[error("corrupted segment file {file}: {reason}")]
    Corrupted { file: PathBuf, reason: String },
    #[error("invalid segment input: {0}")]
    Invalid(String),
    #[error("DiskANN: {0}")]
    DiskAnn(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub type Result<T> = std::result::Result<T, IndexError>;
