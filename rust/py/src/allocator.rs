//! Bindings of the rank allocator (AdaLoRA masking, ElaLoRA prune-and-expand).
//!
//! Every integer argument goes through [`count`]; the core checks the rest with the same
//! function that checks a state loaded by `from_json`.

use lorax_core::allocator::{
    self as core_alloc, AdaLoRAConfig, Allocator, ElaLoRAConfig, Method, ModulePlan, Phases,
};
use pyo3::prelude::*;

use crate::errors::{counts, to_py, Count};

fn phases(total_steps: Count, t_init: Count, t_final: Count) -> PyResult<Phases> {
    Phases::new(
        total_steps.get("total_steps")?,
        t_init.get("t_init")?,
        t_final.get("t_final")?,
    )
    .map_err(to_py)
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
        method: Method,
        names: Vec<String>,
        ranks: Vec<Count>,
        capacities: Vec<Count>,
        seed: Count,
    ) -> PyResult<Self> {
        let ranks = counts(&ranks, "ranks")?;
        let capacities = counts(&capacities, "capacities")?;
        Allocator::new(method, names, ranks, capacities, seed.get("seed")?)
            .map(|inner| Self { inner })
            .map_err(to_py)
    }
}

#[pymethods]
impl PyRankAllocator {
    /// AdaLoRA: cubic budget from the initial total rank down to `target_total`, masking
    /// every `delta_t` steps, never below `min_rank` per module.
    #[staticmethod]
    #[pyo3(
        signature = (names, ranks, capacities, *, total_steps, t_init, t_final, target_total, delta_t, min_rank = Count::new(0), seed = Count::new(0)),
        text_signature = "(names, ranks, capacities, *, total_steps, t_init, t_final, target_total, delta_t, min_rank=0, seed=0)"
    )]
    #[allow(clippy::too_many_arguments)]
    fn adalora(
        names: Vec<String>,
        ranks: Vec<Count>,
        capacities: Vec<Count>,
        total_steps: Count,
        t_init: Count,
        t_final: Count,
        target_total: Count,
        delta_t: Count,
        min_rank: Count,
        seed: Count,
    ) -> PyResult<Self> {
        let cfg = AdaLoRAConfig {
            phases: phases(total_steps, t_init, t_final)?,
            init_bgt: 0,
            target_bgt: target_total.get("target_total")?,
            delta_t: delta_t.get("delta_t")?,
            min_rank: min_rank.get("min_rank")?,
        };
        Self::build(Method::AdaLoRA(cfg), names, ranks, capacities, seed)
    }

    /// ElaLoRA: rounds every `interval` steps after `t_init` moving `b(t) = round(b0 (1 - p^3))`
    /// ranks, at most `k` per module.
    #[staticmethod]
    #[pyo3(
        signature = (names, ranks, capacities, *, total_steps, t_init, t_final, interval, b0 = Count::new(4), k = Count::new(2), seed = Count::new(0)),
        text_signature = "(names, ranks, capacities, *, total_steps, t_init, t_final, interval, b0=4, k=2, seed=0)"
    )]
    #[allow(clippy::too_many_arguments)]
    fn elalora(
        names: Vec<String>,
        ranks: Vec<Count>,
        capacities: Vec<Count>,
        total_steps: Count,
        t_init: Count,
        t_final: Count,
        interval: Count,
        b0: Count,
        k: Count,
        seed: Count,
    ) -> PyResult<Self> {
        let cfg = ElaLoRAConfig {
            phases: phases(total_steps, t_init, t_final)?,
            b0: b0.get("b0")?,
            k: k.get("k")?,
            interval: interval.get("interval")?,
        };
        Self::build(Method::ElaLoRA(cfg), names, ranks, capacities, seed)
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
fn adalora_budget(
    t: Count,
    total_steps: Count,
    t_init: Count,
    t_final: Count,
    init_total: Count,
    target_total: Count,
) -> PyResult<usize> {
    let ph = phases(total_steps, t_init, t_final)?;
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
fn elalora_budget(
    t: Count,
    total_steps: Count,
    t_init: Count,
    t_final: Count,
    b0: Count,
) -> PyResult<usize> {
    let ph = phases(total_steps, t_init, t_final)?;
    Ok(core_alloc::elalora_budget(t.get("t")?, &ph, b0.get("b0")?))
}

/// Adds the allocator's classes and functions to `_core`.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyRankAllocator>()?;
    m.add_class::<PyModulePlan>()?;
    m.add_class::<PyAllocation>()?;
    m.add_function(wrap_pyfunction!(adalora_budget, m)?)?;
    m.add_function(wrap_pyfunction!(elalora_budget, m)?)?;
    Ok(())
}
