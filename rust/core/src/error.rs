//! The one error type of the core crate.

use thiserror::Error;

/// Errors returned by the numeric core. The bindings map `InvalidArgument`
/// to `ValueError` and `InvalidType` to `TypeError`.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum LoraxError {
    /// A value is outside its allowed domain (shape, range, NaN, ...).
    #[error("{0}")]
    InvalidArgument(String),
    /// A value has the wrong kind (dtype, layout).
    #[error("{0}")]
    InvalidType(String),
    /// A numeric procedure could not produce a result (e.g. a singular system).
    #[error("{0}")]
    Numerical(String),
}

/// Shorthand used throughout the crate.
pub type Result<T> = std::result::Result<T, LoraxError>;

impl LoraxError {
    /// Builds an [`LoraxError::InvalidArgument`] from anything printable.
    pub fn invalid(msg: impl Into<String>) -> Self {
        Self::InvalidArgument(msg.into())
    }
}
