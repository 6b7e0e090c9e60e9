//! Mapping of core errors to Python exceptions, and the shared integer argument check.

use lorax_core::LoraxError;
use pyo3::exceptions::{PyArithmeticError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBool;

/// Converts a core error into the Python exception users expect.
pub fn to_py(err: LoraxError) -> PyErr {
    match err {
        LoraxError::InvalidArgument(msg) => PyValueError::new_err(msg),
        LoraxError::InvalidType(msg) => PyTypeError::new_err(msg),
        LoraxError::Numerical(msg) => PyArithmeticError::new_err(msg),
    }
}

/// A Python integer argument (`int` or a NumPy integer), checked by name when converted.
///
/// Extraction fails with a `TypeError` (which PyO3 prefixes with the argument's name) for
/// anything that is not an integer, bools included. [`Count::get`] gives a `ValueError` naming
/// the argument for negative values and values too large for the target type. Never an
/// `OverflowError`, never a panic.
pub struct Count(std::result::Result<u64, String>);

impl Count {
    /// A default value.
    pub const fn new(value: u64) -> Self {
        Self(Ok(value))
    }

    /// The value as `T`, or a `ValueError` naming `name`.
    pub fn get<T: TryFrom<u64>>(&self, name: &str) -> PyResult<T> {
        let fail = |shown: String| {
            PyValueError::new_err(format!(
                "{name} must be an int in [0, {}], got {shown}",
                max_of::<T>()
            ))
        };
        match &self.0 {
            Ok(v) => T::try_from(*v).map_err(|_| fail(v.to_string())),
            Err(shown) => Err(fail(shown.clone())),
        }
    }
}

/// The largest `u64` that converts to `T` (by bisection: no trait gives it for every `T`).
fn max_of<T: TryFrom<u64>>() -> u64 {
    let (mut lo, mut hi) = (0u64, u64::MAX);
    if T::try_from(hi).is_ok() {
        return hi;
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if T::try_from(mid).is_ok() {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}

impl<'py> FromPyObject<'py> for Count {
    fn extract_bound(value: &Bound<'py, PyAny>) -> PyResult<Self> {
        if value.is_instance_of::<PyBool>() || !value.hasattr("__index__")? {
            let ty = value.get_type().name()?;
            return Err(PyTypeError::new_err(format!("must be an int, got {ty}")));
        }
        Ok(Self(value.extract::<u64>().map_err(|_| {
            value.repr().map_or_else(|_| "?".into(), |r| r.to_string())
        })))
    }
}

/// [`Count::get`] over a list argument; element `i` is named `name[i]` in errors.
pub fn counts<T: TryFrom<u64>>(values: &[Count], name: &str) -> PyResult<Vec<T>> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| v.get(&format!("{name}[{i}]")))
        .collect()
}
