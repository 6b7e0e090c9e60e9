"""A small model with DoRA adapters and a head, and data for it (shared by the BiDoRA tests)."""

from __future__ import annotations

import torch
from torch import nn

from lorax_core.adapters import AdapterConfig, inject


class Tiny(nn.Module):
    """x (B, 6) → Linear 6→8 → tanh → Linear 8→5 → tanh → [dropout] → head 5→3 logits."""

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.a = nn.Linear(6, 8)
        self.b = nn.Linear(8, 5)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(torch.tanh(self.b(torch.tanh(self.a(x))))))


def tiny_model(
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    detach_norm: bool = True,
    dropout: float = 0.0,
    random_b: bool = False,
) -> Tiny:
    """A seeded :class:`Tiny` with DoRA (r=2) on ``a`` and ``b``; ``random_b`` moves B off 0."""
    torch.manual_seed(seed)
    model = Tiny(dropout).to(dtype)
    inject(
        model,
        AdapterConfig(
            method="dora", r=2, alpha=4.0, target_modules=["a", "b"], detach_norm=detach_norm
        ),
    )
    if random_b:
        generator = torch.Generator().manual_seed(seed + 100)
        with torch.no_grad():
            for module in (model.a, model.b):
                module.lora_B.copy_(
                    0.3 * torch.randn(module.lora_B.shape, generator=generator, dtype=dtype)
                )
    return model


def tiny_data(n: int = 40, seed: int = 0, dtype: torch.dtype = torch.float32) -> list:
    """``n`` pairs ``(x (6,), label)`` with a learnable rule."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=generator, dtype=dtype)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return list(zip(x, y, strict=True))


def tiny_loss(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


def adapter_params(model: nn.Module, kind: str) -> dict[str, torch.Tensor]:
    """Copies of the ``kind`` parameters: ``"magnitude"``, ``"direction"`` or ``"head"``."""
    keys = {"magnitude": ("lora_magnitude",), "direction": ("lora_A", "lora_B"), "head": ("head",)}
    return {
        n: p.detach().clone()
        for n, p in model.named_parameters()
        if any(k in n for k in keys[kind])
    }
