"""The LoRA/SLoRA adapter term as one hand-derived ``torch.autograd.Function`` (docs/kernels.md).

``y = result + s · (x Aᵀ [Nᵀ]) Bᵀ`` is computed by one ``addmm`` into the base output, and the
backward is written out on the same matmuls (cuBLAS on a GPU, no custom kernel):

    u = x Aᵀ (T, r),  v = u Nᵀ (or u),  y = result + s · v Bᵀ
    ∂B = s · gᵀ v,  ∂v = s · g B,  ∂N = ∂vᵀ u,  ∂u = ∂v N,  ∂A = ∂uᵀ x,  ∂x = ∂u A,  ∂result = g

It saves ``x``, the (T, r) intermediate(s) and the factors, as autograd does, and avoids the
(T, out) temporaries of the scaled product and of the sum; ``lora_forward`` falls back to the
plain composition when the dtypes differ (a float32 adapter on a bfloat16 base output).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn.functional import linear

__all__ = ["LoraFunction", "lora_forward"]


class LoraFunction(torch.autograd.Function):
    """``result + scaling · (x Aᵀ [Nᵀ]) Bᵀ`` with a hand-derived backward.

    ``result`` (..., out) and ``x`` (..., in) share their leading shape; ``lora_A`` (r, in),
    ``lora_N`` (r, r) or ``None``, ``lora_B`` (out, r); all one dtype and device.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        result: torch.Tensor,
        x: torch.Tensor,
        lora_A: torch.Tensor,
        lora_N: torch.Tensor | None,
        lora_B: torch.Tensor,
        scaling: float,
    ) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        u = x2 @ lora_A.t()
        v = u if lora_N is None else u @ lora_N.t()
        out = torch.addmm(result.reshape(-1, result.shape[-1]), v, lora_B.t(), alpha=scaling)
        ctx.scaling = scaling
        ctx.has_n = lora_N is not None
        ctx.save_for_backward(x, lora_A, lora_N, lora_B, u, v)
        return out.view(result.shape)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        x, lora_A, lora_N, lora_B, u, v = ctx.saved_tensors
        s = ctx.scaling
        g = grad.reshape(-1, grad.shape[-1])
        needs = ctx.needs_input_grad
        grad_B = torch.mm(g.t(), v).mul_(s) if needs[4] else None
        grad_v = torch.mm(g, lora_B).mul_(s)
        grad_N = None
        grad_u = grad_v
        if ctx.has_n:
            grad_N = grad_v.t() @ u if needs[3] else None
            grad_u = grad_v @ lora_N
        x2 = x.reshape(-1, x.shape[-1])
        grad_A = grad_u.t() @ x2 if needs[2] else None
        grad_x = (grad_u @ lora_A).view(x.shape) if needs[1] else None
        grad_result = grad if needs[0] else None
        return grad_result, grad_x, grad_A, grad_N, grad_B, None


def lora_forward(
    result: torch.Tensor,
    x: torch.Tensor,
    lora_A: torch.Tensor,
    lora_B: torch.Tensor,
    scaling: float,
    lora_N: torch.Tensor | None = None,
) -> torch.Tensor:
    """``result + scaling · B [N] A x`` (..., out): :class:`LoraFunction` when every tensor has
    one dtype, else the composition of ``linear`` ops (autograd's graph)."""
    tensors = (result, x, lora_A, lora_B) + (() if lora_N is None else (lora_N,))
    if all(t.dtype == result.dtype for t in tensors):
        return LoraFunction.apply(result, x, lora_A, lora_N, lora_B, scaling)
    h = linear(x, lora_A)
    if lora_N is not None:
        h = linear(h, lora_N)
    return result + linear(h, lora_B) * scaling
