//! Exact k-nearest neighbours by blocked GEMM distances with the selection fused into each tile.
//!
//! Algorithm (docs/intrinsic-dimension.md):
//! 1. Scale the points by a power of two `s` that brings their largest magnitude into
//!    `[0.5, 1)` ([`unit_scale`]; exact in binary, so neighbours do not change), centre them
//!    (float64 mean) and copy them once to row-major float32 with their squared norms. Without
//!    the scaling, data of magnitude 1e±200 would overflow or underflow float32 (and its
//!    squared distances float64) and silently give wrong neighbours. After it the float32 copy
//!    is bounded by 8 in magnitude; values it cannot resolve (a dynamic range beyond float32
//!    within one data set) only make the proof of step 4 fail, which falls back to float64.
//! 2. Split the rows into blocks of [`tiles::BLOCK`]. Every unordered block pair `(I, J)` is
//!    one GEMM tile `X_I X_Jᵀ`; its squared distances `‖x‖² + ‖y‖² − 2x·y` (clamped at 0) are
//!    offered to the candidate lists of the rows of `I` *and* of `J`, so each distance is
//!    computed once (symmetry halves the flops). No `N × N` matrix exists: memory is
//!    `O(N·k + threads · BLOCK²)` on top of the float32 copy.
//! 3. Tiles run in parallel (rayon) in round-robin rounds in which no two tiles share a block,
//!    so the per-block locks never contend.
//! 4. Each row keeps `k + EXTRA` float32 candidates; their distances are recomputed in float64
//!    from the original data (times `s`) and sorted by `(distance, index)`. A rigorous bound on the float32
//!    rounding error proves that no point outside the candidates can be closer; rows where the
//!    proof fails are recomputed exactly by a float64 scan over all points.
//!
//! A point is never its own neighbour (excluded by index) and ties are broken by the smaller
//! index.

mod tiles;
mod topk;
mod view;

use std::sync::Mutex;

use rayon::prelude::*;

use crate::error::{LoraxError, Result};
use tiles::{Centred, BLOCK};
use topk::TopK;
pub use view::{MatRef, Points, Real};

/// Extra float32 candidates kept per row beyond `k`, re-ranked in float64.
const EXTRA: usize = 10;

/// The `k` nearest neighbours of every point, nearest first.
#[derive(Debug, Clone, PartialEq)]
pub struct Neighbours {
    k: usize,
    distances: Vec<f64>,
    indices: Vec<usize>,
}

impl Neighbours {
    /// Neighbours per point.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Number of points.
    pub fn len(&self) -> usize {
        self.indices.len().checked_div(self.k).unwrap_or(0)
    }

    /// True when there are no points.
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// Euclidean distances (float64, ascending) from point `i` to its `k` neighbours.
    pub fn distances(&self, i: usize) -> &[f64] {
        &self.distances[i * self.k..(i + 1) * self.k]
    }

    /// Indices of the `k` neighbours of point `i`, matching [`Neighbours::distances`].
    pub fn indices(&self, i: usize) -> &[usize] {
        &self.indices[i * self.k..(i + 1) * self.k]
    }

    /// All distances, row-major `len × k`.
    pub fn all_distances(&self) -> &[f64] {
        &self.distances
    }

    /// All indices, row-major `len × k`.
    pub fn all_indices(&self) -> &[usize] {
        &self.indices
    }
}

/// Exact `k` nearest neighbours of every point (rows) of `points`.
///
/// Errors on empty input, non-finite values, `k == 0` or `k ≥ number of points`.
pub fn knn(points: &Points<'_>, k: usize) -> Result<Neighbours> {
    let rows: Vec<usize> = (0..points.nrows()).collect();
    knn_rows(points, &rows, k)
}

/// Exact `k` nearest neighbours among the subset `rows` of `points`; returned indices are
/// positions in `rows` (not row numbers of `points`).
pub fn knn_rows(points: &Points<'_>, rows: &[usize], k: usize) -> Result<Neighbours> {
    match points {
        Points::F32(x) => knn_subset(x, rows, k),
        Points::F64(x) => knn_subset(x, rows, k),
    }
}

fn validate<T: Real>(x: &MatRef<'_, T>, rows: &[usize], k: usize) -> Result<()> {
    if x.ncols() == 0 {
        return Err(LoraxError::invalid("X has no features (0 columns)"));
    }
    if rows.iter().any(|&r| r >= x.nrows()) {
        return Err(LoraxError::invalid("row index out of range"));
    }
    if k == 0 {
        return Err(LoraxError::invalid("k must be at least 1"));
    }
    if k >= rows.len() {
        return Err(LoraxError::invalid(format!(
            "k = {k} must be smaller than the number of points ({})",
            rows.len()
        )));
    }
    if u32::try_from(rows.len()).is_err() {
        return Err(LoraxError::invalid(
            "more than 2^32 - 1 points are not supported",
        ));
    }
    if !rows.par_iter().all(|&r| x.row_f64(r).all(f64::is_finite)) {
        return Err(LoraxError::invalid("X contains NaN or infinite values"));
    }
    Ok(())
}

/// Power of two `s` with `max |x·s|` over the selected rows in `[0.5, 1)`, or 1 for all-zero
/// data; clamped to `2^-1022 ≤ s ≤ 2^1020` so that `s` and `1/s` are normal numbers (data
/// near `f64::MAX` then scales to below 4, data below `2^-1020` to below 1). Multiplying by `s` is
/// exact (no rounding) unless a value falls into the subnormal range, so distances scale by
/// exactly `s` and their order is unchanged. The values must be finite.
pub fn unit_scale<T: Real>(x: &MatRef<'_, T>, rows: &[usize]) -> f64 {
    let max = rows
        .par_iter()
        .map(|&r| x.row_f64(r).fold(0.0f64, |m, v| m.max(v.abs())))
        .reduce(|| 0.0, f64::max);
    if !(max > 0.0 && max.is_finite()) {
        return 1.0;
    }
    // `max = f · 2^e` with `f` in [0.5, 1); read `e` from the bits (subnormals first scaled up).
    let (m, shift) = if max < f64::MIN_POSITIVE {
        (max * 2f64.powi(64), 64)
    } else {
        (max, 0)
    };
    let e = ((m.to_bits() >> 52) & 0x7ff) as i32 - 1022 - shift;
    2f64.powi((-e).clamp(-1022, 1020))
}

/// Row `r` of `x` in float64, times `scale`.
#[inline]
pub(crate) fn scaled_row<'a, T: Real>(
    x: &'a MatRef<'_, T>,
    r: usize,
    scale: f64,
) -> impl Iterator<Item = f64> + 'a {
    x.row_f64(r).map(move |v| v * scale)
}

/// Column means (float64) of the selected rows, times `scale`.
pub(crate) fn column_means<T: Real>(x: &MatRef<'_, T>, rows: &[usize], scale: f64) -> Vec<f64> {
    let d = x.ncols();
    let mut mean = rows
        .par_chunks(1024)
        .map(|chunk| {
            let mut acc = vec![0.0f64; d];
            for &r in chunk {
                for (a, v) in acc.iter_mut().zip(scaled_row(x, r, scale)) {
                    *a += v;
                }
            }
            acc
        })
        .reduce(
            || vec![0.0f64; d],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(u, v)| *u += v);
                a
            },
        );
    let n = rows.len().max(1) as f64;
    mean.iter_mut().for_each(|m| *m /= n);
    mean
}

fn centre<T: Real>(x: &MatRef<'_, T>, rows: &[usize], scale: f64) -> Centred {
    let d = x.ncols();
    let mean = column_means(x, rows, scale);
    let mut xc = vec![0.0f32; rows.len() * d];
    let mut sq = vec![0.0f32; rows.len()];
    xc.par_chunks_mut(d)
        .zip(sq.par_iter_mut())
        .zip(rows.par_iter())
        .for_each(|((dst, s), &r)| {
            let mut acc = 0.0f64;
            for ((o, v), m) in dst.iter_mut().zip(scaled_row(x, r, scale)).zip(&mean) {
                *o = (v - m) as f32;
                acc += f64::from(*o) * f64::from(*o);
            }
            *s = acc as f32;
        });
    Centred { x: xc, sq, d }
}

/// Pairs of blocks for round `r` of a round-robin schedule over `m` (even) slots; slots
/// `≥ nb` are byes. Over rounds `0..m-1` every unordered pair appears exactly once.
fn round_pairs(r: usize, m: usize, nb: usize) -> Vec<(usize, usize)> {
    let p = m - 1;
    let mut pairs = Vec::with_capacity(m / 2);
    pairs.push((m - 1, r));
    for i in 1..m / 2 {
        pairs.push(((r + i) % p, (r + p - i) % p));
    }
    pairs
        .into_iter()
        .filter(|&(a, b)| a < nb && b < nb)
        .map(|(a, b)| (a.min(b), a.max(b)))
        .collect()
}

fn lock(m: &Mutex<TopK>) -> std::sync::MutexGuard<'_, TopK> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Float32 candidate lists of every row, by the fused symmetric tile sweep.
fn candidates(c: &Centred, n: usize, cap: usize) -> Vec<TopK> {
    let nb = n.div_ceil(BLOCK);
    let span = |b: usize| (b * BLOCK, BLOCK.min(n - b * BLOCK));
    let tops: Vec<Mutex<TopK>> = (0..nb)
        .map(|b| Mutex::new(TopK::new(span(b).1, cap)))
        .collect();
    (0..nb).into_par_iter().for_each_init(Vec::new, |buf, b| {
        let (s, l) = span(b);
        tiles::diagonal(c, s, l, &mut lock(&tops[b]), buf);
    });
    let m = nb + nb % 2;
    for r in 0..m.saturating_sub(1) {
        round_pairs(r, m, nb)
            .into_par_iter()
            .for_each_init(Vec::new, |buf, (a, b)| {
                let ((sa, la), (sb, lb)) = (span(a), span(b));
                let (mut ta, mut tb) = (lock(&tops[a]), lock(&tops[b]));
                tiles::off_diagonal(c, sa, la, &mut ta, sb, lb, &mut tb, buf);
            });
    }
    tops.into_iter()
        .map(|t| t.into_inner().unwrap_or_else(|e| e.into_inner()))
        .collect()
}

/// Independent partial sums of [`exact_d2`]: term `j` goes to sum `j % LANES_64`.
const LANES_64: usize = 8;

/// Exact float64 squared distance between rows `a` and `b` of `x·scale`.
///
/// The terms are summed in [`LANES_64`] interleaved partial sums (then added in order), which
/// breaks the chain of dependent additions; the order is fixed, so the result does not depend
/// on the memory layout.
#[inline]
fn exact_d2<T: Real>(x: &MatRef<'_, T>, a: usize, b: usize, scale: f64) -> f64 {
    let mut acc = [0.0f64; LANES_64];
    let term = |u: T, v: T| {
        let d = u.to_f64() * scale - v.to_f64() * scale;
        d * d
    };
    if let (Some(ra), Some(rb)) = (x.row_slice(a), x.row_slice(b)) {
        let (ca, cb) = (ra.chunks_exact(LANES_64), rb.chunks_exact(LANES_64));
        let (ta, tb) = (ca.remainder(), cb.remainder());
        for (p, q) in ca.zip(cb) {
            for l in 0..LANES_64 {
                acc[l] += term(p[l], q[l]);
            }
        }
        for (l, (&u, &v)) in ta.iter().zip(tb).enumerate() {
            acc[l] += term(u, v);
        }
    } else {
        for j in 0..x.ncols() {
            acc[j % LANES_64] += term(x.get(a, j), x.get(b, j));
        }
    }
    acc.iter().sum()
}

/// Sorts `(d², index)` pairs ascending with ties by index.
fn sort_pairs(pairs: &mut [(f64, usize)]) {
    pairs.sort_unstable_by(|p, q| p.0.total_cmp(&q.0).then(p.1.cmp(&q.1)));
}

/// [`knn_rows`] for one element type. Distances are in the units of `x`; one that exceeds the
/// float64 range (possible only for values near `f64::MAX`) is `inf`.
pub fn knn_subset<T: Real>(x: &MatRef<'_, T>, rows: &[usize], k: usize) -> Result<Neighbours> {
    validate(x, rows, k)?;
    let scale = unit_scale(x, rows);
    let mut nn = knn_scaled(x, rows, k, scale)?;
    let inv = 1.0 / scale;
    nn.distances.iter_mut().for_each(|d| *d *= inv);
    Ok(nn)
}

/// [`knn_subset`] of the points `x·scale` (`scale` a power of two, normally
/// [`unit_scale`]): the same neighbours, distances in the scaled units. Scale-invariant
/// statistics use these directly, so they never overflow.
pub(crate) fn knn_scaled<T: Real>(
    x: &MatRef<'_, T>,
    rows: &[usize],
    k: usize,
    scale: f64,
) -> Result<Neighbours> {
    validate(x, rows, k)?;
    let n = rows.len();
    let c = centre(x, rows, scale);
    let cap = (k + EXTRA).min(n - 1);
    let tops = candidates(&c, n, cap);
    let norm_max = c.sq.iter().fold(0.0f32, |m, &s| m.max(s)).sqrt() as f64;
    // Rounding of the float32 coordinates, norms, GEMM and expansion: |error of d²| ≤
    // (d + 3)·u·(‖x_i‖ + ‖x_j‖)² to first order (u = 2⁻²⁴); 2u·(d + 8) leaves ample slack.
    let gamma = (c.d as f64 + 8.0) * f64::from(f32::EPSILON);
    let mut distances = vec![0.0f64; n * k];
    let mut indices = vec![0usize; n * k];
    distances
        .par_chunks_mut(k)
        .zip(indices.par_chunks_mut(k))
        .enumerate()
        .for_each(|(p, (dist, idx))| {
            let (values, cand) = tops[p / BLOCK].row(p % BLOCK);
            let mut pairs: Vec<(f64, usize)> = cand
                .iter()
                .map(|&j| (exact_d2(x, rows[p], rows[j as usize], scale), j as usize))
                .collect();
            sort_pairs(&mut pairs);
            let proven = cap == n - 1 || {
                let r = f64::from(c.sq[p]).sqrt() + norm_max;
                let worst = values.last().map_or(f64::NEG_INFINITY, |&v| f64::from(v));
                pairs[k - 1].0 < worst - gamma * r * r
            };
            if !proven {
                pairs = (0..n)
                    .filter(|&j| j != p)
                    .map(|j| (exact_d2(x, rows[p], rows[j], scale), j))
                    .collect();
                sort_pairs(&mut pairs);
            }
            for ((d, i), &(d2, j)) in dist.iter_mut().zip(idx.iter_mut()).zip(&pairs) {
                *d = d2.sqrt();
                *i = j;
            }
        });
    Ok(Neighbours {
        k,
        distances,
        indices,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn brute(x: &[f64], n: usize, d: usize, k: usize) -> Neighbours {
        let m = MatRef::row_major(x, n, d).unwrap();
        let mut distances = Vec::new();
        let mut indices = Vec::new();
        for i in 0..n {
            let mut p: Vec<(f64, usize)> = (0..n)
                .filter(|&j| j != i)
                .map(|j| (exact_d2(&m, i, j, 1.0), j))
                .collect();
            sort_pairs(&mut p);
            for &(d2, j) in &p[..k] {
                distances.push(d2.sqrt());
                indices.push(j);
            }
        }
        Neighbours {
            k,
            distances,
            indices,
        }
    }

    fn random(n: usize, d: usize, seed: u64) -> Vec<f64> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n * d)
            .map(|_| rng.random::<f64>() * 2.0 - 1.0)
            .collect()
    }

    #[test]
    fn matches_brute_force_across_blocks() {
        // 600 rows span three blocks, so diagonal, off-diagonal and bye tiles all run.
        let (n, d, k) = (600, 24, 7);
        let x = random(n, d, 1);
        let got = knn(&Points::F64(MatRef::row_major(&x, n, d).unwrap()), k).unwrap();
        assert_eq!(got, brute(&x, n, d, k));
    }

    #[test]
    fn float32_and_column_major_inputs_agree() {
        let (n, d, k) = (300, 9, 3);
        let x = random(n, d, 2);
        let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        let x64: Vec<f64> = x32.iter().map(|&v| f64::from(v)).collect();
        let mut fortran = vec![0.0f32; n * d];
        for i in 0..n {
            for j in 0..d {
                fortran[j * n + i] = x32[i * d + j];
            }
        }
        let want = brute(&x64, n, d, k);
        let c = knn(&Points::F32(MatRef::row_major(&x32, n, d).unwrap()), k).unwrap();
        let f = knn(&Points::F32(MatRef::col_major(&fortran, n, d).unwrap()), k).unwrap();
        assert_eq!(c, want);
        assert_eq!(f, want);
    }

    #[test]
    fn ties_are_broken_by_index() {
        // Points on a line at integer positions: interior points have two neighbours at 1.
        let x: Vec<f64> = (0..40).map(f64::from).collect();
        let got = knn(&Points::F64(MatRef::row_major(&x, 40, 1).unwrap()), 2).unwrap();
        assert_eq!(got.indices(5), &[4, 6]);
        assert_eq!(got.distances(5), &[1.0, 1.0]);
        assert_eq!(got.indices(0), &[1, 2]);
    }

    #[test]
    fn extreme_magnitudes_give_the_same_neighbours() {
        // 1e±200 overflows (or flushes) a float32 copy and overflows float64 squared
        // distances; the power-of-two scaling keeps the neighbours of X.
        let (n, d, k) = (300, 6, 5);
        let x = random(n, d, 7);
        let want = knn(&Points::F64(MatRef::row_major(&x, n, d).unwrap()), k).unwrap();
        for f in [1e200, 1e-200, 1e300, 1e-300, f64::MAX / 4.0] {
            let y: Vec<f64> = x.iter().map(|v| v * f).collect();
            let got = knn(&Points::F64(MatRef::row_major(&y, n, d).unwrap()), k).unwrap();
            assert_eq!(got.all_indices(), want.all_indices(), "scale {f}");
            for (g, w) in got.all_distances().iter().zip(want.all_distances()) {
                assert!(((g / f) - w).abs() <= 1e-12 * w, "scale {f}: {g} vs {w}");
            }
        }
        // Single precision: magnitudes near the float32 limits.
        for f in [1e30f32, 1e-30] {
            let y: Vec<f32> = x.iter().map(|&v| v as f32 * f).collect();
            let y64: Vec<f64> = y.iter().map(|&v| f64::from(v)).collect();
            let got = knn(&Points::F32(MatRef::row_major(&y, n, d).unwrap()), k).unwrap();
            assert_eq!(got, brute(&y64, n, d, k), "scale {f}");
        }
    }

    #[test]
    fn unit_scale_is_a_power_of_two_bringing_the_maximum_below_one() {
        for max in [1.0f64, 0.75, 3.0, 1e200, 1e-200, 5e-324, f64::MAX, 1e-310] {
            let x = [max, -max / 3.0];
            let s = unit_scale(&MatRef::row_major(&x, 2, 1).unwrap(), &[0, 1]);
            assert_eq!(
                s.to_bits() & ((1 << 52) - 1),
                0,
                "{max}: {s} is not a power of two"
            );
            let m = max * s;
            let clamped = s == 2f64.powi(1020) || s == 2f64.powi(-1022);
            assert!(
                m < 4.0 && (clamped || (0.5..1.0).contains(&m)),
                "{max}: {m}"
            );
        }
        let z = [0.0f64; 4];
        assert_eq!(
            unit_scale(&MatRef::row_major(&z, 4, 1).unwrap(), &[0, 1, 2, 3]),
            1.0
        );
    }

    #[test]
    fn wide_dynamic_range_within_one_set_stays_exact() {
        // Coordinates from 1e-30 to 1e30 in one set: the float32 screen cannot resolve the
        // small ones, so the proof fails and those rows are recomputed in float64.
        let (n, d, k) = (200, 3, 4);
        let mut x = random(n, d, 11);
        for (i, v) in x.iter_mut().enumerate() {
            *v *= if i % 7 == 0 { 1e30 } else { 1e-30 };
        }
        let got = knn(&Points::F64(MatRef::row_major(&x, n, d).unwrap()), k).unwrap();
        assert_eq!(got, brute(&x, n, d, k));
    }

    #[test]
    fn rejects_bad_input() {
        let x = [0.0f64, 1.0, f64::NAN, 2.0];
        let m = MatRef::row_major(&x, 4, 1).unwrap();
        assert!(knn(&Points::F64(m), 1).is_err());
        let y = [0.0f64, 1.0, 2.0];
        let m = MatRef::row_major(&y, 3, 1).unwrap();
        assert!(knn(&Points::F64(m), 3).is_err());
        assert!(knn(&Points::F64(m), 0).is_err());
        let e: [f64; 0] = [];
        assert!(knn(&Points::F64(MatRef::row_major(&e, 3, 0).unwrap()), 1).is_err());
    }

    #[test]
    fn round_robin_covers_every_pair_once() {
        for nb in 1usize..12 {
            let m = nb + nb % 2;
            let mut seen = std::collections::HashSet::new();
            for r in 0..m.saturating_sub(1) {
                let pairs = round_pairs(r, m, nb);
                let mut used = std::collections::HashSet::new();
                for &(a, b) in &pairs {
                    assert!(a < b && used.insert(a) && used.insert(b));
                    assert!(seen.insert((a, b)));
                }
            }
            assert_eq!(seen.len(), nb * (nb - 1) / 2);
        }
    }
}
