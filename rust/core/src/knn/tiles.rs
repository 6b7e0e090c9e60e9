//! The fused tile kernel: one GEMM tile of inner products turned into squared distances and
//! offered, in the same pass, to the candidate lists of both row blocks it touches.

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};

use super::topk::TopK;

/// Rows per block. A `BLOCK × BLOCK` float32 tile (256 KiB) stays in L2 while it is scanned.
pub const BLOCK: usize = 256;

/// Columns screened together before any candidate list is touched.
const LANES: usize = 16;

/// Centred float32 points, row-major `n × d`, with their squared norms.
pub struct Centred {
    /// Row-major coordinates, `n * d` values.
    pub x: Vec<f32>,
    /// Squared Euclidean norm of each row (float32, summed in float64).
    pub sq: Vec<f32>,
    /// Number of features.
    pub d: usize,
}

impl Centred {
    fn rows(&self, start: usize, len: usize) -> &[f32] {
        &self.x[start * self.d..(start + len) * self.d]
    }
}

/// `c (m × n, row-major) = a (m × d, row-major) · bᵀ` where `b` is `n × d` row-major;
/// single-threaded (tiles are the unit of parallelism).
fn gemm_nt(a: &[f32], b: &[f32], m: usize, n: usize, d: usize, c: &mut [f32]) {
    let lhs = MatRef::from_row_major_slice(&a[..m * d], m, d);
    let rhs = MatRef::from_row_major_slice(&b[..n * d], n, d);
    let dst = MatMut::from_row_major_slice_mut(&mut c[..m * n], m, n);
    matmul(dst, Accum::Replace, lhs, rhs.transpose(), 1.0f32, Par::Seq);
}

/// Squared distance from the expansion ‖x‖² + ‖y‖² − 2x·y, clamped at zero.
#[inline(always)]
fn dist2(si: f32, sj: f32, g: f32) -> f32 {
    (si + sj - 2.0 * g).max(0.0)
}

/// Diagonal tile: all pairs `i < j` inside block `[start, start + len)`; both ends updated.
pub fn diagonal(c: &Centred, start: usize, len: usize, top: &mut TopK, buf: &mut Vec<f32>) {
    buf.resize(len * len, 0.0);
    let rows = c.rows(start, len);
    gemm_nt(rows, rows, len, len, c.d, buf);
    let sq = &c.sq[start..start + len];
    pulp::Arch::new().dispatch(|| scan_diagonal(buf, sq, start, len, top));
}

#[inline(always)]
fn scan_diagonal(buf: &[f32], sq: &[f32], start: usize, len: usize, top: &mut TopK) {
    for a in 0..len {
        let g = &buf[a * len..(a + 1) * len];
        for b in a + 1..len {
            let v = dist2(sq[a], sq[b], g[b]);
            if v <= top.bounds()[a] {
                top.push(a, v, (start + b) as u32);
            }
            if v <= top.bounds()[b] {
                top.push(b, v, (start + a) as u32);
            }
        }
    }
}

/// Off-diagonal tile between blocks `I = [si, si + li)` and `J = [sj, sj + lj)`: every
/// distance is offered to its row in `I` and, by symmetry, to its column's row in `J`.
#[allow(clippy::too_many_arguments)]
pub fn off_diagonal(
    c: &Centred,
    si: usize,
    li: usize,
    top_i: &mut TopK,
    sj: usize,
    lj: usize,
    top_j: &mut TopK,
    buf: &mut Vec<f32>,
) {
    buf.resize(li * lj, 0.0);
    gemm_nt(c.rows(si, li), c.rows(sj, lj), li, lj, c.d, buf);
    let (sqi, sqj) = (&c.sq[si..si + li], &c.sq[sj..sj + lj]);
    // The screen runs with the machine's vector instructions (AVX2/FMA where present:
    // `pulp` compiles this closure for the detected instruction set).
    pulp::Arch::new().dispatch(|| scan_off_diagonal(buf, sqi, sqj, si, sj, top_i, top_j));
}

/// The screen of [`off_diagonal`] over a computed tile `buf` (`li × lj`, row-major).
#[inline(always)]
fn scan_off_diagonal(
    buf: &[f32],
    sqi: &[f32],
    sqj: &[f32],
    si: usize,
    sj: usize,
    top_i: &mut TopK,
    top_j: &mut TopK,
) {
    let (li, lj) = (sqi.len(), sqj.len());
    for a in 0..li {
        let g = &buf[a * lj..(a + 1) * lj];
        let s = sqi[a];
        // Chunks of LANES columns are screened with branch-free (vectorised) compares; only
        // chunks holding a value that can enter either list are walked one by one.
        let mut b0 = 0;
        while b0 < lj {
            let end = (b0 + LANES).min(lj);
            let bound_a = top_i.bounds()[a];
            let any = g[b0..end]
                .iter()
                .zip(&sqj[b0..end])
                .zip(&top_j.bounds()[b0..end])
                .fold(false, |acc, ((&gv, &sb), &tb)| {
                    let v = dist2(s, sb, gv);
                    acc | (v <= bound_a) | (v <= tb)
                });
            if any {
                for b in b0..end {
                    let v = dist2(s, sqj[b], g[b]);
                    if v <= top_i.bounds()[a] {
                        top_i.push(a, v, (sj + b) as u32);
                    }
                    if v <= top_j.bounds()[b] {
                        top_j.push(b, v, (si + a) as u32);
                    }
                }
            }
            b0 = end;
        }
    }
}
