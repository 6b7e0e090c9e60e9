//! Shared decoding of fuzzer bytes into bounded, adversarial inputs.
//!
//! Every target reads its input through [`Bytes`], which never fails: past the end of the
//! input it yields zeros, so every byte string is a valid (if dull) test case. [`Matrix`] and
//! [`Element`] build the views the targets pass to the core, in either precision, so that each
//! target states its checks once, generically.

use lorax_core::knn::{MatRef, Points};
use lorax_core::Real;

/// A precision the targets exercise: `f32` or `f64`, with its range and its `Points` variant.
pub trait Element: Real {
    /// Smallest positive normal value, as `f64`.
    const MIN_NORMAL: f64;
    /// Largest finite value, as `f64`.
    const MAX: f64;
    /// The matrix's values in storage order, in this precision (rounded from float64).
    fn stored(m: &Matrix) -> Vec<Self>;
    /// Wraps a view as the kNN/ID engines' points.
    fn points(v: MatRef<'_, Self>) -> Points<'_>;
}

impl Element for f32 {
    const MIN_NORMAL: f64 = f32::MIN_POSITIVE as f64;
    const MAX: f64 = f32::MAX as f64;
    fn stored(m: &Matrix) -> Vec<Self> {
        m.stored_f64().iter().map(|&v| v as f32).collect()
    }
    fn points(v: MatRef<'_, Self>) -> Points<'_> {
        Points::F32(v)
    }
}

impl Element for f64 {
    const MIN_NORMAL: f64 = f64::MIN_POSITIVE;
    const MAX: f64 = f64::MAX;
    fn stored(m: &Matrix) -> Vec<Self> {
        m.stored_f64()
    }
    fn points(v: MatRef<'_, Self>) -> Points<'_> {
        Points::F64(v)
    }
}

/// A cursor over the fuzzer's bytes.
pub struct Bytes<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Bytes<'a> {
    /// Wraps the fuzzer input.
    pub fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    /// Next byte, 0 past the end.
    pub fn u8(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    /// Next little-endian `u64` (missing bytes read as 0).
    pub fn u64(&mut self) -> u64 {
        (0..8).fold(0u64, |acc, i| acc | (u64::from(self.u8()) << (8 * i)))
    }

    /// A value in `0..=max` from one byte.
    pub fn upto(&mut self, max: usize) -> usize {
        usize::from(self.u8()) % (max + 1)
    }

    /// True when input bytes remain.
    pub fn has_more(&self) -> bool {
        self.pos < self.data.len()
    }

    /// Bytes not yet read.
    pub fn rest(&self) -> &'a [u8] {
        &self.data[self.pos.min(self.data.len())..]
    }

    /// An adversarial float64: mostly small integers times a power of two shared by the whole
    /// matrix (ties, exact copies, collinear points), sometimes a raw bit pattern (NaN, ±inf,
    /// subnormals, ±f64::MAX) or a value at a wildly different scale.
    pub fn value(&mut self, exponent: i32) -> f64 {
        let b = self.u8();
        match b >> 6 {
            0 | 1 => f64::from(i32::from(b & 0x7f) - 64) * 2f64.powi(exponent),
            2 => {
                let m = f64::from(self.u8()) - 128.0 + f64::from(self.u8()) / 256.0;
                m * 2f64.powi(exponent)
            }
            _ => match b & 0x3f {
                0 => f64::NAN,
                1 => f64::INFINITY,
                2 => f64::NEG_INFINITY,
                3 => f64::MAX,
                4 => -f64::MAX,
                5 => f64::MIN_POSITIVE,
                6 => 5e-324,
                7 => -0.0,
                8 => f64::from(f32::MAX),
                9 => f64::from(f32::MIN_POSITIVE),
                10..=31 => {
                    let e = i32::from(self.u8() as i8) * 4;
                    (f64::from(self.u8()) - 128.0) * 2f64.powi(e)
                }
                _ => f64::from_bits(self.u64()),
            },
        }
    }

    /// A shared exponent for a matrix: usually 0, often extreme (±1000 covers float64's range).
    pub fn exponent(&mut self) -> i32 {
        match self.u8() {
            0..=127 => 0,
            b @ 128..=191 => i32::from(b) - 160,
            _ => i32::from(self.u8() as i8) * 8,
        }
    }

    /// `len` values sharing one exponent.
    pub fn values(&mut self, len: usize) -> Vec<f64> {
        let e = self.exponent();
        (0..len).map(|_| self.value(e)).collect()
    }
}

/// A float64 matrix as the points of a kNN or ID target: `n ≤ max_n` rows, `d ≤ max_d`
/// columns, row-major; `n` and `d` may be 0.
pub struct Matrix {
    /// Rows.
    pub n: usize,
    /// Columns.
    pub d: usize,
    /// `n * d` values, row-major.
    pub data: Vec<f64>,
    /// Read the values as float32 instead.
    pub single: bool,
    /// Pass the values in column-major order.
    pub fortran: bool,
}

impl Matrix {
    /// Decodes a matrix of at most `max_n × max_d`.
    pub fn decode(b: &mut Bytes<'_>, max_n: usize, max_d: usize) -> Self {
        let n = b.upto(max_n);
        let d = b.upto(max_d);
        let flags = b.u8();
        let mut data = b.values(n * d);
        // Optionally repeat rows, so exact and near copies are common.
        if flags & 4 != 0 && n > 1 && d > 0 {
            for i in 0..n {
                let src = b.upto(n - 1);
                if src < i && b.u8() & 1 == 1 {
                    let (head, tail) = data.split_at_mut(i * d);
                    tail[..d].copy_from_slice(&head[src * d..(src + 1) * d]);
                }
            }
        }
        Self {
            n,
            d,
            data,
            single: flags & 1 != 0,
            fortran: flags & 2 != 0,
        }
    }

    /// The values in the storage order the view expects, as float64.
    pub fn stored_f64(&self) -> Vec<f64> {
        if !self.fortran {
            return self.data.clone();
        }
        let mut out = vec![0.0; self.data.len()];
        for i in 0..self.n {
            for j in 0..self.d {
                out[j * self.n + i] = self.data[i * self.d + j];
            }
        }
        out
    }

    /// A view of `s` (this matrix's values in storage order, as [`Element::stored`] gives them).
    pub fn view<'s, T: Element>(&self, s: &'s [T]) -> MatRef<'s, T> {
        let v = if self.fortran {
            MatRef::col_major(s, self.n, self.d)
        } else {
            MatRef::row_major(s, self.n, self.d)
        };
        v.expect("stored values match the matrix's shape")
    }

    /// The points of `s` (see [`Matrix::view`]).
    pub fn points<'s, T: Element>(&self, s: &'s [T]) -> Points<'s> {
        T::points(self.view(s))
    }
}
