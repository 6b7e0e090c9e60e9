//! Levina–Bickel maximum-likelihood estimator with the MacKay–Ghahramani combination.

use crate::error::{LoraxError, Result};

/// How the per-point estimates are combined into one dimension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comb {
    /// MacKay–Ghahramani: `1 / mean(1 / m_i)` (skdim's `comb="mle"`).
    Mle,
    /// Arithmetic mean of `m_i`.
    Mean,
    /// Median of `m_i`.
    Median,
}

impl Comb {
    /// Parses `"mle"`, `"mean"` or `"median"`.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "mle" => Ok(Self::Mle),
            "mean" => Ok(Self::Mean),
            "median" => Ok(Self::Median),
            _ => Err(LoraxError::invalid(format!(
                "comb must be 'mle', 'mean' or 'median', got '{name}'"
            ))),
        }
    }
}

/// MLE settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mle {
    /// Neighbours per point (the point itself excluded).
    pub k: usize,
    /// Combination of the per-point estimates.
    pub comb: Comb,
    /// Use `k − 2` instead of `k − 1` in the numerator.
    pub unbiased: bool,
}

impl Default for Mle {
    fn default() -> Self {
        Self {
            k: 20,
            comb: Comb::Mle,
            unbiased: false,
        }
    }
}

impl Mle {
    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        let min = if self.unbiased { 3 } else { 2 };
        if self.k < min {
            return Err(LoraxError::invalid(format!(
                "k must be at least {min} (unbiased={}), got {}",
                self.unbiased, self.k
            )));
        }
        Ok(())
    }

    /// The per-point statistic `1 / m_i = Σ_{j<k} ln(T_k / T_j) / (k − 1)` (or `k − 2` when
    /// unbiased) from the `k` ascending neighbour distances `t` (all > 0).
    pub fn inverse_local(&self, t: &[f64]) -> f64 {
        let k = t.len();
        let tk = t[k - 1];
        let s: f64 = t[..k - 1].iter().map(|&tj| (tk / tj).ln()).sum();
        let kfac = if self.unbiased { k - 2 } else { k - 1 };
        s / kfac as f64
    }

    /// The combined estimate from the per-point inverses `inv` (`1 / m_i`); reorders `inv`.
    pub fn combine(&self, inv: &mut [f64]) -> Result<f64> {
        let n = inv.len() as f64;
        let d = match self.comb {
            Comb::Mle => n / inv.iter().sum::<f64>(),
            Comb::Mean => inv.iter().map(|v| 1.0 / v).sum::<f64>() / n,
            Comb::Median => {
                inv.sort_unstable_by(f64::total_cmp);
                let h = inv.len() / 2;
                // Ascending 1/m is descending m: the median is symmetric in the order.
                if inv.len() % 2 == 1 {
                    1.0 / inv[h]
                } else {
                    0.5 * (1.0 / inv[h - 1] + 1.0 / inv[h])
                }
            }
        };
        if d.is_finite() && d > 0.0 {
            Ok(d)
        } else {
            Err(LoraxError::Numerical(format!(
                "MLE estimate is not finite and positive ({d}): some points have all k \
                 neighbours at the same distance"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_estimate_of_uniform_ball() {
        // Distances T_j = (j / k)^(1/d) are the expected order statistics of a d-ball.
        let (d, k) = (4.0f64, 20usize);
        let t: Vec<f64> = (1..=k)
            .map(|j| (j as f64 / k as f64).powf(1.0 / d))
            .collect();
        let m = 1.0 / Mle::default().inverse_local(&t);
        assert!((m - d).abs() < 0.6, "{m}");
    }

    #[test]
    fn combinations() {
        let est = |comb| Mle {
            comb,
            ..Mle::default()
        };
        let mut inv = vec![0.5, 0.25, 0.125];
        assert!((est(Comb::Mle).combine(&mut inv.clone()).unwrap() - 3.0 / 0.875).abs() < 1e-12);
        assert!((est(Comb::Mean).combine(&mut inv.clone()).unwrap() - 14.0 / 3.0).abs() < 1e-12);
        assert_eq!(est(Comb::Median).combine(&mut inv).unwrap(), 4.0);
        assert!(est(Comb::Mean).combine(&mut [0.0, 1.0]).is_err());
        for (k, unbiased) in [(1, false), (2, true)] {
            let m = Mle {
                k,
                unbiased,
                ..Mle::default()
            };
            assert!(m.validate().is_err(), "k={k} unbiased={unbiased}");
        }
    }
}
