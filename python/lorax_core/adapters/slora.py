"""SLoRA: ``y = W x + b + s · B N A x`` with an r × r matrix N between A and B."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.functional import linear

from lorax_core.adapters.layer import AdapterLinear, kaiming_uniform_bound
from lorax_core.adapters.lora import reset_lora_pair

__all__ = ["SLoraLinear"]


class SLoraLinear(AdapterLinear):
    """SLoRA on an ``nn.Linear``: ``lora_A`` (r, in), ``lora_N`` (r, r), ``lora_B`` (out, r).

    Default init: A ~ U(±1/√in), N ~ U(±1/√r) (Kaiming-uniform, a=√5), B = 0. With
    ``train="intermediate"`` (IntTune) only ``lora_N`` trains.
    """

    method = "slora"
    parameter_names = ("lora_A", "lora_N", "lora_B")

    def __init__(
        self,
        base_layer: nn.Linear,
        r: int = 8,
        alpha: float = 16.0,
        *,
        dropout: float = 0.0,
        use_rslora: bool = False,
        autocast_adapter_dtype: bool = True,
        train: str = "all",
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
        if train not in ("all", "intermediate"):
            raise ValueError(f"train must be 'all' or 'intermediate', got {train!r}")
        self.train_mode = train
        self.lora_A = self._new_parameter(r, self.in_features)
        self.lora_N = self._new_parameter(r, r)
        self.lora_B = self._new_parameter(self.out_features, r)
        self.reset_parameters(generator)

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
        return (
            result + linear(linear(linear(h, self.lora_A), self.lora_N), self.lora_B) * self.scaling
        )

    def delta_weight(self) -> torch.Tensor:
        return self.low_rank_product(self.lora_A, self.lora_B, self.lora_N)
