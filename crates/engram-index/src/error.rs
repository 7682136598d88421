//! Errors of segment indexes.

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum IndexError {
    #[error("vector has dimension {actual}, the index holds dimension {expected}")]
    DimensionMismatch { expected: usize, actual: usize },
    #[error("the index is full ({capacity} vectors)")]
    Full { capacity: usize },
}

pub type Result<T> = std::result::Result<T, IndexError>;
