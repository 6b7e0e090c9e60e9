"""The rank plan's JSON document: round trip, and a clean ValueError for every corruption."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lorax_core.gelora import RankPlan, plan_ranks
from lorax_core.gelora.schema import PLAN_DOCUMENT, plan_from_dict, plan_to_dict
from tests.gelora.test_plan import profile_plan
from tests.gelora.test_rule import shapes_for


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
        "version": (lambda d: d.update(version=99), "version 99 is newer than this lorax_core"),
        "format": (lambda d: d.update(format="peft"), "not a lorax_core.rank_plan document"),
        "params": (lambda d: d.update(num_parameters=1), "num_parameters"),
        "rank": (
            lambda d: d["layers"][1].update(rank=0),
            r"layers\[1\]\.rank must be an int >= 1, got 0",
        ),
        "block": (
            lambda d: d["modules"]["encoder.layer.0.output.dense"].update(block=9),
            r"\.block must be an int in \[1, 2\], got 9",
        ),
        "missing": (lambda d: d.pop("rule"), "document lacks 'rule'"),
        "nested": (lambda d: d["layers"][0].pop("dimension"), r"layers\[0\]\.dimension is missing"),
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


def test_document_functions() -> None:
    plan = plan_ranks([1.0, 3.0, 2.0], shapes_for([4, 4]), None, budget="uniform:2")
    doc = plan_to_dict(plan)
    assert list(doc)[:2] == ["format", "version"] and doc["format"] == PLAN_DOCUMENT.name
    assert doc["rule"]["budget"] == plan.budget == 2 * 2 * (8 + 4)
    assert plan_from_dict(json.loads(json.dumps(doc))) == plan
    doc["layers"][0]["rank"] = 3
    with pytest.raises(ValueError, match=r"^here: layers\[0\]\.rank must be None, got 3 \(int\)$"):
        plan_from_dict(doc, "here")
    with pytest.raises(ValueError, match=r"^plan: not a lorax_core.rank_plan document"):
        RankPlan.from_dict([])


def test_deeply_nested_json_is_a_value_error(tmp_path: Path) -> None:
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match="plan is not valid JSON"):
        RankPlan.from_json(path)
