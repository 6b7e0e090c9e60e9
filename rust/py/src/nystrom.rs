//! `lorax_core._core.nystrom`: the randomized generalized Nyström sketch of a weight matrix.

use lorax_core::nystrom::{self as core_nystrom, Dense, NystromOptions};
use lorax_core::Real;
use numpy::{Element, PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray2};
use pyo3::prelude::*;
use pyo3::types::{PyIterator, PyTuple};

use crate::arrays::{borrow_2d, buffer, Array2};
use crate::errors::{to_py, Count};

/// Factors `B` (m×r), `N` (r×r, diagonal) and `A` (r×n) of a sketch, in `w`'s dtype.
///
/// Unpacks as `B, N, A = nystrom(...)`.
#[pyclass(module = "lorax_core._core", name = "NystromFactors", frozen)]
pub struct PyNystromFactors {
    b: Py<PyAny>,
    n: Py<PyAny>,
    a: Py<PyAny>,
}

#[pymethods]
impl PyNystromFactors {
    /// Left factor `W X V_r`, shape `(m, r)`.
    #[getter(B)]
    fn b(&self, py: Python<'_>) -> Py<PyAny> {
        self.b.clone_ref(py)
    }

    /// Regularised pseudo-inverse of the truncated core, shape `(r, r)`, diagonal.
    #[getter(N)]
    fn n(&self, py: Python<'_>) -> Py<PyAny> {
        self.n.clone_ref(py)
    }

    /// Right factor `U_rᵀ Ψᵀ W`, shape `(r, n)`.
    #[getter(A)]
    fn a(&self, py: Python<'_>) -> Py<PyAny> {
        self.a.clone_ref(py)
    }

    fn __len__(&self) -> usize {
        3
    }

    fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyIterator>> {
        let parts = [self.b(py), self.n(py), self.a(py)];
        PyTuple::new(py, parts)?.try_iter()
    }
}

/// Rank-`rank` Nyström factors `B, N, A` of `w` (out×in, float32/float64, C or Fortran
/// order) with `B @ N @ A ≈ w`'s best rank-`rank` approximation; outputs have `w`'s dtype.
#[pyfunction]
#[pyo3(
    signature = (w, rank, *, oversample = Count::new(10), power_iters = Count::new(1), seed = Count::new(0), rcond = None),
    text_signature = "(w, rank, *, oversample=10, power_iters=1, seed=0, rcond=None)"
)]
pub fn nystrom(
    py: Python<'_>,
    w: &Bound<'_, PyAny>,
    rank: Count,
    oversample: Count,
    power_iters: Count,
    seed: Count,
    rcond: Option<f64>,
) -> PyResult<PyNystromFactors> {
    let opts = NystromOptions {
        rank: rank.get("rank")?,
        oversample: oversample.get("oversample")?,
        power_iters: power_iters.get("power_iters")?,
        seed: seed.get("seed")?,
        rcond,
    };
    match borrow_2d(w, "w")? {
        Array2::F32(a) => sketch(py, &a, &opts),
        Array2::F64(a) => sketch(py, &a, &opts),
    }
}

fn sketch<T: Real + Element>(
    py: Python<'_>,
    w: &PyReadonlyArray2<'_, T>,
    opts: &NystromOptions,
) -> PyResult<PyNystromFactors> {
    let w = buffer(w)?;
    let f = py
        .allow_threads(|| core_nystrom::nystrom(w.data, w.nrows, w.ncols, w.layout, opts))
        .map_err(to_py)?;
    Ok(PyNystromFactors {
        b: to_numpy(py, f.b)?,
        n: to_numpy(py, f.n)?,
        a: to_numpy(py, f.a)?,
    })
}

fn to_numpy<T: Element>(py: Python<'_>, d: Dense<T>) -> PyResult<Py<PyAny>> {
    let arr: Bound<'_, PyArray2<T>> = PyArray1::from_vec(py, d.data).reshape([d.nrows, d.ncols])?;
    Ok(arr.into_any().unbind())
}
