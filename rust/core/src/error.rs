//! The one error type of the core crate, and the one way to add context to it.

use thiserror::Error;

/// Errors returned by the numeric core. The bindings map `InvalidArgument`
/// to `ValueError`, `InvalidType` to `TypeError` and `Numerical` to `ArithmeticError`.
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

    /// The same kind of error with `"{context}: "` in front of its message.
    pub fn context(self, context: impl std::fmt::Display) -> Self {
        let wrap = |m: String| format!("{context}: {m}");
        match self {
            Self::InvalidArgument(m) => Self::InvalidArgument(wrap(m)),
            Self::InvalidType(m) => Self::InvalidType(wrap(m)),
            Self::Numerical(m) => Self::Numerical(wrap(m)),
        }
    }
}

/// Adds context (`"layer 3"`, `"state"`) to the error of a [`Result`], keeping its kind.
pub trait Context<T> {
    /// `Err(e)` becomes `Err(e.context(context))`; `Ok` passes through.
    fn context(self, context: impl std::fmt::Display) -> Result<T>;
}

impl<T> Context<T> for Result<T> {
    fn context(self, context: impl std::fmt::Display) -> Result<T> {
        self.map_err(|e| e.context(context))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_keeps_the_kind() {
        let e: Result<()> = Err(LoraxError::Numerical("singular".into()));
        assert_eq!(
            e.context("layer 3"),
            Err(LoraxError::Numerical("layer 3: singular".into()))
        );
        let e = LoraxError::InvalidType("dtype".into()).context("w");
        assert_eq!(e, LoraxError::InvalidType("w: dtype".into()));
    }
}
