//! Borrowing 2-D numpy arrays for the core crate without copying.
//!
//! [`borrow_2d`] accepts `float32` or `float64` arrays that are C- or Fortran-contiguous and
//! holds numpy's read-only borrow; [`buffer`] gives the borrowed buffer with its shape and
//! memory order (the Nyström sketch's input), and [`Array2::points`] views the same memory as a
//! core [`Points`] (a strided [`MatRef`]), both free to cross `Python::allow_threads`. Anything
//! else is a `TypeError` (not an array, other dtypes, non-contiguous layouts) or a `ValueError`
//! (not 2-D), each naming the argument. Callers convert other inputs once on the Python side
//! (`np.ascontiguousarray`, `astype`).

use lorax_core::knn::{MatRef, Points};
use lorax_core::nystrom::Layout;
use lorax_core::Real;
use numpy::{
    Element, PyArray2, PyArrayDescrMethods, PyArrayMethods, PyReadonlyArray2, PyUntypedArray,
    PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

use crate::errors::to_py;

/// A borrowed, read-only 2-D float array (either precision).
pub enum Array2<'py> {
    /// A `float32` array.
    F32(PyReadonlyArray2<'py, f32>),
    /// A `float64` array.
    F64(PyReadonlyArray2<'py, f64>),
}

/// Borrows `obj` as a 2-D `float32`/`float64` C- or F-contiguous numpy array; `name` is the
/// argument name used in error messages.
pub fn borrow_2d<'py>(obj: &Bound<'py, PyAny>, name: &str) -> PyResult<Array2<'py>> {
    let arr = obj.downcast::<PyUntypedArray>().map_err(|_| {
        let ty = obj
            .get_type()
            .name()
            .map(|n| n.to_string())
            .unwrap_or_default();
        PyTypeError::new_err(format!("{name} must be a numpy array, got {ty}"))
    })?;
    if arr.ndim() != 2 {
        return Err(PyValueError::new_err(format!(
            "{name} must be a 2-D array (n_samples, n_features), got {}-D with shape {:?}",
            arr.ndim(),
            arr.shape()
        )));
    }
    if !(arr.is_c_contiguous() || arr.is_fortran_contiguous()) {
        return Err(PyTypeError::new_err(format!(
            "{name} must be C- or Fortran-contiguous (use numpy.ascontiguousarray)"
        )));
    }
    let dtype = arr.dtype();
    if dtype.is_equiv_to(&numpy::dtype::<f32>(obj.py())) {
        Ok(Array2::F32(readonly::<f32>(obj)?))
    } else if dtype.is_equiv_to(&numpy::dtype::<f64>(obj.py())) {
        Ok(Array2::F64(readonly::<f64>(obj)?))
    } else {
        Err(PyTypeError::new_err(format!(
            "{name} must have dtype float32 or float64, got {dtype}"
        )))
    }
}

fn readonly<'py, T: Element>(obj: &Bound<'py, PyAny>) -> PyResult<PyReadonlyArray2<'py, T>> {
    Ok(obj.downcast::<PyArray2<T>>()?.try_readonly()?)
}

/// A borrowed contiguous buffer with its shape and memory order.
pub struct Buffer<'a, T> {
    /// The `nrows * ncols` elements.
    pub data: &'a [T],
    /// Number of rows.
    pub nrows: usize,
    /// Number of columns.
    pub ncols: usize,
    /// C (row-major) or Fortran (column-major) order.
    pub layout: Layout,
}

/// The buffer of an array borrowed by [`borrow_2d`] (contiguous by construction).
pub fn buffer<'a, T: Element>(a: &'a PyReadonlyArray2<'_, T>) -> PyResult<Buffer<'a, T>> {
    let (nrows, ncols) = (a.shape()[0], a.shape()[1]);
    let layout = if a.is_c_contiguous() {
        Layout::RowMajor
    } else {
        Layout::ColMajor
    };
    let data = a
        .as_slice()
        .map_err(|_| PyTypeError::new_err("array must be C- or Fortran-contiguous"))?;
    Ok(Buffer {
        data,
        nrows,
        ncols,
        layout,
    })
}

fn view<'a, T: Element + Real>(a: &'a PyReadonlyArray2<'_, T>) -> PyResult<MatRef<'a, T>> {
    let d = buffer(a)?;
    match d.layout {
        Layout::RowMajor => MatRef::row_major(d.data, d.nrows, d.ncols),
        Layout::ColMajor => MatRef::col_major(d.data, d.nrows, d.ncols),
    }
    .map_err(to_py)
}

impl Array2<'_> {
    /// The array as core points (no copy).
    pub fn points(&self) -> PyResult<Points<'_>> {
        Ok(match self {
            Array2::F32(a) => Points::F32(view(a)?),
            Array2::F64(a) => Points::F64(view(a)?),
        })
    }
}
