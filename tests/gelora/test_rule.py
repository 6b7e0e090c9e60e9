"""The GeLoRA rank rule and budget solver against a numpy oracle and by hand."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lorax_core.gelora import RankPlan, plan_ranks
from lorax_core.gelora.modules import block_of
from lorax_core.gelora.rule import block_ranks, budget_parameters, id_increases, solve_c


def shapes_for(widths: list[int]) -> dict[str, tuple[int, int]]:
    """Two linear modules per block; one rank of block i+1 costs 3 · widths[i] parameters."""
    shapes: dict[str, tuple[int, int]] = {}
    for i, w in enumerate(widths):
        shapes[f"encoder.layer.{i}.attention.query"] = (w, w)
        shapes[f"encoder.layer.{i}.output.dense"] = (w // 2, w - w // 2)
    return shapes


def oracle_ranks(d, c, offset, rank_min, rank_max):  # type: ignore[no-untyped-def]
    """The rule of docs/gelora.md in numpy: clamp(ceil(c·max(Δd, 0)) + offset, min, max)."""
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
    increases = id_increases(d)
    np.testing.assert_array_equal(increases, np.maximum(np.diff(d), 0.0))
    assert block_ranks(increases, c, offset, rank_min, rank_max) == expected.tolist()
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


@given(
    d=st.lists(st.floats(0.0, 30.0), min_size=2, max_size=6),
    weights=st.lists(st.integers(0, 50), min_size=5, max_size=5),
    budget=st.integers(1, 5000),
)
def test_solve_c_is_the_last_step_that_fits(d, weights, budget) -> None:  # type: ignore[no-untyped-def]
    increases, w = id_increases(d), weights[: len(d) - 1]
    cost = lambda c: int(oracle_ranks(d, c, 1, 1, None) @ np.array(w, dtype=np.int64))  # noqa: E731
    if cost(0.0) > budget:
        with pytest.raises(ValueError, match="below the smallest plan"):
            solve_c(increases, w, budget, 1, 1, None)
        return
    c = solve_c(increases, w, budget, 1, 1, None)
    assert cost(c) <= budget
    if any(x > 0 and wi for x, wi in zip(increases, w, strict=True)):
        assert cost(c * (1 + 1e-9) + 1e-12) > budget or c >= 1e15


def test_budget_parameters() -> None:
    assert budget_parameters(None, [3, 4]) is None
    assert budget_parameters(100, [3, 4]) == 100
    assert budget_parameters("uniform:8", [3, 4]) == 56


def test_overflowing_growth_is_clamped_or_refused() -> None:

    # c · Δd overflows to inf: rank_max is the clamp's answer; without one it is an error
    assert block_ranks([1e308, 2.0], 20.0, 1, 1, 7) == [7, 7]
    assert block_ranks([float("inf"), 2.0], 0.0, 1, 1, None) == [1, 1]  # c = 0 grows nothing
    with pytest.raises(ValueError, match=r"rank of block 1 is unbounded: .* no rank_max"):
        block_ranks([1e308], 20.0, 1, 1, None)
    with pytest.raises(ValueError, match="unbounded"):
        plan_ranks([0.0, 1e308], None, None, c=20.0)
    assert plan_ranks([-1e308, 1e308], None, None, c=0.0).layers[1].rank == 1
    plan = plan_ranks([-1e308, 1e308], {"a.0.q": (2, 2)}, None, budget=100, rank_max=4)
    assert plan.layers[1].rank == 4 and RankPlan.from_dict(plan.to_dict()) == plan
