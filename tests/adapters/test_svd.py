"""The SVD form: active ranks slice the compute and travel in the state dict."""

from __future__ import annotations

import pytest
import torch

from lorax_core.adapters import SVDLinear
from tests.adapters.reference import IN, base_linear, randomise, reference_output


def test_svd_active_rank_slices_compute() -> None:
    layer = SVDLinear(base_linear(), 3, 6.0, r_max=6)
    assert (layer.capacity, layer.active_rank, layer.lora_A.shape) == (6, 3, (6, IN))
    randomise(layer)
    layer.set_active_rank(5)
    assert torch.all(layer.lora_E[5:] == 0) and torch.all(layer.lora_E[:5] != 0)
    x = torch.randn(4, IN, dtype=torch.float64)
    out = layer(x)
    torch.testing.assert_close(out, reference_output(layer, x), rtol=1e-12, atol=1e-12)
    assert layer.scaling == 6.0 / 3  # alpha / initial rank, fixed while ranks move
    with torch.no_grad():  # unused slots do not take part in the compute
        layer.lora_A[5:].add_(100.0)
        layer.lora_B[:, 5:].add_(100.0)
    assert torch.equal(layer(x), out)
    layer.set_active_rank(0)
    assert torch.equal(layer(x), layer.base_layer(x))
    for bad in (-1, 7):
        with pytest.raises(ValueError, match=r"set_active_rank: n must be an int in \[0, 6\]"):
            layer.set_active_rank(bad)
    with pytest.raises(TypeError, match="set_active_rank: n must be an int"):
        layer.set_active_rank(2.0)  # type: ignore[arg-type]


def test_svd_active_rank_travels_in_state_dict() -> None:
    layer = SVDLinear(base_linear(), 4, 8.0, r_max=8)
    layer.set_active_rank(6)
    state = layer.state_dict()
    other = SVDLinear(base_linear(), 4, 8.0, r_max=8)
    assert other.active_rank == 4
    other.load_state_dict(state)
    assert other.active_rank == 6
    with pytest.raises(ValueError, match=r"active rank must be an int in \[0, 8\], got 9"):
        other.set_extra_state(torch.tensor(9))
