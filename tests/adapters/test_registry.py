"""The adapter-form registry: a form defined here alone gets injection, counting, merge/unmerge,
save/load and PEFT export (read by PEFT itself) without any change to lorax_core."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from torch import nn
from torch.nn.functional import linear

from lorax_core.adapters import (
    AdapterConfig,
    AdapterLinear,
    LoraLinear,
    adapted_modules,
    form_names,
    get_form,
    inject,
    load_adapter,
    merge,
    merged_state_dict,
    register_form,
    save_adapter,
    trainable_parameters,
    unmerge,
)
from lorax_core.adapters.layer import LoraFactors, detached
from lorax_core.adapters.lora import reset_lora_pair
from lorax_core.adapters.registry import form_of, unregister_form
from lorax_core.integrations.peft import export_peft
from tests.adapters.reference import IN, OUT, base_linear, hidden

NAME = "scaled_lora"
QV = ["query", "value"]


class ScaledLoraLinear(AdapterLinear):
    """LoRA with a learned per-rank scale: ``ΔW = s · B diag(d) A``, d (r,) starting at 1."""

    parameter_names = ("lora_A", "lora_d", "lora_B")

    def build(self) -> None:
        self.lora_A = self.new_parameter(self.r, self.in_features)
        self.lora_d = self.new_parameter(self.r)
        self.lora_B = self.new_parameter(self.out_features, self.r)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        reset_lora_pair(self.lora_A, self.lora_B, generator)
        with torch.no_grad():
            self.lora_d.fill_(1.0)

    def combine(self, result: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return result + linear(linear(h, self.lora_A) * self.lora_d, self.lora_B) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        return self.low_rank_product(self.lora_d[:, None] * self.lora_A, self.lora_B)

    def lora_factors(self, dtype: torch.dtype | None = None) -> LoraFactors:
        A = detached(self.lora_d, dtype)[:, None] * detached(self.lora_A, dtype)
        return detached(self.lora_B, dtype), A, self.scaling


@pytest.fixture(scope="module", autouse=True)
def registered() -> Iterator[None]:
    """The toy form is registered for this module's tests only."""
    register_form(NAME)(ScaledLoraLinear)
    yield
    unregister_form(NAME)


def _randomise(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in adapted_modules(model).values():
            for name, p in layer.adapter_parameters().items():
                scale = 1.0 if name == "lora_d" else 0.05
                p.copy_(scale * torch.randn(p.shape, generator=g))


def _adapted(pristine: nn.Module, seed: int = 1) -> nn.Module:
    model = inject(copy.deepcopy(pristine), AdapterConfig(NAME, r=4, alpha=8, target_modules=QV))
    _randomise(model, seed)
    return model


def test_registration_is_known_everywhere() -> None:
    assert NAME in form_names()
    form = get_form(NAME)
    assert form.layer is ScaledLoraLinear and ScaledLoraLinear.method == NAME
    assert form.options == () and form.inits == ("default",) and not form.peft_native
    layer = ScaledLoraLinear(base_linear(), 3, 6.0)
    assert form_of(layer) is form
    assert AdapterConfig(NAME, target_modules=["q"]).method == NAME
    with pytest.raises(ValueError, match=f"init must be one of 'default' for method '{NAME}'"):
        AdapterConfig(NAME, target_modules=["q"], init="pissa")
    with pytest.raises(ValueError, match=f"r_max must be None for method '{NAME}'"):
        AdapterConfig(NAME, target_modules=["q"], r_max=8)


def test_forward_and_merge_follow_the_dense_formula() -> None:
    layer = ScaledLoraLinear(base_linear(), 3, 6.0)
    x = torch.randn(5, IN, dtype=torch.float64)
    assert torch.equal(layer(x), layer.base_layer(x))  # B = 0 at init
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in layer.adapter_parameters().values():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    W = layer.base_layer.weight.detach().clone()
    dense = W + 2.0 * layer.lora_B @ torch.diag(layer.lora_d) @ layer.lora_A
    expected = x @ dense.T + layer.base_layer.bias
    torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)
    layer.merge()
    torch.testing.assert_close(layer.base_layer.weight, dense, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)
    layer.unmerge()
    torch.testing.assert_close(layer.base_layer.weight, W, rtol=0, atol=1e-12)
    assert layer.base_layer.weight.shape == (OUT, IN)


def test_injection_counting_and_merge_on_minilm(
    pristine: nn.Module, batch: dict[str, torch.Tensor]
) -> None:
    model = inject(copy.deepcopy(pristine), AdapterConfig(NAME, r=4, target_modules=QV))
    layers = adapted_modules(model)
    assert len(layers) == 12 and all(isinstance(m, ScaledLoraLinear) for m in layers.values())
    assert torch.equal(hidden(model, batch), hidden(pristine, batch))
    per_layer = 4 * 384 + 4 + 384 * 4
    assert trainable_parameters(model).trainable == 12 * per_layer
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        f"{m}.{p}" for m in layers for p in ScaledLoraLinear.parameter_names
    }
    _randomise(model, seed=2)
    adapted = hidden(model, batch)
    state = merged_state_dict(model)
    merge(model)
    torch.testing.assert_close(hidden(model, batch), adapted, rtol=1e-4, atol=1e-4)
    fresh = copy.deepcopy(pristine)
    fresh.load_state_dict(state)
    torch.testing.assert_close(hidden(fresh, batch), adapted, rtol=1e-4, atol=1e-4)
    unmerge(model)
    original = pristine.state_dict()
    for name, layer in layers.items():
        torch.testing.assert_close(
            layer.base_layer.weight, original[f"{name}.weight"], atol=1e-6, rtol=0
        )


def test_save_load_is_bit_exact(
    pristine: nn.Module, batch: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    model = _adapted(pristine)
    save_adapter(model, tmp_path)
    loaded = load_adapter(copy.deepcopy(pristine), tmp_path)
    for name, layer in adapted_modules(model).items():
        twin = adapted_modules(loaded)[name]
        assert isinstance(twin, ScaledLoraLinear)
        for pname, param in layer.adapter_parameters().items():
            assert torch.equal(twin.adapter_parameters()[pname], param), (name, pname)
    assert torch.equal(hidden(loaded, batch), hidden(model, batch))
    other = inject(copy.deepcopy(pristine), AdapterConfig("lora", r=4, target_modules=QV))
    with pytest.raises(ValueError, match=f"saved method '{NAME}' differs"):
        load_adapter(other, tmp_path)


@pytest.mark.parametrize("mode", ["compact", "universal"])
def test_peft_loads_the_export_with_our_outputs(
    pristine: nn.Module, batch: dict[str, torch.Tensor], tmp_path: Path, mode: str
) -> None:
    model = _adapted(pristine, seed=3)
    ours = hidden(model, batch)
    assert (ours - hidden(pristine, batch)).abs().max() > 1e-2
    export_peft(model, tmp_path, mode=mode)
    theirs = PeftModel.from_pretrained(copy.deepcopy(pristine), str(tmp_path)).eval()
    with torch.no_grad():
        torch.testing.assert_close(hidden(theirs, batch), ours, atol=2e-5, rtol=0)
    merged = theirs.merge_and_unload().state_dict()
    mine = merged_state_dict(model)
    for name in adapted_modules(model):
        key = f"{name}.weight"
        torch.testing.assert_close(merged[key], mine[key], atol=1e-6, rtol=1e-5)


def test_bad_registrations_are_refused() -> None:
    class Other(ScaledLoraLinear):
        pass

    with pytest.raises(ValueError, match=f"register_form: name must be unused, got '{NAME}'"):
        register_form(NAME)(Other)
    with pytest.raises(ValueError, match="register_form: name must be an identifier"):
        register_form("scaled lora")
    with pytest.raises(TypeError, match="cls must be an AdapterLinear subclass"):
        register_form("plain")(nn.Linear)  # type: ignore[type-var]
    with pytest.raises(ValueError, match=r"peft_tensors\['scale'\] must be one of 'lora_A'"):
        register_form("scaled_b", peft_tensors={"scale": "lora_s"})(Other)

    class Unknown(LoraLinear):
        def build(self, *, rank_bias: int = 0) -> None:
            super().build()

    with pytest.raises(ValueError, match="Unknown option must be one of"):
        register_form("unknown_option")(Unknown)
    with pytest.raises(ValueError, match="inits entry must be one of 'default'"):
        register_form("bad_init", inits=("default", "lsq"))(Other)
    assert "scaled_b" not in form_names() and "unknown_option" not in form_names()
    with pytest.raises(ValueError, match="get_form: name must be one of"):
        get_form("nope")
