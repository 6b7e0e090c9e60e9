"""LoRA: ``y = W x + b + s · B A x`` with A (r × in), B (out × r), s = alpha / r.

The adapter term runs through :func:`lorax_core.kernels.autograd.lora_forward`: one ``addmm``
into the base output and a hand-derived backward (less temporary memory than autograd's graph,
same gradients; docs/kernels.md).
"""

from __future__ import annotations

import torch

from lorax_core.adapters.init import INIT_METHODS
from lorax_core.adapters.layer import (
    AdapterLinear,
    LoraFactors,
    detached,
    kaiming_uniform_bound,
)
from lorax_core.adapters.registry import register_form
from lorax_core.kernels.autograd import lora_forward

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


@register_form(
    "lora",
    inits=("default", *(i for i in INIT_METHODS if i != "nlora")),
    peft_native=True,
)
class LoraLinear(AdapterLinear):
    """LoRA on an ``nn.Linear``. Parameters ``lora_A`` (r, in) and ``lora_B`` (out, r).

    Default init: A ~ Kaiming-uniform(a=√5) = U(±1/√in), B = 0, so the output equals the base
    layer's at init. Exported to PEFT as it is.
    """

    parameter_names = ("lora_A", "lora_B")

    def build(self) -> None:
        self.lora_A = self.new_parameter(self.r, self.in_features)
        self.lora_B = self.new_parameter(self.out_features, self.r)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        reset_lora_pair(self.lora_A, self.lora_B, generator)

    def combine(self, result: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return lora_forward(result, h, self.lora_A, self.lora_B, self.scaling)

    def delta_weight(self) -> torch.Tensor:
        return self.low_rank_product(self.lora_A, self.lora_B)

    def lora_factors(self, dtype: torch.dtype | None = None) -> LoraFactors:
        return detached(self.lora_B, dtype), detached(self.lora_A, dtype), self.scaling
