//! Versioned, serialisable allocator state (JSON).

use serde::{Deserialize, Serialize};

use super::schedule::Phases;
use crate::error::{LoraxError, Result};

/// Version written into every serialised state; older or newer versions are refused.
pub const STATE_VERSION: u32 = 1;

/// Settings of AdaLoRA's masking schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdaLoRAConfig {
    /// Warm-up / allocation / final phases.
    pub phases: Phases,
    /// Total rank at the start (sum of the initial ranks).
    pub init_bgt: usize,
    /// Total rank reached in the final phase.
    pub target_bgt: usize,
    /// Masking interval `ΔT` in steps.
    pub delta_t: u64,
    /// No module is masked below this rank.
    pub min_rank: usize,
}

/// Settings of ElaLoRA's reallocation schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ElaLoRAConfig {
    /// Warm-up / allocation / final phases.
    pub phases: Phases,
    /// Ranks moved in the first round, `b0`.
    pub b0: usize,
    /// Most ranks a module may lose (or gain) in one round.
    pub k: usize,
    /// Steps between rounds.
    pub interval: u64,
}

/// Which method drives the allocator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "method")]
pub enum Method {
    /// Cubic-budget masking (baseline).
    AdaLoRA(AdaLoRAConfig),
    /// Prune-and-expand reallocation.
    ElaLoRA(ElaLoRAConfig),
}

impl Method {
    /// The phases of either method.
    pub fn phases(&self) -> &Phases {
        match self {
            Method::AdaLoRA(c) => &c.phases,
            Method::ElaLoRA(c) => &c.phases,
        }
    }
}

/// One adapted module as the allocator sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleState {
    /// Fully qualified module name.
    pub name: String,
    /// Active rank.
    pub rank: usize,
    /// Storage capacity (largest possible rank).
    pub capacity: usize,
}

/// Ranks of every module after one allocation step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Optimizer step of the allocation.
    pub step: u64,
    /// Active rank of every module after it.
    pub ranks: Vec<usize>,
}

/// Everything needed to resume an allocator exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AllocatorState {
    /// Serialisation format version ([`STATE_VERSION`]).
    pub version: u32,
    /// Method and its settings.
    pub method: Method,
    /// Modules in a fixed order.
    pub modules: Vec<ModuleState>,
    /// Last step passed to an allocation, if any.
    pub last_step: Option<u64>,
    /// Per-rank scores received at the last allocation (one vector per module).
    pub last_scores: Vec<Vec<f64>>,
    /// Ranks after every allocation so far.
    pub history: Vec<HistoryEntry>,
    /// Seed of the ChaCha8 stream that seeds new ranks.
    pub seed: u64,
    /// Position of that stream in 32-bit words, split into (high, low) halves.
    pub rng_word_pos: [u64; 2],
}

impl AllocatorState {
    /// Serialises to JSON.
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string(self)
            .map_err(|e| LoraxError::invalid(format!("cannot serialise allocator state: {e}")))
    }

    /// Parses and validates JSON written by [`AllocatorState::to_json`].
    pub fn from_json(text: &str) -> Result<Self> {
        let state: Self = serde_json::from_str(text)
            .map_err(|e| LoraxError::invalid(format!("state: malformed allocator state: {e}")))?;
        if state.version != STATE_VERSION {
            return Err(LoraxError::invalid(format!(
                "state: unsupported allocator state version {} (expected {STATE_VERSION})",
                state.version
            )));
        }
        let phases = state.method.phases();
        Phases::new(phases.total_steps, phases.t_init, phases.t_final)
            .map_err(|e| LoraxError::invalid(format!("state: {e}")))?;
        for m in &state.modules {
            if m.rank > m.capacity {
                return Err(LoraxError::invalid(format!(
                    "state: module {:?} has rank {} above its capacity {}",
                    m.name, m.rank, m.capacity
                )));
            }
        }
        if !state.last_scores.is_empty() && state.last_scores.len() != state.modules.len() {
            return Err(LoraxError::invalid(
                "state: last_scores does not match the number of modules",
            ));
        }
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_roundtrip_bit_exactly() {
        let phases = Phases::new(10, 1, 1).unwrap();
        let cfg = ElaLoRAConfig {
            phases,
            b0: 4,
            k: 2,
            interval: 1,
        };
        let tricky = vec![
            1.963_141_038_618_942_7e-10,
            0.1 + 0.2,
            5.571_446_878_475_200_5e-15,
            f64::MIN_POSITIVE,
            1.0 - f64::EPSILON,
        ];
        let state = AllocatorState {
            version: STATE_VERSION,
            method: Method::ElaLoRA(cfg),
            modules: vec![ModuleState {
                name: "m".into(),
                rank: 5,
                capacity: 8,
            }],
            last_step: Some(3),
            last_scores: vec![tricky.clone()],
            history: vec![],
            seed: u64::MAX,
            rng_word_pos: [1, u64::MAX],
        };
        let back = AllocatorState::from_json(&state.to_json().unwrap()).unwrap();
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&back.last_scores[0]), bits(&tricky));
        assert_eq!(back, state);
    }
}
