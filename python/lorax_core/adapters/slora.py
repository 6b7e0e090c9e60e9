"""SLoRA: ``y = W x + b + s · B N A x`` with an r × r matrix N between A and B.

The adapter term runs through :func:`lorax_core.kernels.autograd.lora_forward` (one ``addmm``
into the base output, hand-derived backward; docs/kernels.md).
"""

from __future__ import annotations

import torch

from lorax_core._validation import check_options
from lorax_core.adapters.config import TRAIN_MODES
from lorax_core.adapters.init import INIT_METHODS
from lorax_core.adapters.layer import (
    AdapterLinear,
    LoraFactors,
    detached,
    kaiming_uniform_bound,
)
from lorax_core.adapters.lora import reset_lora_pair
from lorax_core.adapters.registry import register_form
from lorax_core.kernels.autograd import lora_forward

__all__ = ["SLoraLinear"]


@register_form("slora", inits=("default", *INIT_METHODS))
class SLoraLinear(AdapterLinear):
    """SLoRA on an ``nn.Linear``: ``lora_A`` (r, in), ``lora_N`` (r, r), ``lora_B`` (out, r).

    Default init: A ~ U(±1/√in), N ~ U(±1/√r) (Kaiming-uniform, a=√5), B = 0. With
    ``train="intermediate"`` (IntTune) only ``lora_N`` trains. Exported to PEFT as a LoRA with
    ``B' = B N``.
    """

    parameter_names = ("lora_A", "lora_N", "lora_B")

    def build(self, *, train: str = "all") -> None:
        self.train_mode = check_options(type(self).__name__, "train", train, TRAIN_MODES)
        self.lora_A = self.new_parameter(self.r, self.in_features)
        self.lora_N = self.new_parameter(self.r, self.r)
        self.lora_B = self.new_parameter(self.out_features, self.r)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        reset_lora_pair(self.lora_A, self.lora_B, generator)
        bound = kaiming_uniform_bound(self.r)
        with torch.no_grad():
            self.lora_N.copy_(
                torch.empty(self.lora_N.shape).uniform_(-bound, bound, generator=generator)
            )

    def trainable_names(self) -> tuple[str, ...]:
        return ("lora_N",) if self.train_mode == "intermediate" else self.parameter_names

    def combine(self, result: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return lora_forward(result, h, self.lora_A, self.lora_B, self.scaling, self.lora_N)

    def delta_weight(self) -> torch.Tensor:
        return self.low_rank_product(self.lora_A, self.lora_B, self.lora_N)

    def lora_factors(self, dtype: torch.dtype | None = None) -> LoraFactors:
        B = detached(self.lora_B, dtype) @ detached(self.lora_N, dtype)
        return B, detached(self.lora_A, dtype), self.scaling
