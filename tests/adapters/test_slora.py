"""SLoRA: IntTune trains only N; forward and gradients equal the dense formula."""

from __future__ import annotations

import torch

from lorax_core.adapters import SLoraLinear
from tests.adapters.reference import IN, R, base_linear, randomise


def test_inttune_trains_only_n() -> None:
    layer = SLoraLinear(base_linear(torch.float32), R, 8.0, train="intermediate")
    layer.set_trainable()
    assert [n for n, p in layer.named_parameters() if p.requires_grad] == ["lora_N"]


def test_forward_and_gradients_equal_the_dense_formula() -> None:
    layer = SLoraLinear(base_linear(), R, 8.0)
    randomise(layer)
    x = torch.randn(2, 5, IN, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    A, N, B = (
        getattr(layer, n).detach().clone().requires_grad_() for n in ("lora_A", "lora_N", "lora_B")
    )
    x2 = x.detach().clone().requires_grad_()
    W, b = layer.base_layer.weight.detach(), layer.base_layer.bias.detach()
    want = x2 @ (W + layer.scaling * B @ N @ A).T + b
    torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12)
    w = torch.randn_like(y)
    (y * w).sum().backward()
    (want * w).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-10, atol=1e-12)
    for name, ref in (("lora_A", A), ("lora_N", N), ("lora_B", B)):
        torch.testing.assert_close(getattr(layer, name).grad, ref.grad, rtol=1e-10, atol=1e-12)


def test_inttune_backward_leaves_a_and_b_without_gradients() -> None:
    layer = SLoraLinear(base_linear(), R, 8.0, train="intermediate")
    randomise(layer)
    layer.set_trainable()
    layer(torch.randn(3, IN, dtype=torch.float64)).sum().backward()
    assert layer.lora_A.grad is None and layer.lora_B.grad is None
    assert layer.lora_N.grad is not None
