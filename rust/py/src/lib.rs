//! `lorax_core._core`: thin PyO3 bindings over the `lorax-core` crate.
//!
//! No numerics live here: each submodule converts arguments, releases the
//! GIL, calls into the core crate and maps its errors to Python exceptions.

use pyo3::prelude::*;

mod allocator;
mod arrays;
mod errors;
mod id;
mod nystrom;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    allocator::register(m)?;
    id::register(m)?;
    nystrom::register(m)?;
    Ok(())
}
