"""LoRA: ``y = W x + b + s · B A x`` with A (r × in), B (out × r), s = alpha / r."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.functional import linear

from lorax_core.adapters.layer import AdapterLinear, kaiming_uniform_bound

__all__ = ["LoraLinear", "reset_lora_pair"]


@torch.no_grad()
def reset_lora_pair(
    lora_A: torch.Tensor, lora_B: torch.Tensor, generator: torch.Generator | None = None
) -> None:
    """LoRA's default init in place: A (r, in) ~ U(±1/√in) (Kaiming-uniform, a=√5), B = 0.

    Values are drawn on the CPU from ``generator`` so a seed gives the same init on any device.
    """
    bound = kaiming_uniform_bound(lora_A.shape[1])
    lora_A.copy_(torch.empty(lora_A.shape).uniform_(-bound, bound, generator=generator))
    lora_B.zero_()


class LoraLinear(AdapterLinear):
    """LoRA on an ``nn.Linear``. Parameters ``lora_A`` (r, in) and ``lora_B`` (out, r).

    Default init: A ~ Kaiming-uniform(a=√5) = U(±1/√in), B = 0, so the output equals the base
    layer's at init.
    """

    method = "lora"
    parameter_names = ("lora_A", "lora_B")

    def __init__(
        self,
        base_layer: nn.Linear,
        r: int = 8,
        alpha: float = 16.0,
        *,
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
        self.lora_A = self._new_parameter(r, self.in_features)
        self.lora_B = self._new_parameter(self.out_features, r)
        self.reset_parameters(generator)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        reset_lora_pair(self.lora_A, self.lora_B, generator)

    def combine(self, result: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return result + linear(linear(h, self.lora_A), self.lora_B) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        return self.low_rank_product(self.lora_A, self.lora_B)
