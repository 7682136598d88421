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
}

pub type Result<T> = std::result::Result<T, WorkerError>;
