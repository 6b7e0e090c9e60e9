//! Importance bookkeeping of SVD-form adapters on the CPU: the element-wise EMAs of AdaLoRA's
//! sensitivity and uncertainty and the per-rank scores, in one pass over each tensor
//! (docs/allocators.md).
//!
//! Per element of a tensor `p` with gradient `g`, for `w₁ = 1 − β₁` and `w₂ = 1 − β₂`:
//!
//! ```text
//! I = |p · g|;   Ī ← lerp(Ī, I, w₁);   Ū ← lerp(Ū, |I − Ī|, w₂)
//! ```
//!
//! with `lerp(a, b, w) = a + w (b − a)` for `w < ½` and `b − (b − a)(1 − w)` otherwise (the
//! rounding of `torch.lerp`). A scored tensor then adds, at each rank slot `j` of its rank
//! axis, the mean of `Ī · Ū` over the other axis to `scores[offset + j]`; tensors are added
//! in the order given, so a module's `A`, `E` and `B` share its slots.

use rayon::prelude::*;

use crate::error::{LoraxError, Result};

/// Elements above which the step runs on several threads (below it, one thread is faster
/// than waking the pool).
const PARALLEL_ELEMENTS: usize = 1 << 18;

/// Where a tensor's rank axis lies, if it is scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RankAxis {
    /// Not scored (its EMAs are still updated).
    None,
    /// Rows are rank slots (`lora_A`, `capacity × in`; a 1-D `lora_E` is `capacity × 1`).
    Rows,
    /// Columns are rank slots (`lora_B`, `out × capacity`).
    Cols,
}

/// One adapter tensor's buffers for one step, all row-major `rows × cols` float32.
#[derive(Debug)]
pub struct ImportanceTensor<'a> {
    /// The parameter `p`.
    pub param: &'a [f32],
    /// Its gradient `g`.
    pub grad: &'a [f32],
    /// Smoothed sensitivity `Ī`, updated in place.
    pub ipt: &'a mut [f32],
    /// Uncertainty `Ū`, updated in place.
    pub unc: &'a mut [f32],
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
    /// Which axis holds the rank slots.
    pub rank_axis: RankAxis,
    /// First slot of this tensor's module in `scores`.
    pub score_offset: usize,
}

impl ImportanceTensor<'_> {
    fn ranks(&self) -> usize {
        match self.rank_axis {
            RankAxis::None => 0,
            RankAxis::Rows => self.rows,
            RankAxis::Cols => self.cols,
        }
    }

    fn check(&self, index: usize, n_scores: usize) -> Result<()> {
        let len = self.rows.checked_mul(self.cols);
        let lens = [
            self.param.len(),
            self.grad.len(),
            self.ipt.len(),
            self.unc.len(),
        ];
        if lens.iter().any(|&l| Some(l) != len) {
            return Err(LoraxError::invalid(format!(
                "tensor {index}: shape ({}, {}) but buffers of {lens:?} elements",
                self.rows, self.cols
            )));
        }
        if self.score_offset.saturating_add(self.ranks()) > n_scores {
            return Err(LoraxError::invalid(format!(
                "tensor {index}: score slots [{}, {}) run past the {n_scores} scores",
                self.score_offset,
                self.score_offset.saturating_add(self.ranks())
            )));
        }
        Ok(())
    }

    /// The EMA step, then this tensor's per-rank means of `Ī · Ū` (summed in `f64`) from the
    /// new EMAs while they are still in cache; compiled for the machine's vector instructions
    /// (`pulp` picks AVX2/AVX-512 at run time), `torch.lerp`'s branch taken once per tensor.
    fn update(&mut self, w1: f32, w2: f32) -> Vec<f32> {
        pulp::Arch::new().dispatch(|| {
            let (p, g) = (self.param, self.grad);
            let (a, u) = (&mut *self.ipt, &mut *self.unc);
            match (w1 < 0.5, w2 < 0.5) {
                (true, true) => ema::<true, true>(p, g, a, u, w1, w2),
                (true, false) => ema::<true, false>(p, g, a, u, w1, w2),
                (false, true) => ema::<false, true>(p, g, a, u, w1, w2),
                (false, false) => ema::<false, false>(p, g, a, u, w1, w2),
            }
            self.rank_means()
        })
    }

    #[inline(always)]
    fn rank_means(&self) -> Vec<f32> {
        let cols = self.cols.max(1);
        let rows = self.ipt.chunks(cols).zip(self.unc.chunks(cols));
        let (sums, over): (Vec<f64>, usize) = match self.rank_axis {
            RankAxis::None => return Vec::new(),
            RankAxis::Rows => (rows.map(|(a, u)| dot(a, u)).collect(), self.cols),
            RankAxis::Cols => {
                let mut sums = vec![0.0f64; self.cols];
                for (a, u) in rows {
                    for ((s, &a), &u) in sums.iter_mut().zip(a).zip(u) {
                        *s += f64::from(a) * f64::from(u);
                    }
                }
                (sums, self.rows)
            }
        };
        sums.iter().map(|&s| (s / over as f64) as f32).collect()
    }
}

#[inline(always)]
fn ema<const LOW1: bool, const LOW2: bool>(
    p: &[f32],
    g: &[f32],
    ipt: &mut [f32],
    unc: &mut [f32],
    w1: f32,
    w2: f32,
) {
    for (((&p, &g), a), u) in p.iter().zip(g).zip(ipt.iter_mut()).zip(unc.iter_mut()) {
        let current = (p * g).abs();
        *a = lerp::<LOW1>(*a, current, w1);
        *u = lerp::<LOW2>(*u, (current - *a).abs(), w2);
    }
}

/// `Σ a·b` in `f64`, over eight independent partial sums (so that it vectorises).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f64 {
    const LANES: usize = 8;
    let mut acc = [0.0f64; LANES];
    let (a8, b8) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f64 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(&x, &y)| f64::from(x) * f64::from(y))
        .sum();
    for (x, y) in a8.zip(b8) {
        for l in 0..LANES {
            acc[l] += f64::from(x[l]) * f64::from(y[l]);
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// `torch.lerp`'s formula in float32 (`LOW`: `weight < ½`).
#[inline(always)]
fn lerp<const LOW: bool>(start: f32, end: f32, weight: f32) -> f32 {
    if LOW {
        start + weight * (end - start)
    } else {
        end - (end - start) * (1.0 - weight)
    }
}

/// One importance step over `tensors`, then `scores` (zeroed first) from the new EMAs.
///
/// Errors (nothing is written then): `beta1`/`beta2` outside (0, 1), a buffer whose length is
/// not `rows · cols`, score slots past the end of `scores`.
pub fn update_importance(
    tensors: &mut [ImportanceTensor<'_>],
    beta1: f64,
    beta2: f64,
    scores: &mut [f32],
) -> Result<()> {
    for (name, beta) in [("beta1", beta1), ("beta2", beta2)] {
        if !(beta > 0.0 && beta < 1.0) {
            return Err(LoraxError::invalid(format!(
                "{name} must lie in (0, 1), got {beta}"
            )));
        }
    }
    for (i, t) in tensors.iter().enumerate() {
        t.check(i, scores.len())?;
    }
    let (w1, w2) = ((1.0 - beta1) as f32, (1.0 - beta2) as f32);
    let elements: usize = tensors.iter().map(|t| t.param.len()).sum();
    let means: Vec<Vec<f32>> = if elements >= PARALLEL_ELEMENTS {
        tensors.par_iter_mut().map(|t| t.update(w1, w2)).collect()
    } else {
        tensors.iter_mut().map(|t| t.update(w1, w2)).collect()
    };
    scores.fill(0.0);
    for (t, m) in tensors.iter().zip(&means) {
        for (s, &v) in scores[t.score_offset..].iter_mut().zip(m) {
            *s += v;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The formulas element by element in f64, as an oracle.
    fn oracle(
        p: &[f32],
        g: &[f32],
        a: &[f32],
        u: &[f32],
        b1: f64,
        b2: f64,
    ) -> (Vec<f64>, Vec<f64>) {
        let mut na = Vec::new();
        let mut nu = Vec::new();
        for i in 0..p.len() {
            let cur = (f64::from(p[i]) * f64::from(g[i])).abs();
            let ai = b1 * f64::from(a[i]) + (1.0 - b1) * cur;
            na.push(ai);
            nu.push(b2 * f64::from(u[i]) + (1.0 - b2) * (cur - ai).abs());
        }
        (na, nu)
    }

    fn ramp(n: usize, scale: f32, shift: f32) -> Vec<f32> {
        (0..n)
            .map(|i| ((i as f32 * 0.37 + shift).sin()) * scale)
            .collect()
    }

    #[test]
    fn matches_the_formulas_and_the_per_rank_means() {
        let (cap, inp, out) = (3, 5, 4);
        let shapes = [
            (cap, inp, RankAxis::Rows),
            (cap, 1, RankAxis::Rows),
            (out, cap, RankAxis::Cols),
        ];
        let mut bufs: Vec<[Vec<f32>; 4]> = shapes
            .iter()
            .enumerate()
            .map(|(k, &(r, c, _))| {
                let n = r * c;
                let s = k as f32;
                [
                    ramp(n, 1.0, s),
                    ramp(n, 2.0, s + 1.0),
                    ramp(n, 0.1, s + 2.0).iter().map(|v| v.abs()).collect(),
                    ramp(n, 0.05, s + 3.0).iter().map(|v| v.abs()).collect(),
                ]
            })
            .collect();
        let want: Vec<(Vec<f64>, Vec<f64>)> = bufs
            .iter()
            .map(|[p, g, a, u]| oracle(p, g, a, u, 0.85, 0.9))
            .collect();
        let mut scores = vec![7.0f32; 2 + cap];
        {
            let mut tensors: Vec<ImportanceTensor<'_>> = bufs
                .iter_mut()
                .zip(&shapes)
                .map(
                    |([p, g, a, u], &(rows, cols, rank_axis))| ImportanceTensor {
                        param: p,
                        grad: g,
                        ipt: a,
                        unc: u,
                        rows,
                        cols,
                        rank_axis,
                        score_offset: 2,
                    },
                )
                .collect();
            update_importance(&mut tensors, 0.85, 0.9, &mut scores).unwrap();
        }
        let mut want_scores = vec![0.0f64; 2 + cap];
        for ((&(rows, cols, axis), (wa, wu)), [_, _, ga, gu]) in shapes.iter().zip(&want).zip(&bufs)
        {
            for i in 0..rows * cols {
                assert!((f64::from(ga[i]) - wa[i]).abs() <= 1e-6 * wa[i].abs().max(1e-6));
                assert!((f64::from(gu[i]) - wu[i]).abs() <= 1e-6 * wu[i].abs().max(1e-6));
                let s = wa[i] * wu[i];
                match axis {
                    RankAxis::Rows => want_scores[2 + i / cols] += s / cols as f64,
                    RankAxis::Cols => want_scores[2 + i % cols] += s / rows as f64,
                    RankAxis::None => {}
                }
            }
        }
        assert_eq!(&scores[..2], [0.0, 0.0]);
        for (got, want) in scores.iter().zip(&want_scores) {
            assert!(
                (f64::from(*got) - want).abs() <= 1e-5 * want.abs().max(1e-12),
                "{got} vs {want}"
            );
        }
    }

    #[test]
    fn bad_input_is_an_error_and_writes_nothing() {
        let (p, g) = (vec![1.0f32; 6], vec![1.0f32; 6]);
        let (mut a, mut u) = (vec![0.0f32; 6], vec![0.0f32; 5]);
        let mut scores = vec![3.0f32; 2];
        let mut tensors = [ImportanceTensor {
            param: &p,
            grad: &g,
            ipt: &mut a,
            unc: &mut u,
            rows: 2,
            cols: 3,
            rank_axis: RankAxis::Rows,
            score_offset: 0,
        }];
        let err = update_importance(&mut tensors, 0.85, 0.85, &mut scores).unwrap_err();
        assert!(err.to_string().contains("buffers of"), "{err}");
        assert!(update_importance(&mut tensors, 1.0, 0.85, &mut scores).is_err());
        let mut u6 = vec![0.0f32; 6];
        tensors[0].unc = &mut u6;
        tensors[0].score_offset = 1;
        let err = update_importance(&mut tensors, 0.85, 0.85, &mut scores).unwrap_err();
        assert!(err.to_string().contains("run past"), "{err}");
        assert_eq!(scores, [3.0, 3.0]);
        assert!(tensors[0].ipt.iter().all(|&v| v == 0.0));
    }
}
