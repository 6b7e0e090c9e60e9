//! `lorax_core._core._importance_update_f32`: the CPU importance step over tensor buffers.
//!
//! The Python side (`lorax_core.kernels.ops`) passes the addresses of float32 CPU tensors it
//! has checked (dtype, device, contiguity, shapes) and keeps alive for the call; this file turns
//! them into slices after checking what an address alone can show (`crate::buffers`) and calls
//! the core with the GIL held, so that no Python code runs (or frees a tensor) while the slices
//! live.

use lorax_core::allocator::importance::{self, ImportanceTensor, RankAxis};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::buffers::{check_disjoint, slice, slice_mut, span};
use crate::errors::to_py;

/// `(param, grad, ipt, unc, rows, cols, rank_dim, score_offset)`: four buffer addresses of
/// `rows · cols` float32 values, the rank axis (`0`, `1`, or `-1` for none) and the module's
/// first score slot.
type TensorAddresses = (usize, usize, usize, usize, usize, usize, i64, usize);

/// One importance step (the EMAs in place, then `scores` zeroed and filled) over float32 CPU
/// buffers given by address. Private to `lorax_core.kernels`: the addresses must be those of
/// live, C-contiguous float32 CPU tensors with the stated element counts.
#[pyfunction]
#[pyo3(name = "_importance_update_f32", signature = (tensors, scores, scores_len, beta1, beta2))]
pub fn importance_update_f32(
    tensors: Vec<TensorAddresses>,
    scores: usize,
    scores_len: usize,
    beta1: f64,
    beta2: f64,
) -> PyResult<()> {
    let mut spans = Vec::with_capacity(4 * tensors.len() + 1);
    spans.push(span(scores, scores_len, true, "scores")?);
    let mut shapes = Vec::with_capacity(tensors.len());
    for (i, &(p, g, a, u, rows, cols, dim, _)) in tensors.iter().enumerate() {
        let len = rows
            .checked_mul(cols)
            .ok_or_else(|| PyValueError::new_err(format!("tensor {i}: shape overflows")))?;
        let axis = match dim {
            -1 => RankAxis::None,
            0 => RankAxis::Rows,
            1 => RankAxis::Cols,
            _ => {
                return Err(PyValueError::new_err(format!(
                    "tensor {i}: rank_dim must be -1, 0 or 1, got {dim}"
                )))
            }
        };
        spans.push(span(p, len, false, "param")?);
        spans.push(span(g, len, false, "grad")?);
        spans.push(span(a, len, true, "ipt")?);
        spans.push(span(u, len, true, "unc")?);
        shapes.push((len, axis));
    }
    check_disjoint(spans)?;
    // SAFETY: the caller's contract (live float32 buffers of these lengths, kept alive and
    // untouched by Python while the GIL is held here) plus the checks above (non-null,
    // aligned, written buffers disjoint from every other) make each slice valid and the
    // mutable ones unaliased.
    let mut views: Vec<ImportanceTensor<'_>> = tensors
        .iter()
        .zip(&shapes)
        .map(
            |(&(p, g, a, u, rows, cols, _, offset), &(len, rank_axis))| unsafe {
                ImportanceTensor {
                    param: slice(p, len),
                    grad: slice(g, len),
                    ipt: slice_mut(a, len),
                    unc: slice_mut(u, len),
                    rows,
                    cols,
                    rank_axis,
                    score_offset: offset,
                }
            },
        )
        .collect();
    let out = unsafe { slice_mut(scores, scores_len) };
    importance::update_importance(&mut views, beta1, beta2, out).map_err(to_py)
}
