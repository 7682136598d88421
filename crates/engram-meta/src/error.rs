//! Errors of the metadata layer.

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("metadata file corrupted: {0}")]
    Corrupted(String),
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("raft: {0}")]
    Raft(String),
    #[error("no metadata leader reachable: {0}")]
    NoLeader(String),
    /// The state machine refused the command (e.g. a stale epoch).
    #[error("{0}")]
    Refused(String),
    /// A certificate, key or CA of `[security.tls]` that cannot be used.
    #[error("tls: {0}")]
    Tls(String),
}

pub type Result<T> = std::result::Result<T, MetaError>;
