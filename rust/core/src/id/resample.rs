//! Uncertainty (docs/intrinsic-dimension.md, ours): bootstrap intervals and decimation scales.

use rand::seq::index::sample;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::error::Result;

/// Linear-interpolated quantile `q ∈ [0, 1]` of sorted, non-empty `v` (numpy's default).
pub fn quantile(v: &[f64], q: f64) -> f64 {
    let pos = q * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

/// 95% percentile bootstrap interval: the points' statistics `stats` (one per point) are
/// resampled with replacement `b` times and re-fitted by `fit`.
///
/// Resampling the per-point statistics, not the points, avoids the zero distances that
/// repeated points would create.
pub fn bootstrap_ci(
    stats: &[f64],
    b: usize,
    rng: &mut ChaCha8Rng,
    fit: impl Fn(&mut [f64]) -> Result<f64>,
) -> Result<(f64, f64)> {
    let n = stats.len();
    let mut draws = Vec::with_capacity(b);
    let mut buf = vec![0.0; n];
    for _ in 0..b {
        for v in buf.iter_mut() {
            *v = stats[rng.random_range(0..n)];
        }
        draws.push(fit(&mut buf)?);
    }
    draws.sort_unstable_by(f64::total_cmp);
    Ok((quantile(&draws, 0.025), quantile(&draws, 0.975)))
}

/// Nested random subsets for the scales check: sizes `n, n/2, n/4, …` down to `min_size`,
/// each a random half of the previous one; returned as sorted positions into `0..n`.
pub fn decimations(n: usize, min_size: usize, rng: &mut ChaCha8Rng) -> Vec<Vec<usize>> {
    let mut out = vec![(0..n).collect::<Vec<usize>>()];
    loop {
        let prev = &out[out.len() - 1];
        let size = prev.len() / 2;
        if size < min_size {
            return out;
        }
        let mut next: Vec<usize> = sample(rng, prev.len(), size)
            .into_iter()
            .map(|i| prev[i])
            .collect();
        next.sort_unstable();
        out.push(next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn quantile_matches_numpy() {
        let v = [1.0, 2.0, 4.0, 8.0];
        assert_eq!(quantile(&v, 0.0), 1.0);
        assert_eq!(quantile(&v, 1.0), 8.0);
        assert!((quantile(&v, 0.5) - 3.0).abs() < 1e-12);
    }

    #[test]
    fn bootstrap_brackets_the_mean() {
        let stats: Vec<f64> = (0..500).map(|i| f64::from(i % 10)).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let mean = |v: &mut [f64]| Ok(v.iter().sum::<f64>() / v.len() as f64);
        let (lo, hi) = bootstrap_ci(&stats, 200, &mut rng, mean).unwrap();
        assert!(lo < 4.5 && 4.5 < hi && hi - lo < 1.0, "{lo} {hi}");
    }

    #[test]
    fn decimations_halve_and_nest() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let d = decimations(100, 10, &mut rng);
        let sizes: Vec<usize> = d.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![100, 50, 25, 12]);
        assert!(d[3].iter().all(|i| d[2].contains(i)));
    }
}
