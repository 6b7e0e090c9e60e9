//! `lorax_core._core`: thin PyO3 bindings over the `lorax-core` crate.
//!
//! No numerics live here: each submodule converts arguments, releases the
//! GIL (except `importance` and `slots`, whose borrowed tensor buffers must stay untouched
//! by Python during the call), calls into the core crate and maps its errors
//! to Python exceptions.

use pyo3::prelude::*;

mod allocator;
mod arrays;
mod buffers;
mod errors;
mod id;
mod importance;
mod nystrom;
mod slots;

/// The extension module: every class and function of the binding files.
#[pymodule]
mod _core {
    use super::*;
    #[pymodule_export]
    use crate::allocator::{
        adalora_budget, elalora_budget, PyAllocation, PyModulePlan, PyRankAllocator,
        PyScheduleOptions,
    };
    #[pymodule_export]
    use crate::id::{
        estimate_id, estimate_id_many, knn, PyIdEstimate, PyMle, PyNeighbours, PyOptions, PyTwoNN,
    };
    #[pymodule_export]
    use crate::importance::importance_update_f32;
    #[pymodule_export]
    use crate::nystrom::{nystrom, PyNystromFactors};
    #[pymodule_export]
    use crate::slots::move_slots_f32;

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add("__version__", env!("CARGO_PKG_VERSION"))
    }
}
