"""AdaLoRA (baseline): cubic total-rank budget, weakest ranks masked (docs/allocators.md).

Differences from PEFT's ``RankAllocator`` **(ours)**: a masked rank leaves the active set (its
slot moves past ``active_rank``, its ``E`` is zero), so adapter compute shrinks with the budget
instead of running at the initial rank forever; exactly ``total − b(t)`` ranks are masked, ties
broken by module then slot (PEFT masks every score ≤ a threshold, so ties can mask more); since the
budget never grows, masked ranks do not come back. Masking also happens on the first step of the
final phase if the target has not been reached by then.
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

__all__ = ["AdaLoRA"]

# Checks of AdaLoRA's own arguments (the schedule's are SCHEDULE_CHECKS).
ADALORA_CHECKS = {"target_r": Integer(low=0), "delta_t": Integer(low=1), "min_rank": Integer(low=0)}


class AdaLoRA(RankAllocatorBase):
    """AdaLoRA rank allocator over the SVD-form adapters of ``model``.

    Args:
        model: a model with SVD adapters (``AdapterConfig(method="svd", r=init_r, ...)``).
        total_steps: number of optimizer steps ``T``.
        target_r: average final rank; the final total budget is ``target_r × modules``.
        t_init, t_final: warm-up and final steps without masking (PEFT's ``tinit``/``tfinal``).
        delta_t: masking interval ``ΔT``.
        optimizer: the optimizer whose state moves with ranks (or :meth:`attach_optimizer`).
        beta1, beta2: EMA factors of sensitivity and uncertainty.
        gamma: orthogonality regulariser weight (default 0.5).
        min_rank: no module is masked below this rank.
        seed: seed of the allocator's RNG.
    """

    @validate_params("AdaLoRA", **SCHEDULE_CHECKS, **ADALORA_CHECKS)
    def __init__(
        self,
        model: nn.Module,
        total_steps: int,
        target_r: int = 8,
        t_init: int = 0,
        t_final: int = 0,
        delta_t: int = 1,
        *,
        optimizer: torch.optim.Optimizer | None = None,
        beta1: float = 0.85,
        beta2: float = 0.85,
        gamma: float = 0.5,
        min_rank: int = 0,
        seed: int = 0,
    ) -> None:
        modules = svd_modules(model)
        schedule = ScheduleOptions(
            total_steps, t_init=t_init, t_final=t_final, interval=delta_t, seed=seed
        )
        allocator = RankAllocator.adalora(
            *module_lists(modules),
            schedule,
            target_total=target_r * len(modules),
            min_rank=min_rank,
        )
        super().__init__(modules, allocator, optimizer, beta1, beta2, gamma)
