//! TwoNN (Facco et al. 2017), as scikit-dimension 0.5's `TwoNN` computes it.

use crate::error::{LoraxError, Result};

/// How the Pareto law of `μ = r2 / r1` is fitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TwoNNMethod {
    /// Least squares through the origin of `−ln(1 − F)` on `ln μ` (skdim's `"linear"`).
    LeastSquares,
    /// Censored maximum likelihood: `(M − 1) / (Σ_{j≤M} ln μ_(j) + (N − M) ln μ_(M))`.
    Mle,
}

impl TwoNNMethod {
    /// Parses `"ls"` (alias `"linear"`, scikit-dimension's name) or `"mle"`.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "ls" | "linear" => Ok(Self::LeastSquares),
            "mle" => Ok(Self::Mle),
            _ => Err(LoraxError::invalid(format!(
                "method must be 'ls' (or 'linear') or 'mle', got '{name}'"
            ))),
        }
    }
}

/// TwoNN settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TwoNN {
    /// Fraction of the largest ratios discarded, in `[0, 1)` (`(0, 1)` for least squares).
    pub discard_fraction: f64,
    /// Fit method.
    pub method: TwoNNMethod,
}

impl Default for TwoNN {
    fn default() -> Self {
        Self {
            discard_fraction: 0.1,
            method: TwoNNMethod::LeastSquares,
        }
    }
}

impl TwoNN {
    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        let f = self.discard_fraction;
        if !(0.0..1.0).contains(&f) {
            return Err(LoraxError::invalid(format!(
                "discard_fraction must be in [0, 1), got {f}"
            )));
        }
        if f == 0.0 && self.method == TwoNNMethod::LeastSquares {
            return Err(LoraxError::invalid(
                "discard_fraction must be > 0 for method='ls' (the largest ratio has F = 1, \
                 so -ln(1 - F) is infinite); use method='mle' for discard_fraction=0",
            ));
        }
        Ok(())
    }

    /// The per-point statistic: `μ_i = r2_i / r1_i` from the first two neighbour distances.
    pub fn ratio(distances: &[f64]) -> f64 {
        distances[1] / distances[0]
    }

    /// The estimate from the ratios `mu` (all finite, ≥ 1); sorts `mu` in place.
    pub fn fit(&self, mu: &mut [f64]) -> Result<f64> {
        let n = mu.len();
        let keep = (n as f64 * (1.0 - self.discard_fraction)).floor() as usize;
        if keep < 2 {
            return Err(LoraxError::invalid(format!(
                "fewer than 2 ratios left after discarding (N = {n}, discard_fraction = {})",
                self.discard_fraction
            )));
        }
        mu.sort_unstable_by(f64::total_cmp);
        let kept = &mu[..keep];
        let d = match self.method {
            TwoNNMethod::LeastSquares => {
                let (mut sxy, mut sxx) = (0.0f64, 0.0f64);
                for (j, &m) in kept.iter().enumerate() {
                    let x = m.ln();
                    let y = -(-((j + 1) as f64) / n as f64).ln_1p();
                    sxy += x * y;
                    sxx += x * x;
                }
                sxy / sxx
            }
            TwoNNMethod::Mle => {
                let s: f64 = kept.iter().map(|m| m.ln()).sum();
                let last = kept[keep - 1].ln();
                (keep - 1) as f64 / (s + (n - keep) as f64 * last)
            }
        };
        if d.is_finite() && d > 0.0 {
            Ok(d)
        } else {
            Err(LoraxError::Numerical(format!(
                "TwoNN estimate is not finite and positive ({d}): the ratios r2/r1 are all 1"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_pareto_shape() {
        // Deterministic Pareto(1, d) quantiles: mu = (1 - q)^(-1/d).
        let d = 7.0;
        let n = 20_000;
        let mut mu: Vec<f64> = (0..n)
            .map(|i| (1.0 - (i as f64 + 0.5) / n as f64).powf(-1.0 / d))
            .collect();
        let ls = TwoNN::default().fit(&mut mu.clone()).unwrap();
        let ml = TwoNN {
            discard_fraction: 0.0,
            method: TwoNNMethod::Mle,
        }
        .fit(&mut mu)
        .unwrap();
        assert!((ls - d).abs() < 0.05, "{ls}");
        assert!((ml - d).abs() < 0.05, "{ml}");
    }

    #[test]
    fn rejects_bad_settings() {
        let with = |discard_fraction, method| TwoNN {
            discard_fraction,
            method,
        };
        for f in [1.0, -0.1, f64::NAN, 0.0] {
            assert!(
                with(f, TwoNNMethod::LeastSquares).validate().is_err(),
                "{f}"
            );
        }
        assert!(with(0.0, TwoNNMethod::Mle).validate().is_ok());
        assert!(TwoNN::default().fit(&mut [1.5]).is_err());
        assert!(TwoNN::default().fit(&mut [1.0; 50]).is_err());
    }
}
