//! Mapping of core errors to Python exceptions.

use lorax_core::LoraxError;
use pyo3::exceptions::{PyArithmeticError, PyTypeError, PyValueError};
use pyo3::PyErr;

/// Converts a core error into the Python exception users expect.
pub fn to_py(err: LoraxError) -> PyErr {
    match err {
        LoraxError::InvalidArgument(msg) => PyValueError::new_err(msg),
        LoraxError::InvalidType(msg) => PyTypeError::new_err(msg),
        LoraxError::Numerical(msg) => PyArithmeticError::new_err(msg),
    }
}
