//! `lorax_core._core._importance_update_f32`: the CPU importance step over tensor buffers.
//!
//! The Python side (`lorax_core.kernels.ops`) passes the addresses of float32 CPU tensors it
//! has checked (dtype, device, contiguity, shapes) and keeps alive for the call; this file turns
//! them into slices after checking what an address alone can show — non-null, aligned, and no
//! written buffer overlapping any other — and calls the core with the GIL held, so that no
//! Python code runs (or frees a tensor) while the slices live.

use lorax_core::allocator::importance::{self, ImportanceTensor, RankAxis};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::errors::to_py;

/// `(param, grad, ipt, unc, rows, cols, rank_dim, score_offset)`: four buffer addresses of
/// `rows · cols` float32 values, the rank axis (`0`, `1`, or `-1` for none) and the module's
/// first score slot.
type TensorAddresses = (usize, usize, usize, usize, usize, usize, i64, usize);

/// A byte range `[start, end)` and whether the call writes it.
struct Span {
    start: usize,
    end: usize,
    writes: bool,
}

fn span(addr: usize, len: usize, writes: bool, what: &str) -> PyResult<Span> {
    let size = std::mem::size_of::<f32>();
    if len > 0 && (addr == 0 || addr % std::mem::align_of::<f32>() != 0) {
        return Err(PyValueError::new_err(format!(
            "{what}: address {addr:#x} is null or not aligned for float32"
        )));
    }
    let end = len
        .checked_mul(size)
        .and_then(|bytes| addr.checked_add(bytes))
        .ok_or_else(|| PyValueError::new_err(format!("{what}: {len} elements overflow")))?;
    Ok(Span {
        start: addr,
        end,
        writes,
    })
}

/// Errors if a written span overlaps any other span.
fn check_disjoint(mut spans: Vec<Span>) -> PyResult<()> {
    spans.retain(|s| s.end > s.start);
    spans.sort_unstable_by_key(|s| s.start);
    let (mut end_any, mut end_written) = (0usize, 0usize);
    for s in &spans {
        if s.start < end_written || (s.writes && s.start < end_any) {
            return Err(PyValueError::new_err(
                "a written buffer (EMA or scores) overlaps another buffer",
            ));
        }
        end_any = end_any.max(s.end);
        if s.writes {
            end_written = end_written.max(s.end);
        }
    }
    Ok(())
}

/// # Safety
/// `addr` must point to `len` initialised float32 values that stay valid, and (for `mut`)
/// unaliased, while the returned slice lives. Zero-length spans never touch `addr`.
unsafe fn slice<'a>(addr: usize, len: usize) -> &'a [f32] {
    if len == 0 {
        return &[];
    }
    unsafe { std::slice::from_raw_parts(addr as *const f32, len) }
}

/// # Safety
/// As [`slice`], and no other reference to the values may exist while the slice lives.
unsafe fn slice_mut<'a>(addr: usize, len: usize) -> &'a mut [f32] {
    if len == 0 {
        return &mut [];
    }
    unsafe { std::slice::from_raw_parts_mut(addr as *mut f32, len) }
}

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
