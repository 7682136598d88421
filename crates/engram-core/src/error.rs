//! The core's error type: every variant is a caller's mistake that the HTTP
//! layer reports as a 4xx.

/// Errors raised while validating input against the core's rules.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CoreError {
    #[error("vector has dimension {actual}, the collection expects {expected}")]
    DimensionMismatch { expected: usize, actual: usize },
    #[error("vector component {index} is not a finite number")]
    NonFiniteComponent { index: usize },
    #[error("a zero vector has no direction and cannot be used with the cosine metric")]
    ZeroVector,
    #[error("invalid parameter `{name}`: {reason}")]
    InvalidParameter { name: &'static str, reason: String },
    #[error("unknown voting rule `{0}`; expected one of rank, softmax, distance, plurality")]
    UnknownRule(String),
    #[error("unknown metric `{0}`; expected cosine or l2")]
    UnknownMetric(String),
}

pub type Result<T> = std::result::Result<T, CoreError>;

impl CoreError {
    pub(crate) fn invalid(name: &'static str, reason: impl Into<String>) -> Self {
        CoreError::InvalidParameter {
            name,
            reason: reason.into(),
        }
    }
}
