//! Bindings of the rank allocator (AdaLoRA masking, ElaLoRA prune-and-expand).

use lorax_core::allocator::{
    self as core_alloc, AdaLoRAConfig, Allocator, ElaLoRAConfig, Method, Phases,
};
use pyo3::prelude::*;

use crate::errors::{non_negative, to_py};

/// One module's decision as returned to Python: `(perm, n_keep, new_rank, seed)`.
type PyPlan = (Vec<usize>, usize, usize, u64);

fn phases(total_steps: i64, t_init: i64, t_final: i64) -> PyResult<Phases> {
    Phases::new(
        non_negative::<u64>(total_steps, "total_steps")?,
        non_negative::<u64>(t_init, "t_init")?,
        non_negative::<u64>(t_final, "t_final")?,
    )
    .map_err(to_py)
}

fn ranks_of(values: Vec<i64>, name: &str) -> PyResult<Vec<usize>> {
    values
        .into_iter()
        .map(|v| non_negative::<usize>(v, name))
        .collect()
}

/// Host-side rank allocator: per-module ranks, budget schedules, allocation decisions and a
/// versioned JSON state. Built with `RankAllocator.adalora(...)` or `RankAllocator.elalora(...)`.
#[pyclass(module = "lorax_core._core", name = "RankAllocator")]
pub struct PyRankAllocator {
    inner: Allocator,
}

#[pymethods]
impl PyRankAllocator {
    /// AdaLoRA: cubic budget from the initial total rank down to `target_total`, masking
    /// every `delta_t` steps, never below `min_rank` per module.
    #[staticmethod]
    #[pyo3(signature = (names, ranks, capacities, *, total_steps, t_init, t_final, target_total, delta_t, min_rank=0, seed=0))]
    #[allow(clippy::too_many_arguments)]
    fn adalora(
        names: Vec<String>,
        ranks: Vec<i64>,
        capacities: Vec<i64>,
        total_steps: i64,
        t_init: i64,
        t_final: i64,
        target_total: i64,
        delta_t: i64,
        min_rank: i64,
        seed: u64,
    ) -> PyResult<Self> {
        let cfg = AdaLoRAConfig {
            phases: phases(total_steps, t_init, t_final)?,
            init_bgt: 0,
            target_bgt: non_negative::<usize>(target_total, "target_total")?,
            delta_t: non_negative::<u64>(delta_t, "delta_t")?,
            min_rank: non_negative::<usize>(min_rank, "min_rank")?,
        };
        let ranks = ranks_of(ranks, "ranks")?;
        let capacities = ranks_of(capacities, "capacities")?;
        Allocator::new(Method::AdaLoRA(cfg), names, ranks, capacities, seed)
            .map(|inner| Self { inner })
            .map_err(to_py)
    }

    /// ElaLoRA: rounds every `interval` steps after `t_init` moving `b(t) = round(b0 (1 - p^3))`
    /// ranks, at most `k` per module.
    #[staticmethod]
    #[pyo3(signature = (names, ranks, capacities, *, total_steps, t_init, t_final, interval, b0=4, k=2, seed=0))]
    #[allow(clippy::too_many_arguments)]
    fn elalora(
        names: Vec<String>,
        ranks: Vec<i64>,
        capacities: Vec<i64>,
        total_steps: i64,
        t_init: i64,
        t_final: i64,
        interval: i64,
        b0: i64,
        k: i64,
        seed: u64,
    ) -> PyResult<Self> {
        let cfg = ElaLoRAConfig {
            phases: phases(total_steps, t_init, t_final)?,
            b0: non_negative::<usize>(b0, "b0")?,
            k: non_negative::<usize>(k, "k")?,
            interval: non_negative::<u64>(interval, "interval")?,
        };
        let ranks = ranks_of(ranks, "ranks")?;
        let capacities = ranks_of(capacities, "capacities")?;
        Allocator::new(Method::ElaLoRA(cfg), names, ranks, capacities, seed)
            .map(|inner| Self { inner })
            .map_err(to_py)
    }

    /// Restores an allocator (RNG position included) from `to_json`'s output.
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
    fn budget(&self, t: i64) -> PyResult<usize> {
        Ok(self.inner.budget(non_negative::<u64>(t, "t")?))
    }

    /// Whether importance scores are updated at step `t` (`t < T - t_final`).
    fn updates_scores(&self, t: i64) -> PyResult<bool> {
        Ok(self.inner.updates_scores(non_negative::<u64>(t, "t")?))
    }

    /// Whether step `t` is an allocation step.
    fn is_allocation_step(&self, t: i64) -> PyResult<bool> {
        Ok(self.inner.is_allocation_step(non_negative::<u64>(t, "t")?))
    }

    /// Decides step `t` from one per-rank score list per module; returns one
    /// `(perm, n_keep, new_rank, seed)` per module.
    fn allocate(&mut self, t: i64, scores: Vec<Vec<f64>>) -> PyResult<Vec<PyPlan>> {
        let t = non_negative::<u64>(t, "t")?;
        let plans = self.inner.allocate(t, &scores).map_err(to_py)?;
        Ok(plans
            .into_iter()
            .map(|p| (p.perm, p.n_keep, p.new_rank, p.seed))
            .collect())
    }

    /// `(step, ranks)` after every allocation so far.
    fn history(&self) -> Vec<(u64, Vec<usize>)> {
        self.inner
            .state()
            .history
            .iter()
            .map(|h| (h.step, h.ranks.clone()))
            .collect()
    }

    /// Per-rank scores received at the last allocation (empty before the first).
    fn last_scores(&self) -> Vec<Vec<f64>> {
        self.inner.state().last_scores.clone()
    }
}

/// AdaLoRA's cubic total budget at step `t` (SPEC §6).
#[pyfunction]
#[pyo3(signature = (t, *, total_steps, t_init, t_final, init_total, target_total))]
fn adalora_budget(
    t: i64,
    total_steps: i64,
    t_init: i64,
    t_final: i64,
    init_total: i64,
    target_total: i64,
) -> PyResult<usize> {
    let ph = phases(total_steps, t_init, t_final)?;
    Ok(core_alloc::adalora_budget(
        non_negative::<u64>(t, "t")?,
        &ph,
        non_negative::<usize>(init_total, "init_total")?,
        non_negative::<usize>(target_total, "target_total")?,
    ))
}

/// ElaLoRA's ranks moved per round at step `t`, `round(b0 (1 - p^3))` (SPEC §6).
#[pyfunction]
#[pyo3(signature = (t, *, total_steps, t_init, t_final, b0))]
fn elalora_budget(t: i64, total_steps: i64, t_init: i64, t_final: i64, b0: i64) -> PyResult<usize> {
    let ph = phases(total_steps, t_init, t_final)?;
    Ok(core_alloc::elalora_budget(
        non_negative::<u64>(t, "t")?,
        &ph,
        non_negative::<usize>(b0, "b0")?,
    ))
}

/// Adds the allocator's class and functions to `_core`.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyRankAllocator>()?;
    m.add_function(wrap_pyfunction!(adalora_budget, m)?)?;
    m.add_function(wrap_pyfunction!(elalora_budget, m)?)?;
    Ok(())
}
