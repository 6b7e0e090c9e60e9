"""The kernels as torch operators ``torch.ops.lorax_core.*``, and the functions that dispatch
to them by device and dtype (docs/kernels.md).

The schemas are defined here, with the torch references as their CPU implementations and
shape-only fake implementations (``torch.compile``, meta tensors); the CUDA implementations come
from the compiled library (``csrc/*.cu``, ``TORCH_LIBRARY_IMPL(lorax_core, CUDA, …)``), loaded by
:func:`lorax_core.kernels._loader.load` on first use. The public functions call the CUDA op for
CUDA tensors of a supported dtype (float32, float16, bfloat16) when the kernels load, and the
reference otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lorax_core.kernels import _loader, reference

__all__ = ["KERNEL_DTYPES", "dora_row_norm", "importance_update_", "uses_kernel"]

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

_LIB = torch.library.Library("lorax_core", "DEF")
_LIB.define(
    "importance_update_(Tensor(a!)[] ipt, Tensor(b!)[] unc, Tensor[] params, Tensor[] grads, "
    "int[] rank_dims, int[] score_offsets, Tensor(c!) scores, float beta1, float beta2) -> ()"
)
_LIB.define("dora_row_norm(Tensor weight, Tensor lora_A, Tensor lora_B, float scaling) -> Tensor")


def _importance_reference(
    ipt: list[torch.Tensor],
    unc: list[torch.Tensor],
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    rank_dims: list[int],
    score_offsets: list[int],
    scores: torch.Tensor,
    beta1: float,
    beta2: float,
) -> None:
    reference.importance_update_(params, grads, ipt, unc, beta1, beta2)
    reference.rank_scores_(ipt, unc, rank_dims, score_offsets, scores)


def _importance_fake(*args: object) -> None:
    return None


def _dora_fake(
    weight: torch.Tensor, lora_A: torch.Tensor, lora_B: torch.Tensor, scaling: float
) -> torch.Tensor:
    return weight.new_empty((weight.shape[0],), dtype=lora_A.dtype)


_LIB.impl("importance_update_", _importance_reference, "CPU")
_LIB.impl("dora_row_norm", reference.dora_row_norm, "CPU")
torch.library.register_fake("lorax_core::importance_update_", _importance_fake, lib=_LIB)
torch.library.register_fake("lorax_core::dora_row_norm", _dora_fake, lib=_LIB)


def uses_kernel(*tensors: torch.Tensor) -> bool:
    """Whether the CUDA kernel handles these tensors: all on one CUDA device, each of a kernel
    dtype, and the kernels loaded (built on the first call; see ``LORAX_DISABLE_CUDA_KERNELS``)."""
    if not tensors:
        return False
    device = tensors[0].device
    if device.type != "cuda":
        return False
    if any(t.device != device or t.dtype not in KERNEL_DTYPES for t in tensors):
        return False
    return _loader.load()


@torch.no_grad()
def importance_update_(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    ipt: Sequence[torch.Tensor],
    unc: Sequence[torch.Tensor],
    beta1: float,
    beta2: float,
    *,
    rank_dims: Sequence[int] | None = None,
    score_offsets: Sequence[int] | None = None,
    scores: torch.Tensor | None = None,
) -> bool:
    """The importance EMAs in place (see :func:`lorax_core.kernels.reference.importance_update_`)
    and, when ``scores`` (float32, on the tensors' device) is given, the per-rank scores in the
    same pass (:func:`lorax_core.kernels.reference.rank_scores_`).

    One kernel launch on CUDA (parameter and EMA dtypes float32/float16/bfloat16, EMAs
    contiguous); the ``torch._foreach`` reference elsewhere. Returns whether ``scores`` was
    filled (always, when given).
    """
    n = len(params)
    dims = list(rank_dims) if rank_dims is not None else [-1] * n
    offsets = list(score_offsets) if score_offsets is not None else [0] * n
    kernel = (
        n > 0
        and scores is not None
        and scores.dtype == torch.float32
        and all(a.is_contiguous() and b.is_contiguous() for a, b in zip(ipt, unc, strict=True))
        and all(
            p.dtype == g.dtype == a.dtype == b.dtype
            for p, g, a, b in zip(params, grads, ipt, unc, strict=True)
        )
        and uses_kernel(scores, *params, *grads, *ipt, *unc)
    )
    if kernel:
        torch.ops.lorax_core.importance_update_(
            list(ipt), list(unc), list(params), list(grads), dims, offsets, scores, beta1, beta2
        )
        return True
    reference.importance_update_(params, grads, ipt, unc, beta1, beta2)
    if scores is None:
        return False
    reference.rank_scores_(ipt, unc, dims, offsets, scores)
    return True


def dora_row_norm(
    weight: torch.Tensor, lora_A: torch.Tensor, lora_B: torch.Tensor, scaling: float
) -> torch.Tensor:
    """``‖W + scaling·B A‖`` per row (out,), in ``lora_A``'s dtype, without an out × in temporary.

    The fused kernel (one read of W, float32 accumulation) for CUDA tensors with W in
    float32/float16/bfloat16 and A, B in float32/float16/bfloat16, when no gradient is needed;
    :func:`lorax_core.kernels.reference.dora_row_norm` otherwise (CPU, float64, and the
    differentiable ``detach_norm=False`` path).
    """
    needs_grad = torch.is_grad_enabled() and (
        weight.requires_grad or lora_A.requires_grad or lora_B.requires_grad
    )
    if not needs_grad and uses_kernel(weight, lora_A, lora_B):
        return torch.ops.lorax_core.dora_row_norm(weight, lora_A, lora_B, float(scaling))
    return reference.dora_row_norm(weight, lora_A, lora_B, scaling)
