"""GeLoRA rank plans: arguments, checks against a model, and PEFT / lorax adapter conversion."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lorax_core.gelora import RankPlan, plan_ranks
from tests.gelora.test_rule import shapes_for


def test_bad_arguments() -> None:
    shapes = shapes_for([4, 4])
    ids = [1.0, 2.0, 3.0]
    cases: list[tuple[dict[str, Any], type[Exception], str]] = [
        ({"layer_ids": [1.0]}, ValueError, "layer_ids must be a sequence of at least two IDs"),
        ({"layer_ids": 3.0}, TypeError, "layer_ids must be a sequence"),
        ({"layer_ids": [1.0, math.nan, 2.0]}, ValueError, r"layer_ids\[1\] must be a finite"),
        ({"layer_ids": [1.0, "2"]}, TypeError, r"layer_ids\[1\] must be .* or an IDResult"),
        ({"layer_ids": [1.0, True]}, TypeError, r"layer_ids\[1\] .*got True \(bool\)"),
        ({"c": -1}, ValueError, "c must be a finite number >= 0, got -1"),
        ({"c": math.inf}, ValueError, "c must be a finite number >= 0, got inf"),
        ({"rank_min": 0}, ValueError, "rank_min must be an int >= 1, got 0"),
        ({"rank_min": 3, "rank_max": 2}, ValueError, "rank_max must be an int >= 3 or None"),
        ({"offset": 1.5}, TypeError, r"offset must be an int, got 1.5 \(float\)"),
        ({"offset": True}, TypeError, "offset must be an int, got True"),
        ({"alpha_over_r": 0}, ValueError, "alpha_over_r must be a finite number > 0"),
        ({"budget": "uniform:x"}, ValueError, "budget must be an int >= 1, 'uniform:<r>'"),
        ({"budget": 0}, ValueError, "budget must be .*, got 0"),
        ({"budget": False}, TypeError, "budget must be"),
        ({"model": "bert"}, TypeError, "model must be a torch.nn.Module, a mapping or None"),
    ]
    for change, error, message in cases:
        kwargs: dict[str, Any] = {"layer_ids": ids, "model": shapes, "target_modules": None}
        kwargs.update(change)
        with pytest.raises(error, match=f"^plan_ranks: {message}"):
            plan_ranks(**kwargs)
    with pytest.raises(ValueError, match=r"outside blocks 1\.\.1"):
        plan_ranks([1.0, 2.0], shapes, None)
    with pytest.raises(ValueError, match="match no linear module"):
        plan_ranks(ids, shapes, ["nonexistent"])
    with pytest.raises(ValueError, match="budget needs target modules"):
        plan_ranks(ids, None, None, budget=10)
    # NumPy scalars are numbers like any other
    plan = plan_ranks(
        np.array(ids), shapes, None, c=np.float32(2), offset=np.int64(0), rank_max=np.int8(9)
    )
    assert (plan.c, plan.offset, plan.rank_max) == (2.0, 0, 9) and type(plan.offset) is int


def profile_plan(model: torch.nn.Module) -> RankPlan:
    d = [10.2, 11.1, 13.0, 12.4, 12.9, 15.5, 14.0]  # Δd: .9, 1.9, -.6, .5, 2.6, -1.5
    ci = [(x - 0.3, x + 0.4) for x in d]
    results = [_Result(x, c) for x, c in zip(d, ci, strict=True)]
    return plan_ranks(results, model, "all-linear", c=2.0)


@dataclasses.dataclass(frozen=True)
class _Result:
    """The two fields plan_ranks reads from an ID estimate."""

    dimension: float
    ci: tuple[float, float] | None


def test_validate_for_names_missing_modules(tmp_path: Path, minilm: torch.nn.Module) -> None:
    plan = profile_plan(minilm)
    plan.validate_for(minilm)
    doc = plan.to_dict()
    doc["modules"]["encoder.layer.0.attention.self.qkv"] = doc["modules"].pop(
        "encoder.layer.0.attention.self.query"
    )
    (tmp_path / "plan.json").write_text(json.dumps(doc))
    foreign = RankPlan.from_json(tmp_path / "plan.json")
    with pytest.raises(ValueError, match=r"lacks: encoder\.layer\.0\.attention\.self\.qkv"):
        foreign.validate_for(minilm)
    doc["modules"]["encoder.layer.0.attention.self.query"] = doc["modules"].pop(
        "encoder.layer.0.attention.self.qkv"
    )
    doc["modules"]["encoder.layer.1.intermediate.dense"]["in_features"] = 100
    doc["num_parameters"] = sum(
        m["rank"] * (m["in_features"] + m["out_features"]) for m in doc["modules"].values()
    )
    with pytest.raises(ValueError, match=r"planned shape: encoder\.layer\.1\.intermediate\.dense"):
        RankPlan.from_dict(doc).validate_for(minilm)


def test_peft_gets_exactly_the_planned_ranks(minilm: torch.nn.Module) -> None:
    import peft

    plan = profile_plan(minilm)
    config = plan.to_peft_config(lora_dropout=0.0)
    peft_model = peft.get_peft_model(minilm, config)
    adapted = {
        name.removeprefix("base_model.model."): module
        for name, module in peft_model.named_modules()
        if isinstance(module, peft.tuners.lora.LoraLayer)
    }
    assert set(adapted) == set(plan.modules)
    for name, module in adapted.items():
        planned = plan.modules[name]
        assert module.r["default"] == planned.rank
        assert module.lora_A["default"].weight.shape == (planned.rank, planned.in_features)
        assert module.scaling["default"] == planned.alpha / planned.rank == 32
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert trainable == plan.num_parameters
    assert plan.rank_pattern()[r"encoder\.layer\.4\.output\.dense"] == 7
    with pytest.raises(TypeError, match="set by the plan"):
        plan.to_peft_config(target_modules=["query"])
    with pytest.raises(ValueError, match="no modules"):
        plan_ranks([1.0, 2.0], None, None).to_peft_config()


def test_lorax_adapters_get_exactly_the_planned_ranks(minilm: torch.nn.Module) -> None:
    from lorax_core.adapters import adapted_modules, inject

    plan = profile_plan(minilm)
    config = plan.to_adapter_config("slora", dropout=0.0)
    assert (config.method, config.r, config.alpha) == ("slora", 1, 32.0)
    inject(minilm, plan)
    adapted = adapted_modules(minilm)
    assert set(adapted) == set(plan.modules)
    for name, module in adapted.items():
        assert (module.r, module.scaling) == (plan.modules[name].rank, 32.0)


def peft_ranks(model: torch.nn.Module) -> dict[str, tuple[int, float]]:
    """``(r, scaling)`` of every LoRA layer PEFT put into ``model``, read back from PEFT."""
    import peft

    return {
        name: (module.r["default"], module.scaling["default"])
        for name, module in model.named_modules()
        if isinstance(module, peft.tuners.lora.LoraLayer)
    }


@pytest.mark.parametrize("task", ["base", "sequence classification"])
def test_a_plan_of_the_encoder_fits_its_task_model_in_peft_and_inject(
    minilm: torch.nn.Module, minilm_dir: Path, task: str
) -> None:
    """Planned on AutoModel; applied to AutoModel or AutoModelForSequenceClassification (whose
    backbone is ``bert``), through PEFT and through inject: every module gets its planned rank."""
    import peft
    from transformers import AutoModelForSequenceClassification

    from lorax_core.adapters import adapted_modules, inject

    plan = profile_plan(minilm)  # names relative to the encoder: encoder.layer.<i>.…
    assert len({m.rank for m in plan.modules.values()}) > 1
    if task == "base":
        model, prefix, kwargs = minilm, "", {}
    else:
        model = AutoModelForSequenceClassification.from_pretrained(str(minilm_dir), num_labels=5)
        model, prefix, kwargs = model.eval(), "bert.", {"task_type": "SEQ_CLS"}
    expected = {f"{prefix}{n}": (p.rank, p.alpha / p.rank) for n, p in plan.modules.items()}

    peft_model = peft.get_peft_model(copy.deepcopy(model), plan.to_peft_config(**kwargs))
    read_back = peft_ranks(peft_model)
    assert read_back == {f"base_model.model.{n}": rs for n, rs in expected.items()}
    plan.validate_for(peft_model)  # the PEFT-wrapped model: its LoRA layers are the modules
    assert set(plan.resolve(peft_model)) == set(read_back)

    inject(model, plan)
    ours = {n: (m.r, m.scaling) for n, m in adapted_modules(model).items()}
    assert ours == expected


def test_resolve_refuses_ambiguous_and_missing_names(minilm: torch.nn.Module) -> None:
    class Twin(torch.nn.Module):
        """Two copies of the encoder: every relative name refers to two modules."""

        def __init__(self, encoder: torch.nn.Module) -> None:
            super().__init__()
            self.left, self.right = encoder, copy.deepcopy(encoder)

    plan = profile_plan(minilm)
    with pytest.raises(ValueError, match=r"more than one module .*left\.encoder\.layer\.0"):
        plan.validate_for(Twin(minilm))
    with pytest.raises(ValueError, match=r"lacks: encoder\.layer\.0\.attention\.self\.query"):
        plan.resolve(minilm.encoder.layer[0])
    with pytest.raises(TypeError, match=r"^RankPlan\.resolve: model must be a torch\.nn\.Module"):
        plan.resolve("bert")  # type: ignore[arg-type]
