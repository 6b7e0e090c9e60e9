"""ElaLoRA: ranks pruned and expanded during training from importance scores (docs/allocators.md).

Every ``interval`` steps after ``t_init`` (and before the last ``t_final`` steps), while
``b(t) = round(b (1 − p³)) > 0``: each module offers its ``min(k, r − 1)`` weakest ranks; the
``b(t)`` weakest candidates are pruned; each module owning one of the ``b(t)`` strongest gains one
rank per owned candidate. Total rank is conserved, no module goes below rank 1 or changes by more
than ``k`` in one round. New ranks get A rows / B columns orthogonal to the kept ones (unit norm)
and ``E = min(min|E|, 1e-13)``, so the output is unchanged at that step; Adam moments of surviving
ranks are kept **(ours)**.

Capacity: a module grows only up to its adapter's ``r_max``. Give room for expansion, e.g.
``AdapterConfig(method="svd", r=r, r_max=2 * r)``; a module at capacity does not grow, and then
as many fewer ranks are pruned.
"""

from __future__ import annotations

import torch
from torch import nn

from lorax_core._core import RankAllocator, ScheduleOptions
from lorax_core._validation import Integer, validate_params
from lorax_core.allocators.base import (
    SCHEDULE_CHECKS,
    RankAllocatorBase,
    module_lists,
    svd_modules,
)

__all__ = ["ElaLoRA"]


class ElaLoRA(RankAllocatorBase):
    """ElaLoRA rank allocator over the SVD-form adapters of ``model``.

    Args:
        model: a model with SVD adapters whose capacity ``r_max`` exceeds their rank.
        total_steps: number of optimizer steps ``T``.
        t_init: warm-up steps before the first round.
        t_final: final steps without rounds or score updates.
        interval: steps between rounds.
        b: ranks moved in the first round (``b0``, default 4).
        k: most ranks one module may lose or gain per round (default 2).
        optimizer: the optimizer whose state moves with ranks (or :meth:`attach_optimizer`).
        beta1, beta2: EMA factors of sensitivity and uncertainty.
        gamma: orthogonality regulariser weight (default 0.1).
        seed: seed of the RNG that draws new ranks.
    """

    @validate_params(
        "ElaLoRA",
        **SCHEDULE_CHECKS,
        interval=Integer(low=1),
        b=Integer(low=0),
        k=Integer(low=1),
    )
    def __init__(
        self,
        model: nn.Module,
        total_steps: int,
        t_init: int,
        t_final: int,
        interval: int,
        b: int = 4,
        k: int = 2,
        *,
        optimizer: torch.optim.Optimizer | None = None,
        beta1: float = 0.85,
        beta2: float = 0.85,
        gamma: float = 0.1,
        seed: int = 0,
    ) -> None:
        modules = svd_modules(model)
        if all(m.capacity <= m.active_rank for m in modules.values()):
            raise ValueError(
                "model: ElaLoRA needs room to expand; set r_max > r in the AdapterConfig "
                "(e.g. r_max = 2 * r)"
            )
        schedule = ScheduleOptions(
            total_steps, t_init=t_init, t_final=t_final, interval=interval, seed=seed
        )
        allocator = RankAllocator.elalora(*module_lists(modules), schedule, b0=b, k=k)
        super().__init__(modules, allocator, optimizer, beta1, beta2, gamma)
