"""Trainer state on disk: a nested state with tensors and int keys round-trips exactly."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from lorax_core.training import load_state, save_state


def test_optimizer_and_rng_state_round_trip(tmp_path):
    param = torch.nn.Parameter(torch.randn(3, 2))
    optimizer = torch.optim.AdamW([param], lr=0.1, betas=(0.9, 0.98))
    param.grad = torch.ones_like(param)
    optimizer.step()
    state = {"optimizer": optimizer.state_dict(), "rng": torch.get_rng_state(), "none": None}
    save_state(tmp_path / "s.safetensors", state)
    back = load_state(tmp_path / "s.safetensors")
    assert torch.equal(back["rng"], state["rng"]) and back["none"] is None
    fresh = torch.optim.AdamW([param], lr=0.1)
    fresh.load_state_dict(back["optimizer"])
    saved = optimizer.state_dict()["state"][0]
    for key, value in fresh.state_dict()["state"][0].items():
        assert torch.equal(value, saved[key])
    assert fresh.param_groups[0]["betas"] == [0.9, 0.98]  # tuples come back as lists


def test_a_foreign_file_is_rejected(tmp_path):
    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="path"):
        load_state(tmp_path / "other.safetensors")


def test_unstorable_values_are_rejected(tmp_path):
    with pytest.raises(TypeError, match="state"):
        save_state(tmp_path / "s.safetensors", {"f": object()})
