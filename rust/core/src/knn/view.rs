//! Borrowed, strided views of 2-D point sets (rows are points).

use crate::error::{LoraxError, Result};
pub use crate::real::Real;

/// A read-only `nrows × ncols` matrix over a borrowed slice, element `(i, j)` at
/// `data[i * row_stride + j * col_stride]` (strides in elements, not bytes).
///
/// C order is `row_stride = ncols, col_stride = 1`; Fortran order is
/// `row_stride = 1, col_stride = nrows`. Construction checks that every element is in bounds,
/// so accessors never read outside `data`.
#[derive(Debug, Clone, Copy)]
pub struct MatRef<'a, T> {
    data: &'a [T],
    nrows: usize,
    ncols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a, T: Real> MatRef<'a, T> {
    /// Wraps `data` with explicit strides; errors if any element would be out of bounds.
    pub fn new(
        data: &'a [T],
        nrows: usize,
        ncols: usize,
        row_stride: usize,
        col_stride: usize,
    ) -> Result<Self> {
        if nrows > 0 && ncols > 0 {
            let last = (nrows - 1).checked_mul(row_stride).and_then(|r| {
                (ncols - 1)
                    .checked_mul(col_stride)
                    .and_then(|c| r.checked_add(c))
            });
            match last {
                Some(last) if last < data.len() => {}
                _ => {
                    return Err(LoraxError::invalid(format!(
                        "a {nrows}x{ncols} matrix with strides ({row_stride}, {col_stride}) \
                         does not fit in {} elements",
                        data.len()
                    )))
                }
            }
        }
        Ok(Self {
            data,
            nrows,
            ncols,
            row_stride,
            col_stride,
        })
    }

    /// A C-ordered (row-major) view of `data`, which must hold exactly `nrows * ncols` values.
    pub fn row_major(data: &'a [T], nrows: usize, ncols: usize) -> Result<Self> {
        Self::exact(data, nrows, ncols)?;
        Self::new(data, nrows, ncols, ncols, 1)
    }

    /// A Fortran-ordered (column-major) view of `data` (exactly `nrows * ncols` values).
    pub fn col_major(data: &'a [T], nrows: usize, ncols: usize) -> Result<Self> {
        Self::exact(data, nrows, ncols)?;
        Self::new(data, nrows, ncols, 1, nrows)
    }

    fn exact(data: &[T], nrows: usize, ncols: usize) -> Result<()> {
        if nrows.checked_mul(ncols) != Some(data.len()) {
            return Err(LoraxError::invalid(format!(
                "a {nrows}x{ncols} matrix needs {} elements, got {}",
                nrows.saturating_mul(ncols),
                data.len()
            )));
        }
        Ok(())
    }

    /// Number of rows (points).
    pub fn nrows(&self) -> usize {
        self.nrows
    }

    /// Number of columns (features).
    pub fn ncols(&self) -> usize {
        self.ncols
    }

    /// Element `(i, j)`; callers keep `i < nrows`, `j < ncols` (checked by the slice index).
    #[inline]
    pub fn get(&self, i: usize, j: usize) -> T {
        self.data[i * self.row_stride + j * self.col_stride]
    }

    /// Row `i` as a contiguous slice, when rows are stored contiguously (`col_stride = 1`).
    #[inline]
    pub fn row_slice(&self, i: usize) -> Option<&'a [T]> {
        let start = i * self.row_stride;
        (self.col_stride == 1).then(|| &self.data[start..start + self.ncols])
    }

    /// Iterates over row `i` as `f64` values.
    #[inline]
    pub fn row_f64(&self, i: usize) -> impl Iterator<Item = f64> + '_ {
        (0..self.ncols).map(move |j| self.get(i, j).to_f64())
    }

    /// True if every element is finite (no NaN, no ±Inf).
    pub fn all_finite(&self) -> bool {
        (0..self.nrows).all(|i| self.row_f64(i).all(f64::is_finite))
    }
}

/// Points of either supported precision, borrowed without copying.
#[derive(Debug, Clone, Copy)]
pub enum Points<'a> {
    /// Single-precision points.
    F32(MatRef<'a, f32>),
    /// Double-precision points.
    F64(MatRef<'a, f64>),
}

impl Points<'_> {
    /// Number of points.
    pub fn nrows(&self) -> usize {
        match self {
            Points::F32(m) => m.nrows(),
            Points::F64(m) => m.nrows(),
        }
    }

    /// Dimension of the ambient space.
    pub fn ncols(&self) -> usize {
        match self {
            Points::F32(m) => m.ncols(),
            Points::F64(m) => m.ncols(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strides_are_bounds_checked() {
        let v = [0.0f32; 6];
        assert!(MatRef::new(&v, 2, 3, 3, 1).is_ok());
        assert!(MatRef::new(&v, 3, 3, 3, 1).is_err());
        assert!(MatRef::new(&v, usize::MAX, 2, usize::MAX, 1).is_err());
        assert!(MatRef::row_major(&v, 2, 2).is_err());
    }

    #[test]
    fn orders_agree() {
        let c = [1.0f64, 2.0, 3.0, 4.0, 5.0, 6.0];
        let f = [1.0f64, 4.0, 2.0, 5.0, 3.0, 6.0];
        let a = MatRef::row_major(&c, 2, 3).unwrap();
        let b = MatRef::col_major(&f, 2, 3).unwrap();
        for i in 0..2 {
            for j in 0..3 {
                assert_eq!(a.get(i, j), b.get(i, j));
            }
        }
        assert!(a.all_finite());
        let nan = [f64::NAN; 2];
        assert!(!MatRef::row_major(&nan, 1, 2).unwrap().all_finite());
    }
}
