//! Float32 tensor buffers passed by address from `lorax_core.kernels`: the checks an address
//! alone allows (non-null, aligned, no written buffer overlapping any other) and the slices
//! made from them once checked.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// A byte range `[start, end)` and whether the call writes it.
pub struct Span {
    start: usize,
    end: usize,
    writes: bool,
}

/// The span of `len` float32 values at `addr`; errors if the address is null or misaligned.
pub fn span(addr: usize, len: usize, writes: bool, what: &str) -> PyResult<Span> {
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
pub fn check_disjoint(mut spans: Vec<Span>) -> PyResult<()> {
    spans.retain(|s| s.end > s.start);
    spans.sort_unstable_by_key(|s| s.start);
    let (mut end_any, mut end_written) = (0usize, 0usize);
    for s in &spans {
        if s.start < end_written || (s.writes && s.start < end_any) {
            return Err(PyValueError::new_err(
                "a written buffer overlaps another buffer",
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
pub unsafe fn slice<'a>(addr: usize, len: usize) -> &'a [f32] {
    if len == 0 {
        return &[];
    }
    unsafe { std::slice::from_raw_parts(addr as *const f32, len) }
}

/// # Safety
/// As [`slice`], and no other reference to the values may exist while the slice lives.
pub unsafe fn slice_mut<'a>(addr: usize, len: usize) -> &'a mut [f32] {
    if len == 0 {
        return &mut [];
    }
    unsafe { std::slice::from_raw_parts_mut(addr as *mut f32, len) }
}
