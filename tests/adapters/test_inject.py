"""Injection into the real MiniLM encoder and parameter counts, against PEFT where PEFT has the
same method."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from lorax_core.adapters import (
    AdapterConfig,
    DoraLinear,
    LoraLinear,
    SVDLinear,
    adapted_modules,
    inject,
    trainable_parameters,
)
from tests.adapters.reference import hidden, randomise_model

QV = ["query", "value"]


@pytest.mark.parametrize("method", ["lora", "slora", "dora", "svd"])
def test_output_equals_base_at_init(pristine: nn.Module, batch, method: str) -> None:  # type: ignore[no-untyped-def]
    model = copy.deepcopy(pristine)
    expected = hidden(pristine, batch)
    inject(model, AdapterConfig(method, r=4, target_modules=[*QV, "output.dense"]))
    assert len(adapted_modules(model)) == 6 * 4  # "output.dense" matches two per block
    assert torch.equal(hidden(model, batch), expected)


def _copy_into_peft(ours: nn.Module, theirs: nn.Module) -> None:
    """Our adapter values into the PEFT model's (A, B and, for DoRA, the magnitude)."""
    with torch.no_grad():
        for name, layer in adapted_modules(ours).items():
            peft_layer = theirs.base_model.model.get_submodule(name)
            peft_layer.lora_A["default"].weight.copy_(layer.lora_A)
            peft_layer.lora_B["default"].weight.copy_(layer.lora_B)
            if isinstance(layer, DoraLinear):
                peft_layer.lora_magnitude_vector["default"].weight.copy_(layer.lora_magnitude)


def test_lora_equals_peft_bit_for_bit(pristine: nn.Module, batch) -> None:  # type: ignore[no-untyped-def]
    ours = inject(copy.deepcopy(pristine), AdapterConfig("lora", r=8, alpha=16, target_modules=QV))
    theirs = get_peft_model(
        copy.deepcopy(pristine), LoraConfig(r=8, lora_alpha=16, target_modules=QV)
    )
    randomise_model(ours)
    _copy_into_peft(ours, theirs)
    assert torch.equal(hidden(ours, batch), hidden(theirs, batch))
    counts = trainable_parameters(ours)
    assert (counts.trainable, counts.total) == theirs.get_nb_trainable_parameters()
    assert str(counts).startswith(f"trainable params: {counts.trainable:,d} || all params:")


def test_dora_equals_peft(pristine: nn.Module, batch) -> None:  # type: ignore[no-untyped-def]
    ours = inject(copy.deepcopy(pristine), AdapterConfig("dora", r=8, alpha=16, target_modules=QV))
    theirs = get_peft_model(
        copy.deepcopy(pristine), LoraConfig(r=8, lora_alpha=16, target_modules=QV, use_dora=True)
    )
    # Same init rule: the magnitudes PEFT computed densely equal ours.
    for name, layer in adapted_modules(ours).items():
        peft_layer = theirs.base_model.model.get_submodule(name)
        peft_m = peft_layer.lora_magnitude_vector["default"].weight
        torch.testing.assert_close(layer.lora_magnitude, peft_m, rtol=1e-6, atol=1e-6)
    randomise_model(ours)
    _copy_into_peft(ours, theirs)
    torch.testing.assert_close(hidden(ours, batch), hidden(theirs, batch), rtol=1e-4, atol=1e-4)
    assert trainable_parameters(ours).trainable == theirs.get_nb_trainable_parameters()[0]


def test_rank_and_alpha_patterns_equal_peft(pristine: nn.Module) -> None:
    patterns = {
        "rank_pattern": {"^encoder.layer.0.attention.self.query$": 2, "value": 6},
        "alpha_pattern": {"layer.1.attention.self.query": 4.0},
    }
    ours = inject(copy.deepcopy(pristine), AdapterConfig(r=8, target_modules=QV, **patterns))
    theirs = get_peft_model(
        copy.deepcopy(pristine), LoraConfig(r=8, lora_alpha=16, target_modules=QV, **patterns)
    )
    layers = adapted_modules(ours)
    peft_names = {n for n, m in theirs.base_model.model.named_modules() if hasattr(m, "lora_A")}
    assert set(layers) == peft_names
    for name, layer in layers.items():
        peft_layer = theirs.base_model.model.get_submodule(name)
        assert layer.r == peft_layer.r["default"], name
        assert layer.scaling == peft_layer.scaling["default"], name


def test_only_adapters_get_gradients(pristine: nn.Module, batch) -> None:  # type: ignore[no-untyped-def]
    model = inject(copy.deepcopy(pristine), AdapterConfig("svd", r=4, target_modules=QV))
    randomise_model(model)
    hidden(model, batch).square().mean().backward()
    for name, param in model.named_parameters():
        is_adapter = ".lora_" in name
        assert param.requires_grad == is_adapter, name
        assert (param.grad is not None) == is_adapter, name
    assert all(isinstance(m, SVDLinear) for m in adapted_modules(model).values())


def test_gradient_checkpointing(minilm_dir, batch) -> None:  # type: ignore[no-untyped-def]
    from transformers import AutoModel

    def run(checkpointing: bool) -> dict[str, torch.Tensor]:
        model = AutoModel.from_pretrained(
            str(minilm_dir), hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
        )
        inject(model, AdapterConfig("lora", r=4, target_modules=QV, seed=5))
        randomise_model(model)
        if checkpointing:
            model.gradient_checkpointing_enable()
            model.enable_input_require_grads()
        model.train()
        hidden(model, batch).square().mean().backward()
        return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    plain, checkpointed = run(False), run(True)
    assert plain.keys() == checkpointed.keys() and len(plain) == 24
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-7)


def test_inttune_trains_only_n(pristine: nn.Module) -> None:
    model = inject(
        copy.deepcopy(pristine),
        AdapterConfig("slora", r=4, target_modules=QV, train="intermediate"),
    )
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith(".lora_N") for n in trainable)
    assert trainable_parameters(model).trainable == 12 * 4 * 4


def test_overrides_and_seeded_init(pristine: nn.Module) -> None:
    config = AdapterConfig("lora", r=8, target_modules=QV, seed=1)
    a = inject(copy.deepcopy(pristine), config, r=4)
    b = inject(copy.deepcopy(pristine), config, r=4)
    layers_a, layers_b = adapted_modules(a), adapted_modules(b)
    assert all(isinstance(m, LoraLinear) and m.r == 4 for m in layers_a.values())
    for name, layer in layers_a.items():
        assert torch.equal(layer.lora_A, layers_b[name].lora_A)
    first, second = list(layers_a.values())[:2]
    assert not torch.equal(first.lora_A, second.lora_A)


def test_rank_plan_is_accepted(pristine: nn.Module) -> None:
    plan_module = pytest.importorskip("lorax_core.gelora.plan")
    if not hasattr(plan_module, "plan_ranks"):
        pytest.skip("GeLoRA plan_ranks not available")
    names = [f"encoder.layer.{i}.attention.self.query" for i in range(6)]
    ids = [3.0, 5.0, 6.0, 9.0, 9.5, 12.0, 12.0]
    plan = plan_module.plan_ranks(ids, pristine, target_modules=names)  # type: ignore[attr-defined]
    model = inject(copy.deepcopy(pristine), plan)
    for name, layer in adapted_modules(model).items():
        assert layer.r == plan.modules[name].rank


def test_plan_for_another_model_is_rejected(pristine: nn.Module) -> None:
    plan_module = pytest.importorskip("lorax_core.gelora.plan")
    llama_names = {f"model.layers.{i}.self_attn.q_proj": (576, 576) for i in range(2)}
    wider = {f"encoder.layer.{i}.attention.self.query": (512, 512) for i in range(2)}
    for shapes, message in ((llama_names, "lacks"), (wider, "shape")):
        plan = plan_module.plan_ranks([4.0, 6.0, 9.0], shapes, None)  # type: ignore[attr-defined]
        model = copy.deepcopy(pristine)
        with pytest.raises(ValueError, match=message):
            inject(model, plan)
        assert not adapted_modules(model)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target_modules": ["query", "q_proj"]}, "target_modules entry 'q_proj' matches no"),
        ({"target_modules": r"decoder\..*"}, "target_modules regex .* matches no module"),
        (
            {"target_modules": QV, "rank_pattern": {"^encoder.layer.7.attention.self.query$": 2}},
            "rank_pattern key .* matches no targeted module",
        ),
        ({"target_modules": ["query"], "alpha_pattern": {"key": 2.0}}, "alpha_pattern key 'key'"),
        ({"target_modules": ["attention.self"]}, "not nn.Linear"),
    ],
)
def test_bad_injection_is_rejected_before_changes(
    pristine: nn.Module, kwargs, message: str
) -> None:  # type: ignore[no-untyped-def]
    model = copy.deepcopy(pristine)
    with pytest.raises(ValueError, match=message):
        inject(model, AdapterConfig(**kwargs))
    assert not adapted_modules(model)
    assert all(p.requires_grad for p in model.parameters())


def test_double_injection_and_bad_arguments(pristine: nn.Module) -> None:
    model = inject(copy.deepcopy(pristine), AdapterConfig(target_modules=QV))
    with pytest.raises(
        ValueError,
        match=r"inject: model must hold no adapters yet, got module "
        r"'encoder\.layer\.0\.attention\.self\.query' holding a lorax_core 'lora' adapter; "
        r"a module takes one adapter",
    ):
        inject(model, AdapterConfig(target_modules=["key"]))
    with pytest.raises(TypeError, match="inject: config_or_plan must be an AdapterConfig"):
        inject(copy.deepcopy(pristine), {"target_modules": QV})
    with pytest.raises(TypeError, match=r"inject: model must be an nn\.Module"):
        inject("model", AdapterConfig(target_modules=QV))  # type: ignore[arg-type]


def test_low_precision_model(pristine: nn.Module, batch) -> None:  # type: ignore[no-untyped-def]
    base = copy.deepcopy(pristine).to(torch.bfloat16)
    model = inject(copy.deepcopy(base), AdapterConfig("dora", r=4, target_modules=QV))
    assert all(
        p.dtype == torch.float32
        for layer in adapted_modules(model).values()
        for p in layer.adapter_parameters().values()
    )
    assert isinstance(next(iter(adapted_modules(model).values())), DoraLinear)
    out = hidden(model, batch)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, hidden(base, batch), rtol=0, atol=0)
    out.float().square().mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize(
    ("kwargs", "dtype", "error", "message"),
    [
        ({"r": 10**30}, torch.float32, ValueError, r"module '0' \(Linear \(3, 4\) float32\): Lora"),
        ({"r": 2, "rank_pattern": {"2": 2**63}}, torch.float32, ValueError, r"module '2' .*r must"),
        ({"method": "svd", "r": 2, "r_max": 2**64}, torch.float32, ValueError, "r_max must be"),
        ({"r": 1, "init": "pissa", "init_options": {"niter": 10**20}}, None, ValueError, "niter"),
        ({"r": 1}, torch.complex64, TypeError, "base_layer weight must have dtype .* complex64"),
        ({"r": 1}, torch.int64, TypeError, "base_layer weight must have dtype .* int64"),
        ({"r": 1}, torch.bool, TypeError, "base_layer weight must have dtype .* bool"),
    ],
)
def test_inputs_torch_would_choke_on_are_refused_first(
    kwargs: dict[str, Any], dtype: torch.dtype | None, error: type, message: str
) -> None:
    """Huge ints and non-float base layers never reach torch (no OverflowError, no
    'unsupported ScalarType'): a ValueError/TypeError names the argument and the module, and
    the model is unchanged."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    if dtype is not None:
        for layer in (model[0], model[2]):
            layer.weight = nn.Parameter(layer.weight.detach().to(dtype), requires_grad=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(error, match=message):
        inject(model, AdapterConfig(target_modules=["0", "2"], **kwargs))
    assert not adapted_modules(model)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


@pytest.mark.parametrize("task", ["base", "sequence classification"])
def test_all_linear_selects_what_peft_selects(pristine: nn.Module, minilm_dir, task: str) -> None:  # type: ignore[no-untyped-def]
    """``"all-linear"``: every nn.Linear except the output head, as PEFT's shorthand (for a
    classifier, PEFT's SEQ_CLS task type leaves out the ``classifier`` head too)."""
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModelForSequenceClassification

    if task == "base":
        model, peft_kwargs = pristine, {}
    else:
        model = AutoModelForSequenceClassification.from_pretrained(str(minilm_dir), num_labels=5)
        peft_kwargs = {"task_type": "SEQ_CLS"}
    theirs = get_peft_model(
        copy.deepcopy(model), LoraConfig(r=2, target_modules="all-linear", **peft_kwargs)
    )
    expected = {
        name.removeprefix("base_model.model.")
        for name, module in theirs.named_modules()
        if isinstance(module, LoraLayer)
    }
    assert len(expected) == 6 * 6 + 1  # the blocks' linears and the pooler
    ours = inject(copy.deepcopy(model), AdapterConfig(r=2, target_modules="all-linear"))
    assert set(adapted_modules(ours)) == expected
    assert not any(name.startswith("classifier") for name in adapted_modules(ours))
    fewer = inject(
        copy.deepcopy(model),
        AdapterConfig(r=2, target_modules="ALL-LINEAR", exclude_modules=["pooler.dense"]),
    )
    assert set(adapted_modules(fewer)) == {n for n in expected if not n.endswith("pooler.dense")}


def test_all_linear_without_linear_layers_is_refused() -> None:
    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(10, 4)
            self.classifier = nn.Linear(4, 2)

    with pytest.raises(ValueError, match=r"'all-linear' selects no module.*\['classifier'\]"):
        inject(Head(), AdapterConfig(target_modules="all-linear"))
