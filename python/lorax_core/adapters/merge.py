"""Fold adapters into the base weights and back, and export a plain merged state dict.

A module whose base weight is tied to another parameter (a causal LM's ``lm_head`` and its
input embedding) is refused by all three: they would write ΔW into the shared tensor, or
export a merged weight the tied model cannot hold. Untie first
(:func:`lorax_core.adapters.untie_weights`, or ``AdapterConfig(untie_weights=True)``).

A DDP / DataParallel wrapper may be passed to all three. An FSDP2-sharded model cannot be merged
in place; :func:`merged_state_dict` accepts it (a collective: call it on every process; every
process receives the whole merged state).
"""

from __future__ import annotations

import torch
from torch import nn

from lorax_core._distributed import enter_collective, full, full_parameters, is_sharded
from lorax_core._distributed import unwrap as _unwrap
from lorax_core.adapters.inject import adapted_modules
from lorax_core.adapters.layer import AdapterLinear
from lorax_core.adapters.tied import check_untied

__all__ = ["merge", "merged_state_dict", "unmerge"]


def _layers(function: str, model: nn.Module, action: str) -> dict[str, AdapterLinear]:
    """The adapter layers of ``model``; an error if there are none or one's weight is tied
    (``action`` says what ``function`` would do to it)."""
    layers = adapted_modules(_unwrap(model))
    if not layers:
        raise ValueError(f"{function}: model must have adapter layers, got none")
    check_untied(function, model, layers, action)
    return layers


def _check_whole(function: str, layers: dict[str, AdapterLinear]) -> None:
    """An error for sharded (FSDP2) layers, which cannot be merged in place."""
    if any(is_sharded(p) for layer in layers.values() for p in layer.parameters()):
        raise ValueError(
            f"{function}: model must not be sharded (FSDP2); use merged_state_dict(model) on "
            "every process to get the merged weights"
        )


def merge(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight (``W ← W + ΔW``); returns ``model``.

    The forward output is unchanged up to float rounding; merged layers skip the adapter path.

    Raises:
        ValueError: no adapters, or an adapted module's base weight is tied (nothing merged).
    """
    layers = _layers("merge", model, "merging would add ΔW to those parameters too")
    _check_whole("merge", layers)
    for layer in layers.values():
        layer.merge()
    return model


def unmerge(model: nn.Module) -> nn.Module:
    """Undo :func:`merge`: base weights restored up to float rounding; returns ``model``."""
    action = "unmerging would subtract ΔW from those parameters too"
    layers = _layers("unmerge", model, action)
    _check_whole("unmerge", layers)
    for layer in layers.values():
        layer.unmerge()
    return model


@torch.no_grad()
def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of the model with adapters folded in, keyed as the original model.

    Adapted modules contribute ``<module>.weight`` = W + ΔW (base dtype) and ``<module>.bias``;
    adapter parameters and buffers are left out. The model itself is not modified. Tensors are
    detached; unadapted entries share storage with the model. Under FSDP2 every ``DTensor`` is
    gathered whole: call it on every process (each receives the whole state, on the parameters'
    device).

    Raises:
        ValueError: no adapters, or an adapted module's base weight is tied (its merged weight
            would differ from the parameter it is tied to, which the model cannot hold).
    """
    layers = _layers(
        "merged_state_dict",
        model,
        "the merged weight W + ΔW would differ from the parameters it is tied to, which the "
        "tied model cannot hold",
    )
    model = _unwrap(model)
    sharded = any(is_sharded(p) for p in model.parameters())
    if sharded:
        enter_collective("merged_state_dict")
    state = model.state_dict()
    merged: dict[str, torch.Tensor] = {}
    prefixes = sorted(layers, key=len, reverse=True)
    for key, value in state.items():
        owner = next((p for p in prefixes if key.startswith(p + ".")), None)
        value = full(value)
        if owner is None:
            merged[key] = value
            continue
        rest = key[len(owner) + 1 :]
        if not rest.startswith("base_layer."):
            continue  # adapter parameters, init buffers, extra state
        param = rest[len("base_layer.") :]
        if param == "weight" and not layers[owner].merged:
            with full_parameters(layers[owner]) as layer:
                value = value + layer.delta_weight()
        merged[f"{owner}.{param}"] = value.detach()
    return merged
