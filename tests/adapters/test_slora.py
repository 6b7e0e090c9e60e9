"""SLoRA: IntTune trains only N."""

from __future__ import annotations

import torch

from lorax_core.adapters import SLoraLinear
from tests.adapters.reference import R, base_linear


def test_inttune_trains_only_n() -> None:
    layer = SLoraLinear(base_linear(torch.float32), R, 8.0, train="intermediate")
    layer.set_trainable()
    assert [n for n, p in layer.named_parameters() if p.requires_grad] == ["lora_N"]
