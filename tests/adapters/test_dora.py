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


def _dense_dora(layer: DoraLinear, x: torch.Tensor, dropped: torch.Tensor) -> torch.Tensor:
    """``W x + b + (W' − W) dropped``, ``W' = m ⊙ V / ‖V‖_row`` formed densely (norm detached)."""
    W, b = layer.base_layer.weight.detach(), layer.base_layer.bias
    V = W + layer.scaling * layer.lora_B @ layer.lora_A
    adapted = layer.lora_magnitude[:, None] * V / V.norm(dim=1, keepdim=True).detach()
    return x @ W.T + (0 if b is None else b) + dropped @ (adapted - W).T


@pytest.mark.parametrize("bias", [True, False])
def test_reassociated_forward_and_gradients_without_bias_and_batched(bias: bool) -> None:
    layer = DoraLinear(base_linear(bias=bias), R, 8.0)
    randomise(layer)
    x = torch.randn(2, 3, IN, dtype=torch.float64, requires_grad=True)
    twin = DoraLinear(base_linear(bias=bias), R, 8.0)
    twin.load_state_dict(layer.state_dict())
    y = layer(x)
    assert y.shape == (2, 3, layer.out_features)
    x2 = x.detach().clone().requires_grad_(True)
    want = _dense_dora(twin, x2, x2)
    torch.testing.assert_close(y, want, rtol=1e-10, atol=1e-12)
    w = torch.randn_like(y)
    (y * w).sum().backward()
    (want * w).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-10, atol=1e-12)
    for name in layer.parameter_names:
        torch.testing.assert_close(
            getattr(layer, name).grad, getattr(twin, name).grad, rtol=1e-9, atol=1e-11
        )


def test_dropout_path_applies_the_dora_term_to_the_dropped_input() -> None:
    layer = DoraLinear(base_linear(), R, 8.0, dropout=0.5).train()
    randomise(layer)
    x = torch.randn(6, IN, dtype=torch.float64)
    torch.manual_seed(5)
    y = layer(x)
    torch.manual_seed(5)
    dropped = torch.nn.functional.dropout(x, 0.5, training=True)
    torch.testing.assert_close(y, _dense_dora(layer, x, dropped), rtol=1e-10, atol=1e-12)


def test_bfloat16_base_with_float32_adapter() -> None:
    layer = DoraLinear(base_linear(torch.float32).to(torch.bfloat16), R, 8.0)
    randomise(layer)
    x = torch.randn(5, IN).to(torch.bfloat16)
    y = layer(x)
    assert y.dtype == torch.bfloat16 and layer.lora_A.dtype == torch.float32
    W = layer.base_layer.weight.float()
    V = W + layer.scaling * layer.lora_B @ layer.lora_A
    dense = x.float() @ (layer.lora_magnitude[:, None] * V / V.norm(dim=1, keepdim=True)).T
    dense = dense + layer.base_layer.bias.float()
    torch.testing.assert_close(y.float(), dense, rtol=2e-2, atol=2e-2)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_layer_norm_goes_through_the_kernel_and_equals_the_reference(
    dtype: torch.dtype,
) -> None:
    from lorax_core import kernels
    from lorax_core.kernels import reference

    layer = DoraLinear(base_linear(torch.float32).to("cuda", dtype), R, 8.0)
    randomise(layer)
    assert kernels.uses_kernel(layer.base_layer.weight, layer.lora_A, layer.lora_B)
    with torch.no_grad():
        got = layer.weight_norm()
        want = reference.dora_row_norm(
            layer.base_layer.weight.double(),
            layer.lora_A.double(),
            layer.lora_B.double(),
            layer.scaling,
        )
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
