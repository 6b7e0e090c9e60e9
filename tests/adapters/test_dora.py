"""DoRA: the row-norm identity, merge and gradients against dense references."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lorax_core.adapters import DoraLinear
from lorax_core.adapters.dora import dora_row_norm
from tests.adapters.reference import IN, R, base_linear, randomise


def test_merge_matches_dense_formula_dora() -> None:
    layer = DoraLinear(base_linear(), R, 8.0)
    randomise(layer)
    W = layer.base_layer.weight.detach().clone()
    V = W + (layer.alpha / layer.r) * layer.lora_B.detach() @ layer.lora_A.detach()
    expected = layer.lora_magnitude.detach()[:, None] * V / V.norm(dim=1, keepdim=True)
    layer.merge()
    torch.testing.assert_close(layer.base_layer.weight, expected, rtol=1e-12, atol=1e-12)


@given(
    out=st.integers(1, 40),
    inp=st.integers(1, 40),
    r=st.integers(1, 8),
    scale=st.floats(0.01, 10.0),
    seed=st.integers(0, 2**16),
)
def test_dora_norm_identity_equals_dense(
    out: int, inp: int, r: int, scale: float, seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(out, inp, generator=g, dtype=torch.float64)
    A = torch.randn(r, inp, generator=g, dtype=torch.float64)
    B = torch.randn(out, r, generator=g, dtype=torch.float64)
    dense = torch.linalg.norm(W + scale * B @ A, dim=1)
    torch.testing.assert_close(dora_row_norm(W, A, B, scale), dense, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("detach_norm", [True, False])
def test_dora_gradients_match_densereference_output(detach_norm: bool) -> None:
    layer = DoraLinear(base_linear(), R, 8.0, detach_norm=detach_norm)
    randomise(layer)
    x = torch.randn(4, IN, dtype=torch.float64)
    A = layer.lora_A.detach().clone().requires_grad_(True)
    B = layer.lora_B.detach().clone().requires_grad_(True)
    m = layer.lora_magnitude.detach().clone().requires_grad_(True)
    W, b = layer.base_layer.weight.detach(), layer.base_layer.bias.detach()
    V = W + (layer.alpha / layer.r) * B @ A
    norm = V.norm(dim=1, keepdim=True)
    if detach_norm:
        norm = norm.detach()
    (x @ (m[:, None] * V / norm).T + b).square().sum().backward()
    layer(x).square().sum().backward()
    for mine, ref in ((layer.lora_A, A), (layer.lora_B, B), (layer.lora_magnitude, m)):
        torch.testing.assert_close(mine.grad, ref.grad, rtol=1e-9, atol=1e-10)
