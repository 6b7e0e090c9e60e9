"""Fold adapters into the base weights and back, and export a plain merged state dict."""

from __future__ import annotations

import torch
from torch import nn

from lorax_core.adapters.inject import adapted_modules
from lorax_core.adapters.layer import AdapterLinear

__all__ = ["merge", "merged_state_dict", "unmerge"]


def _layers(function: str, model: nn.Module) -> dict[str, AdapterLinear]:
    """The adapter layers of ``model``; an error if there are none."""
    layers = adapted_modules(model)
    if not layers:
        raise ValueError(f"{function}: model must have adapter layers, got none")
    return layers


def merge(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight (``W ← W + ΔW``); returns ``model``.

    The forward output is unchanged up to float rounding; merged layers skip the adapter path.
    """
    for layer in _layers("merge", model).values():
        layer.merge()
    return model


def unmerge(model: nn.Module) -> nn.Module:
    """Undo :func:`merge`: base weights restored up to float rounding; returns ``model``."""
    for layer in _layers("unmerge", model).values():
        layer.unmerge()
    return model


@torch.no_grad()
def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of the model with adapters folded in, keyed as the original model.

    Adapted modules contribute ``<module>.weight`` = W + ΔW (base dtype) and ``<module>.bias``;
    adapter parameters and buffers are left out. The model itself is not modified. Tensors are
    detached; unadapted entries share storage with the model.
    """
    layers = _layers("merged_state_dict", model)
    state = model.state_dict()
    merged: dict[str, torch.Tensor] = {}
    prefixes = sorted(layers, key=len, reverse=True)
    for key, value in state.items():
        owner = next((p for p in prefixes if key.startswith(p + ".")), None)
        if owner is None:
            merged[key] = value
            continue
        rest = key[len(owner) + 1 :]
        if not rest.startswith("base_layer."):
            continue  # adapter parameters, init buffers, extra state
        param = rest[len("base_layer.") :]
        if param == "weight" and not layers[owner].merged:
            value = value + layers[owner].delta_weight()
        merged[f"{owner}.{param}"] = value.detach()
    return merged
