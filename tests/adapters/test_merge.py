"""merge / unmerge / merged_state_dict on the real MiniLM encoder with DoRA adapters."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lorax_core.adapters import (
    AdapterConfig,
    adapted_modules,
    inject,
    merge,
    merged_state_dict,
    unmerge,
)
from tests.adapters.reference import hidden, randomise_model

QV = ["query", "value"]


def test_merge_unmerge_and_merged_state_dict(pristine: nn.Module, batch) -> None:  # type: ignore[no-untyped-def]
    model = inject(copy.deepcopy(pristine), AdapterConfig("dora", r=4, target_modules=QV))
    randomise_model(model)
    adapted = hidden(model, batch)
    state = merged_state_dict(model)
    assert state.keys() == pristine.state_dict().keys()
    fresh = copy.deepcopy(pristine)
    fresh.load_state_dict(state, strict=True)
    torch.testing.assert_close(hidden(fresh, batch), adapted, rtol=1e-4, atol=1e-4)

    merge(model)
    assert all(layer.merged for layer in adapted_modules(model).values())
    torch.testing.assert_close(hidden(model, batch), adapted, rtol=1e-4, atol=1e-4)
    merged_state = merged_state_dict(model)  # merged layers are taken as they are
    for key, value in state.items():
        torch.testing.assert_close(merged_state[key], value, rtol=1e-5, atol=1e-5)
    unmerge(model)
    original = pristine.state_dict()
    for name, layer in adapted_modules(model).items():
        torch.testing.assert_close(
            layer.base_layer.weight, original[f"{name}.weight"], rtol=0, atol=1e-6
        )


def test_merge_of_a_model_without_adapters_is_an_error(pristine: nn.Module) -> None:
    for function in (merge, unmerge, merged_state_dict):
        message = f"{function.__name__}: model must have adapter layers"
        with pytest.raises(ValueError, match=message):
            function(copy.deepcopy(pristine))
