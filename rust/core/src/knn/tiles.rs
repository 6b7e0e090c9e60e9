//! The fused tile kernel: one GEMM tile of inner products turned into squared distances and
//! offered, in the same pass, to the candidate lists of both row blocks it touches.

use super::topk::TopK;

/// Rows per block. A `BLOCK × BLOCK` float32 tile (256 KiB) stays in L2 while it is scanned.
pub const BLOCK: usize = 256;

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

/// `c (m × n, row-major) = a (m × d, row-major) · bᵀ` where `b` is `n × d` row-major.
fn gemm_nt(a: &[f32], b: &[f32], m: usize, n: usize, d: usize, c: &mut [f32]) {
    debug_assert!(a.len() >= m * d && b.len() >= n * d && c.len() >= m * n);
    // SAFETY: the asserted lengths cover every index the strides reach: lhs (i, t) at
    // i * d + t < m * d, rhs (t, j) at j * d + t < n * d, dst (i, j) at i * n + j < m * n.
    unsafe {
        gemm::gemm(
            m,
            n,
            d,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            d as isize,
            b.as_ptr(),
            d as isize,
            1,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
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
    let sqi = &c.sq[si..si + li];
    let sqj = &c.sq[sj..sj + lj];
    for a in 0..li {
        let g = &buf[a * lj..(a + 1) * lj];
        let s = sqi[a];
        let mut bound_a = top_i.bounds()[a];
        // Cheap pre-filter over the row: skip it if no value can enter either side.
        let any = g
            .iter()
            .zip(sqj)
            .zip(top_j.bounds())
            .fold(false, |acc, ((&gv, &sb), &tb)| {
                let v = dist2(s, sb, gv);
                acc | (v <= bound_a) | (v <= tb)
            });
        if !any {
            continue;
        }
        for b in 0..lj {
            let v = dist2(s, sqj[b], g[b]);
            if v <= bound_a {
                top_i.push(a, v, (sj + b) as u32);
                bound_a = top_i.bounds()[a];
            }
            if v <= top_j.bounds()[b] {
                top_j.push(b, v, (si + a) as u32);
            }
        }
    }
}
