"""AdapterLinear and every built-in form against plain-torch reference formulas.

The formulas are those of docs/adapters.md.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from lorax_core.adapters import AdapterLinear, DoraLinear, LoraLinear, SLoraLinear, SVDLinear
from tests.adapters.reference import FORMS, IN, OUT, R, base_linear, randomise, reference_output


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("bias", [True, False])
def test_forward_equals_reference_formula(form: type[AdapterLinear], bias: bool) -> None:
    layer = form(base_linear(bias=bias), R, 8.0)
    randomise(layer)
    x = torch.randn(3, 5, IN, dtype=torch.float64)
    torch.testing.assert_close(layer(x), reference_output(layer, x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("form", FORMS)
def test_output_equals_base_at_init(form: type[AdapterLinear]) -> None:
    base = base_linear(torch.float32)
    layer = form(base, R, 16.0, generator=torch.Generator().manual_seed(3))
    x = torch.randn(7, IN)
    assert torch.equal(layer(x), base(x))


@pytest.mark.parametrize("form", FORMS)
def test_delta_weight_is_the_added_matrix(form: type[AdapterLinear]) -> None:
    layer = form(base_linear(), R, 8.0)
    randomise(layer)
    x = torch.randn(6, IN, dtype=torch.float64)
    W, b = layer.base_layer.weight, layer.base_layer.bias
    expected = x @ (W + layer.delta_weight()).T + b
    torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)
    assert layer.delta_weight().shape == (OUT, IN)


@pytest.mark.parametrize("form", FORMS)
def test_merge_keeps_output_and_unmerge_restores_weight(form: type[AdapterLinear]) -> None:
    layer = form(base_linear(torch.float32), R, 8.0)
    randomise(layer)
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


@pytest.mark.parametrize("form", FORMS)
def test_gradients_reach_only_adapter_parameters(form: type[AdapterLinear]) -> None:
    layer = form(base_linear(torch.float32), R, 8.0)
    randomise(layer)
    layer.set_trainable()
    layer(torch.randn(3, IN)).sum().backward()
    assert layer.base_layer.weight.grad is None and layer.base_layer.bias.grad is None
    for name, param in layer.adapter_parameters().items():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_dropout_applies_to_adapter_input_only() -> None:
    layer = LoraLinear(base_linear(), R, 8.0, dropout=0.5)
    randomise(layer)
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
    torch.testing.assert_close(layer(x), reference_output(layer, x), rtol=1e-12, atol=1e-12)


def test_rslora_scaling() -> None:
    layer = LoraLinear(base_linear(), 16, 8.0, use_rslora=True)
    assert layer.scaling == 8.0 / math.sqrt(16)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("form", FORMS)
def test_low_precision_base_keeps_float32_adapters(
    dtype: torch.dtype, form: type[AdapterLinear]
) -> None:
    layer = form(base_linear(dtype), R, 8.0)
    assert all(p.dtype == torch.float32 for p in layer.adapter_parameters().values())
    randomise(layer)
    x = torch.randn(5, IN).to(dtype)
    out = layer(x)
    assert out.dtype == dtype
    # Oracle: the same formula in float64 from the low-precision weights and input.
    ref = form(base_linear(torch.float64), R, 8.0)
    with torch.no_grad():
        ref.base_layer.weight.copy_(layer.base_layer.weight.double())
        ref.base_layer.bias.copy_(layer.base_layer.bias.double())
        for name, param in layer.adapter_parameters().items():
            ref.adapter_parameters()[name].copy_(param.double())
    torch.testing.assert_close(
        out.double(), reference_output(ref, x.double()), rtol=2e-2, atol=2e-2
    )
    assert layer.delta_weight().dtype == dtype
    unadapted = form(base_linear(dtype), R, 8.0, autocast_adapter_dtype=False)
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
        randomise(layer)
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
    with pytest.raises(ValueError, match=r"LoraLinear: r must be an int in \[1, 20\], got 0"):
        LoraLinear(base_linear(), 0)
    with pytest.raises(ValueError, match=r"LoraLinear: alpha must be a finite number > 0\.0"):
        LoraLinear(base_linear(), 2, float("nan"))
    with pytest.raises(ValueError, match=r"DoraLinear: dropout must be a finite number in \[0.0"):
        DoraLinear(base_linear(), 2, dropout=1.0)
    with pytest.raises(ValueError, match=r"SVDLinear: r_max must be an int in \[4, 20\], got 2"):
        SVDLinear(base_linear(), 4, r_max=2)
    with pytest.raises(
        ValueError,
        match=r"LoraLinear: r must be an int in \[1, 20\], got 1000000000000000000000000000000",
    ):
        LoraLinear(base_linear(), 10**30)  # never reaches torch as an overflowing size
    with pytest.raises(
        ValueError, match=r"SVDLinear: r_max must be an int in \[4, 20\], got 9223372036854775808"
    ):
        SVDLinear(base_linear(), 4, r_max=2**63)
    for dtype in (torch.complex64, torch.int32, torch.bool):
        weird = base_linear()
        weird.weight = nn.Parameter(weird.weight.detach().to(dtype), requires_grad=False)
        with pytest.raises(
            TypeError,
            match=f"LoraLinear: base_layer weight must have dtype .*, got {str(dtype)[6:]}",
        ):
            LoraLinear(weird, 2)
    with pytest.raises(ValueError, match="SLoraLinear: train must be one of 'all', 'intermediate'"):
        SLoraLinear(base_linear(), 4, train="some")
    with pytest.raises(TypeError, match=r"LoraLinear: options must be among \[\], got \['r_max'\]"):
        LoraLinear(base_linear(), 4, r_max=8)
    with pytest.raises(TypeError, match="DoraLinear: detach_norm must be a bool"):
        DoraLinear(base_linear(), 4, detach_norm=1)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("form", FORMS)
def test_cuda_matches_cpu(form: type[AdapterLinear]) -> None:
    layer = form(base_linear(torch.float32), R, 8.0)
    randomise(layer)
    x = torch.randn(5, IN)
    expected = layer(x)
    on_gpu = copy.deepcopy(layer).cuda()
    torch.testing.assert_close(on_gpu(x.cuda()).cpu(), expected, rtol=1e-4, atol=1e-4)
    on_gpu.merge()
    torch.testing.assert_close(on_gpu(x.cuda()).cpu(), expected, rtol=1e-4, atol=1e-4)
    half = form(base_linear(torch.float32).to("cuda", torch.bfloat16), R, 8.0)
    assert half(x.to("cuda", torch.bfloat16)).dtype == torch.bfloat16
