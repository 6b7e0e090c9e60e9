"""SVD form (AdaLoRA/ElaLoRA): ``y = W x + b + (alpha / r) · B diag(E) A x``.

Storage is padded to a capacity ``r_max`` so parameter shapes (and optimizer state) never change
when ranks move; slots ``[0, active_rank)`` are in use, compute slices to them, and ``E`` is kept
zero in the slots beyond.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.functional import linear

from lorax_core.adapters.layer import AdapterLinear

__all__ = ["SVDLinear"]

_INIT_STD = 0.02


class SVDLinear(AdapterLinear):
    """SVD-form adapter: ``lora_A`` (r_max, in), ``lora_E`` (r_max,), ``lora_B`` (out, r_max).

    ``scaling = alpha / r`` with r the initial rank (fixed while ranks move). ``active_rank``
    (a Python int) starts at r; ``set_active_rank`` changes it. Init: A, B ~ N(0, 0.02²) in every
    slot, E = 0, so the output equals the base layer's. ``active_rank`` is part of the module's
    state dict through ``get_extra_state`` (key ``<module>._extra_state``, an int64 scalar).
    """

    method = "svd"
    parameter_names = ("lora_A", "lora_E", "lora_B")

    def __init__(
        self,
        base_layer: nn.Linear,
        r: int = 8,
        alpha: float = 16.0,
        *,
        r_max: int | None = None,
        dropout: float = 0.0,
        use_rslora: bool = False,
        autocast_adapter_dtype: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(
            base_layer,
            r,
            alpha,
            dropout=dropout,
            use_rslora=use_rslora,
            autocast_adapter_dtype=autocast_adapter_dtype,
        )
        capacity = r if r_max is None else r_max
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < r:
            raise ValueError(f"r_max must be an int ≥ r ({r}), got {r_max!r}")
        self.capacity = capacity
        self.active_rank = r
        self.lora_A = self._new_parameter(capacity, self.in_features)
        self.lora_E = self._new_parameter(capacity)
        self.lora_B = self._new_parameter(self.out_features, capacity)
        self.reset_parameters(generator)

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
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"n must be an int, got {type(n).__name__}")
        if not 0 <= n <= self.capacity:
            raise ValueError(f"n must be in [0, {self.capacity}] (the capacity), got {n}")
        if self.merged:
            raise RuntimeError("cannot change the active rank of a merged layer; unmerge first")
        self.active_rank = n
        with torch.no_grad():
            self.lora_E[n:].zero_()

    def get_extra_state(self) -> torch.Tensor:
        return torch.tensor(self.active_rank, dtype=torch.int64)

    def set_extra_state(self, state: object) -> None:
        value = int(state.item()) if isinstance(state, torch.Tensor) else state
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"active rank state must be an int, got {state!r}")
        if not 0 <= value <= self.capacity:
            raise ValueError(f"active rank {value} is outside [0, {self.capacity}]")
        self.active_rank = value

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
