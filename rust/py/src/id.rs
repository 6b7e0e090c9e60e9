//! Bindings of the intrinsic-dimension engine: exact kNN and TwoNN/MLE estimates.

use lorax_core::id::{self, Comb, Estimator, IdResult, Mle, Options, TwoNN, TwoNNMethod};
use lorax_core::knn as core_knn;
use numpy::{PyArray2, PyArrayMethods};
use pyo3::prelude::*;

use crate::arrays::borrow_2d;
use crate::errors::{non_negative, to_py};

/// `(dimension, ci, n_samples, n_duplicates, scales)` as returned to Python.
type PyIdResult = (
    f64,
    Option<(f64, f64)>,
    usize,
    usize,
    Option<Vec<(usize, f64)>>,
);

/// `(distances (n, k) float64, indices (n, k) int64)` as returned to Python.
type PyNeighbours<'py> = (Bound<'py, PyArray2<f64>>, Bound<'py, PyArray2<i64>>);

fn to_tuple(r: IdResult) -> PyIdResult {
    (r.dimension, r.ci, r.n_samples, r.n_duplicates, r.scales)
}

/// Exact `k` nearest neighbours of each row of `x`: `(distances float64, indices int64)`,
/// both `(n, k)`, nearest first, self excluded, ties by index.
#[pyfunction]
#[pyo3(signature = (x, k))]
fn knn<'py>(py: Python<'py>, x: &Bound<'py, PyAny>, k: i64) -> PyResult<PyNeighbours<'py>> {
    let k = non_negative(k, "k")?;
    let arr = borrow_2d(x, "X")?;
    let points = arr.points()?;
    let nn = py
        .allow_threads(|| core_knn::knn(&points, k))
        .map_err(to_py)?;
    let n = nn.len();
    let dist = numpy::PyArray1::from_slice(py, nn.all_distances()).reshape([n, k])?;
    let idx: Vec<i64> = nn.all_indices().iter().map(|&i| i as i64).collect();
    let idx = numpy::PyArray1::from_vec(py, idx).reshape([n, k])?;
    Ok((dist, idx))
}

/// Builds the estimator and options from the Python arguments.
#[allow(clippy::too_many_arguments)]
fn settings(
    estimator: &str,
    k: i64,
    discard_fraction: f64,
    method: &str,
    comb: &str,
    unbiased: bool,
    bootstrap: i64,
    seed: u64,
    scales: bool,
    duplicate_tol: f64,
) -> PyResult<(Estimator, Options)> {
    let twonn = TwoNN {
        discard_fraction,
        method: TwoNNMethod::parse(method).map_err(to_py)?,
    };
    let mle = Mle {
        k: non_negative(k, "k")?,
        comb: Comb::parse(comb).map_err(to_py)?,
        unbiased,
    };
    let est = Estimator::from_name(estimator, twonn, mle).map_err(to_py)?;
    let opts = Options {
        bootstrap: non_negative(bootstrap, "bootstrap")?,
        seed,
        scales,
        duplicate_tol,
    };
    Ok((est, opts))
}

/// Intrinsic dimension of the rows of `x` (see `lorax_core.id`).
#[pyfunction]
#[pyo3(signature = (
    x, estimator, *, k, discard_fraction, method, comb, unbiased, bootstrap, seed, scales,
    duplicate_tol
))]
#[allow(clippy::too_many_arguments)]
fn estimate_id(
    py: Python<'_>,
    x: &Bound<'_, PyAny>,
    estimator: &str,
    k: i64,
    discard_fraction: f64,
    method: &str,
    comb: &str,
    unbiased: bool,
    bootstrap: i64,
    seed: u64,
    scales: bool,
    duplicate_tol: f64,
) -> PyResult<PyIdResult> {
    let (est, opts) = settings(
        estimator,
        k,
        discard_fraction,
        method,
        comb,
        unbiased,
        bootstrap,
        seed,
        scales,
        duplicate_tol,
    )?;
    let arr = borrow_2d(x, "X")?;
    let points = arr.points()?;
    let r = py
        .allow_threads(|| id::estimate(&points, &est, &opts))
        .map_err(to_py)?;
    Ok(to_tuple(r))
}

/// [`estimate_id`] over many arrays at once, parallel across and within them.
#[pyfunction]
#[pyo3(signature = (
    xs, estimator, *, k, discard_fraction, method, comb, unbiased, bootstrap, seed, scales,
    duplicate_tol
))]
#[allow(clippy::too_many_arguments)]
fn estimate_id_many(
    py: Python<'_>,
    xs: Vec<Bound<'_, PyAny>>,
    estimator: &str,
    k: i64,
    discard_fraction: f64,
    method: &str,
    comb: &str,
    unbiased: bool,
    bootstrap: i64,
    seed: u64,
    scales: bool,
    duplicate_tol: f64,
) -> PyResult<Vec<PyIdResult>> {
    let (est, opts) = settings(
        estimator,
        k,
        discard_fraction,
        method,
        comb,
        unbiased,
        bootstrap,
        seed,
        scales,
        duplicate_tol,
    )?;
    let arrays = xs
        .iter()
        .enumerate()
        .map(|(i, x)| borrow_2d(x, &format!("arrays[{i}]")))
        .collect::<PyResult<Vec<_>>>()?;
    let points = arrays
        .iter()
        .map(|a| a.points())
        .collect::<PyResult<Vec<_>>>()?;
    let rs = py
        .allow_threads(|| id::estimate_many(&points, &est, &opts))
        .map_err(to_py)?;
    Ok(rs.into_iter().map(to_tuple).collect())
}

/// Adds the functions of this area to the extension module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(knn, m)?)?;
    m.add_function(wrap_pyfunction!(estimate_id, m)?)?;
    m.add_function(wrap_pyfunction!(estimate_id_many, m)?)?;
    Ok(())
}
