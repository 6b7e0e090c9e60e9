//! Rank allocation for SVD-form adapters: AdaLoRA's masking and ElaLoRA's
//! prune-and-expand rounds (docs/allocators.md).
//!
//! The allocator holds only small host-side state: per-module ranks and
//! capacities, the last per-rank scores and a seeded RNG. It decides; the
//! Python side moves the tensors. A decision for module `m` is a
//! [`ModulePlan`]: a permutation of its storage slots that puts the surviving
//! ranks first (in their old order), followed by the slots that are pruned or
//! free; the first `n_keep` slots keep their values, slots `n_keep..new_rank`
//! receive new ranks, and slots from `new_rank` on are inactive.

pub mod adalora;
pub mod elalora;
pub mod importance;
pub mod schedule;
pub mod slots;
pub mod state;

use std::cmp::Ordering;

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{LoraxError, Result};
pub use schedule::{adalora_budget, elalora_budget, Phases};
pub use state::{
    AdaLoRAConfig, AllocatorState, ElaLoRAConfig, HistoryEntry, Method, ModuleState, MAX_CAPACITY,
    STATE_VERSION,
};

/// A scored rank: the unit of every global selection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Candidate {
    pub score: f64,
    pub module: usize,
    pub slot: usize,
}

impl Candidate {
    /// Lowest score first; ties by module, then slot.
    pub fn cmp_ascending(a: &Self, b: &Self) -> Ordering {
        a.score
            .total_cmp(&b.score)
            .then(a.module.cmp(&b.module))
            .then(a.slot.cmp(&b.slot))
    }

    /// Highest score first; ties by module, then slot.
    pub fn cmp_descending(a: &Self, b: &Self) -> Ordering {
        b.score
            .total_cmp(&a.score)
            .then(a.module.cmp(&b.module))
            .then(a.slot.cmp(&b.slot))
    }
}

/// The decision for one module at one allocation step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModulePlan {
    /// Permutation of the module's `capacity` slots: new slot `j` takes old slot `perm[j]`.
    pub perm: Vec<usize>,
    /// Slots `0..n_keep` (after permuting) hold surviving ranks.
    pub n_keep: usize,
    /// Active rank after the step; slots `n_keep..new_rank` are new ranks.
    pub new_rank: usize,
    /// Seed for initialising this module's new ranks.
    pub seed: u64,
}

impl ModulePlan {
    /// Builds the permutation that keeps the unpruned active slots first.
    fn new(rank: usize, capacity: usize, pruned: &[usize], grown: usize, seed: u64) -> Self {
        let mut is_pruned = vec![false; rank];
        for &s in pruned {
            is_pruned[s] = true;
        }
        let mut perm: Vec<usize> = (0..rank).filter(|&s| !is_pruned[s]).collect();
        let n_keep = perm.len();
        perm.extend_from_slice(pruned);
        perm.extend(rank..capacity);
        Self {
            perm,
            n_keep,
            new_rank: n_keep + grown,
            seed,
        }
    }
}

/// Host-side rank allocator for AdaLoRA or ElaLoRA.
#[derive(Debug, Clone)]
pub struct Allocator {
    state: AllocatorState,
    rng: ChaCha8Rng,
}

impl Allocator {
    /// Creates an allocator over modules with the given names, initial ranks and capacities.
    ///
    /// The arguments are checked by [`AllocatorState::validate`], the same function that checks
    /// a deserialised state, plus the rules of a fresh start (every initial rank `>= 1`).
    pub fn new(
        method: Method,
        names: Vec<String>,
        ranks: Vec<usize>,
        capacities: Vec<usize>,
        seed: u64,
    ) -> Result<Self> {
        if ranks.len() != names.len() || capacities.len() != names.len() {
            return Err(LoraxError::invalid(format!(
                "ranks and capacities must have one entry per module ({}), got {} and {}",
                names.len(),
                ranks.len(),
                capacities.len()
            )));
        }
        if let Some(i) = ranks.iter().position(|&r| r == 0) {
            return Err(LoraxError::invalid(format!(
                "ranks: module {:?} has rank 0, expected 1 <= rank <= capacity ({})",
                names[i], capacities[i]
            )));
        }
        let method = match method {
            Method::AdaLoRA(c) => Method::AdaLoRA(AdaLoRAConfig {
                init_bgt: ranks.iter().fold(0usize, |a, &r| a.saturating_add(r)),
                ..c
            }),
            other => other,
        };
        let modules = names
            .into_iter()
            .zip(ranks)
            .zip(capacities)
            .map(|((name, rank), capacity)| ModuleState {
                name,
                rank,
                capacity,
            })
            .collect();
        let state = AllocatorState {
            version: STATE_VERSION,
            method,
            modules,
            last_step: None,
            last_scores: Vec::new(),
            history: Vec::new(),
            seed,
            rng_word_pos: [0, 0],
        };
        state.validate()?;
        Ok(Self {
            state,
            rng: ChaCha8Rng::seed_from_u64(seed),
        })
    }

    /// The full state (for inspection and serialisation).
    pub fn state(&self) -> &AllocatorState {
        &self.state
    }

    /// Active rank of every module, in construction order.
    pub fn ranks(&self) -> Vec<usize> {
        self.state.modules.iter().map(|m| m.rank).collect()
    }

    /// Whether importance scores should be updated at step `t`.
    pub fn updates_scores(&self, t: u64) -> bool {
        self.state.method.phases().updates_scores(t)
    }

    /// The method's budget at step `t`: AdaLoRA's total rank, ElaLoRA's ranks moved per round.
    pub fn budget(&self, t: u64) -> usize {
        match &self.state.method {
            Method::AdaLoRA(c) => adalora_budget(t, &c.phases, c.init_bgt, c.target_bgt),
            Method::ElaLoRA(c) => elalora_budget(t, &c.phases, c.b0),
        }
    }

    /// Whether step `t` is an allocation step (scores must then be passed to [`Self::allocate`]).
    pub fn is_allocation_step(&self, t: u64) -> bool {
        match &self.state.method {
            Method::AdaLoRA(c) => {
                let total: usize = self.state.modules.iter().map(|m| m.rank).sum();
                let due = t % c.delta_t == 0 || c.phases.in_final(t);
                t > c.phases.t_init && t <= c.phases.total_steps && due && total > self.budget(t)
            }
            Method::ElaLoRA(c) => {
                t > c.phases.t_init
                    && !c.phases.in_final(t)
                    && (t - c.phases.t_init) % c.interval == 0
                    && self.budget(t) > 0
            }
        }
    }

    /// Takes the allocation decision at step `t` from one per-rank score vector per module.
    pub fn allocate(&mut self, t: u64, scores: &[Vec<f64>]) -> Result<Vec<ModulePlan>> {
        if !self.is_allocation_step(t) {
            return Err(LoraxError::invalid(format!(
                "step {t} is not an allocation step"
            )));
        }
        if let Some(last) = self.state.last_step.filter(|&last| t <= last) {
            return Err(LoraxError::invalid(format!(
                "t must be after the last allocation step ({last}), got {t}"
            )));
        }
        if scores.len() != self.state.modules.len() {
            return Err(LoraxError::invalid(format!(
                "scores: expected {} vectors (one per module), got {}",
                self.state.modules.len(),
                scores.len()
            )));
        }
        for (m, s) in self.state.modules.iter().zip(scores) {
            if s.len() != m.rank {
                return Err(LoraxError::invalid(format!(
                    "scores: module {:?} has rank {} but {} scores were given",
                    m.name,
                    m.rank,
                    s.len()
                )));
            }
            if s.iter().any(|v| !v.is_finite()) {
                return Err(LoraxError::invalid(format!(
                    "scores: module {:?} has a NaN or infinite score",
                    m.name
                )));
            }
        }
        let (pruned, grown) = match &self.state.method {
            Method::AdaLoRA(c) => {
                let total: usize = self.state.modules.iter().map(|m| m.rank).sum();
                let n_mask = total - self.budget(t);
                let pruned = adalora::mask_plan(scores, c.min_rank, n_mask);
                (pruned, vec![0; scores.len()])
            }
            Method::ElaLoRA(c) => {
                let capacities: Vec<usize> =
                    self.state.modules.iter().map(|m| m.capacity).collect();
                let plan = elalora::realloc_plan(scores, &capacities, self.budget(t), c.k);
                (plan.pruned, plan.grown)
            }
        };
        let mut plans = Vec::with_capacity(scores.len());
        for (i, m) in self.state.modules.iter_mut().enumerate() {
            let seed = self.rng.next_u64();
            let plan = ModulePlan::new(m.rank, m.capacity, &pruned[i], grown[i], seed);
            m.rank = plan.new_rank;
            plans.push(plan);
        }
        let pos = self.rng.get_word_pos();
        self.state.rng_word_pos = [(pos >> 64) as u64, pos as u64];
        self.state.last_step = Some(t);
        self.state.last_scores = scores.to_vec();
        let ranks = self.ranks();
        self.state.history.push(HistoryEntry { step: t, ranks });
        Ok(plans)
    }

    /// Serialises the state to JSON.
    pub fn to_json(&self) -> Result<String> {
        self.state.to_json()
    }

    /// Restores an allocator, RNG position included, from [`Self::to_json`]'s output.
    pub fn from_json(text: &str) -> Result<Self> {
        let state = AllocatorState::from_json(text)?;
        let mut rng = ChaCha8Rng::seed_from_u64(state.seed);
        let [hi, lo] = state.rng_word_pos;
        rng.set_word_pos(((hi as u128) << 64) | lo as u128);
        Ok(Self { state, rng })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ela_method() -> Method {
        Method::ElaLoRA(ElaLoRAConfig {
            phases: Phases::new(100, 10, 10).unwrap(),
            b0: 4,
            k: 2,
            interval: 5,
        })
    }

    fn ada_cfg() -> AdaLoRAConfig {
        AdaLoRAConfig {
            phases: Phases::new(10, 2, 2).unwrap(),
            init_bgt: 0,
            target_bgt: 4,
            delta_t: 1,
            min_rank: 0,
        }
    }

    fn ela(ranks: Vec<usize>, cap: usize) -> Allocator {
        let n = ranks.len();
        let names = (0..n).map(|i| format!("m{i}")).collect();
        Allocator::new(ela_method(), names, ranks, vec![cap; n], 7).unwrap()
    }

    #[test]
    fn rejects_bad_construction() {
        let m = ela_method();
        let names = || vec!["a".to_string(), "b".to_string()];
        assert!(Allocator::new(m, names(), vec![1], vec![2, 2], 0).is_err());
        assert!(Allocator::new(m, names(), vec![0, 1], vec![2, 2], 0).is_err());
        assert!(Allocator::new(m, names(), vec![3, 1], vec![2, 2], 0).is_err());
        let dup = vec!["a".to_string(), "a".to_string()];
        assert!(Allocator::new(m, dup, vec![1, 1], vec![2, 2], 0).is_err());
    }

    #[test]
    fn allocation_steps_follow_schedule() {
        let a = ela(vec![4, 4], 8);
        let steps: Vec<u64> = (0..=100).filter(|&t| a.is_allocation_step(t)).collect();
        // t > 10, (t - 10) % 5 == 0, t <= 90 and b(t) > 0 (b(90) = 0).
        assert_eq!(steps, (15..=85).step_by(5).collect::<Vec<_>>());
    }

    #[test]
    fn round_conserves_and_resumes_exactly() {
        let mut a = ela(vec![4, 3, 1], 8);
        let scores = vec![vec![0.4, 0.1, 0.7, 0.2], vec![0.3, 0.9, 0.05], vec![0.5]];
        let json = a.to_json().unwrap();
        let plans = a.allocate(15, &scores).unwrap();
        assert_eq!(a.ranks().iter().sum::<usize>(), 8);
        assert_eq!(a.ranks()[2], 1);
        for p in &plans {
            let mut sorted = p.perm.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..8).collect::<Vec<_>>());
        }
        let mut b = Allocator::from_json(&json).unwrap();
        assert_eq!(b.allocate(15, &scores).unwrap(), plans);
        let mid = a.to_json().unwrap();
        let mut c = Allocator::from_json(&mid).unwrap();
        let s2 = vec![vec![0.1; a.ranks()[0]], vec![0.2; a.ranks()[1]], vec![0.3]];
        assert_eq!(a.allocate(20, &s2).unwrap(), c.allocate(20, &s2).unwrap());
        assert_eq!(a.to_json().unwrap(), c.to_json().unwrap());
    }

    #[test]
    fn a_step_is_allocated_at_most_once() {
        // The Python driver turns a repeated step into a no-op before it reaches here; the
        // allocator itself refuses a second round at the same (or an earlier) step and leaves
        // its state untouched.
        let mut a = ela(vec![4, 3, 1], 8);
        let scores = vec![vec![0.4, 0.1, 0.7, 0.2], vec![0.3, 0.9, 0.05], vec![0.5]];
        a.allocate(15, &scores).unwrap();
        let after = a.to_json().unwrap();
        let again: Vec<Vec<f64>> = a.ranks().iter().map(|&r| vec![0.5; r]).collect();
        for t in [15, 10, 0] {
            assert!(a.allocate(t, &again).is_err(), "t={t}");
            assert_eq!(a.to_json().unwrap(), after, "t={t}");
        }
        // The next round works, and repeating it is refused with the step named.
        assert_eq!(a.allocate(20, &again).unwrap().len(), 3);
        let again: Vec<Vec<f64>> = a.ranks().iter().map(|&r| vec![0.5; r]).collect();
        let e = a.allocate(20, &again).unwrap_err();
        assert!(
            e.to_string()
                .contains("after the last allocation step (20), got 20"),
            "{e}"
        );
    }

    #[test]
    fn rejects_bad_scores_and_state() {
        let mut a = ela(vec![2, 2], 4);
        assert!(a.allocate(16, &[vec![0.0; 2], vec![0.0; 2]]).is_err());
        assert!(a.allocate(15, &[vec![0.0; 2]]).is_err());
        assert!(a.allocate(15, &[vec![0.0; 3], vec![0.0; 2]]).is_err());
        assert!(a
            .allocate(15, &[vec![f64::NAN, 0.0], vec![0.0; 2]])
            .is_err());
        assert!(Allocator::from_json("{").is_err());
        let bumped = a
            .to_json()
            .unwrap()
            .replace("\"version\":1", "\"version\":2");
        assert!(Allocator::from_json(&bumped).is_err());
    }

    #[test]
    fn loaded_state_is_validated_like_the_constructor() {
        let mut a = ela(vec![2, 2], 4);
        let json = a.to_json().unwrap();
        for (from, to, field) in [
            ("\"interval\":5", "\"interval\":0", "interval"),
            ("\"k\":2", "\"k\":0", "k"),
            ("\"capacity\":4", "\"capacity\":1", "rank"),
            ("\"capacity\":4", "\"capacity\":1099511627776", "capacities"),
            ("\"name\":\"m1\"", "\"name\":\"m0\"", "unique"),
        ] {
            let bad = json.replacen(from, to, 1);
            assert_ne!(bad, json, "{from}");
            let err = Allocator::from_json(&bad).unwrap_err().to_string();
            assert!(err.starts_with("state: ") && err.contains(field), "{err}");
        }
        a.allocate(15, &[vec![0.1, 0.2], vec![0.3, 0.4]]).unwrap();
        let r = a.ranks();
        let again = vec![vec![0.5; r[0]], vec![0.5; r[1]]];
        let err = a.allocate(15, &again).unwrap_err().to_string();
        assert!(err.starts_with("t must be after"), "{err}");
        let json = a.to_json().unwrap();
        let bad = json.replace("\"last_step\":15", "\"last_step\":3");
        let err = Allocator::from_json(&bad).unwrap_err().to_string();
        assert!(err.contains("last_step"), "{err}");
    }

    #[test]
    fn adalora_state_with_zero_interval_is_refused() {
        let cfg = AdaLoRAConfig {
            delta_t: 0,
            ..ada_cfg()
        };
        let names = vec!["a".into(), "b".into()];
        let e = Allocator::new(
            Method::AdaLoRA(cfg),
            names.clone(),
            vec![6, 6],
            vec![6, 6],
            0,
        );
        assert!(e.unwrap_err().to_string().contains("delta_t"));
        let ok = AdaLoRAConfig { delta_t: 1, ..cfg };
        let a = Allocator::new(Method::AdaLoRA(ok), names, vec![6, 6], vec![6, 6], 0).unwrap();
        let bad = a
            .to_json()
            .unwrap()
            .replace("\"delta_t\":1", "\"delta_t\":0");
        let err = Allocator::from_json(&bad).unwrap_err().to_string();
        assert_eq!(err, "state: delta_t must be positive, got 0");
        let huge = AdaLoRAConfig {
            min_rank: usize::MAX,
            ..ok
        };
        let names = vec!["a".into(), "b".into()];
        assert!(Allocator::new(Method::AdaLoRA(huge), names, vec![6, 6], vec![6, 6], 0).is_err());
    }

    #[test]
    fn adalora_masks_down_to_budget() {
        let cfg = ada_cfg();
        let names = vec!["a".into(), "b".into()];
        let mut a = Allocator::new(Method::AdaLoRA(cfg), names, vec![6, 6], vec![6, 6], 0).unwrap();
        assert!(!a.is_allocation_step(2));
        let s = |r: &[usize]| {
            r.iter()
                .map(|&n| (0..n).map(|i| i as f64).collect())
                .collect::<Vec<Vec<f64>>>()
        };
        for t in 3..=10 {
            if a.is_allocation_step(t) {
                let sc = s(&a.ranks());
                a.allocate(t, &sc).unwrap();
            }
            assert_eq!(
                a.ranks().iter().sum::<usize>(),
                adalora_budget(t, &Phases::new(10, 2, 2).unwrap(), 12, 4).min(12)
            );
        }
    }
}
