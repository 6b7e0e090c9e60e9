"""SVD form (AdaLoRA/ElaLoRA): ``y = W x + b + (alpha / r) · B diag(E) A x``.

Storage is padded to a capacity ``r_max`` so parameter shapes (and optimizer state) never change
when ranks move; slots ``[0, active_rank)`` are in use, compute slices to them, and ``E`` is kept
zero in the slots beyond.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn.functional import linear

from lorax_core._validation import Integer, check
from lorax_core.adapters.layer import AdapterLinear, LoraFactors, detached, max_rank
from lorax_core.adapters.registry import register_form

__all__ = ["SVDLinear"]

_INIT_STD = 0.02


@register_form("svd")
class SVDLinear(AdapterLinear):
    """SVD-form adapter: ``lora_A`` (r_max, in), ``lora_E`` (r_max,), ``lora_B`` (out, r_max).

    ``scaling = alpha / r`` with r the initial rank (fixed while ranks move). ``active_rank``
    (a Python int) starts at r; ``set_active_rank`` changes it. Init: A, B ~ N(0, 0.02²) in every
    slot, E = 0, so the output equals the base layer's. ``active_rank`` is part of the module's
    state dict through ``get_extra_state`` (key ``<module>._extra_state``, an int64 scalar).
    Exported to PEFT as a LoRA with ``A' = diag(E) A`` over the active, non-zero slots.
    """

    parameter_names = ("lora_A", "lora_E", "lora_B")
    state_keys = ("active_rank",)

    def build(self, *, r_max: int | None = None) -> None:
        name = type(self).__name__
        capacity = (
            self.r
            if r_max is None
            else check(
                name,
                "r_max",
                r_max,
                Integer(low=self.r, high=max(self.r, max_rank(self.base_layer))),
            )
        )
        self.capacity = capacity
        self.active_rank = self.r
        self.lora_A = self.new_parameter(capacity, self.in_features)
        self.lora_E = self.new_parameter(capacity)
        self.lora_B = self.new_parameter(self.out_features, capacity)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        self.lora_A.copy_(
            torch.empty(self.lora_A.shape).normal_(0.0, _INIT_STD, generator=generator)
        )
        self.lora_B.copy_(
            torch.empty(self.lora_B.shape).normal_(0.0, _INIT_STD, generator=generator)
        )
        self.lora_E.zero_()

    def set_active_rank(self, n: int) -> None:
        """Use slots ``[0, n)``; ``E`` in slots ``≥ n`` is set to zero. ``0 ≤ n ≤ capacity``."""
        n = check("SVDLinear.set_active_rank", "n", n, Integer(0, self.capacity))
        if self.merged:
            raise RuntimeError("cannot change the active rank of a merged layer; unmerge first")
        self.active_rank = n
        with torch.no_grad():
            self.lora_E[n:].zero_()

    def get_extra_state(self) -> torch.Tensor:
        return torch.tensor(self.active_rank, dtype=torch.int64)

    def set_extra_state(self, state: object) -> None:
        value = state.item() if isinstance(state, torch.Tensor) else state
        function = "SVDLinear.set_extra_state"
        self.active_rank = check(function, "active rank", value, Integer(0, self.capacity))

    def record(self) -> dict[str, Any]:
        return {**super().record(), "capacity": self.capacity, "active_rank": self.active_rank}

    def restore(self, record: dict[str, Any]) -> None:
        self.set_extra_state(record.get("active_rank", self.r))

    def lora_factors(self, dtype: torch.dtype | None = None) -> LoraFactors:
        """``(B_k, diag(E_k) A_k, scaling)`` over the active slots whose E is non-zero.

        A masked slot (E = 0) adds exactly nothing, so it is left out; with none left, one
        exactly-zero rank (PEFT needs r >= 1).
        """
        E = detached(self.lora_E, dtype)
        A, B = detached(self.lora_A, dtype), detached(self.lora_B, dtype)
        active = torch.arange(E.numel(), device=E.device) < self.active_rank
        keep = torch.nonzero(active & (E != 0)).reshape(-1)
        if keep.numel() == 0:
            return B[:, :1] * 0.0, A[:1] * 0.0, self.scaling
        return B[:, keep], E[keep, None] * A[keep], self.scaling

    def combine(self, result: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        k = self.active_rank
        if k == 0:
            return result
        inner = linear(h, self.lora_A[:k]) * self.lora_E[:k]
        return result + linear(inner, self.lora_B[:, :k]) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        k = self.active_rank
        return self.low_rank_product(self.lora_E[:k, None] * self.lora_A[:k], self.lora_B[:, :k])

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, active_rank={self.active_rank}, capacity={self.capacity}"
