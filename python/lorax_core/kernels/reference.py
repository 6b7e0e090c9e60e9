"""Pure-PyTorch references of the fused CUDA kernels: the CPU path and the kernels' test oracles.

Each function runs on any device and dtype; the kernels in ``csrc/`` compute the same values in
one launch (docs/kernels.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn.functional import linear

__all__ = ["dora_row_norm", "importance_update_", "rank_scores_"]


Tensors = Sequence[torch.Tensor]


@torch.no_grad()
def importance_update_(
    params: Tensors, grads: Tensors, ipt: Tensors, unc: Tensors, beta1: float, beta2: float
) -> None:
    """In place: ``ipt ← β1 ipt + (1 − β1)|p ⊙ g|``, ``unc ← β2 unc + (1 − β2)|I − ipt|``.

    All four are parallel sequences of same-shape tensors on one device (any float dtype); the
    update is six ``torch._foreach_*`` calls over all tensors and never synchronises with the
    host. ``I = |p ⊙ g|`` is formed in the tensors' dtype.
    """
    if not params:
        return
    params, grads, ipt, unc = list(params), list(grads), list(ipt), list(unc)
    current = torch._foreach_mul(params, grads)
    torch._foreach_abs_(current)
    torch._foreach_lerp_(ipt, current, 1.0 - beta1)
    torch._foreach_sub_(current, ipt)
    torch._foreach_abs_(current)
    torch._foreach_lerp_(unc, current, 1.0 - beta2)


@torch.no_grad()
def rank_scores_(
    ipt: Sequence[torch.Tensor],
    unc: Sequence[torch.Tensor],
    rank_dims: Sequence[int],
    score_offsets: Sequence[int],
    scores: torch.Tensor,
) -> None:
    """Per-rank scores into ``scores`` (float32, zeroed first): for each tensor ``t = ipt ⊙ unc``
    with ``rank_dims[i] >= 0``, ``scores[off + j] += mean of t over the other axis`` at rank slot
    ``j`` (a 1-D tensor adds ``t`` itself). ``rank_dims[i] = -1`` leaves tensor ``i`` out."""
    scores.zero_()
    for a, b, dim, off in zip(ipt, unc, rank_dims, score_offsets, strict=True):
        if dim < 0:
            continue
        s = a.float() * b.float()
        if s.dim() == 2:
            s = s.mean(dim=1 - dim)
        scores[off : off + s.numel()] += s


def dora_row_norm(
    weight: torch.Tensor, lora_A: torch.Tensor, lora_B: torch.Tensor, scaling: float
) -> torch.Tensor:
    """``‖W + scaling·B A‖`` per row, shape (out,), without an out × in temporary.

    ``n² = ‖W‖²_row + 2s·rowsum(B ⊙ (W Aᵀ)) + s²·rowsum((B (A Aᵀ)) ⊙ B)``: temporaries are
    out × r and r × r. ``weight`` (out, in) in any float dtype; ``lora_A`` (r, in) and ``lora_B``
    (out, r) in the adapter dtype, which is also the dtype of the result (accumulated in at least
    float32). The product ``W Aᵀ`` is taken in W's dtype (A is cast to it, an r × in copy).
    """
    acc = torch.promote_types(lora_A.dtype, torch.float32)
    w_sq = torch.linalg.vector_norm(weight, dim=1, dtype=acc).square()
    wa = linear(lora_A.to(weight.dtype), weight).t().to(acc)  # (out, r) = W Aᵀ
    b = lora_B.to(acc)
    cross = (b * wa).sum(dim=1)
    a = lora_A.to(acc)
    quad = ((b @ (a @ a.t())) * b).sum(dim=1)
    n_sq = w_sq + (2.0 * scaling) * cross + (scaling * scaling) * quad
    return n_sq.clamp_min(0.0).sqrt().to(lora_A.dtype)
