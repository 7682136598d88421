//! Errors of the worker.

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("collection `{0}` is not hosted here")]
    UnknownCollection(String),
    #[error("collection `{0}` already exists")]
    CollectionExists(String),
    #[error(transparent)]
    Store(#[from] engram_store::StoreError),
    #[error(transparent)]
    Index(#[from] engram_index::IndexError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The caller's mistake, as a remote worker reported it.
    #[error("{0}")]
    Invalid(String),
    /// No replica could serve (cluster mode).
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("remote worker: {0}")]
    Remote(String),
    /// A write that does not follow this copy's history: a replica that
    /// missed a write (or holds one its primary never ordered) must catch
    /// up instead of applying writes out of order.
    #[error("shard {shard}: write at {sent} does not follow this copy's history at {held}")]
    OutOfOrder {
        shard: u32,
        sent: engram_store::WritePosition,
        held: engram_store::WritePosition,
    },
}

impl WorkerError {
    /// Whether this is a file that failed its checksum or does not parse:
    /// the copy on disk cannot be trusted (as opposed to an I/O failure
    /// that may pass, such as a full disk).
    pub fn is_corruption(&self) -> bool {
        matches!(
            self,
            WorkerError::Store(engram_store::StoreError::Corrupted { .. })
                | WorkerError::Index(engram_index::IndexError::Corrupted { .. })
        )
    }
}

pub type Result<T> = std::result::Result<T, WorkerError>;
