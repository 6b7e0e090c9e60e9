//! Numeric core of `lorax_core`, free of any Python dependency.
//!
//! Every fallible entry point returns [`error::Result`]; nothing in this crate
//! panics on user input, so the bindings crate can map every failure to a
//! Python exception.

#![forbid(unsafe_code)]

pub mod allocator;
pub mod error;
pub mod id;
pub mod knn;
pub mod nystrom;
pub mod real;

pub use error::{Context, LoraxError, Result};
pub use real::Real;
