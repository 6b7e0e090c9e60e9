"""GeLoRA rank plans: the rank rule, budget mode, JSON round trip and PEFT conversion."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lorax_core.gelora import RankPlan, plan_ranks
from lorax_core.gelora.modules import block_of, linear_modules, select_targets


def shapes_for(widths: list[int]) -> dict[str, tuple[int, int]]:
    """Two linear modules per block; one rank of block i+1 costs 3 · widths[i] parameters."""
    shapes: dict[str, tuple[int, int]] = {}
    for i, w in enumerate(widths):
        shapes[f"encoder.layer.{i}.attention.query"] = (w, w)
        shapes[f"encoder.layer.{i}.output.dense"] = (w // 2, w - w // 2)
    return shapes


def oracle_ranks(d, c, offset, rank_min, rank_max):  # type: ignore[no-untyped-def]
    """SPEC §4 in numpy: r_i = clamp(ceil(c·max(Δd, 0)) + offset, rank_min, rank_max)."""
    raw = np.ceil(c * np.maximum(np.diff(np.asarray(d, dtype=np.float64)), 0.0)) + offset
    return np.clip(raw, rank_min, np.inf if rank_max is None else rank_max).astype(int)


def test_rank_rule_by_hand() -> None:
    d = [10.0, 12.5, 12.0, 15.2, 15.2, 20.0]
    shapes = shapes_for([8] * 5)
    plan = plan_ranks(d, shapes, None)
    # Δd = 2.5, -0.5, 3.2, 0, 4.8 → ceil(max(Δ, 0)) + 1
    assert [layer.rank for layer in plan.layers] == [None, 4, 1, 5, 1, 6]
    assert plan.modules["encoder.layer.2.attention.query"].rank == 5
    assert plan.modules["encoder.layer.2.attention.query"].alpha == 160.0
    assert plan.num_parameters == (4 + 1 + 5 + 1 + 6) * (16 + 8)
    clamped = plan_ranks(d, shapes, ["query"], rank_min=2, rank_max=5)
    assert [layer.rank for layer in clamped.layers] == [None, 4, 2, 5, 2, 5]
    assert set(clamped.modules) == {f"encoder.layer.{i}.attention.query" for i in range(5)}
    as_array = plan_ranks(np.array(d, dtype=np.float32), shapes, None)
    assert [layer.rank for layer in as_array.layers] == [None, 4, 1, 5, 1, 6]
    half = plan_ranks(d, shapes, ["query"], c=0.5, offset=0, alpha_over_r=2)
    # ceil(0.5·[2.5, 0, 3.2, 0, 4.8]) + 0 = [2, 0, 2, 0, 3], then rank_min 1
    assert [layer.rank for layer in half.layers] == [None, 2, 1, 2, 1, 3]
    assert [layer.alpha for layer in half.layers[1:]] == [4.0, 2.0, 4.0, 2.0, 6.0]


@given(
    d=st.lists(st.floats(0.0, 60.0), min_size=2, max_size=9),
    c=st.floats(0.0, 5.0),
    offset=st.integers(-2, 3),
    rank_min=st.integers(1, 4),
    extra=st.none() | st.integers(0, 20),
)
def test_rank_rule_matches_numpy_oracle(d, c, offset, rank_min, extra) -> None:  # type: ignore[no-untyped-def]
    rank_max = None if extra is None else rank_min + extra
    shapes = shapes_for([4] * (len(d) - 1))
    plan = plan_ranks(d, shapes, None, c=c, offset=offset, rank_min=rank_min, rank_max=rank_max)
    expected = oracle_ranks(d, c, offset, rank_min, rank_max)
    assert [layer.rank for layer in plan.layers[1:]] == expected.tolist()
    for name, module in plan.modules.items():
        assert module.rank == expected[block_of(name) - 1]
        assert module.alpha == 32 * module.rank
    assert plan.num_parameters == sum(int(r) for r in expected) * 12


def test_budget_by_hand() -> None:
    # Δd = 1, 2 and 10 parameters per rank in each block:
    # cost(c) = 10·(ceil(c) + 1) + 10·(ceil(2c) + 1) → 70 for c in (1, 1.5], 80 above.
    shapes = {"layers.0.proj": (5, 5), "layers.1.proj": (5, 5)}
    plan = plan_ranks([0.0, 1.0, 3.0], shapes, None, budget=70)
    assert [layer.rank for layer in plan.layers[1:]] == [3, 4]
    assert plan.num_parameters == 70
    assert 1.0 < plan.c <= 1.5
    assert plan.budget == 70
    # 79 buys nothing more; "uniform:4" is 4 · 20 = 80, exactly the next plan.
    assert plan_ranks([0.0, 1.0, 3.0], shapes, None, budget=79).num_parameters == 70
    uniform = plan_ranks([0.0, 1.0, 3.0], shapes, None, budget="uniform:4")
    assert (uniform.budget, uniform.num_parameters) == (80, 80)
    assert uniform.uniform_parameters(4) == 80
    # rank_max caps growth: the budget cannot be spent, every rank sits at rank_max.
    capped = plan_ranks([0.0, 1.0, 3.0], shapes, None, rank_max=3, budget=10_000)
    assert [layer.rank for layer in capped.layers[1:]] == [3, 3]
    with pytest.raises(ValueError, match="below the smallest plan"):
        plan_ranks([0.0, 1.0, 3.0], shapes, None, budget=19)


@given(
    d=st.lists(st.floats(0.0, 40.0), min_size=3, max_size=8),
    widths=st.lists(st.integers(2, 64), min_size=7, max_size=7),
    factor=st.floats(1.0, 6.0),
    rank_max=st.none() | st.integers(2, 12),
)
def test_budget_within_one_rank(d, widths, factor, rank_max) -> None:  # type: ignore[no-untyped-def]
    shapes = shapes_for(widths[: len(d) - 1])
    weight = np.array([widths[i] * 3 for i in range(len(d) - 1)])
    floor = int(oracle_ranks(d, 0.0, 1, 1, rank_max) @ weight)
    budget = int(floor * factor)
    plan = plan_ranks(d, shapes, None, rank_max=rank_max, budget=budget)
    ranks = np.array([layer.rank for layer in plan.layers[1:]])
    assert plan.num_parameters == int(ranks @ weight) <= budget
    assert ranks.tolist() == oracle_ranks(d, plan.c, 1, 1, rank_max).tolist()
    # The next plan along c adds at most one rank per block and breaks the budget,
    # unless no rank can grow any more.
    following = oracle_ranks(d, plan.c * (1 + 1e-9) + 1e-12, 1, 1, rank_max)
    saturated = oracle_ranks(d, 1e12, 1, 1, rank_max)
    if ranks.tolist() != saturated.tolist():
        assert set((following - ranks).tolist()) <= {0, 1}
        assert int(following @ weight) > budget


def test_bad_arguments() -> None:
    shapes = shapes_for([4, 4])
    with pytest.raises(ValueError, match="layer_ids"):
        plan_ranks([1.0], shapes, None)
    with pytest.raises(ValueError, match="layer_ids\\[1\\]"):
        plan_ranks([1.0, math.nan, 2.0], shapes, None)
    with pytest.raises(ValueError, match="c must"):
        plan_ranks([1.0, 2.0, 3.0], shapes, None, c=-1)
    with pytest.raises(ValueError, match="rank_min"):
        plan_ranks([1.0, 2.0, 3.0], shapes, None, rank_min=0)
    with pytest.raises(ValueError, match="rank_max"):
        plan_ranks([1.0, 2.0, 3.0], shapes, None, rank_min=3, rank_max=2)
    with pytest.raises(TypeError, match="offset"):
        plan_ranks([1.0, 2.0, 3.0], shapes, None, offset=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="budget"):
        plan_ranks([1.0, 2.0, 3.0], shapes, None, budget="uniform:x")
    with pytest.raises(ValueError, match=r"outside blocks 1\.\.1"):
        plan_ranks([1.0, 2.0], shapes, None)
    with pytest.raises(ValueError, match="match no linear module"):
        plan_ranks([1.0, 2.0, 3.0], shapes, ["nonexistent"])


def test_targets_on_real_model(minilm: torch.nn.Module) -> None:
    shapes = linear_modules(minilm)
    assert len(shapes) == 36  # 6 blocks × (q, k, v, attention out, intermediate, output)
    assert "pooler.dense" not in shapes
    assert shapes["encoder.layer.0.intermediate.dense"] == (384, 1536)
    assert select_targets(shapes, ["query", "value"]) == [
        f"encoder.layer.{i}.attention.self.{m}" for i in range(6) for m in ("query", "value")
    ]
    regex = select_targets(shapes, r"encoder\.layer\.[0-2]\..*dense")
    assert len(regex) == 9
    with pytest.raises(ValueError, match="outside blocks"):
        plan_ranks([10.0, 11.0], minilm, ["query"])


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


def test_json_round_trip(tmp_path: Path, minilm: torch.nn.Module) -> None:
    plan = dataclasses.replace(profile_plan(minilm), estimator={"name": "twonn"}, model={"a": 1})
    assert [layer.rank for layer in plan.layers[1:]] == [3, 5, 1, 2, 7, 1]
    path = plan.to_json(tmp_path / "plan.json")
    assert RankPlan.from_json(path) == plan
    doc = json.loads(path.read_text())
    assert doc["version"] == 1 and doc["num_parameters"] == plan.num_parameters
    assert doc["layers"][1]["ci"] == [pytest.approx(10.8), pytest.approx(11.5)]
    assert not list(tmp_path.glob(".plan.json.*"))  # no temporary file left behind


def slots(node: object) -> list[tuple[object, object]]:
    """Every (container, key) of a JSON document, depth first."""
    found: list[tuple[object, object]] = []
    keys = (
        node.keys()
        if isinstance(node, dict)
        else range(len(node))
        if isinstance(node, list)
        else []
    )
    for key in keys:
        found.append((node, key))
        found.extend(slots(node[key]))  # type: ignore[index]
    return found


@given(
    where=st.integers(0, 10_000),
    value=st.sampled_from([None, -1, 0, 2.5, "x", [], {}, True, 10**6, [1.0]]),
)
def test_from_json_rejects_corruption_cleanly(where, value, tmp_path_factory) -> None:  # type: ignore[no-untyped-def]
    doc = plan_ranks([1.0, 3.0, 2.0, 6.5], shapes_for([4, 6, 8]), None).to_dict()
    places = slots(doc)
    container, key = places[where % len(places)]
    container[key] = value  # type: ignore[index]
    file = tmp_path_factory.mktemp("plan") / "plan.json"
    file.write_text(json.dumps(doc))
    try:
        plan = RankPlan.from_json(file)
    except ValueError as err:
        assert str(file) in str(err)
    else:  # the change was harmless (free-form fields, an equivalent number): it round-trips
        assert json.loads(json.dumps(plan.to_dict())) == doc


def test_from_json_errors(tmp_path: Path) -> None:
    doc = plan_ranks([1.0, 3.0, 2.0], shapes_for([4, 4]), None).to_dict()
    cases = {
        "version": (lambda d: d.update(version=99), "unsupported plan version"),
        "params": (lambda d: d.update(num_parameters=1), "num_parameters"),
        "rank": (lambda d: d["layers"][1].update(rank=0), "must be > 0"),
        "block": (
            lambda d: d["modules"]["encoder.layer.0.output.dense"].update(block=9),
            "beyond",
        ),
        "missing": (lambda d: d.pop("rule"), "'rule' is missing"),
    }
    for name, (corrupt, message) in cases.items():
        bad = json.loads(json.dumps(doc))
        corrupt(bad)
        (tmp_path / f"{name}.json").write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=message):
            RankPlan.from_json(tmp_path / f"{name}.json")
    (tmp_path / "text.json").write_text("not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        RankPlan.from_json(tmp_path / "text.json")
    with pytest.raises(ValueError, match="cannot read plan"):
        RankPlan.from_json(tmp_path / "absent.json")


def test_validate_for_names_missing_modules(tmp_path: Path, minilm: torch.nn.Module) -> None:
    plan = profile_plan(minilm)
    plan.validate_for(minilm)
    doc = plan.to_dict()
    doc["modules"]["encoder.layer.9.attention.self.query"] = doc["modules"].pop(
        "encoder.layer.0.attention.self.query"
    )
    (tmp_path / "plan.json").write_text(json.dumps(doc))
    foreign = RankPlan.from_json(tmp_path / "plan.json")
    with pytest.raises(ValueError, match=r"lacks: encoder\.layer\.9\.attention\.self\.query"):
        foreign.validate_for(minilm)
    doc["modules"]["encoder.layer.0.attention.self.query"] = doc["modules"].pop(
        "encoder.layer.9.attention.self.query"
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
    assert plan.rank_pattern()["^encoder.layer.4.output.dense$"] == 7
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
