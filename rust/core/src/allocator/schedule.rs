//! Budget schedules shared by AdaLoRA and ElaLoRA (docs/allocators.md).
//!
//! Steps are 1-based optimizer steps `t`; `T` is the total number of steps,
//! `t_init` the warm-up without allocation and `t_final` the final steps in
//! which ranks are frozen.

use serde::{Deserialize, Serialize};

use crate::error::{LoraxError, Result};

/// The three phases of an adaptive-rank run: warm-up, allocation, final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Phases {
    /// Total number of optimizer steps `T`.
    pub total_steps: u64,
    /// Warm-up steps during which ranks never change.
    pub t_init: u64,
    /// Final steps during which ranks never change and scores stop updating.
    pub t_final: u64,
}

impl Phases {
    /// Validates `t_init + t_final < total_steps`.
    pub fn new(total_steps: u64, t_init: u64, t_final: u64) -> Result<Self> {
        if total_steps == 0 {
            return Err(LoraxError::invalid("total_steps must be positive"));
        }
        match t_init.checked_add(t_final) {
            Some(sum) if sum < total_steps => Ok(Self {
                total_steps,
                t_init,
                t_final,
            }),
            _ => Err(LoraxError::invalid(format!(
                "t_init + t_final must be smaller than total_steps, got t_init={t_init}, \
                 t_final={t_final}, total_steps={total_steps}"
            ))),
        }
    }

    /// Length of the allocation phase, `T - t_final - t_init` (at least 1).
    fn span(&self) -> u64 {
        self.total_steps - self.t_final - self.t_init
    }

    /// First step of the final phase is `T - t_final + 1`; true from there on.
    pub fn in_final(&self, t: u64) -> bool {
        t > self.total_steps - self.t_final
    }

    /// Importance scores are updated while `t < T - t_final`.
    pub fn updates_scores(&self, t: u64) -> bool {
        t < self.total_steps - self.t_final
    }

    /// Progress `p = clip((t - t_init) / (T - t_final - t_init), 0, 1)`.
    pub fn progress(&self, t: u64) -> f64 {
        if t <= self.t_init {
            return 0.0;
        }
        ((t - self.t_init) as f64 / self.span() as f64).min(1.0)
    }
}

/// AdaLoRA's cubic total budget `b(t)`: `init_bgt` up to `t_init`, `target_bgt`
/// in the final phase, and in between
/// `int((init - target) * (1 - (t - t_init) / (T - t_final - t_init))^3 + target)`
/// (evaluated in the same order as PEFT's `RankAllocator.budget_schedule`).
pub fn adalora_budget(t: u64, phases: &Phases, init_bgt: usize, target_bgt: usize) -> usize {
    if t <= phases.t_init {
        init_bgt
    } else if phases.in_final(t) {
        target_bgt
    } else {
        let mul = 1.0 - (t - phases.t_init) as f64 / phases.span() as f64;
        let diff = init_bgt as f64 - target_bgt as f64;
        // Truncation toward zero, as Python's int().
        (diff * mul.powf(3.0) + target_bgt as f64) as usize
    }
}

/// ElaLoRA's number of ranks moved per round, `b = round(b0 (1 - p^3))`
/// with ties rounded to even (Python's `round`).
pub fn elalora_budget(t: u64, phases: &Phases, b0: usize) -> usize {
    let p = phases.progress(t);
    let b = (b0 as f64 * (1.0 - p.powf(3.0))).round_ties_even();
    b.max(0.0) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_reject_empty_allocation_phase() {
        assert!(Phases::new(10, 5, 5).is_err());
        assert!(Phases::new(0, 0, 0).is_err());
        assert!(Phases::new(u64::MAX, u64::MAX, 1).is_err());
        assert!(Phases::new(11, 5, 5).is_ok());
    }

    #[test]
    fn adalora_budget_hand_sequence() {
        // T = 10, t_init = 2, t_final = 2, init 12, target 4: span 6.
        let ph = Phases::new(10, 2, 2).unwrap();
        let got: Vec<usize> = (0..=10).map(|t| adalora_budget(t, &ph, 12, 4)).collect();
        // t=3: 8*(5/6)^3+4 = 8.63 -> 8; t=4: 8*(4/6)^3+4 = 6.37 -> 6;
        // t=5: 8*(1/2)^3+4 = 5; t=6: 8*(1/3)^3+4 = 4.296 -> 4; t=7: 4.037 -> 4; t=8: 4.
        assert_eq!(got, vec![12, 12, 12, 8, 6, 5, 4, 4, 4, 4, 4]);
    }

    #[test]
    fn elalora_budget_hand_sequence() {
        // T = 10, t_init = 2, t_final = 2, b0 = 4.
        let ph = Phases::new(10, 2, 2).unwrap();
        let got: Vec<usize> = (0..=10).map(|t| elalora_budget(t, &ph, 4)).collect();
        // p = 1/6: 4*(1-1/216) = 3.98 -> 4; p = 1/3: 3.85 -> 4; p = 1/2: 3.5 -> 4 (even);
        // p = 2/3: 2.81 -> 3; p = 5/6: 1.69 -> 2; p = 1: 0.
        assert_eq!(got, vec![4, 4, 4, 4, 4, 4, 3, 2, 0, 0, 0]);
    }
}
