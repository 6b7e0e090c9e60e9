//! Rank-slot moves of an allocation step on the CPU: each adapter tensor (parameters, optimizer
//! moments, importance EMAs) has its rank axis permuted and its slots from `n_keep` on zeroed,
//! in place (docs/allocators.md).
//!
//! For a tensor `T` with rank axis `d`, permutation `π` and `n_keep`, slot `j` becomes
//! `T[π(j)]` along `d` for `j < n_keep` and zero from `n_keep` on: `index_select(d, π)` then a
//! zero fill, as the `torch` path computes it, value for value (copies only).

use crate::allocator::importance::RankAxis;
use crate::error::{LoraxError, Result};

/// One tensor's move: a row-major `rows × cols` float32 buffer, its rank axis, the slot
/// permutation (`perm[j]` is the old slot that new slot `j` takes) and the first zeroed slot.
#[derive(Debug)]
pub struct SlotMove<'a> {
    /// The tensor's values, moved in place.
    pub data: &'a mut [f32],
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
    /// Which axis holds the rank slots ([`RankAxis::None`] is an error).
    pub rank_axis: RankAxis,
    /// A permutation of `0..slots`.
    pub perm: &'a [usize],
    /// Slots `≥ n_keep` are zeroed (`n_keep ≥ slots` zeroes none).
    pub n_keep: usize,
}

impl SlotMove<'_> {
    fn slots(&self) -> usize {
        match self.rank_axis {
            RankAxis::Rows => self.rows,
            RankAxis::Cols => self.cols,
            RankAxis::None => 0,
        }
    }

    fn check(&self, index: usize) -> Result<()> {
        if self.rows.checked_mul(self.cols) != Some(self.data.len()) {
            return Err(LoraxError::invalid(format!(
                "move {index}: shape ({}, {}) but a buffer of {} elements",
                self.rows,
                self.cols,
                self.data.len()
            )));
        }
        if self.rank_axis == RankAxis::None {
            return Err(LoraxError::invalid(format!(
                "move {index}: a slot move needs a rank axis (rows or columns)"
            )));
        }
        let slots = self.slots();
        if self.perm.len() != slots {
            return Err(LoraxError::invalid(format!(
                "move {index}: perm must have {slots} entries, got {}",
                self.perm.len()
            )));
        }
        let mut seen = vec![false; slots];
        for &p in self.perm {
            if p >= slots || std::mem::replace(&mut seen[p], true) {
                return Err(LoraxError::invalid(format!(
                    "move {index}: perm is not a permutation of 0..{slots}"
                )));
            }
        }
        Ok(())
    }

    fn apply(&mut self) {
        let keep = self.n_keep.min(self.slots());
        let identity = self.perm.iter().enumerate().all(|(j, &p)| j == p);
        let cols = self.cols;
        match self.rank_axis {
            RankAxis::Rows if identity => self.data[keep * cols..].fill(0.0),
            RankAxis::Rows => {
                let old = self.data.to_vec();
                for (j, row) in self.data.chunks_exact_mut(cols.max(1)).enumerate() {
                    if j < keep {
                        let src = self.perm[j] * cols;
                        row.copy_from_slice(&old[src..src + cols]);
                    } else {
                        row.fill(0.0);
                    }
                }
            }
            RankAxis::Cols => {
                let mut old = vec![0.0f32; cols];
                for row in self.data.chunks_exact_mut(cols.max(1)) {
                    if !identity {
                        old.copy_from_slice(row);
                        for (dst, &src) in row[..keep].iter_mut().zip(self.perm) {
                            *dst = old[src];
                        }
                    }
                    row[keep..].fill(0.0);
                }
            }
            RankAxis::None => {}
        }
    }
}

/// Applies every move in place. All moves are checked first (shape, rank axis, permutation),
/// so an error leaves every buffer untouched.
pub fn move_slots(moves: &mut [SlotMove<'_>]) -> Result<()> {
    for (i, m) in moves.iter().enumerate() {
        m.check(i)?;
    }
    moves.iter_mut().for_each(SlotMove::apply);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition: `index_select` along the rank axis, then zeros from `n_keep` on.
    fn reference(
        data: &[f32],
        rows: usize,
        cols: usize,
        axis: RankAxis,
        perm: &[usize],
        keep: usize,
    ) -> Vec<f32> {
        let mut out = vec![0.0; rows * cols];
        for i in 0..rows {
            for j in 0..cols {
                let (slot, src) = match axis {
                    RankAxis::Rows => (i, perm[i] * cols + j),
                    _ => (j, i * cols + perm[j]),
                };
                out[i * cols + j] = if slot < keep { data[src] } else { 0.0 };
            }
        }
        out
    }

    #[test]
    fn matches_the_definition_on_both_axes() {
        let data: Vec<f32> = (0..12).map(|v| v as f32 + 1.0).collect();
        for (axis, rows, cols, perm) in [
            (RankAxis::Rows, 4, 3, vec![2, 0, 3, 1]),
            (RankAxis::Cols, 3, 4, vec![3, 1, 0, 2]),
            (RankAxis::Rows, 4, 3, vec![0, 1, 2, 3]),
            (RankAxis::Cols, 3, 4, vec![0, 1, 2, 3]),
            (RankAxis::Rows, 12, 1, (0..12).rev().collect()),
        ] {
            for keep in [0, 1, 3, 4, 20] {
                let mut buf = data.clone();
                let mut moves = [SlotMove {
                    data: &mut buf,
                    rows,
                    cols,
                    rank_axis: axis,
                    perm: &perm,
                    n_keep: keep,
                }];
                move_slots(&mut moves).unwrap();
                assert_eq!(
                    buf,
                    reference(&data, rows, cols, axis, &perm, keep),
                    "{axis:?} {perm:?} {keep}"
                );
            }
        }
    }

    #[test]
    fn bad_moves_are_errors_that_write_nothing() {
        let data = vec![1.0f32; 6];
        let perms: [&[usize]; 3] = [&[0, 0], &[0, 2], &[0]];
        for perm in perms {
            let (mut good, mut bad) = (data.clone(), data.clone());
            let mut moves = [
                SlotMove {
                    data: &mut good,
                    rows: 2,
                    cols: 3,
                    rank_axis: RankAxis::Rows,
                    perm: &[1, 0],
                    n_keep: 0,
                },
                SlotMove {
                    data: &mut bad,
                    rows: 2,
                    cols: 3,
                    rank_axis: RankAxis::Rows,
                    perm,
                    n_keep: 1,
                },
            ];
            assert!(move_slots(&mut moves).is_err());
            assert_eq!(
                (good.as_slice(), bad.as_slice()),
                (data.as_slice(), data.as_slice())
            );
        }
        let mut buf = data.clone();
        let none = SlotMove {
            data: &mut buf,
            rows: 2,
            cols: 3,
            rank_axis: RankAxis::None,
            perm: &[],
            n_keep: 0,
        };
        assert!(move_slots(&mut [none]).is_err());
        let mut buf = data.clone();
        let short = SlotMove {
            data: &mut buf[..5],
            rows: 2,
            cols: 3,
            rank_axis: RankAxis::Rows,
            perm: &[0, 1],
            n_keep: 0,
        };
        assert!(move_slots(&mut [short]).is_err());
    }
}
