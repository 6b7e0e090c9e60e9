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

from lorax_core import _core
from lorax_core.kernels import _loader, reference

__all__ = [
    "KERNEL_DTYPES",
    "dora_row_norm",
    "fuses_importance",
    "importance_update_",
    "uses_kernel",
]

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


# Tensor types whose ``data_ptr`` is their own memory (not a subclass such as ``DTensor``).
_PLAIN = (torch.Tensor, torch.nn.Parameter)


def fuses_importance(scores: torch.Tensor, *params: torch.Tensor) -> bool:
    """Whether :func:`importance_update_` fills ``scores`` in the same pass as the EMAs for these
    parameters (so it costs nothing extra to ask for them): the CUDA kernel, or the Rust loop for
    float32 CPU tensors."""
    if uses_kernel(scores, *params):
        return True
    return all(
        type(t) in _PLAIN and t.dtype == torch.float32 and t.is_cpu for t in (scores, *params)
    )


def _plain_f32_cpu(t: torch.Tensor) -> bool:
    """A plain (not a subclass such as ``DTensor``), C-contiguous float32 CPU tensor of at most
    two dimensions: memory the Rust core may read by address."""
    return (
        type(t) in _PLAIN
        and t.dtype == torch.float32
        and t.is_cpu
        and t.dim() <= 2
        and t.is_contiguous()
    )


class CpuImportancePass:
    """The Rust importance pass over fixed EMAs (and scores), checked once.

    ``ipt``, ``unc``, ``rank_dims``, ``score_offsets`` and ``scores`` (``None``: EMAs only) are
    checked here — each EMA a plain, C-contiguous float32 CPU tensor of at most two dimensions,
    ``ipt[i]`` and ``unc[i]`` of one shape, ``scores`` float32, contiguous and on the CPU — and
    kept referenced, so their memory stays allocated; :meth:`update_` then checks the
    parameters and gradients of the step, and only that each EMA's address is the one checked
    (an EMA given new storage since, by ``resize_`` or ``set_``, turns the pass down).
    ``ready`` says whether the checks passed.
    """

    def __init__(
        self,
        ipt: Sequence[torch.Tensor],
        unc: Sequence[torch.Tensor],
        rank_dims: Sequence[int],
        score_offsets: Sequence[int],
        scores: torch.Tensor | None,
    ) -> None:
        self._kept = [*ipt, *unc, *([scores] if scores is not None else [])]
        self._addresses: list[int] = []
        self._static: list[tuple[torch.Size, int, int, int, int, int, int]] = []
        self._scores = (0, 0)
        self.ready = False
        if scores is not None:
            if not _plain_f32_cpu(scores):
                return
            self._scores = (scores.data_ptr(), scores.numel())
        for a, b, dim, off in zip(ipt, unc, rank_dims, score_offsets, strict=True):
            if not (_plain_f32_cpu(a) and _plain_f32_cpu(b) and a.shape == b.shape):
                return
            shape = a.shape
            rows, cols = (shape[0], shape[1]) if len(shape) == 2 else (a.numel(), 1)
            axis = dim if len(shape) == 2 or dim < 0 else 0
            self._static.append((shape, a.data_ptr(), b.data_ptr(), rows, cols, axis, off))
        self._addresses = [t.data_ptr() for t in self._kept]
        self.ready = True

    def update_(
        self,
        params: Sequence[torch.Tensor],
        grads: Sequence[torch.Tensor | None],
        beta1: float,
        beta2: float,
    ) -> bool:
        """One step: the EMAs in place (and the scores, if given) from ``params`` and ``grads``
        (one per EMA pair, in order; a ``None`` gradient leaves its EMAs alone and its tensor
        out of the scores). Returns ``False`` (nothing written) when the pass is not ready or a
        parameter or gradient is not a plain C-contiguous float32 CPU tensor of its EMA's
        shape."""
        if not self.ready or len(params) != len(self._static) or len(grads) != len(params):
            return False
        if any(t.data_ptr() != a for t, a in zip(self._kept, self._addresses, strict=True)):
            return False
        f32, plain = torch.float32, _PLAIN
        buffers = []
        for p, g, (shape, a, b, rows, cols, axis, off) in zip(
            params, grads, self._static, strict=True
        ):
            if g is None:
                continue
            # `_plain_f32_cpu` spelled out for the pair: the hot path of every ordinary step,
            # and the shape test (against the EMA's) covers its dimension test.
            if (
                type(p) not in plain
                or type(g) not in plain
                or p.dtype != f32
                or g.dtype != f32
                or not (p.is_cpu and g.is_cpu)
                or p.shape != shape
                or g.shape != shape
                or not (p.is_contiguous() and g.is_contiguous())
            ):
                return False
            buffers.append((p.data_ptr(), g.data_ptr(), a, b, rows, cols, axis, off))
        # Every tensor stays referenced (and the GIL held) for the whole call.
        _core._importance_update_f32(buffers, *self._scores, float(beta1), float(beta2))
        return True


def move_slots_(moves: Sequence[tuple[torch.Tensor, Sequence[int], int, int]]) -> bool:
    """An allocation step's rank-slot moves in one call into the Rust core, when every tensor
    is a plain (not a subclass such as ``DTensor``), C-contiguous float32 CPU tensor of at most
    two dimensions. Each ``(tensor, perm, dim, n_keep)``: ``tensor`` along ``dim`` becomes
    ``tensor.index_select(dim, perm)`` with the slots ``≥ n_keep`` zeroed, value for value.

    Returns ``False`` (nothing moved) when any tensor does not qualify; the caller then takes
    the torch path. Raises ``ValueError`` (nothing moved) for a ``perm`` that is not a
    permutation of the axis or tensors that share memory.
    """
    if not moves:
        return False
    buffers = []
    for tensor, perm, dim, n_keep in moves:
        if not _plain_f32_cpu(tensor):
            return False
        rows, cols = (
            (tensor.shape[0], tensor.shape[1]) if tensor.dim() == 2 else (tensor.numel(), 1)
        )
        if dim not in (0, 1) or (tensor.dim() < 2 and dim != 0):
            return False
        buffers.append((tensor.data_ptr(), rows, cols, dim, list(perm), max(int(n_keep), 0)))
    # The tensors stay referenced (and the GIL held) for the whole call.
    try:
        _core._move_slots_f32(buffers)
    except OverflowError:  # a negative index does not convert to a slot number
        raise ValueError("move_slots_: perm is not a permutation (negative entry)") from None
    return True


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
    contiguous); one call into the Rust core for C-contiguous float32 CPU tensors (the EMAs
    alone when ``scores`` is not given); the ``torch._foreach`` reference elsewhere. Returns
    whether ``scores`` was filled (always, when given).
    """
    n = len(params)
    dims = list(rank_dims) if rank_dims is not None and scores is not None else [-1] * n
    offsets = list(score_offsets) if score_offsets is not None else [0] * n
    on_cpu = scores.is_cpu if scores is not None else n > 0 and params[0].is_cpu
    if on_cpu:
        # Without scores the pass updates the EMAs only (no tensor is scored).
        if CpuImportancePass(ipt, unc, dims, offsets, scores).update_(params, grads, beta1, beta2):
            return scores is not None
    elif (
        n > 0
        and scores is not None
        and scores.dtype == torch.float32
        and uses_kernel(scores, *params, *grads, *ipt, *unc)
        and all(a.is_contiguous() and b.is_contiguous() for a, b in zip(ipt, unc, strict=True))
        and all(
            p.dtype == g.dtype == a.dtype == b.dtype
            for p, g, a, b in zip(params, grads, ipt, unc, strict=True)
        )
    ):
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
