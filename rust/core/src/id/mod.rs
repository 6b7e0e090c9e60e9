//! Intrinsic-dimension estimation (docs/intrinsic-dimension.md): TwoNN and MLE over exact
//! neighbours, with the duplicates policy, bootstrap intervals, decimation scales and a batch over
//! many layers.

mod duplicates;
mod mle;
mod resample;
mod twonn;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::error::{Context, LoraxError, Result};
use crate::knn::{knn_scaled, unit_scale, MatRef, Points, Real};
pub use duplicates::distinct_rows;
pub use mle::{Comb, Mle};
pub use twonn::{TwoNN, TwoNNMethod};

/// Default relative tolerance of the near-duplicate rule: pairs closer than `1e-7 ×` the data's
/// robust scale (the median distance of the points from their coordinate-wise median, see
/// [`duplicates::robust_scale`]) count as copies.
pub const DEFAULT_DUPLICATE_TOL: f64 = 1e-7;

/// Most bootstrap resamples: far more than a 95% interval needs, few enough to allocate.
pub const MAX_BOOTSTRAP: usize = 1_000_000;

/// Smallest subset the scales check estimates on (besides needing `k + 2` points).
const MIN_SCALE_SIZE: usize = 16;

/// Which estimator to run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Estimator {
    /// TwoNN (first two neighbours).
    TwoNN(TwoNN),
    /// Levina–Bickel MLE (k neighbours).
    Mle(Mle),
}

impl Estimator {
    /// Checks the settings of the chosen estimator.
    pub fn validate(&self) -> Result<()> {
        match self {
            Estimator::TwoNN(t) => t.validate(),
            Estimator::Mle(m) => m.validate(),
        }
    }

    /// Neighbours needed per point.
    fn k(&self) -> usize {
        match self {
            Estimator::TwoNN(_) => 2,
            Estimator::Mle(m) => m.k,
        }
    }

    /// Per-point statistic from the ascending neighbour distances (all > 0).
    fn local(&self, t: &[f64]) -> f64 {
        match self {
            Estimator::TwoNN(_) => TwoNN::ratio(t),
            Estimator::Mle(m) => m.inverse_local(t),
        }
    }

    /// Global estimate from the per-point statistics (reorders them).
    fn fit(&self, stats: &mut [f64]) -> Result<f64> {
        match self {
            Estimator::TwoNN(t) => t.fit(stats),
            Estimator::Mle(m) => m.combine(stats),
        }
    }
}

/// Settings shared by both estimators.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Options {
    /// Bootstrap resamples for the 95% interval (0: no interval).
    pub bootstrap: usize,
    /// Seed of the bootstrap and decimation draws.
    pub seed: u64,
    /// Also estimate on nested random halves `N, N/2, N/4, …`.
    pub scales: bool,
    /// Near-duplicate tolerance relative to the data's robust scale, the median distance of
    /// the points from their coordinate-wise median (≥ 0).
    pub duplicate_tol: f64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            bootstrap: 0,
            seed: 0,
            scales: false,
            duplicate_tol: DEFAULT_DUPLICATE_TOL,
        }
    }
}

impl Options {
    /// Checks the settings (`bootstrap <= MAX_BOOTSTRAP`, `duplicate_tol` finite and `>= 0`).
    pub fn validate(&self) -> Result<()> {
        if self.bootstrap > MAX_BOOTSTRAP {
            return Err(LoraxError::invalid(format!(
                "bootstrap must be at most {MAX_BOOTSTRAP}, got {}",
                self.bootstrap
            )));
        }
        if !(self.duplicate_tol >= 0.0 && self.duplicate_tol.is_finite()) {
            return Err(LoraxError::invalid(format!(
                "duplicate_tol must be finite and >= 0, got {}",
                self.duplicate_tol
            )));
        }
        Ok(())
    }
}

/// Result of one estimate.
#[derive(Debug, Clone, PartialEq)]
pub struct IdResult {
    /// The intrinsic dimension.
    pub dimension: f64,
    /// 95% bootstrap interval, when requested.
    pub ci: Option<(f64, f64)>,
    /// Number of input points (rows), duplicates included.
    pub n_samples: usize,
    /// Points removed as exact or near duplicates.
    pub n_duplicates: usize,
    /// `(points used, dimension)` at each decimation scale, when requested.
    pub scales: Option<Vec<(usize, f64)>>,
}

/// Estimates the intrinsic dimension of `points` (rows are points).
///
/// Errors (as [`LoraxError::InvalidArgument`]) on empty or non-finite input, invalid settings,
/// fewer than 3 distinct points, or `k` not below the number of distinct points.
pub fn estimate(points: &Points<'_>, est: &Estimator, opts: &Options) -> Result<IdResult> {
    match points {
        Points::F32(x) => estimate_impl(x, est, opts),
        Points::F64(x) => estimate_impl(x, est, opts),
    }
}

/// [`estimate`] over many point sets (e.g. one per layer), in parallel across sets; each set
/// also parallelises internally. Results are in input order; the first error is returned.
/// Errors name the failing set (`layer i: …`).
pub fn estimate_many(
    sets: &[Points<'_>],
    est: &Estimator,
    opts: &Options,
) -> Result<Vec<IdResult>> {
    sets.par_iter()
        .enumerate()
        .map(|(i, p)| estimate(p, est, opts).context(format!("layer {i}")))
        .collect()
}

fn check_input<T: Real>(x: &MatRef<'_, T>, opts: &Options) -> Result<()> {
    if x.nrows() == 0 || x.ncols() == 0 {
        return Err(LoraxError::invalid(format!(
            "X is empty (shape {}x{}); it needs at least 3 points with at least 1 feature",
            x.nrows(),
            x.ncols()
        )));
    }
    opts.validate()?;
    if !x.all_finite() {
        return Err(LoraxError::invalid("X contains NaN or infinite values"));
    }
    Ok(())
}

/// Checks that `n` distinct points (of `total` rows) leave room for `k` neighbours.
fn check_count(n: usize, total: usize, k: usize) -> Result<()> {
    let distinct = match total - n {
        0 => format!("{n} points, none of them a duplicate"),
        removed => format!("{n} distinct of {total} points after removing {removed} duplicates"),
    };
    if n < 3 {
        return Err(LoraxError::invalid(format!(
            "X must have at least 3 distinct points, got {distinct}"
        )));
    }
    if k >= n {
        return Err(LoraxError::invalid(format!(
            "k = {k} must be smaller than the number of distinct points, got {distinct}"
        )));
    }
    Ok(())
}

/// Per-point statistics of the subset `rows` of `x·scale`.
fn local_stats<T: Real>(
    x: &MatRef<'_, T>,
    rows: &[usize],
    scale: f64,
    est: &Estimator,
) -> Result<Vec<f64>> {
    let nn = knn_scaled(x, rows, est.k(), scale)?;
    Ok((0..nn.len()).map(|i| est.local(nn.distances(i))).collect())
}

fn estimate_impl<T: Real>(x: &MatRef<'_, T>, est: &Estimator, opts: &Options) -> Result<IdResult> {
    est.validate()?;
    check_input(x, opts)?;
    let k = est.k();
    let mut rows = distinct_rows(x);
    check_count(rows.len(), x.nrows(), k)?;
    // The estimates are scale-invariant: work on `x` times a power of two that brings it to
    // unit magnitude (exact), so data of magnitude 1e±200 neither overflows nor underflows,
    // and `x·2^j` gives bit-identical results to `x`.
    let scale = unit_scale(x, &rows);
    let threshold = opts.duplicate_tol * duplicates::robust_scale(x, &rows, scale);
    // Remove near duplicates until none is left; the loop runs once on clean data.
    let stats = loop {
        let nn = knn_scaled(x, &rows, k, scale)?;
        let drop = duplicates::near_duplicates(&nn, threshold);
        if drop.is_empty() {
            break (0..nn.len())
                .map(|i| est.local(nn.distances(i)))
                .collect::<Vec<f64>>();
        }
        let mut keep = vec![true; rows.len()];
        drop.iter().for_each(|&i| keep[i] = false);
        rows = rows
            .iter()
            .zip(&keep)
            .filter(|(_, &k)| k)
            .map(|(&r, _)| r)
            .collect();
        check_count(rows.len(), x.nrows(), k)?;
    };
    let dimension = est.fit(&mut stats.clone())?;
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let ci = match opts.bootstrap {
        0 => None,
        b => Some(resample::bootstrap_ci(&stats, b, &mut rng, |s| est.fit(s))?),
    };
    let scales = if opts.scales {
        let min_size = MIN_SCALE_SIZE.max(k + 2);
        let subsets = resample::decimations(rows.len(), min_size, &mut rng);
        let mut out = vec![(rows.len(), dimension)];
        for subset in &subsets[1..] {
            let sub: Vec<usize> = subset.iter().map(|&i| rows[i]).collect();
            let mut s = local_stats(x, &sub, scale, est)?;
            out.push((sub.len(), est.fit(&mut s)?));
        }
        Some(out)
    } else {
        None
    };
    Ok(IdResult {
        dimension,
        ci,
        n_samples: x.nrows(),
        n_duplicates: x.nrows() - rows.len(),
        scales,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    /// `n` points uniform in a `d`-dimensional cube, embedded in `dim` dimensions.
    fn cube(n: usize, d: usize, dim: usize, seed: u64) -> Vec<f64> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut x = vec![0.0; n * dim];
        for i in 0..n {
            for j in 0..d {
                x[i * dim + j] = rng.random::<f64>();
            }
        }
        x
    }

    #[test]
    fn linear_subspace_dimension() {
        let (n, dim) = (2000, 12);
        let x = cube(n, 4, dim, 3);
        let p = Points::F64(MatRef::row_major(&x, n, dim).unwrap());
        let opts = Options::default();
        let t = estimate(&p, &Estimator::TwoNN(TwoNN::default()), &opts).unwrap();
        let m = estimate(&p, &Estimator::Mle(Mle::default()), &opts).unwrap();
        assert!((t.dimension - 4.0).abs() < 0.5, "{}", t.dimension);
        assert!((m.dimension - 4.0).abs() < 0.5, "{}", m.dimension);
        assert_eq!((t.n_samples, t.n_duplicates), (n, 0));
    }

    #[test]
    fn duplicates_removed_and_counted() {
        let (n, dim) = (500, 3);
        let mut x = cube(n, 3, dim, 4);
        let clean = estimate(
            &Points::F64(MatRef::row_major(&x, n, dim).unwrap()),
            &Estimator::TwoNN(TwoNN::default()),
            &Options::default(),
        )
        .unwrap();
        // 20 exact copies and 5 copies moved by 1e-12.
        for i in 0..25 {
            let row: Vec<f64> = x[i * dim..(i + 1) * dim].to_vec();
            let shift = if i < 20 { 0.0 } else { 1e-12 };
            x.extend(row.iter().map(|v| v + shift));
        }
        let dup = estimate(
            &Points::F64(MatRef::row_major(&x, n + 25, dim).unwrap()),
            &Estimator::TwoNN(TwoNN::default()),
            &Options::default(),
        )
        .unwrap();
        assert_eq!(dup.n_duplicates, 25);
        assert_eq!(dup.dimension, clean.dimension);
    }

    #[test]
    fn bootstrap_and_scales() {
        let (n, dim) = (1200, 5);
        let x = cube(n, 3, dim, 5);
        let p = Points::F64(MatRef::row_major(&x, n, dim).unwrap());
        let opts = Options {
            bootstrap: 50,
            scales: true,
            seed: 9,
            ..Options::default()
        };
        let r = estimate(&p, &Estimator::TwoNN(TwoNN::default()), &opts).unwrap();
        let (lo, hi) = r.ci.unwrap();
        assert!(
            lo <= r.dimension && r.dimension <= hi,
            "{lo} {} {hi}",
            r.dimension
        );
        let sizes: Vec<usize> = r.scales.unwrap().iter().map(|s| s.0).collect();
        assert_eq!(sizes, vec![1200, 600, 300, 150, 75, 37, 18]);
        assert_eq!(
            estimate(&p, &Estimator::TwoNN(TwoNN::default()), &opts)
                .unwrap()
                .ci,
            r.ci
        );
    }

    /// `n` standard Gaussian points in `dim` dimensions.
    fn gaussian(n: usize, dim: usize, seed: u64) -> Vec<f64> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n * dim)
            .map(|_| rng.sample::<f64, _>(rand_distr::StandardNormal))
            .collect()
    }

    #[test]
    fn one_far_outlier_removes_no_distinct_point() {
        // With a tolerance scaled by the RMS norm, the row 1e8 away made the threshold ~0.3
        // and hundreds of distinct Gaussian points were dropped as "duplicates".
        let (n, dim) = (1000, 4);
        let x = gaussian(n, dim, 21);
        let mut y = x.clone();
        y.extend([1e8, 0.0, 0.0, 0.0]);
        for est in [
            Estimator::TwoNN(TwoNN::default()),
            Estimator::Mle(Mle::default()),
        ] {
            let r = estimate(
                &Points::F64(MatRef::row_major(&y, n + 1, dim).unwrap()),
                &est,
                &Options::default(),
            )
            .unwrap();
            assert_eq!(r.n_duplicates, 0, "{est:?}");
            // Same neighbours as without duplicate removal: the exact statistics with the
            // outlier kept, from a plain brute-force scan.
            let mut stats: Vec<f64> = (0..=n)
                .map(|i| {
                    let row = |a: usize| &y[a * dim..(a + 1) * dim];
                    let mut d: Vec<f64> = (0..=n)
                        .filter(|&j| j != i)
                        .map(|j| {
                            row(i)
                                .iter()
                                .zip(row(j))
                                .map(|(u, v)| (u - v) * (u - v))
                                .sum::<f64>()
                                .sqrt()
                        })
                        .collect();
                    d.sort_by(f64::total_cmp);
                    est.local(&d[..est.k()])
                })
                .collect();
            let want = est.fit(&mut stats).unwrap();
            assert!(
                (r.dimension - want).abs() <= 1e-12 * want,
                "{} vs {want}",
                r.dimension
            );
        }
    }

    #[test]
    fn estimates_are_invariant_to_extreme_scales() {
        let (n, dim) = (800, 5);
        let x = cube(n, 3, dim, 8);
        let opts = Options {
            bootstrap: 20,
            scales: true,
            ..Options::default()
        };
        for est in [
            Estimator::TwoNN(TwoNN::default()),
            Estimator::Mle(Mle::default()),
        ] {
            let want = estimate(
                &Points::F64(MatRef::row_major(&x, n, dim).unwrap()),
                &est,
                &opts,
            )
            .unwrap();
            for f in [1e200, 1e-200, 1e300, 1e-300] {
                let y: Vec<f64> = x.iter().map(|v| v * f).collect();
                let got = estimate(
                    &Points::F64(MatRef::row_major(&y, n, dim).unwrap()),
                    &est,
                    &opts,
                )
                .unwrap();
                assert_eq!(got.n_duplicates, 0);
                assert!(
                    (got.dimension - want.dimension).abs() <= 1e-9 * want.dimension,
                    "{est:?} x{f}: {} vs {}",
                    got.dimension,
                    want.dimension
                );
            }
            // Power-of-two factors are exact: bit-identical results, interval and scales too.
            let y: Vec<f64> = x.iter().map(|v| v * 2f64.powi(-700)).collect();
            let got = estimate(
                &Points::F64(MatRef::row_major(&y, n, dim).unwrap()),
                &est,
                &opts,
            )
            .unwrap();
            assert_eq!(got, want);
        }
    }

    #[test]
    fn too_few_distinct_points() {
        let x = [1.0f64, 1.0, 1.0, 1.0, 2.0, 2.0];
        let p = Points::F64(MatRef::row_major(&x, 3, 2).unwrap());
        let e = estimate(&p, &Estimator::TwoNN(TwoNN::default()), &Options::default());
        assert!(matches!(e, Err(LoraxError::InvalidArgument(m))
            if m.contains("at least 3 distinct points, got 2 distinct of 3 points after removing 1")));
    }

    #[test]
    fn too_few_points_without_duplicates_says_none_was_removed() {
        let x = [1.0f64, 1.0, 2.0, 2.0];
        let p = Points::F64(MatRef::row_major(&x, 2, 2).unwrap());
        let e = estimate(&p, &Estimator::TwoNN(TwoNN::default()), &Options::default());
        assert!(matches!(e, Err(LoraxError::InvalidArgument(m))
            if m.contains("got 2 points, none of them a duplicate")));
    }
}
