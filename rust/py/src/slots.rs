//! `lorax_core._core._move_slots_f32`: an allocation step's rank-slot moves over CPU tensor
//! buffers.
//!
//! As `importance`: the Python side (`lorax_core.kernels.ops.move_slots_`) passes the
//! addresses of float32 CPU tensors it has checked and keeps alive; every buffer is written,
//! so none may overlap another (`crate::buffers`). The GIL stays held during the call.

use lorax_core::allocator::importance::RankAxis;
use lorax_core::allocator::slots::{self, SlotMove};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::buffers::{check_disjoint, slice_mut, span};
use crate::errors::to_py;

/// `(address, rows, cols, rank_dim, perm, n_keep)`: a buffer of `rows · cols` float32 values,
/// its rank axis (`0` rows, `1` columns), the slot permutation and the first zeroed slot.
type MoveAddresses = (usize, usize, usize, i64, Vec<usize>, usize);

/// Every move in place (rank axis permuted, slots `≥ n_keep` zeroed); nothing is written if
/// any move is invalid. Private to `lorax_core.kernels`: the addresses must be those of live,
/// C-contiguous float32 CPU tensors with the stated element counts.
#[pyfunction]
#[pyo3(name = "_move_slots_f32", signature = (moves))]
pub fn move_slots_f32(moves: Vec<MoveAddresses>) -> PyResult<()> {
    let mut spans = Vec::with_capacity(moves.len());
    let mut shapes = Vec::with_capacity(moves.len());
    for (i, &(addr, rows, cols, dim, _, _)) in moves.iter().enumerate() {
        let len = rows
            .checked_mul(cols)
            .ok_or_else(|| PyValueError::new_err(format!("move {i}: shape overflows")))?;
        let axis = match dim {
            0 => RankAxis::Rows,
            1 => RankAxis::Cols,
            _ => {
                return Err(PyValueError::new_err(format!(
                    "move {i}: rank_dim must be 0 or 1, got {dim}"
                )))
            }
        };
        spans.push(span(addr, len, true, "tensor")?);
        shapes.push((len, axis));
    }
    check_disjoint(spans)?;
    // SAFETY: the caller's contract (live float32 buffers of these lengths, kept alive and
    // untouched by Python while the GIL is held here) plus the checks above (non-null,
    // aligned, pairwise disjoint) make each mutable slice valid and unaliased.
    let mut views: Vec<SlotMove<'_>> = moves
        .iter()
        .zip(&shapes)
        .map(
            |((addr, rows, cols, _, perm, n_keep), &(len, rank_axis))| SlotMove {
                data: unsafe { slice_mut(*addr, len) },
                rows: *rows,
                cols: *cols,
                rank_axis,
                perm,
                n_keep: *n_keep,
            },
        )
        .collect();
    slots::move_slots(&mut views).map_err(to_py)
}
