"""CUDA kernels for training, with their pure-PyTorch references (docs/kernels.md).

- :func:`importance_update_`: the AdaLoRA/ElaLoRA importance EMAs and per-rank scores of every
  adapter tensor in one launch (on CPU, one call into the Rust core for float32 tensors);
- :func:`move_slots_`: an allocation step's rank-slot moves of float32 CPU tensors in one call
  into the Rust core;
- :func:`dora_row_norm`: DoRA's ``‖W + s·B A‖_row`` in one read of W;
- :mod:`lorax_core.kernels.knn`: exact kNN in chunks on a torch device (the GPU path of
  :mod:`lorax_core.id`);
- :mod:`lorax_core.kernels.autograd`: the hand-derived LoRA forward/backward.

The CUDA sources (``csrc/``) are compiled on first use with ``torch.utils.cpp_extension`` into a
cached folder; ``LORAX_DISABLE_CUDA_KERNELS=1`` forces the torch path, which is also used (after
one warning) when CUDA or nvcc is missing. ``python -m lorax_core.kernels`` builds them (compile
only, no GPU needed).
"""

from __future__ import annotations

from lorax_core.kernels import reference
from lorax_core.kernels._loader import DISABLE_ENV, build, disabled, load, status
from lorax_core.kernels.ops import (
    KERNEL_DTYPES,
    CpuImportancePass,
    dora_row_norm,
    fuses_importance,
    importance_update_,
    move_slots_,
    uses_kernel,
)

__all__ = [
    "DISABLE_ENV",
    "KERNEL_DTYPES",
    "CpuImportancePass",
    "build",
    "disabled",
    "dora_row_norm",
    "fuses_importance",
    "importance_update_",
    "load",
    "move_slots_",
    "reference",
    "status",
    "uses_kernel",
]
