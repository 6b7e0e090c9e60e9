"""The hand-derived LoRA/SLoRA forward–backward against autograd's graph of the composition."""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck
from torch.nn.functional import linear

from lorax_core.kernels.autograd import LoraFunction, lora_forward
from tests.kernels.conftest import needs_cuda


def _composition(result, x, A, N, B, s):  # type: ignore[no-untyped-def]
    h = linear(x, A)
    if N is not None:
        h = linear(h, N)
    return result + linear(h, B) * s


def _inputs(dtype, with_n, device="cpu", seed=0):  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(seed)
    make = lambda *s: torch.randn(*s, generator=g, dtype=dtype).to(device).requires_grad_()  # noqa: E731
    return make(2, 3, 7), make(2, 3, 5), make(4, 5), make(4, 4) if with_n else None, make(7, 4)


@pytest.mark.parametrize("with_n", [False, True])
def test_gradcheck_float64(with_n: bool) -> None:
    result, x, A, N, B = _inputs(torch.float64, with_n)
    assert gradcheck(lambda *t: LoraFunction.apply(*t, 0.75), (result, x, A, N, B))


@pytest.mark.parametrize("with_n", [False, True])
def test_float32_equals_autograd(with_n: bool) -> None:
    args = _inputs(torch.float32, with_n, seed=1)
    twins = [None if t is None else t.detach().clone().requires_grad_() for t in args]
    y = LoraFunction.apply(*args, 2.0)
    z = _composition(*twins, 2.0)
    torch.testing.assert_close(y, z)
    w = torch.randn_like(y)
    (y * w).sum().backward()
    (z * w).sum().backward()
    for a, b in zip(args, twins, strict=True):
        if a is not None:
            torch.testing.assert_close(a.grad, b.grad)


def test_frozen_factors_get_no_gradient() -> None:
    result, x, A, N, B = _inputs(torch.float32, True)
    A.requires_grad_(False)
    B.requires_grad_(False)
    LoraFunction.apply(result, x, A, N, B, 1.0).sum().backward()
    assert A.grad is None and B.grad is None and N.grad is not None and x.grad is not None


def test_mixed_dtypes_take_the_composition() -> None:
    result, x, A, _, B = _inputs(torch.float32, False)
    low = result.detach().bfloat16()
    y = lora_forward(low, x, A, B, 0.5)
    assert y.dtype == torch.float32 and y.grad_fn is not None
    assert "LoraFunction" not in type(y.grad_fn).__name__
    torch.testing.assert_close(y, _composition(low, x, A, None, B, 0.5))


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("with_n", [False, True])
def test_cuda_equals_autograd(with_n: bool) -> None:
    args = _inputs(torch.float32, with_n, device="cuda", seed=2)
    twins = [None if t is None else t.detach().clone().requires_grad_() for t in args]
    y = LoraFunction.apply(*args, 2.0)
    z = _composition(*twins, 2.0)
    (y.square().sum()).backward()
    (z.square().sum()).backward()
    for a, b in zip(args, twins, strict=True):
        if a is not None:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-4)
