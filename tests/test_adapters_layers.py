"""Adapter layers against plain-torch reference formulas (SPEC §5)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from lorax_core.adapters import (
    AdapterLinear,
    DoraLinear,
    LoraLinear,
    SLoraLinear,
    SVDLinear,
)
from lorax_core.adapters.dora import dora_row_norm

IN, OUT, R = 24, 20, 4
FORMS = [LoraLinear, SLoraLinear, DoraLinear, SVDLinear]


def _base(dtype: torch.dtype = torch.float64, bias: bool = True, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(IN, OUT, bias=bias).to(dtype)


def _randomise(layer: AdapterLinear, seed: int = 1) -> None:
    """Give every adapter parameter non-trivial values (B and E start at zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in layer.adapter_parameters().values():
            param.copy_(torch.randn(param.shape, generator=g, dtype=param.dtype) * 0.3)
        if isinstance(layer, DoraLinear):
            layer.lora_magnitude.abs_().add_(0.5)


def _reference(layer: AdapterLinear, x: torch.Tensor) -> torch.Tensor:
    """The SPEC §5 formula with dense matrices, written independently of the layer code."""
    W, b = layer.base_layer.weight.detach(), layer.base_layer.bias
    s = layer.alpha / layer.r
    base = x @ W.T + (0 if b is None else b)
    if isinstance(layer, SLoraLinear):
        return base + s * x @ (layer.lora_B @ layer.lora_N @ layer.lora_A).T
    if isinstance(layer, SVDLinear):
        k = layer.active_rank
        delta = layer.lora_B[:, :k] @ torch.diag(layer.lora_E[:k]) @ layer.lora_A[:k]
        return base + s * x @ delta.T
    if isinstance(layer, DoraLinear):
        V = W + s * layer.lora_B @ layer.lora_A
        Wp = layer.lora_magnitude[:, None] * V / V.norm(dim=1, keepdim=True)
        return x @ Wp.T + (0 if b is None else b)
    return base + s * x @ (layer.lora_B @ layer.lora_A).T


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("bias", [True, False])
def test_forward_equals_reference_formula(form: type[AdapterLinear], bias: bool) -> None:
    layer = form(_base(bias=bias), R, 8.0)
    _randomise(layer)
    x = torch.randn(3, 5, IN, dtype=torch.float64)
    torch.testing.assert_close(layer(x), _reference(layer, x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("form", FORMS)
def test_output_equals_base_at_init(form: type[AdapterLinear]) -> None:
    base = _base(torch.float32)
    layer = form(base, R, 16.0, generator=torch.Generator().manual_seed(3))
    x = torch.randn(7, IN)
    assert torch.equal(layer(x), base(x))


@pytest.mark.parametrize("form", FORMS)
def test_delta_weight_is_the_added_matrix(form: type[AdapterLinear]) -> None:
    layer = form(_base(), R, 8.0)
    _randomise(layer)
    x = torch.randn(6, IN, dtype=torch.float64)
    W, b = layer.base_layer.weight, layer.base_layer.bias
    expected = x @ (W + layer.delta_weight()).T + b
    torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)
    assert layer.delta_weight().shape == (OUT, IN)


@pytest.mark.parametrize("form", FORMS)
def test_merge_keeps_output_and_unmerge_restores_weight(form: type[AdapterLinear]) -> None:
    layer = form(_base(torch.float32), R, 8.0)
    _randomise(layer)
    w0 = layer.base_layer.weight.detach().clone()
    x = torch.randn(5, IN)
    before = layer(x)
    layer.merge()
    assert layer.merged
    assert not torch.equal(layer.base_layer.weight, w0)
    torch.testing.assert_close(layer(x), before, rtol=1e-5, atol=1e-5)
    # delta_weight still reports ΔW while merged
    torch.testing.assert_close(
        layer.base_layer.weight - layer.delta_weight(), w0, atol=1e-6, rtol=0
    )
    layer.merge()  # idempotent
    layer.unmerge()
    assert not layer.merged
    torch.testing.assert_close(layer.base_layer.weight, w0, rtol=0, atol=1e-6)
    torch.testing.assert_close(layer(x), before, rtol=1e-6, atol=1e-6)


def test_merge_matches_dense_formula_dora() -> None:
    layer = DoraLinear(_base(), R, 8.0)
    _randomise(layer)
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
def test_dora_gradients_match_dense_reference(detach_norm: bool) -> None:
    layer = DoraLinear(_base(), R, 8.0, detach_norm=detach_norm)
    _randomise(layer)
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


def test_svd_active_rank_slices_compute() -> None:
    layer = SVDLinear(_base(), 3, 6.0, r_max=6)
    assert (layer.capacity, layer.active_rank, layer.lora_A.shape) == (6, 3, (6, IN))
    _randomise(layer)
    layer.set_active_rank(5)
    assert torch.all(layer.lora_E[5:] == 0) and torch.all(layer.lora_E[:5] != 0)
    x = torch.randn(4, IN, dtype=torch.float64)
    out = layer(x)
    torch.testing.assert_close(out, _reference(layer, x), rtol=1e-12, atol=1e-12)
    assert layer.scaling == 6.0 / 3  # alpha / initial rank, fixed while ranks move
    with torch.no_grad():  # unused slots do not take part in the compute
        layer.lora_A[5:].add_(100.0)
        layer.lora_B[:, 5:].add_(100.0)
    assert torch.equal(layer(x), out)
    layer.set_active_rank(0)
    assert torch.equal(layer(x), layer.base_layer(x))
    for bad in (-1, 7):
        with pytest.raises(ValueError, match="n must be in"):
            layer.set_active_rank(bad)
    with pytest.raises(TypeError, match="n must be an int"):
        layer.set_active_rank(2.0)  # type: ignore[arg-type]


def test_svd_active_rank_travels_in_state_dict() -> None:
    layer = SVDLinear(_base(), 4, 8.0, r_max=8)
    layer.set_active_rank(6)
    state = layer.state_dict()
    other = SVDLinear(_base(), 4, 8.0, r_max=8)
    assert other.active_rank == 4
    other.load_state_dict(state)
    assert other.active_rank == 6
    with pytest.raises(ValueError, match="outside"):
        other.set_extra_state(torch.tensor(9))


@pytest.mark.parametrize("form", FORMS)
def test_gradients_reach_only_adapter_parameters(form: type[AdapterLinear]) -> None:
    layer = form(_base(torch.float32), R, 8.0)
    _randomise(layer)
    layer.set_trainable()
    layer(torch.randn(3, IN)).sum().backward()
    assert layer.base_layer.weight.grad is None and layer.base_layer.bias.grad is None
    for name, param in layer.adapter_parameters().items():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_inttune_trains_only_n() -> None:
    layer = SLoraLinear(_base(torch.float32), R, 8.0, train="intermediate")
    layer.set_trainable()
    assert [n for n, p in layer.named_parameters() if p.requires_grad] == ["lora_N"]


def test_dropout_applies_to_adapter_input_only() -> None:
    layer = LoraLinear(_base(), R, 8.0, dropout=0.5)
    _randomise(layer)
    x = torch.randn(6, IN, dtype=torch.float64)
    layer.train()
    torch.manual_seed(11)
    out = layer(x)
    torch.manual_seed(11)
    dropped = torch.nn.functional.dropout(x, 0.5, training=True)
    s = layer.alpha / layer.r
    expected = layer.base_layer(x) + s * dropped @ (layer.lora_B @ layer.lora_A).T
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    layer.eval()
    torch.testing.assert_close(layer(x), _reference(layer, x), rtol=1e-12, atol=1e-12)


def test_rslora_scaling() -> None:
    layer = LoraLinear(_base(), 16, 8.0, use_rslora=True)
    assert layer.scaling == 8.0 / math.sqrt(16)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("form", FORMS)
def test_low_precision_base_keeps_float32_adapters(
    dtype: torch.dtype, form: type[AdapterLinear]
) -> None:
    layer = form(_base(dtype), R, 8.0)
    assert all(p.dtype == torch.float32 for p in layer.adapter_parameters().values())
    _randomise(layer)
    x = torch.randn(5, IN).to(dtype)
    out = layer(x)
    assert out.dtype == dtype
    # Oracle: the same formula in float64 from the low-precision weights and input.
    ref = form(_base(torch.float64), R, 8.0)
    with torch.no_grad():
        ref.base_layer.weight.copy_(layer.base_layer.weight.double())
        ref.base_layer.bias.copy_(layer.base_layer.bias.double())
        for name, param in layer.adapter_parameters().items():
            ref.adapter_parameters()[name].copy_(param.double())
    torch.testing.assert_close(out.double(), _reference(ref, x.double()), rtol=2e-2, atol=2e-2)
    assert layer.delta_weight().dtype == dtype
    unadapted = form(_base(dtype), R, 8.0, autocast_adapter_dtype=False)
    assert all(p.dtype == dtype for p in unadapted.adapter_parameters().values())


def test_torch_compile_matches_eager() -> None:
    """Dynamo captures LoRA and DoRA in one graph (fullgraph) and AOTAutograd differentiates it.

    The aot_eager backend skips inductor's C++ code generation, which takes minutes on a cold
    2-core machine; the graph handed to inductor is the same.
    """
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(IN, 32), nn.GELU(), nn.Linear(32, OUT))
    model[0] = DoraLinear(model[0], R, 8.0)
    model[2] = LoraLinear(model[2], R, 8.0)
    for layer in (model[0], model[2]):
        _randomise(layer)
        layer.set_trainable()
    x = torch.randn(8, IN)
    eager = model(x)
    eager.square().sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    out = compiled(x)
    out.square().sum().backward()
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)
    for name, param in model.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(param.grad, grads[name], rtol=1e-4, atol=1e-5)


def test_bad_layer_arguments() -> None:
    with pytest.raises(TypeError, match=r"base_layer must be an nn\.Linear"):
        LoraLinear(nn.Conv1d(2, 2, 1), 4)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="r must be a positive int"):
        LoraLinear(_base(), 0)
    with pytest.raises(ValueError, match="alpha"):
        LoraLinear(_base(), 2, float("nan"))
    with pytest.raises(ValueError, match="dropout"):
        DoraLinear(_base(), 2, dropout=1.0)
    with pytest.raises(ValueError, match="r_max"):
        SVDLinear(_base(), 4, r_max=2)
    with pytest.raises(ValueError, match="train"):
        SLoraLinear(_base(), 4, train="some")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("form", FORMS)
def test_cuda_matches_cpu(form: type[AdapterLinear]) -> None:
    layer = form(_base(torch.float32), R, 8.0)
    _randomise(layer)
    x = torch.randn(5, IN)
    expected = layer(x)
    on_gpu = copy.deepcopy(layer).cuda()
    torch.testing.assert_close(on_gpu(x.cuda()).cpu(), expected, rtol=1e-4, atol=1e-4)
    on_gpu.merge()
    torch.testing.assert_close(on_gpu(x.cuda()).cpu(), expected, rtol=1e-4, atol=1e-4)
    half = form(_base(torch.float32).to("cuda", torch.bfloat16), R, 8.0)
    assert half(x.to("cuda", torch.bfloat16)).dtype == torch.bfloat16
