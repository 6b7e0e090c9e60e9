//! Versioned, serialisable allocator state (JSON).

use serde::{Deserialize, Serialize};

use super::schedule::Phases;
use crate::error::{Context, LoraxError, Result};

/// Version written into every serialised state; older or newer versions are refused.
pub const STATE_VERSION: u32 = 1;

/// Largest storage capacity (rank) of one module: far above any adapter's rank, small enough
/// that a permutation of the slots always fits in memory.
pub const MAX_CAPACITY: usize = 1 << 20;

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

    /// Parses and validates JSON written by [`AllocatorState::to_json`]; errors start with
    /// `state:`.
    pub fn from_json(text: &str) -> Result<Self> {
        let mut reader = serde_json::Deserializer::from_str(text);
        let state: Self = serde_path_to_error::deserialize(&mut reader)
            .map_err(|e| {
                let field = e.path().to_string();
                let at = if field == "." {
                    String::new()
                } else {
                    format!("{field}: ")
                };
                LoraxError::invalid(format!("{at}malformed allocator state: {}", e.into_inner()))
            })
            .context("state")?;
        reader
            .end()
            .map_err(|e| LoraxError::invalid(format!("malformed allocator state: {e}")))
            .context("state")?;
        state.validate().context("state")?;
        Ok(state)
    }

    /// Checks every invariant the allocator relies on; the constructor and the deserialiser
    /// both call it, so a loaded state is held to the same rules as constructor arguments.
    /// Each error names the offending field.
    pub fn validate(&self) -> Result<()> {
        if self.version != STATE_VERSION {
            return Err(LoraxError::invalid(format!(
                "version: unsupported allocator state version {} (expected {STATE_VERSION})",
                self.version
            )));
        }
        let ph = self.method.phases();
        Phases::new(ph.total_steps, ph.t_init, ph.t_final)?;
        self.validate_modules()?;
        let n = self.modules.len();
        match &self.method {
            Method::AdaLoRA(c) => {
                positive(c.delta_t, "delta_t")?;
                let total: usize = self.modules.iter().map(|m| m.rank).sum();
                if total > c.init_bgt {
                    return Err(LoraxError::invalid(format!(
                        "init_bgt: the modules' total rank {total} exceeds the initial budget {}",
                        c.init_bgt
                    )));
                }
                let floor = c.min_rank.checked_mul(n);
                let within =
                    matches!(floor, Some(f) if f <= c.target_bgt && c.target_bgt <= c.init_bgt);
                if !within {
                    return Err(LoraxError::invalid(format!(
                        "target_total must lie between min_rank * modules ({} * {n}) and the \
                         initial total rank ({}), got {}",
                        c.min_rank, c.init_bgt, c.target_bgt
                    )));
                }
            }
            Method::ElaLoRA(c) => {
                positive(c.interval, "interval")?;
                positive(c.k as u64, "k")?;
                if let Some(m) = self.modules.iter().find(|m| m.rank == 0) {
                    return Err(LoraxError::invalid(format!(
                        "ranks: module {:?} has rank 0; ElaLoRA keeps every module at rank >= 1",
                        m.name
                    )));
                }
            }
        }
        self.validate_records()
    }

    fn validate_modules(&self) -> Result<()> {
        if self.modules.is_empty() {
            return Err(LoraxError::invalid(
                "names: at least one module is required",
            ));
        }
        let mut names: Vec<&str> = self.modules.iter().map(|m| m.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(LoraxError::invalid(format!(
                "names: module names must be unique, got {:?} twice",
                w[0]
            )));
        }
        for m in &self.modules {
            if m.capacity == 0 || m.capacity > MAX_CAPACITY {
                return Err(LoraxError::invalid(format!(
                    "capacities: module {:?} has capacity {}, expected 1 <= capacity <= \
                     {MAX_CAPACITY}",
                    m.name, m.capacity
                )));
            }
            if m.rank > m.capacity {
                return Err(LoraxError::invalid(format!(
                    "ranks: module {:?} has rank {}, expected rank <= capacity ({})",
                    m.name, m.rank, m.capacity
                )));
            }
        }
        Ok(())
    }

    /// `last_scores`, `history` and `last_step` agree with the modules and with each other.
    fn validate_records(&self) -> Result<()> {
        let n = self.modules.len();
        if !self.last_scores.is_empty() {
            if self.last_scores.len() != n {
                return Err(LoraxError::invalid(format!(
                    "last_scores: expected one vector per module ({n}), got {}",
                    self.last_scores.len()
                )));
            }
            for (m, s) in self.modules.iter().zip(&self.last_scores) {
                if s.len() > m.capacity || s.iter().any(|v| !v.is_finite()) {
                    return Err(LoraxError::invalid(format!(
                        "last_scores: module {:?} has {} scores for capacity {}, or a NaN or \
                         infinite one",
                        m.name,
                        s.len(),
                        m.capacity
                    )));
                }
            }
        }
        let mut previous: Option<u64> = None;
        for h in &self.history {
            if previous.is_some_and(|p| h.step <= p) {
                return Err(LoraxError::invalid(format!(
                    "history: steps must increase, got {} after {}",
                    h.step,
                    previous.unwrap_or_default()
                )));
            }
            let fits = h.ranks.len() == n
                && h.ranks
                    .iter()
                    .zip(&self.modules)
                    .all(|(&r, m)| r <= m.capacity);
            if !fits {
                return Err(LoraxError::invalid(format!(
                    "history: the entry of step {} needs one rank <= capacity per module ({n})",
                    h.step
                )));
            }
            previous = Some(h.step);
        }
        if self.last_step != previous {
            return Err(LoraxError::invalid(format!(
                "last_step: expected the step of the last history entry ({previous:?}), got {:?}",
                self.last_step
            )));
        }
        Ok(())
    }
}

fn positive(value: u64, name: &str) -> Result<()> {
    if value == 0 {
        return Err(LoraxError::invalid(format!(
            "{name} must be positive, got 0"
        )));
    }
    Ok(())
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
            history: vec![HistoryEntry {
                step: 3,
                ranks: vec![5],
            }],
            seed: u64::MAX,
            rng_word_pos: [1, u64::MAX],
        };
        let text = state.to_json().unwrap();
        let back = AllocatorState::from_json(&text).unwrap();
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&back.last_scores[0]), bits(&tricky));
        assert_eq!(back, state);
        let bad = text.replace("\"rank\":5", "\"rank\":-1");
        let err = AllocatorState::from_json(&bad).unwrap_err().to_string();
        assert!(
            err.starts_with("state: modules[0].rank: malformed"),
            "{err}"
        );
    }
}
