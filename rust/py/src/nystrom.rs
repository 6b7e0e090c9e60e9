//! `lorax_core._core.nystrom`: the randomized generalized Nyström sketch of a weight matrix.

use lorax_core::nystrom::{self as core_nystrom, Dense, Layout, NystromOptions, Real};
use numpy::{Element, PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::arrays::{borrow_2d, Array2};
use crate::errors::to_py;

type Factors<'py, T> = (
    Bound<'py, PyArray2<T>>,
    Bound<'py, PyArray2<T>>,
    Bound<'py, PyArray2<T>>,
);

/// Rank-`rank` Nyström factors `(B, N, A)` of `w` (out×in, float32/float64, C or Fortran
/// order) with `B @ N @ A ≈ w`'s best rank-`rank` approximation; outputs have `w`'s dtype.
#[pyfunction]
#[pyo3(signature = (w, rank, *, oversample = 10, power_iters = 1, seed = 0, rcond = None))]
fn nystrom<'py>(
    py: Python<'py>,
    w: &Bound<'py, PyAny>,
    rank: usize,
    oversample: usize,
    power_iters: usize,
    seed: u64,
    rcond: Option<f64>,
) -> PyResult<Bound<'py, PyTuple>> {
    let opts = NystromOptions {
        rank,
        oversample,
        power_iters,
        seed,
        rcond,
    };
    match borrow_2d(w, "w")? {
        Array2::F32(a) => sketch(py, &a, &opts)?.into_pyobject(py),
        Array2::F64(a) => sketch(py, &a, &opts)?.into_pyobject(py),
    }
}

fn sketch<'py, T: Real + Element>(
    py: Python<'py>,
    w: &PyReadonlyArray2<'py, T>,
    opts: &NystromOptions,
) -> PyResult<Factors<'py, T>> {
    let (m, n) = (w.shape()[0], w.shape()[1]);
    let layout = if w.is_c_contiguous() {
        Layout::RowMajor
    } else {
        Layout::ColMajor
    };
    let data = w
        .as_slice()
        .map_err(|_| PyTypeError::new_err("w must be C- or Fortran-contiguous"))?;
    let f = py
        .allow_threads(|| core_nystrom::nystrom(data, m, n, layout, opts))
        .map_err(to_py)?;
    Ok((to_numpy(py, f.b)?, to_numpy(py, f.n)?, to_numpy(py, f.a)?))
}

fn to_numpy<T: Element>(py: Python<'_>, d: Dense<T>) -> PyResult<Bound<'_, PyArray2<T>>> {
    PyArray1::from_vec(py, d.data).reshape([d.nrows, d.ncols])
}

/// Adds the sketch to the extension module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(nystrom, m)?)
}
