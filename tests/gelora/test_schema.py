"""The rank plan's JSON document: round trip, and a clean ValueError for every corruption."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
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
    assert doc["version"] == 2 and doc["num_parameters"] == plan.num_parameters
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
    resampled=st.booleans(),
)
def test_from_json_rejects_corruption_cleanly(where, value, resampled, tmp_path_factory) -> None:  # type: ignore[no-untyped-def]
    if resampled:
        doc = resampled_doc("noise-aware")
    else:
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


# --- a plan must agree with itself ---------------------------------------------------------

from tests.gelora.test_plan import _Result  # noqa: E402

_JSON_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(-(10**20), 10**20)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
)
json_values = st.recursive(
    _JSON_LEAVES,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
free_form = st.dictionaries(
    st.text(max_size=6),
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-1000, 1000)
        | st.floats(-1e6, 1e6)
        | st.text(max_size=8),
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
        ),
        max_leaves=6,
    ),
    max_size=3,
)


@st.composite
def valid_plans(draw: st.DrawFn) -> RankPlan:
    """Plans as plan_ranks makes them: any profile, rule, target set and budget mode."""
    n_blocks = draw(st.integers(1, 6))
    dims = draw(st.lists(st.floats(0, 60), min_size=n_blocks + 1, max_size=n_blocks + 1))
    ids: list[object] = list(dims)
    if draw(st.booleans()):
        spread = st.floats(0, 5)
        ids = [_Result(d, (d - draw(spread), d + draw(spread))) for d in dims]
    widths = draw(st.lists(st.integers(2, 64), min_size=n_blocks, max_size=n_blocks))
    shapes = shapes_for(widths) if draw(st.booleans()) else None
    targets = draw(st.sampled_from([None, ["query"], ["dense"]]))
    rank_min = draw(st.integers(1, 4))
    rule = {
        "offset": draw(st.integers(-3, 3)),
        "rank_min": rank_min,
        "rank_max": draw(st.none() | st.integers(rank_min, rank_min + 12)),
        "alpha_over_r": draw(st.floats(0.01, 64)),
    }
    budget: int | str | None = None
    if shapes is not None and draw(st.booleans()):
        smallest = plan_ranks(ids, shapes, targets, c=0.0, **rule)
        r = draw(st.integers(1, 8))
        budget = draw(st.integers(smallest.num_parameters, smallest.num_parameters + 5000))
        if smallest.uniform_parameters(r) >= smallest.num_parameters and draw(st.booleans()):
            budget = f"uniform:{r}"
    plan = plan_ranks(ids, shapes, targets, c=draw(st.floats(0, 20)), budget=budget, **rule)
    return dataclasses.replace(
        plan, model=draw(free_form), estimator=draw(free_form), capture=draw(free_form)
    )


@given(plan=valid_plans())
@settings(max_examples=150)
def test_valid_plans_round_trip_exactly(plan: RankPlan, tmp_path_factory) -> None:  # type: ignore[no-untyped-def]
    path = plan.to_json(tmp_path_factory.mktemp("plan") / "plan.json")
    assert RankPlan.from_json(path) == plan
    assert json.loads(path.read_text()) == plan.to_dict()


def _nudges(value: object) -> st.SearchStrategy[object]:
    """Values near ``value`` that a hand edit would produce."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return json_values
    return st.sampled_from(
        [
            value + 1,
            value - 1,
            -value,
            2 * value,
            0,
            value + 0.5,
            float("nan"),
            float("inf"),
            1e308,
            -1e308,
        ]
    )


@given(plan=valid_plans(), data=st.data())
@settings(max_examples=150)
def test_mutated_plans_are_refused_or_round_trip(plan: RankPlan, data, tmp_path_factory) -> None:  # type: ignore[no-untyped-def]
    doc = plan.to_dict()
    places = slots(doc)
    container, key = places[data.draw(st.integers(0, len(places) - 1))]
    old = container[key]  # type: ignore[index]
    container[key] = data.draw(_nudges(old) | json_values)  # type: ignore[index]
    file = tmp_path_factory.mktemp("plan") / "plan.json"
    file.write_text(json.dumps(doc))
    try:
        read = RankPlan.from_json(file)
    except ValueError as err:
        assert str(err).startswith(f"{file}: ") and "\n" not in str(err)
    else:  # a harmless change (a free-form field, an equal number): it round-trips
        assert json.loads(json.dumps(read.to_dict())) == json.loads(file.read_text())
        assert RankPlan.from_dict(read.to_dict()) == read


@given(doc=json_values)
@settings(max_examples=150)
def test_arbitrary_json_is_refused_with_value_error(doc: object) -> None:
    with pytest.raises(ValueError, match=r"^plan: "):
        plan_from_dict(doc)
    stamped = {**PLAN_DOCUMENT.fields(), "rule": doc, "layers": doc, "modules": doc}
    with pytest.raises(ValueError, match=r"^plan: "):
        plan_from_dict(
            {**stamped, "model": {}, "estimator": {}, "capture": {}, "num_parameters": 0}
        )


@given(data=st.binary(max_size=300), cut=st.integers(0, 4000))
@settings(max_examples=150)
def test_arbitrary_bytes_are_refused_with_value_error(
    data: bytes, cut: int, tmp_path_factory
) -> None:  # type: ignore[no-untyped-def]
    good = plan_ranks([1.0, 3.0, 2.0], shapes_for([4, 4]), None).to_dict()
    file = tmp_path_factory.mktemp("plan") / "plan.json"
    for content in (data, json.dumps(good).encode()[:cut] + data):
        file.write_bytes(content)
        try:
            RankPlan.from_json(file)
        except ValueError as err:
            assert str(err).startswith(f"{file}: ")


def _contradiction(tmp_path: Path, change, message: str) -> None:  # type: ignore[no-untyped-def]
    doc = plan_ranks(
        [_Result(1.0, (0.5, 1.5)), _Result(3.0, None), _Result(2.0, None), _Result(6.5, None)],
        shapes_for([4, 6, 8]),
        None,
        rank_max=5,
        budget=400,
    ).to_dict()
    change(doc)
    file = tmp_path / "plan.json"
    file.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=rf"^{re.escape(str(file))}: {message}"):
        RankPlan.from_json(file)


Q0, D2 = "encoder.layer.0.attention.query", "encoder.layer.2.output.dense"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda d: d["modules"][Q0].update(rank=d["modules"][Q0]["rank"] + 1),
            rf"modules\['{Q0}'\]\.rank must be \d+, layers\[1\]\.rank, got \d+$",
        ),
        (
            lambda d: d["layers"][2].update(rank=d["layers"][2]["rank"] + 1),
            r"layers\[2\]\.rank must be 1, the rule's rank for d_1 = 3\.0 and d_2 = 2\.0, got 2$",
        ),
        (
            lambda d: d["layers"][3].update(alpha=1.0),
            r"layers\[3\]\.alpha must be rule\.alpha_over_r × rank = 160\.0, got 1\.0$",
        ),
        (
            lambda d: d["modules"][D2].update(alpha=2.0),
            rf"modules\['{D2}'\]\.alpha must be 160\.0, layers\[3\]\.alpha, got 2\.0$",
        ),
        (
            lambda d: d["rule"].update(rank_min=6),
            r"rule\.rank_max must be an int >= 6 or None, got 5$",
        ),
        (
            lambda d: d["layers"][1].update(dimension=float("nan")),
            r"layers\[1\]\.dimension must be a finite number, got nan",
        ),
        (
            lambda d: d["layers"][0].update(ci=[0.5, float("inf")]),
            r"layers\[0\]\.ci\[1\] must be a finite number, got inf",
        ),
        (
            lambda d: d["layers"][0].update(ci=[1.5, 0.5]),
            r"layers\[0\]\.ci must be null or two numbers \[lo, hi\] with lo <= hi, "
            r"got \[1\.5, 0\.5\]",
        ),
        (lambda d: d["layers"][1].update(rank=0), r"layers\[1\]\.rank must be an int >= 1, got 0"),
        (
            lambda d: d["layers"][1].update(rank=-2),
            r"layers\[1\]\.rank must be an int >= 1, got -2",
        ),
        (
            lambda d: d["modules"][Q0].update(alpha=0),
            rf"modules\['{Q0}'\]\.alpha must be a finite number > 0, got 0",
        ),
        (
            lambda d: d["rule"].update(alpha_over_r=-1.0),
            r"rule\.alpha_over_r must be a finite number > 0",
        ),
        (
            lambda d: d["rule"].update(budget=d["num_parameters"] - 1),
            r"rule\.budget must be >= num_parameters = \d+, got \d+$",
        ),
        (
            lambda d: d.update(num_parameters=d["num_parameters"] + 1),
            r"num_parameters must be \d+, the sum over the modules, got \d+$",
        ),
        (
            lambda d: d["modules"][Q0].update(block=2),
            rf"modules\['{Q0}'\]\.block must be the block in the module's name \(block 1\), got 2$",
        ),
        (
            lambda d: d["modules"].update(head=d["modules"].pop(Q0)),
            r"modules\['head'\]\.block must be the block in the module's name \(no block\), got 1$",
        ),
        (
            lambda d: d["rule"].update(extra=1),
            r"rule must be an object of c, offset, .*, got \"field 'extra'\"",
        ),
        (
            lambda d: d.update(model={"x": [1, (2, 3)]}) or d["layers"].pop(),
            r"modules\['encoder\.layer\.2\.attention\.query'\]\.block must be an int in \[1, 2\]",
        ),
    ],
)
def test_contradictions_name_the_field(tmp_path: Path, change, message: str) -> None:  # type: ignore[no-untyped-def]
    _contradiction(tmp_path, change, message)


def test_duplicate_modules_and_nan_name_the_field(tmp_path: Path) -> None:
    plan = plan_ranks([1.0, 3.0, 2.0], shapes_for([4, 4]), None)
    text = json.dumps(plan.to_dict(), indent=2)
    file = tmp_path / "plan.json"
    first = text.index('"encoder.layer.0.attention.query"')
    end = text.index("}", first) + 1
    file.write_text(text[:end] + ",\n    " + text[first:end] + text[end:])  # the module twice
    with pytest.raises(
        ValueError,
        match=r"not valid JSON: the key 'encoder\.layer\.0\.attention\.query' appears twice",
    ):
        RankPlan.from_json(file)
    file.write_text(text.replace('"c": 1.0', '"c": NaN'))
    with pytest.raises(ValueError, match=r": rule\.c must be a finite number >= 0, got nan$"):
        RankPlan.from_json(file)


def test_writer_refuses_a_contradictory_plan(tmp_path: Path) -> None:
    plan = plan_ranks([1.0, 3.0, 2.0], shapes_for([4, 4]), None)
    target = tmp_path / "plan.json"
    for bad, message in [
        (dataclasses.replace(plan, c=float("nan")), r"rule\.c must be a finite number"),
        (dataclasses.replace(plan, rank_min=1, rank_max=0), r"rule\.rank_max must be an int >= 1"),
        (dataclasses.replace(plan, budget=1), r"rule\.budget must be >= num_parameters"),
        (dataclasses.replace(plan, model={"x": object()}), "model must be a JSON object"),
        (dataclasses.replace(plan, modules={1: plan.modules[Q0]}), "modules must be an object"),
    ]:
        with pytest.raises(ValueError, match=rf"^{re.escape(str(target))}: {message}"):
            bad.to_json(target)
        assert list(tmp_path.iterdir()) == []  # nothing written, no temporary file left


def resampled_doc(rank_mode: str = "plain") -> dict[str, object]:
    """The document of a plan with three joint resamples of four layers."""
    draws = [[1.0, 3.0, 2.0, 6.5], [1.2, 2.6, 2.4, 7.0], [0.9, 3.3, 1.8, 3.0]]
    plan = plan_ranks(
        [1.0, 3.0, 2.0, 6.5], shapes_for([4, 6, 8]), None, resamples=draws, rank_mode=rank_mode
    )
    return plan.to_dict()


@pytest.mark.parametrize("rank_mode", ["plain", "noise-aware"])
def test_resampled_plans_round_trip(tmp_path: Path, rank_mode: str) -> None:
    doc = resampled_doc(rank_mode)
    plan = plan_from_dict(doc)
    assert plan.rank_mode == rank_mode and doc["stability"] == plan.stability
    assert plan.to_json(tmp_path / "p.json") and RankPlan.from_json(tmp_path / "p.json") == plan
    layer = doc["layers"][2]  # type: ignore[index]
    assert set(layer) >= {"resamples", "delta_ci", "rank_range", "rank_stability"}
    cases = [
        (
            ("layers", 2, "rank_stability"),
            0.25,
            r"layers\[2\]\.rank_stability must be .*recomputed",
        ),
        (("layers", 2, "rank_range"), [1, 99], r"layers\[2\]\.rank_range must be"),
        (("layers", 0, "resamples"), [1.0], r"layers\[0\]\.resamples must be a list of at least 2"),
        (("stability",), 0.123, "stability must be .*the mean rank_stability"),
        (("rule", "rank_mode"), "robust", "rule.rank_mode must be one of 'plain', 'noise-aware'"),
    ]
    for path, value, message in cases:
        bad = json.loads(json.dumps(doc))
        node = bad
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        with pytest.raises(ValueError, match=message):
            plan_from_dict(bad)


def test_a_noise_aware_rank_is_checked_against_the_lower_end() -> None:
    doc = resampled_doc("noise-aware")
    tampered = json.loads(json.dumps(doc))
    tampered["rule"]["rank_mode"] = "plain"  # same ranks would have to follow the plain rule
    with pytest.raises(ValueError, match=r"rank must be \d+, the rule's rank for d_"):
        plan_from_dict(tampered)
    no_draws = json.loads(json.dumps(doc))
    for layer in no_draws["layers"]:
        layer.update(resamples=None, delta_ci=None, rank_range=None, rank_stability=None)
    no_draws["stability"] = None
    with pytest.raises(ValueError, match=r"rule.rank_mode must be 'plain' .*needs joint resamples"):
        plan_from_dict(no_draws)


def test_version_1_documents_still_load() -> None:
    doc = plan_ranks([1.0, 3.0, 2.0, 6.5], shapes_for([4, 6, 8]), None).to_dict()
    old = json.loads(json.dumps(doc))
    old["version"] = 1
    del old["stability"], old["rule"]["rank_mode"]
    for layer in old["layers"]:
        for key in ("resamples", "delta_ci", "rank_range", "rank_stability"):
            del layer[key]
    plan = plan_from_dict(old)
    assert plan == plan_from_dict(doc) and plan.rank_mode == "plain" and plan.stability is None
    assert plan.to_dict()["version"] == 2  # written back in the current layout
    newer_field = json.loads(json.dumps(old))
    newer_field["layers"][1]["rank_stability"] = 1.0
    with pytest.raises(ValueError, match=r"layers\[1\] must be an object of index, .*alpha"):
        plan_from_dict(newer_field)
