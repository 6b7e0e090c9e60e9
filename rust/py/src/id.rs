//! Bindings of the intrinsic-dimension engine: exact kNN and TwoNN/MLE estimates.
//!
//! Each estimator has its own settings class (`TwoNNOptions`, `MleOptions`, checked when
//! built); `EstimateOptions` holds what both share. Results are `IdEstimate` and `Neighbours`.

use lorax_core::id::{
    self, Comb, Estimator, IdResult, Mle, Options, TwoNN, TwoNNMethod, DEFAULT_DUPLICATE_TOL,
};
use lorax_core::knn as core_knn;
use numpy::{PyArray1, PyArray2, PyArrayMethods};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;

use crate::arrays::borrow_2d;
use crate::errors::{to_py, Count};

/// TwoNN settings: `discard_fraction` in `[0, 1)` (`> 0` for `method="ls"`), `method` `"ls"`
/// (alias `"linear"`) or `"mle"`.
#[pyclass(module = "lorax_core._core", name = "TwoNNOptions", frozen)]
pub struct PyTwoNN {
    inner: TwoNN,
}

#[pymethods]
impl PyTwoNN {
    #[new]
    #[pyo3(signature = (discard_fraction = 0.1, method = "ls"))]
    fn new(discard_fraction: f64, method: &str) -> PyResult<Self> {
        let inner = TwoNN {
            discard_fraction,
            method: TwoNNMethod::parse(method).map_err(to_py)?,
        };
        inner.validate().map_err(to_py)?;
        Ok(Self { inner })
    }

    /// Fraction of the largest ratios `r2/r1` discarded.
    #[getter]
    fn discard_fraction(&self) -> f64 {
        self.inner.discard_fraction
    }

    /// `"ls"` or `"mle"`.
    #[getter]
    fn method(&self) -> &'static str {
        match self.inner.method {
            TwoNNMethod::LeastSquares => "ls",
            TwoNNMethod::Mle => "mle",
        }
    }
}

/// MLE settings: `k` neighbours (at least 2, 3 when `unbiased`), `comb` `"mle"`, `"mean"` or
/// `"median"`.
#[pyclass(module = "lorax_core._core", name = "MleOptions", frozen)]
pub struct PyMle {
    inner: Mle,
}

#[pymethods]
impl PyMle {
    #[new]
    #[pyo3(
        signature = (k = Count::new(20), comb = "mle", unbiased = false),
        text_signature = "(k=20, comb='mle', unbiased=False)"
    )]
    fn new(k: Count, comb: &str, unbiased: bool) -> PyResult<Self> {
        let inner = Mle {
            k: k.get("k")?,
            comb: Comb::parse(comb).map_err(to_py)?,
            unbiased,
        };
        inner.validate().map_err(to_py)?;
        Ok(Self { inner })
    }

    /// Neighbours per point.
    #[getter]
    fn k(&self) -> usize {
        self.inner.k
    }

    /// `"mle"`, `"mean"` or `"median"`.
    #[getter]
    fn comb(&self) -> &'static str {
        match self.inner.comb {
            Comb::Mle => "mle",
            Comb::Mean => "mean",
            Comb::Median => "median",
        }
    }

    /// Whether `k - 2` replaces `k - 1` in the numerator.
    #[getter]
    fn unbiased(&self) -> bool {
        self.inner.unbiased
    }
}

/// Settings both estimators share: `bootstrap` resamples (0: no interval), `seed`, `scales`
/// and `duplicate_tol` (finite, `>= 0`).
#[pyclass(module = "lorax_core._core", name = "EstimateOptions", frozen)]
pub struct PyOptions {
    inner: Options,
}

#[pymethods]
impl PyOptions {
    #[new]
    #[pyo3(
        signature = (bootstrap = Count::new(0), seed = Count::new(0), scales = false, duplicate_tol = DEFAULT_DUPLICATE_TOL),
        text_signature = "(bootstrap=0, seed=0, scales=False, duplicate_tol=1e-07)"
    )]
    fn new(bootstrap: Count, seed: Count, scales: bool, duplicate_tol: f64) -> PyResult<Self> {
        let inner = Options {
            bootstrap: bootstrap.get("bootstrap")?,
            seed: seed.get("seed")?,
            scales,
            duplicate_tol,
        };
        inner.validate().map_err(to_py)?;
        Ok(Self { inner })
    }

    /// Bootstrap resamples for the 95% interval.
    #[getter]
    fn bootstrap(&self) -> usize {
        self.inner.bootstrap
    }

    /// Seed of the bootstrap and decimation draws.
    #[getter]
    fn seed(&self) -> u64 {
        self.inner.seed
    }

    /// Whether nested halves are estimated too.
    #[getter]
    fn scales(&self) -> bool {
        self.inner.scales
    }

    /// Near-duplicate tolerance relative to the data's robust scale (the median distance of
    /// the points from their coordinate-wise median).
    #[getter]
    fn duplicate_tol(&self) -> f64 {
        self.inner.duplicate_tol
    }
}

/// One intrinsic-dimension estimate.
#[pyclass(module = "lorax_core._core", name = "IdEstimate", frozen, eq, get_all)]
#[derive(PartialEq)]
pub struct PyIdEstimate {
    /// The intrinsic dimension.
    dimension: f64,
    /// 95% bootstrap interval `(low, high)`, or `None`.
    ci: Option<(f64, f64)>,
    /// Input rows, duplicates included.
    n_samples: usize,
    /// Rows removed as exact or near duplicates.
    n_duplicates: usize,
    /// `(points used, dimension)` at `N, N/2, …`, or `None`.
    scales: Option<Vec<(usize, f64)>>,
}

#[pymethods]
impl PyIdEstimate {
    fn __repr__(&self) -> String {
        let ci = self
            .ci
            .map_or_else(|| "None".to_string(), |(lo, hi)| format!("({lo}, {hi})"));
        format!(
            "IdEstimate(dimension={}, ci={ci}, n_samples={}, n_duplicates={})",
            self.dimension, self.n_samples, self.n_duplicates
        )
    }
}

impl From<IdResult> for PyIdEstimate {
    fn from(r: IdResult) -> Self {
        Self {
            dimension: r.dimension,
            ci: r.ci,
            n_samples: r.n_samples,
            n_duplicates: r.n_duplicates,
            scales: r.scales,
        }
    }
}

/// The `k` nearest neighbours of every row.
#[pyclass(module = "lorax_core._core", name = "Neighbours", frozen)]
pub struct PyNeighbours {
    distances: Py<PyArray2<f64>>,
    indices: Py<PyArray2<i64>>,
}

#[pymethods]
impl PyNeighbours {
    /// Euclidean distances `(n, k)` float64, ascending along each row.
    #[getter]
    fn distances(&self, py: Python<'_>) -> Py<PyArray2<f64>> {
        self.distances.clone_ref(py)
    }

    /// Row indices `(n, k)` int64 of the neighbours, nearest first, ties by index.
    #[getter]
    fn indices(&self, py: Python<'_>) -> Py<PyArray2<i64>> {
        self.indices.clone_ref(py)
    }
}

/// Exact `k` nearest neighbours of each row of `x`, self excluded, ties by index.
#[pyfunction]
#[pyo3(signature = (x, k))]
pub fn knn(py: Python<'_>, x: &Bound<'_, PyAny>, k: Count) -> PyResult<PyNeighbours> {
    let k = k.get("k")?;
    let arr = borrow_2d(x, "X")?;
    let points = arr.points()?;
    let nn = py
        .allow_threads(|| core_knn::knn(&points, k))
        .map_err(to_py)?;
    let n = nn.len();
    let distances = PyArray1::from_slice(py, nn.all_distances()).reshape([n, k])?;
    let idx: Vec<i64> = nn.all_indices().iter().map(|&i| i as i64).collect();
    let indices = PyArray1::from_vec(py, idx).reshape([n, k])?;
    Ok(PyNeighbours {
        distances: distances.unbind(),
        indices: indices.unbind(),
    })
}

/// The core estimator behind a `TwoNNOptions` or `MleOptions`.
fn estimator(obj: &Bound<'_, PyAny>) -> PyResult<Estimator> {
    if let Ok(t) = obj.downcast::<PyTwoNN>() {
        return Ok(Estimator::TwoNN(t.get().inner));
    }
    if let Ok(m) = obj.downcast::<PyMle>() {
        return Ok(Estimator::Mle(m.get().inner));
    }
    let ty = obj
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_default();
    Err(PyTypeError::new_err(format!(
        "estimator must be a TwoNNOptions or MleOptions, got {ty}"
    )))
}

fn options(opts: Option<&Bound<'_, PyOptions>>) -> Options {
    opts.map_or_else(Options::default, |o| o.get().inner)
}

/// Intrinsic dimension of the rows of `x` (see `lorax_core.id`).
#[pyfunction]
#[pyo3(signature = (x, estimator, options = None))]
pub fn estimate_id(
    py: Python<'_>,
    x: &Bound<'_, PyAny>,
    estimator: &Bound<'_, PyAny>,
    options: Option<&Bound<'_, PyOptions>>,
) -> PyResult<PyIdEstimate> {
    let (est, opts) = (self::estimator(estimator)?, self::options(options));
    let arr = borrow_2d(x, "X")?;
    let points = arr.points()?;
    let r = py
        .allow_threads(|| id::estimate(&points, &est, &opts))
        .map_err(to_py)?;
    Ok(r.into())
}

/// [`estimate_id`] over many arrays at once, parallel across and within them; errors name the
/// failing array (`layer i: …`).
#[pyfunction]
#[pyo3(signature = (xs, estimator, options = None))]
pub fn estimate_id_many(
    py: Python<'_>,
    xs: Vec<Bound<'_, PyAny>>,
    estimator: &Bound<'_, PyAny>,
    options: Option<&Bound<'_, PyOptions>>,
) -> PyResult<Vec<PyIdEstimate>> {
    let (est, opts) = (self::estimator(estimator)?, self::options(options));
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
    Ok(rs.into_iter().map(PyIdEstimate::from).collect())
}
