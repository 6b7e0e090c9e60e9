"""Shared pieces of the PEFT interoperability tests: the adapted forms, seeded random adapter
values and a small exported model."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from lorax_core.adapters.config import AdapterConfig
from lorax_core.adapters.dora import DoraLinear
from lorax_core.adapters.inject import adapted_modules, inject
from lorax_core.adapters.svd import SVDLinear
from lorax_core.gelora.plan import RankPlan, plan_ranks
from lorax_core.integrations.peft import export_peft

TARGETS = ["query", "value", "intermediate.dense"]
SENTENCES = ["Shares in the bank rose sharply.", "The striker scored twice on Saturday."]
# Layer-wise IDs of the kind TwoNN gives MiniLM (h_0 … h_6); the plan then varies ranks by block.
GELORA_IDS = [10.0, 12.4, 11.0, 13.9, 12.2, 14.6, 10.5]
PREFIX = "base_model.model."
ATOL = 2e-5


def forward(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).last_hidden_state


def randomize(model: nn.Module, seed: int) -> None:
    """Non-zero, seeded adapter values so every adapter changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in adapted_modules(model).values():
            for name, p in layer.adapter_parameters().items():
                if isinstance(layer, DoraLinear) and name == "lora_magnitude":
                    p.copy_(layer.weight_norm() * (1 + 0.2 * torch.rand(p.shape, generator=g)))
                elif name == "lora_E":
                    p.copy_(torch.randn(p.shape, generator=g))
                elif name == "lora_N":
                    p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[0]))
                else:
                    p.copy_(0.03 * torch.randn(p.shape, generator=g))


def gelora_plan(model: nn.Module) -> RankPlan:
    return plan_ranks(GELORA_IDS, model, TARGETS, c=1.0, offset=1, alpha_over_r=2)


def svd_layers(model: nn.Module) -> dict[str, SVDLinear]:
    return {n: m for n, m in adapted_modules(model).items() if isinstance(m, SVDLinear)}


def svd_ranks(model: nn.Module) -> None:
    """Move SVD ranks: some modules shrink, one masks a rank inside its active range (E = 0)."""
    layers = list(svd_layers(model).values())
    for layer in layers[1::2]:
        layer.set_active_rank(3)
    with torch.no_grad():
        layers[0].lora_E[1] = 0.0


FORMS: dict[str, Callable[[nn.Module], object]] = {
    "lora": lambda m: AdapterConfig(method="lora", r=4, alpha=8, target_modules=TARGETS),
    "slora": lambda m: AdapterConfig(
        method="slora", r=4, alpha=8, target_modules=TARGETS, use_rslora=True
    ),
    "dora": lambda m: AdapterConfig(method="dora", r=4, alpha=8, target_modules=TARGETS),
    "svd": lambda m: AdapterConfig(method="svd", r=6, alpha=12, r_max=8, target_modules=TARGETS),
    "gelora": gelora_plan,
    # Residual inits: W holds W − s·B0 N0 A0; the export is a rank-2r LoRA on the original W.
    "lora_pissa": lambda m: AdapterConfig(
        method="lora",
        r=4,
        alpha=8,
        target_modules=TARGETS,
        init="pissa",
        init_options={"svd": "randomized"},
    ),
    "slora_nystrom": lambda m: AdapterConfig(
        method="slora", r=4, alpha=8, target_modules=TARGETS, init="nystrom"
    ),
}


def small_export(directory: Path, method: str = "lora") -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    inject(model, AdapterConfig(method=method, r=2, alpha=4, target_modules=["0", "1"]))
    randomize(model, 0)
    export_peft(model, directory)
    return model
