"""Reference helpers for the adapter-layer tests: small base layers, random adapter values, and
each form's output written with dense matrices, independently of the layer code
(docs/adapters.md)."""

from __future__ import annotations

import torch
from torch import nn

from lorax_core.adapters import (
    AdapterLinear,
    DoraLinear,
    LoraLinear,
    SLoraLinear,
    SVDLinear,
    adapted_modules,
)

IN, OUT, R = 24, 20, 4
FORMS = [LoraLinear, SLoraLinear, DoraLinear, SVDLinear]

# Module names of a 6-layer BERT encoder (MiniLM), plus the pooler.
SUFFIXES = [
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
]
NAMES = [f"encoder.layer.{i}.{s}" for i in range(6) for s in SUFFIXES] + ["pooler.dense"]
# Selector vocabulary: leaf names, dotted suffixes, full names, a non-match.
VOCAB = ["query", "key", "value", "dense", "self.query", "output.dense", "pooler.dense", "nope"]
VOCAB += NAMES[:3]


def base_linear(dtype: torch.dtype = torch.float64, bias: bool = True, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(IN, OUT, bias=bias).to(dtype)


def randomise(layer: AdapterLinear, seed: int = 1) -> None:
    """Give every adapter parameter non-trivial values (B and E start at zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in layer.adapter_parameters().values():
            param.copy_(torch.randn(param.shape, generator=g, dtype=param.dtype) * 0.3)
        if isinstance(layer, DoraLinear):
            layer.lora_magnitude.abs_().add_(0.5)


def reference_output(layer: AdapterLinear, x: torch.Tensor) -> torch.Tensor:
    """The form's formula with dense matrices, written independently of the layer code."""
    W, b = layer.base_layer.weight.detach(), layer.base_layer.bias
    s = layer.alpha / layer.r
    base = x @ W.T + (0 if b is None else b)
    if isinstance(layer, SLoraLinear):
        return base + s * x @ (layer.lora_B @ layer.lora_N @ layer.lora_A).T
    if isinstance(layer, SVDLinear):
        k = layer.active_rank
        delta = layer.lora_B[:, :k] @ torch.diag(layer.lora_E[:k]) @ layer.lora_A[:k]
        return base + s * x @ delta.T
    if isinstance(layer, DoraLinear):
        V = W + s * layer.lora_B @ layer.lora_A
        Wp = layer.lora_magnitude[:, None] * V / V.norm(dim=1, keepdim=True)
        return x @ Wp.T + (0 if b is None else b)
    return base + s * x @ (layer.lora_B @ layer.lora_A).T


def hidden(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The encoder's last hidden state for ``batch``."""
    return model(**batch).last_hidden_state


def randomise_model(model: nn.Module, seed: int = 0) -> None:
    """Seeded non-zero values in every adapter of ``model`` (magnitudes scaled near 1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in adapted_modules(model).values():
            for name, p in layer.adapter_parameters().items():
                if name == "lora_magnitude":
                    p.mul_(1 + 0.1 * torch.rand(p.shape, generator=g))
                else:
                    p.copy_(0.05 * torch.randn(p.shape, generator=g))
