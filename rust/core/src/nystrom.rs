//! Randomized generalized Nyström sketch of a weight matrix.
//!
//! For `W` (m×n, `f32` or `f64`) and a target rank `r`, [`nystrom`] returns factors
//! `B` (m×r), `N` (r×r) and `A` (r×n) with `B·N·A ≈ W_r`, the best rank-`r` approximation,
//! following the generalized Nyström form of Nakatsukasa (2020),
//! `W ≈ (W X) (Ψᵀ W X)⁺ (Ψᵀ W)`:
//!
//! * `k = r + oversample` right test vectors `X` start as a seeded Gaussian `Ω` (n×k).
//! * `power_iters = 0`: `Ψ` is an independent Gaussian (m×p, `p = k + oversample`, more
//!   oversampling on the left as the method asks), so `C = W X` and `R = Ψᵀ W` take two passes.
//! * `power_iters = q ≥ 1`: `q` power steps `Ψ = orth(W X)`, `X = orth(Wᵀ Ψ)`; the left sketch
//!   `R = Ψᵀ W = Hᵀ` with `H = Wᵀ Ψ` is a by-product of the last step, and so is the core
//!   `Ψᵀ W X = Hᵀ X`, which needs no pass over `W`. Only the left factor `B = W (X V_r)`
//!   takes one more pass, with `r` columns instead of `k`: `2q` passes with `k` columns and one
//!   with `r` (for the default `q = 1` at `r = 64`, 212 columns in all instead of 222).
//! * The core (p×k, or k×k) is formed and factored in `f64` whatever the input dtype. A naive
//!   exact pseudo-inverse of an r×r core is unstable (errors far above ‖W‖ on real weights);
//!   here the core's SVD `U Σ Vᵀ` is truncated to rank `r` and inverted with Tikhonov
//!   regularisation, `σ / (σ² + λ²)` with `λ = rcond·σ₁`, so tiny singular values give factors
//!   near zero instead of blowing up; singular values below `eps₆₄·max(p, k)·σ₁` (rounding
//!   noise of the core) count as zero whatever `rcond`. Then `B = C V_r = W X V_r`,
//!   `N = diag(σ_r / (σ_r² + λ²))`, `A = U_rᵀ R`.
//!
//! Large products run in the input dtype with faer's parallel GEMM; `W` is only borrowed,
//! never copied. All random numbers come from ChaCha8 streams derived from `seed` (one
//! stream per column), so results do not depend on the number of threads used to draw them.

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatMut, MatRef, Par};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;

use crate::error::{LoraxError, Result};
pub use crate::real::Real;

/// Most power steps: accuracy stops improving after a handful; this bound only keeps a typo
/// from running for hours.
pub const MAX_POWER_ITERS: usize = 64;

/// Memory order of a borrowed dense matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// C order: element `(i, j)` at `i * ncols + j`.
    RowMajor,
    /// Fortran order: element `(i, j)` at `i + j * nrows`.
    ColMajor,
}

/// Settings of the sketch.
#[derive(Debug, Clone, PartialEq)]
pub struct NystromOptions {
    /// Target rank `r`, `1 ≤ r ≤ min(m, n)`.
    pub rank: usize,
    /// Extra test vectors beyond `r` (right side; the left side gets twice as many when
    /// `power_iters = 0`). Default 10.
    pub oversample: usize,
    /// Power steps on the right sketch (each costs two passes over `W`). Default 1.
    pub power_iters: usize,
    /// Seed of the Gaussian test matrices.
    pub seed: u64,
    /// Relative regularisation `λ/σ₁` of the core pseudo-inverse; `None` uses
    /// `eps(dtype) · max(m, n)`.
    pub rcond: Option<f64>,
}

impl NystromOptions {
    /// Options with the defaults for rank `rank`.
    pub fn new(rank: usize) -> Self {
        Self {
            rank,
            oversample: 10,
            power_iters: 1,
            seed: 0,
            rcond: None,
        }
    }
}

/// Dense row-major matrix returned to callers.
#[derive(Debug, Clone, PartialEq)]
pub struct Dense<T> {
    /// Number of rows.
    pub nrows: usize,
    /// Number of columns.
    pub ncols: usize,
    /// `nrows * ncols` elements in row-major order.
    pub data: Vec<T>,
}

impl<T: Real> Dense<T> {
    fn from_mat(m: MatRef<'_, T>) -> Self {
        let (nrows, ncols) = (m.nrows(), m.ncols());
        let mut data = Vec::with_capacity(nrows * ncols);
        for i in 0..nrows {
            data.extend((0..ncols).map(|j| m[(i, j)]));
        }
        Self { nrows, ncols, data }
    }
}

/// Factors `B` (m×r), `N` (r×r), `A` (r×n) with `B·N·A ≈ W_r`.
#[derive(Debug, Clone, PartialEq)]
pub struct NystromFactors<T> {
    /// Left factor, `W X V_r` (m×r).
    pub b: Dense<T>,
    /// Regularised pseudo-inverse of the truncated core (r×r, diagonal).
    pub n: Dense<T>,
    /// Right factor, `U_rᵀ Ψᵀ W` (r×n).
    pub a: Dense<T>,
}

/// Sketches a matrix stored in `data` (`nrows × ncols`, memory order `layout`).
///
/// Errors (never panics): empty or mismatched buffer, `rank` outside `1..=min(m, n)`,
/// non-finite `rcond`, and non-finite values in `W` (detected from the sketch: any NaN or
/// infinity in a row of `W` makes that row of `W X` non-finite). A finite `W` so far from unit
/// scale that a factor overflows the dtype is a [`LoraxError::Numerical`] error; factors
/// returned are always finite.
pub fn nystrom<T: Real>(
    data: &[T],
    nrows: usize,
    ncols: usize,
    layout: Layout,
    opts: &NystromOptions,
) -> Result<NystromFactors<T>> {
    if nrows == 0 || ncols == 0 {
        return Err(LoraxError::invalid(format!(
            "W must be a non-empty 2-D matrix, got shape ({nrows}, {ncols})"
        )));
    }
    let len = nrows.checked_mul(ncols);
    if len != Some(data.len()) {
        return Err(LoraxError::invalid(format!(
            "W buffer holds {} elements, shape ({nrows}, {ncols}) needs {}",
            data.len(),
            nrows.saturating_mul(ncols)
        )));
    }
    let w = match layout {
        Layout::RowMajor => MatRef::from_row_major_slice(data, nrows, ncols),
        Layout::ColMajor => MatRef::from_column_major_slice(data, nrows, ncols),
    };
    nystrom_mat(w, opts)
}

/// Sketches a faer matrix view; see [`nystrom`].
pub fn nystrom_mat<T: Real>(w: MatRef<'_, T>, opts: &NystromOptions) -> Result<NystromFactors<T>> {
    let (m, n) = (w.nrows(), w.ncols());
    let r = opts.rank;
    if m == 0 || n == 0 {
        return Err(LoraxError::invalid(format!(
            "W must be a non-empty 2-D matrix, got shape ({m}, {n})"
        )));
    }
    if r == 0 || r > m.min(n) {
        return Err(LoraxError::invalid(format!(
            "rank must be in [1, min(out, in)] = [1, {}] for W of shape ({m}, {n}), got {r}",
            m.min(n)
        )));
    }
    if opts.power_iters > MAX_POWER_ITERS {
        return Err(LoraxError::invalid(format!(
            "power_iters must be at most {MAX_POWER_ITERS}, got {}",
            opts.power_iters
        )));
    }
    let rcond = opts.rcond.unwrap_or(T::EPS * m.max(n) as f64);
    if !rcond.is_finite() || rcond < 0.0 {
        return Err(LoraxError::invalid(format!(
            "rcond must be finite and non-negative, got {rcond}"
        )));
    }
    let par = Par::rayon(0);
    let k = r.saturating_add(opts.oversample).min(m.min(n));

    let mut x: Mat<T> = gaussian(n, k, opts.seed, 0);
    // `core` is the sketched core `Ψᵀ W X` in f64, `right` the left sketch `R = Ψᵀ W`, and
    // `left_input` what the left factor `W X V_r` is computed from.
    let (core, right, left_input) = if opts.power_iters == 0 {
        let p = k.saturating_add(opts.oversample).min(m);
        let psi: Mat<T> = gaussian(m, p, opts.seed, 1);
        let right = product(psi.transpose(), w, par);
        let c = product(w, x.as_ref(), par);
        check_finite(c.as_ref())?;
        let core = product(
            widen(psi.transpose()).as_ref(),
            widen(c.as_ref()).as_ref(),
            Par::Seq,
        );
        (core, right, LeftFactor::Sketch(c))
    } else {
        let mut h = Mat::<T>::zeros(n, k);
        for _ in 0..opts.power_iters {
            let g = product(w, x.as_ref(), par);
            check_finite(g.as_ref())?;
            let psi = orthonormal(g.as_ref());
            h = product(w.transpose(), psi.as_ref(), par);
            x = orthonormal(h.as_ref());
        }
        // `Ψᵀ W X = Hᵀ X` needs no pass over W, and the left factor `W X V_r` is one pass
        // with r columns instead of `k`.
        let core = product(
            widen(h.transpose()).as_ref(),
            widen(x.as_ref()).as_ref(),
            Par::Seq,
        );
        (core, h.transpose().to_owned(), LeftFactor::Basis(x))
    };

    // Rank-r truncated, regularised pseudo-inverse of the core.
    let svd = core
        .thin_svd()
        .map_err(|_| LoraxError::Numerical("SVD of the Nyström core did not converge".into()))?;
    let sigma = svd.S().column_vector();
    let sigma1 = sigma[0];
    let lambda = rcond * sigma1;
    // Singular values at float64 rounding level relative to σ₁ are zero in the core's
    // precision (numpy's `pinv` rule); without this cut, `rcond = 0` (or one so small that
    // `λ²` underflows) on a rank-deficient W inverted rounding noise into huge or infinite
    // factors.
    let cutoff = f64::EPSILON * core.nrows().max(core.ncols()) as f64 * sigma1;
    let inv: Vec<f64> = (0..r)
        .map(|i| {
            let s = sigma[i];
            let d = s * s + lambda * lambda;
            if s > cutoff && d > 0.0 {
                s / d
            } else {
                0.0
            }
        })
        .collect();

    let v_r = narrow::<T>(svd.V().get(.., ..r));
    let u_r = narrow::<T>(svd.U().get(.., ..r));
    let b = match left_input {
        LeftFactor::Sketch(c) => dense_product(c.as_ref(), v_r.as_ref(), par),
        LeftFactor::Basis(x) => {
            let xv = product(x.as_ref(), v_r.as_ref(), par);
            dense_product(w, xv.as_ref(), par)
        }
    };
    let a = dense_product(u_r.transpose(), right.as_ref(), par);
    let n_mat = Mat::<T>::from_fn(r, r, |i, j| {
        if i == j {
            T::from_f64(inv[i])
        } else {
            T::from_f64(0.0)
        }
    });
    let factors = NystromFactors {
        b,
        n: Dense::from_mat(n_mat.as_ref()),
        a,
    };
    let all = [&factors.b.data, &factors.n.data, &factors.a.data];
    if !all.iter().all(|d| d.iter().all(|v| v.to_f64().is_finite())) {
        // `N` scales like 1/‖W‖, so W far below unit scale (subnormal float32) overflows the
        // dtype; say so instead of returning infinities.
        return Err(LoraxError::Numerical(format!(
            "the Nyström factors overflow the input dtype (largest singular value of the core \
             {sigma1:e}); rescale W towards unit magnitude or sketch it in float64"
        )));
    }
    Ok(factors)
}

/// What the left factor `W X V_r` is computed from.
enum LeftFactor<T> {
    /// The sketch `C = W X` itself (no power steps): `B = C V_r`.
    Sketch(Mat<T>),
    /// The orthonormal right basis `X` (after power steps): `B = W (X V_r)`, one pass over W.
    Basis(Mat<T>),
}

/// `lhs · rhs` into a new column-major matrix.
///
/// faer's GEMM is fastest with a column-major left operand. A row-major `lhs` (the usual
/// `W` from NumPy or PyTorch) is multiplied as `(rhsᵀ lhsᵀ)ᵀ`, where `lhsᵀ` is column-major:
/// about a third faster for `W X` at `4096 × 11008`.
fn product<T: Real>(lhs: MatRef<'_, T>, rhs: MatRef<'_, T>, par: Par) -> Mat<T> {
    if lhs.col_stride() == 1 && lhs.row_stride() != 1 {
        let mut out_t = Mat::<T>::zeros(rhs.ncols(), lhs.nrows());
        mul(out_t.as_mut(), rhs.transpose(), lhs.transpose(), par);
        return out_t.transpose().to_owned();
    }
    let mut out = Mat::<T>::zeros(lhs.nrows(), rhs.ncols());
    mul(out.as_mut(), lhs, rhs, par);
    out
}

/// `lhs · rhs` written straight into a row-major [`Dense`] (no copy of the result).
fn dense_product<T: Real>(lhs: MatRef<'_, T>, rhs: MatRef<'_, T>, par: Par) -> Dense<T> {
    let (nrows, ncols) = (lhs.nrows(), rhs.ncols());
    let mut data = vec![T::from_f64(0.0); nrows * ncols];
    mul(
        MatMut::from_row_major_slice_mut(&mut data, nrows, ncols),
        lhs,
        rhs,
        par,
    );
    Dense { nrows, ncols, data }
}

/// `dst = lhs · rhs`.
fn mul<T: Real>(dst: MatMut<'_, T>, lhs: MatRef<'_, T>, rhs: MatRef<'_, T>, par: Par) {
    matmul(dst, Accum::Replace, lhs, rhs, T::from_f64(1.0), par);
}

/// Seeded standard-normal matrix; column `j` of matrix `tag` comes from its own ChaCha8
/// stream, so the draw is parallel and independent of the thread count.
fn gaussian<T: Real>(nrows: usize, ncols: usize, seed: u64, tag: u64) -> Mat<T> {
    let mut data = vec![T::from_f64(0.0); nrows * ncols];
    data.par_chunks_mut(nrows.max(1))
        .enumerate()
        .for_each(|(j, col)| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            rng.set_stream((tag << 32) | j as u64);
            for v in col.iter_mut() {
                let z: f64 = StandardNormal.sample(&mut rng);
                *v = T::from_f64(z);
            }
        });
    MatRef::from_column_major_slice(&data, nrows, ncols).to_owned()
}

/// Orthonormal basis (thin Householder Q) of the columns of `a`.
fn orthonormal<T: Real>(a: MatRef<'_, T>) -> Mat<T> {
    a.qr().compute_thin_Q()
}

fn widen<T: Real>(a: MatRef<'_, T>) -> Mat<f64> {
    Mat::from_fn(a.nrows(), a.ncols(), |i, j| a[(i, j)].to_f64())
}

fn narrow<T: Real>(a: MatRef<'_, f64>) -> Mat<T> {
    Mat::from_fn(a.nrows(), a.ncols(), |i, j| T::from_f64(a[(i, j)]))
}

fn check_finite<T: Real>(sketch: MatRef<'_, T>) -> Result<()> {
    let finite = (0..sketch.ncols())
        .all(|j| (0..sketch.nrows()).all(|i| sketch[(i, j)].to_f64().is_finite()));
    if finite {
        Ok(())
    } else {
        Err(LoraxError::invalid(
            "W contains NaN or infinite values (or values so large that the sketch overflows)",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `U diag(s) Vᵀ` with Haar-ish orthonormal U, V from a seeded Gaussian QR.
    fn with_spectrum(m: usize, n: usize, s: &[f64], seed: u64) -> Mat<f64> {
        let k = s.len();
        let u = orthonormal(gaussian::<f64>(m, k, seed, 7).as_ref());
        let v = orthonormal(gaussian::<f64>(n, k, seed, 8).as_ref());
        let us = Mat::from_fn(m, k, |i, j| u[(i, j)] * s[j]);
        product(us.as_ref(), v.transpose(), Par::Seq)
    }

    /// [`with_spectrum`] with `s_i = i^-decay`, and `s`.
    fn known_spectrum(m: usize, n: usize, decay: f64, seed: u64) -> (Mat<f64>, Vec<f64>) {
        let s: Vec<f64> = (1..=m.min(n)).map(|i| (i as f64).powf(-decay)).collect();
        (with_spectrum(m, n, &s, seed), s)
    }

    fn reconstruct(f: &NystromFactors<f64>) -> Mat<f64> {
        let to =
            |d: &Dense<f64>| MatRef::from_row_major_slice(&d.data, d.nrows, d.ncols).to_owned();
        let bn = product(to(&f.b).as_ref(), to(&f.n).as_ref(), Par::Seq);
        product(bn.as_ref(), to(&f.a).as_ref(), Par::Seq)
    }

    fn rel_err(w: MatRef<'_, f64>, f: &NystromFactors<f64>) -> f64 {
        (w - reconstruct(f).as_ref()).norm_l2() / w.norm_l2()
    }

    fn optimal(s: &[f64], r: usize) -> f64 {
        let tail: f64 = s[r..].iter().map(|x| x * x).sum();
        let all: f64 = s.iter().map(|x| x * x).sum();
        (tail / all).sqrt()
    }

    #[test]
    fn rank_deficient_with_vanishing_rcond_gives_finite_factors() {
        // Found by fuzzing: a constant (rank-1) float32 matrix asked for rank 4 with rcond
        // 3.8e-312 (λ² underflows) inverted the core's rounding-level singular values into
        // infinite factors. Rounding-level singular values now count as zero.
        let w = vec![-64.0f32; 5 * 20];
        for rcond in [Some(3.834513353133e-312), Some(0.0), None] {
            let opts = NystromOptions {
                rank: 4,
                oversample: 4,
                power_iters: 3,
                seed: 126,
                rcond,
            };
            let f = nystrom(&w, 5, 20, Layout::ColMajor, &opts).unwrap();
            let all = f.b.data.iter().chain(&f.n.data).chain(&f.a.data);
            assert!(all.into_iter().all(|v| v.is_finite()), "{rcond:?}");
            let widen = |d: &Dense<f32>| {
                Mat::from_fn(d.nrows, d.ncols, |i, j| f64::from(d.data[i * d.ncols + j]))
            };
            let f64s = NystromFactors {
                b: Dense::from_mat(widen(&f.b).as_ref()),
                n: Dense::from_mat(widen(&f.n).as_ref()),
                a: Dense::from_mat(widen(&f.a).as_ref()),
            };
            let w64 = Mat::from_fn(5, 20, |_, _| -64.0f64);
            assert!(rel_err(w64.as_ref(), &f64s) < 1e-5, "{rcond:?}");
        }
    }

    #[test]
    fn factors_overflowing_the_dtype_are_an_error() {
        // N scales like 1/‖W‖: float32 W of (subnormal) magnitude 1e-42 cannot be factored in
        // float32.
        let (w, _) = known_spectrum(12, 10, 0.5, 6);
        let tiny: Vec<f32> = (0..12)
            .flat_map(|i| (0..10).map(move |j| (i, j)))
            .map(|(i, j)| (w[(i, j)] * 1e-42) as f32)
            .collect();
        let e = nystrom(&tiny, 12, 10, Layout::RowMajor, &NystromOptions::new(3));
        assert!(matches!(e, Err(LoraxError::Numerical(m)) if m.contains("overflow")));
    }

    /// Relative error of the sketch of `w` (stored as `T`, row-major) at rank `r`.
    fn rel_err_as<T: Real>(w: MatRef<'_, f64>, opts: &NystromOptions) -> f64 {
        let (m, n) = (w.nrows(), w.ncols());
        let data: Vec<T> = (0..m)
            .flat_map(|i| (0..n).map(move |j| T::from_f64(w[(i, j)])))
            .collect();
        let f = nystrom(&data, m, n, Layout::RowMajor, opts).unwrap();
        let widen = |d: &Dense<T>| Dense {
            nrows: d.nrows,
            ncols: d.ncols,
            data: d.data.iter().map(|v| v.to_f64()).collect(),
        };
        let f64s = NystromFactors {
            b: widen(&f.b),
            n: widen(&f.n),
            a: widen(&f.a),
        };
        rel_err(w, &f64s)
    }

    #[test]
    fn error_bound_holds_on_adversarial_spectra() {
        // The bound: relative error at most 1.1 × the optimum plus ten roundings of the dtype
        // (`W` itself is stored to eps), in float32 and float64, at one and two power steps.
        let (m, n, r) = (240, 160, 16);
        let k = m.min(n);
        let decaying = |i: usize| 1.0 / (i as f64 + 1.0);
        let spectra: [(&str, Vec<f64>); 5] = [
            ("flat", vec![1.0; k]),
            // rank 5 < r, and rank exactly r: the sketch is exact.
            (
                "rank 5",
                (0..k)
                    .map(|i| if i < 5 { decaying(i) } else { 0.0 })
                    .collect(),
            ),
            (
                "rank r",
                (0..k)
                    .map(|i| if i < r { decaying(i) } else { 0.0 })
                    .collect(),
            ),
            // One singular value 1e8 times the next, the rest decaying.
            (
                "one huge",
                (0..k)
                    .map(|i| if i == 0 { 1e8 } else { decaying(i) })
                    .collect(),
            ),
            // A flat top of r + 4 equal values (ties across the cut), then a drop.
            (
                "tied top",
                (0..k).map(|i| if i < r + 4 { 1.0 } else { 1e-3 }).collect(),
            ),
        ];
        for (name, s) in &spectra {
            let w = with_spectrum(m, n, s, 11);
            let opt = optimal(s, r);
            for q in [1, 2] {
                let opts = NystromOptions {
                    power_iters: q,
                    ..NystromOptions::new(r)
                };
                for (dtype, eps, err) in [
                    ("f64", f64::EPSILON, rel_err_as::<f64>(w.as_ref(), &opts)),
                    (
                        "f32",
                        f64::from(f32::EPSILON),
                        rel_err_as::<f32>(w.as_ref(), &opts),
                    ),
                ] {
                    let bound = 1.1 * opt + 10.0 * eps;
                    assert!(
                        err <= bound,
                        "{name}, q={q}, {dtype}: error {err:e} above the bound {bound:e}"
                    );
                }
            }
        }
    }

    #[test]
    fn near_optimal_on_decaying_spectrum() {
        let (w, s) = known_spectrum(300, 200, 1.0, 3);
        for r in [4, 20] {
            let f = nystrom_mat(w.as_ref(), &NystromOptions::new(r)).unwrap();
            let ratio = rel_err(w.as_ref(), &f) / optimal(&s, r);
            assert!(ratio < 1.2, "r={r}: ratio {ratio}");
        }
    }

    #[test]
    fn exact_on_low_rank_and_without_power_steps() {
        let (w, _) = known_spectrum(120, 90, 1.0, 4);
        let w5 = {
            let svd = w.thin_svd().unwrap();
            let u = svd.U().get(.., ..5);
            let s = svd.S().column_vector();
            let us = Mat::from_fn(120, 5, |i, j| u[(i, j)] * s[j]);
            product(us.as_ref(), svd.V().get(.., ..5).transpose(), Par::Seq)
        };
        let mut opts = NystromOptions::new(5);
        opts.power_iters = 0;
        let f = nystrom_mat(w5.as_ref(), &opts).unwrap();
        assert!(rel_err(w5.as_ref(), &f) < 1e-8);
    }

    #[test]
    fn deterministic_and_layout_independent() {
        let (w, _) = known_spectrum(40, 30, 0.5, 5);
        let row: Vec<f64> = (0..40)
            .flat_map(|i| (0..30).map(move |j| (i, j)))
            .map(|(i, j)| w[(i, j)])
            .collect();
        let col: Vec<f64> = (0..30)
            .flat_map(|j| (0..40).map(move |i| (i, j)))
            .map(|(i, j)| w[(i, j)])
            .collect();
        let opts = NystromOptions {
            seed: 9,
            ..NystromOptions::new(6)
        };
        let a = nystrom(&row, 40, 30, Layout::RowMajor, &opts).unwrap();
        let b = nystrom(&row, 40, 30, Layout::RowMajor, &opts).unwrap();
        let c = nystrom(&col, 40, 30, Layout::ColMajor, &opts).unwrap();
        assert_eq!(a, b);
        assert!(rel_err(w.as_ref(), &a) < 1.0);
        let diff = (reconstruct(&a) - reconstruct(&c)).norm_l2();
        assert!(diff < 1e-10, "{diff}");
    }

    #[test]
    fn zero_matrix_gives_zero_factors() {
        let f = nystrom(
            &[0.0f32; 12],
            3,
            4,
            Layout::RowMajor,
            &NystromOptions::new(2),
        )
        .unwrap();
        assert!(f
            .b
            .data
            .iter()
            .chain(&f.n.data)
            .chain(&f.a.data)
            .all(|x| *x == 0.0));
    }

    #[test]
    fn bad_input_is_an_error() {
        let d = [1.0f64; 12];
        let o = |r| NystromOptions::new(r);
        assert!(nystrom(&d, 3, 4, Layout::RowMajor, &o(0)).is_err());
        assert!(nystrom(&d, 3, 4, Layout::RowMajor, &o(4)).is_err());
        assert!(nystrom(&d, 3, 5, Layout::RowMajor, &o(1)).is_err());
        assert!(nystrom(&d, 0, 4, Layout::RowMajor, &o(1)).is_err());
        assert!(nystrom(&d, usize::MAX, 2, Layout::RowMajor, &o(1)).is_err());
        let mut nan = d;
        nan[5] = f64::NAN;
        let err = nystrom(&nan, 3, 4, Layout::RowMajor, &o(1)).unwrap_err();
        assert!(err.to_string().contains("NaN"));
        let mut inf = d;
        inf[0] = f64::INFINITY;
        assert!(nystrom(
            &inf,
            3,
            4,
            Layout::ColMajor,
            &NystromOptions {
                power_iters: 0,
                ..o(1)
            }
        )
        .is_err());
        let bad = NystromOptions {
            rcond: Some(f64::NAN),
            ..o(1)
        };
        assert!(nystrom(&d, 3, 4, Layout::RowMajor, &bad).is_err());
    }
}
