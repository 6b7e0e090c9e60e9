//! Bindings of the rank allocator (AdaLoRA masking, ElaLoRA prune-and-expand).
//!
//! `ScheduleOptions` holds the schedule both methods share (checked when built); each
//! constructor takes it and its own options only. Every integer argument goes through
//! [`Count`]; the core checks the rest with the same function that checks a state loaded by
//! `from_json`.

use lorax_core::allocator::{
    self as core_alloc, AdaLoRAConfig, Allocator, ElaLoRAConfig, Method, ModulePlan, Phases,
};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::{counts, to_py, Count};

fn phases(total_steps: &Count, t_init: &Count, t_final: &Count) -> PyResult<Phases> {
    Phases::new(
        total_steps.get("total_steps")?,
        t_init.get("t_init")?,
        t_final.get("t_final")?,
    )
    .map_err(to_py)
}

/// The schedule AdaLoRA and ElaLoRA share: `total_steps` (`T`), `t_init` warm-up and
/// `t_final` final steps (`t_init + t_final < T`), `interval` steps between allocation steps
/// (AdaLoRA's `ΔT`, at least 1) and the `seed` of the allocator's RNG.
#[pyclass(
    module = "lorax_core._core",
    name = "ScheduleOptions",
    frozen,
    eq,
    get_all
)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PyScheduleOptions {
    /// Total optimizer steps `T`.
    total_steps: u64,
    /// Warm-up steps without allocation.
    t_init: u64,
    /// Final steps without allocation or score updates.
    t_final: u64,
    /// Steps between allocation steps.
    interval: u64,
    /// Seed of the RNG that draws new ranks.
    seed: u64,
}

/// The schedule's argument names; the interval's is the method's own (`delta_t`, `interval`).
const SCHEDULE_KEYS: [&str; 5] = ["total_steps", "t_init", "t_final", "interval", "seed"];

impl PyScheduleOptions {
    /// Checks `values` (in [`SCHEDULE_KEYS`] order); the interval's errors say `interval_name`.
    fn checked(values: [&Count; 5], interval_name: &str) -> PyResult<Self> {
        let [total_steps, t_init, t_final, interval, seed] = values;
        let ph = phases(total_steps, t_init, t_final)?;
        let interval = interval.get(interval_name)?;
        if interval == 0 {
            return Err(PyValueError::new_err(format!(
                "{interval_name} must be positive, got 0"
            )));
        }
        Ok(Self {
            total_steps: ph.total_steps,
            t_init: ph.t_init,
            t_final: ph.t_final,
            interval,
            seed: seed.get("seed")?,
        })
    }

    /// The schedule given as `schedule` or, for one release, as the former keyword arguments
    /// (`total_steps`, `t_init`, `t_final`, the interval as `interval_name`, `seed = 0`).
    fn resolve(
        schedule: Option<&Self>,
        keywords: Option<&Bound<'_, PyDict>>,
        interval_name: &str,
    ) -> PyResult<Self> {
        let keywords = keywords.filter(|k| !k.is_empty());
        match (schedule, keywords) {
            (Some(s), None) => Ok(s.clone()),
            (Some(_), Some(_)) => Err(PyTypeError::new_err(
                "give the schedule either as `schedule` or as keyword arguments, not both",
            )),
            (None, None) => Err(PyTypeError::new_err(
                "missing required argument 'schedule' (a ScheduleOptions)",
            )),
            (None, Some(kw)) => {
                let names = SCHEDULE_KEYS.map(|k| if k == "interval" { interval_name } else { k });
                let mut values: [Option<Count>; 5] = Default::default();
                for (key, value) in kw.iter() {
                    let key: String = key.extract()?;
                    let slot = names.iter().position(|&n| n == key).ok_or_else(|| {
                        PyTypeError::new_err(format!("unexpected keyword argument '{key}'"))
                    })?;
                    let count = value.extract::<Count>().map_err(|e| {
                        PyTypeError::new_err(format!("argument '{key}': {}", e.value(kw.py())))
                    })?;
                    values[slot] = Some(count);
                }
                values[4].get_or_insert(Count::new(0));
                let given = |i: usize| {
                    values[i].as_ref().ok_or_else(|| {
                        PyTypeError::new_err(format!(
                            "missing required keyword argument '{}'",
                            names[i]
                        ))
                    })
                };
                let all = [given(0)?, given(1)?, given(2)?, given(3)?, given(4)?];
                Self::checked(all, interval_name)
            }
        }
    }

    fn phases(&self) -> Phases {
        Phases {
            total_steps: self.total_steps,
            t_init: self.t_init,
            t_final: self.t_final,
        }
    }
}

#[pymethods]
impl PyScheduleOptions {
    #[new]
    #[pyo3(
        signature = (total_steps, *, t_init = Count::new(0), t_final = Count::new(0), interval = Count::new(1), seed = Count::new(0)),
        text_signature = "(total_steps, *, t_init=0, t_final=0, interval=1, seed=0)"
    )]
    fn new(
        total_steps: Count,
        t_init: Count,
        t_final: Count,
        interval: Count,
        seed: Count,
    ) -> PyResult<Self> {
        Self::checked(
            [&total_steps, &t_init, &t_final, &interval, &seed],
            "interval",
        )
    }

    fn __repr__(&self) -> String {
        format!(
            "ScheduleOptions(total_steps={}, t_init={}, t_final={}, interval={}, seed={})",
            self.total_steps, self.t_init, self.t_final, self.interval, self.seed
        )
    }
}

/// One module's decision at an allocation step: new slot `j` takes old slot `perm[j]`; slots
/// `[0, n_keep)` keep their ranks, `[n_keep, new_rank)` receive new ranks drawn with `seed`.
#[pyclass(module = "lorax_core._core", name = "ModulePlan", frozen, eq, get_all)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PyModulePlan {
    /// Permutation of the module's storage slots.
    perm: Vec<usize>,
    /// Surviving ranks (first after permuting).
    n_keep: usize,
    /// Active rank after the step.
    new_rank: usize,
    /// Seed for the module's new ranks.
    seed: u64,
}

#[pymethods]
impl PyModulePlan {
    #[new]
    fn new(perm: Vec<usize>, n_keep: usize, new_rank: usize, seed: u64) -> Self {
        Self {
            perm,
            n_keep,
            new_rank,
            seed,
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "ModulePlan(perm={:?}, n_keep={}, new_rank={}, seed={})",
            self.perm, self.n_keep, self.new_rank, self.seed
        )
    }
}

impl From<ModulePlan> for PyModulePlan {
    fn from(p: ModulePlan) -> Self {
        Self::new(p.perm, p.n_keep, p.new_rank, p.seed)
    }
}

/// The ranks of every module after one allocation step.
#[pyclass(module = "lorax_core._core", name = "Allocation", frozen, eq, get_all)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PyAllocation {
    /// Optimizer step of the allocation.
    step: u64,
    /// Active rank of every module after it, in the allocator's order.
    ranks: Vec<usize>,
}

#[pymethods]
impl PyAllocation {
    fn __repr__(&self) -> String {
        format!("Allocation(step={}, ranks={:?})", self.step, self.ranks)
    }
}

/// Host-side rank allocator: per-module ranks, budget schedules, allocation decisions and a
/// versioned JSON state. Built with `RankAllocator.adalora(...)` or `RankAllocator.elalora(...)`.
#[pyclass(module = "lorax_core._core", name = "RankAllocator")]
pub struct PyRankAllocator {
    inner: Allocator,
}

impl PyRankAllocator {
    fn build(
        names: Vec<String>,
        ranks: Vec<Count>,
        capacities: Vec<Count>,
        seed: u64,
        method: Method,
    ) -> PyResult<Self> {
        let ranks = counts(&ranks, "ranks")?;
        let capacities = counts(&capacities, "capacities")?;
        Allocator::new(method, names, ranks, capacities, seed)
            .map(|inner| Self { inner })
            .map_err(to_py)
    }
}

#[pymethods]
impl PyRankAllocator {
    /// AdaLoRA: cubic budget from the initial total rank down to `target_total`, masking
    /// every `schedule.interval` steps (`ΔT`), never below `min_rank` per module.
    #[staticmethod]
    #[pyo3(
        signature = (names, ranks, capacities, schedule = None, *, target_total, min_rank = Count::new(0), **legacy),
        text_signature = "(names, ranks, capacities, schedule=None, *, target_total, min_rank=0, **legacy)"
    )]
    fn adalora(
        names: Vec<String>,
        ranks: Vec<Count>,
        capacities: Vec<Count>,
        schedule: Option<PyRef<'_, PyScheduleOptions>>,
        target_total: Count,
        min_rank: Count,
        legacy: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        let s = PyScheduleOptions::resolve(schedule.as_deref(), legacy, "delta_t")?;
        let cfg = AdaLoRAConfig {
            phases: s.phases(),
            init_bgt: 0,
            target_bgt: target_total.get("target_total")?,
            delta_t: s.interval,
            min_rank: min_rank.get("min_rank")?,
        };
        Self::build(names, ranks, capacities, s.seed, Method::AdaLoRA(cfg))
    }

    /// ElaLoRA: rounds every `schedule.interval` steps after `t_init` moving
    /// `b(t) = round(b0 (1 - p^3))` ranks, at most `k` per module.
    #[staticmethod]
    #[pyo3(
        signature = (names, ranks, capacities, schedule = None, *, b0 = Count::new(4), k = Count::new(2), **legacy),
        text_signature = "(names, ranks, capacities, schedule=None, *, b0=4, k=2, **legacy)"
    )]
    fn elalora(
        names: Vec<String>,
        ranks: Vec<Count>,
        capacities: Vec<Count>,
        schedule: Option<PyRef<'_, PyScheduleOptions>>,
        b0: Count,
        k: Count,
        legacy: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        let s = PyScheduleOptions::resolve(schedule.as_deref(), legacy, "interval")?;
        let (b0, k) = (b0.get("b0")?, k.get("k")?);
        let cfg = ElaLoRAConfig {
            phases: s.phases(),
            b0,
            k,
            interval: s.interval,
        };
        Self::build(names, ranks, capacities, s.seed, Method::ElaLoRA(cfg))
    }

    /// Restores an allocator (RNG position included) from `to_json`'s output; the state is
    /// checked as strictly as constructor arguments (`ValueError` naming the field).
    #[staticmethod]
    fn from_json(state: &str) -> PyResult<Self> {
        Allocator::from_json(state)
            .map(|inner| Self { inner })
            .map_err(to_py)
    }

    /// The versioned JSON state.
    fn to_json(&self) -> PyResult<String> {
        self.inner.to_json().map_err(to_py)
    }

    /// `"AdaLoRA"` or `"ElaLoRA"`.
    #[getter]
    fn method(&self) -> &'static str {
        match self.inner.state().method {
            Method::AdaLoRA(_) => "AdaLoRA",
            Method::ElaLoRA(_) => "ElaLoRA",
        }
    }

    /// Module names, in the allocator's fixed order.
    fn names(&self) -> Vec<String> {
        self.inner
            .state()
            .modules
            .iter()
            .map(|m| m.name.clone())
            .collect()
    }

    /// Active rank of every module.
    fn ranks(&self) -> Vec<usize> {
        self.inner.ranks()
    }

    /// Storage capacity of every module.
    fn capacities(&self) -> Vec<usize> {
        self.inner
            .state()
            .modules
            .iter()
            .map(|m| m.capacity)
            .collect()
    }

    /// AdaLoRA's total budget or ElaLoRA's ranks moved per round at step `t`.
    fn budget(&self, t: Count) -> PyResult<usize> {
        Ok(self.inner.budget(t.get("t")?))
    }

    /// Whether importance scores are updated at step `t` (`t < T - t_final`).
    fn updates_scores(&self, t: Count) -> PyResult<bool> {
        Ok(self.inner.updates_scores(t.get("t")?))
    }

    /// Whether step `t` is an allocation step.
    fn is_allocation_step(&self, t: Count) -> PyResult<bool> {
        Ok(self.inner.is_allocation_step(t.get("t")?))
    }

    /// Decides step `t` (after the last allocation step) from one per-rank score list per
    /// module; returns one `ModulePlan` per module.
    fn allocate(&mut self, t: Count, scores: Vec<Vec<f64>>) -> PyResult<Vec<PyModulePlan>> {
        let plans = self.inner.allocate(t.get("t")?, &scores).map_err(to_py)?;
        Ok(plans.into_iter().map(PyModulePlan::from).collect())
    }

    /// One `Allocation` (step, ranks) after every allocation so far.
    fn history(&self) -> Vec<PyAllocation> {
        self.inner
            .state()
            .history
            .iter()
            .map(|h| PyAllocation {
                step: h.step,
                ranks: h.ranks.clone(),
            })
            .collect()
    }

    /// Per-rank scores received at the last allocation (empty before the first).
    fn last_scores(&self) -> Vec<Vec<f64>> {
        self.inner.state().last_scores.clone()
    }
}

/// AdaLoRA's cubic total budget at step `t` (docs/allocators.md).
#[pyfunction]
#[pyo3(signature = (t, *, total_steps, t_init, t_final, init_total, target_total))]
pub fn adalora_budget(
    t: Count,
    total_steps: Count,
    t_init: Count,
    t_final: Count,
    init_total: Count,
    target_total: Count,
) -> PyResult<usize> {
    let ph = phases(&total_steps, &t_init, &t_final)?;
    Ok(core_alloc::adalora_budget(
        t.get("t")?,
        &ph,
        init_total.get("init_total")?,
        target_total.get("target_total")?,
    ))
}

/// ElaLoRA's ranks moved per round at step `t`, `round(b0 (1 - p^3))` (docs/allocators.md).
#[pyfunction]
#[pyo3(signature = (t, *, total_steps, t_init, t_final, b0))]
pub fn elalora_budget(
    t: Count,
    total_steps: Count,
    t_init: Count,
    t_final: Count,
    b0: Count,
) -> PyResult<usize> {
    let ph = phases(&total_steps, &t_init, &t_final)?;
    Ok(core_alloc::elalora_budget(t.get("t")?, &ph, b0.get("b0")?))
}
