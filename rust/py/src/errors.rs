//! Mapping of core errors to Python exceptions.

use lorax_core::LoraxError;
use pyo3::exceptions::{PyArithmeticError, PyTypeError, PyValueError};
use pyo3::{PyErr, PyResult};

/// Converts a core error into the Python exception users expect.
pub fn to_py(err: LoraxError) -> PyErr {
    match err {
        LoraxError::InvalidArgument(msg) => PyValueError::new_err(msg),
        LoraxError::InvalidType(msg) => PyTypeError::new_err(msg),
        LoraxError::Numerical(msg) => PyArithmeticError::new_err(msg),
    }
}

/// Converts a Python integer argument to an unsigned count, or a `ValueError` naming it.
pub fn non_negative<T: TryFrom<i64>>(value: i64, name: &str) -> PyResult<T> {
    T::try_from(value)
        .map_err(|_| PyValueError::new_err(format!("{name} must be >= 0, got {value}")))
}
