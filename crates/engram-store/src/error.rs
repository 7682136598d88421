//! Errors of the storage layer.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An I/O failure; `fs_err` puts the path in the message.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A file's content does not match its checksum or format: refused.
    #[error("corrupted file {path}: {reason} (at byte {offset})")]
    Corrupted {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    /// Object storage could not be reached or refused a request.
    #[error("object storage {uri}: {reason}")]
    Remote { uri: String, reason: String },
    /// A request named a place outside the configured roots or buckets.
    #[error("refused: {0}")]
    Refused(#[from] crate::confine::Refused),
}

pub type Result<T> = std::result::Result<T, StoreError>;

impl StoreError {
    pub(crate) fn corrupted(
        path: impl Into<PathBuf>,
        offset: u64,
        reason: impl Into<String>,
    ) -> Self {
        StoreError::Corrupted {
            path: path.into(),
            offset,
            reason: reason.into(),
        }
    }
}
