"""Joint resamples of layer IDs: Δd intervals, rank ranges, plan stability, noise-aware plans."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lorax_core.gelora import plan_ranks
from lorax_core.gelora.rule import block_ranks
from lorax_core.gelora.stability import (
    delta_intervals,
    increases_for,
    resample_dimensions,
    stability_of,
)
from lorax_core.id import estimate_layers
from lorax_core.synthetic import embedded_gaussian
from tests.gelora.test_rule import shapes_for

# Three resamples of d_0, d_1, d_2 (hand-made), and the full-sample IDs.
DRAWS = np.array([[0.0, 1.0, 3.0], [0.0, 2.0, 3.0], [0.0, 1.0, 5.0]])
DIMS = [0.0, 1.0, 3.0]
RULE = (1.0, 1, 1, None)  # c, offset, rank_min, rank_max


def test_stability_of_a_plain_plan_counts_the_resamples_by_hand() -> None:
    ranks = block_ranks([1.0, 2.0], *RULE)
    assert ranks == [2, 3]
    got = stability_of(DIMS, DRAWS, ranks, "plain", RULE)
    # the resamples' Δd: [1, 2], [2, 1], [1, 4] -> ranks [2, 3], [3, 2], [2, 5]
    assert got.rank_stability == [pytest.approx(2 / 3), pytest.approx(1 / 3)]
    assert got.rank_range == [(2, 3), (2, 5)]
    deltas = np.diff(DRAWS, axis=1)
    expected = np.percentile(deltas, [2.5, 97.5], axis=0).T
    np.testing.assert_allclose(got.delta_ci, expected)
    plan = plan_ranks(DIMS, None, None, resamples=DRAWS)
    assert [layer.rank_stability for layer in plan.layers[1:]] == got.rank_stability
    assert plan.stability == pytest.approx(0.5)
    assert plan.layers[0].resamples == (0.0, 0.0, 0.0) and plan.layers[0].delta_ci is None


def test_noise_aware_ranks_follow_the_lower_end_of_the_interval() -> None:
    lows = [lo for lo, _ in delta_intervals(DRAWS)]
    assert increases_for(DIMS, DRAWS, "noise-aware") == [max(lo, 0.0) for lo in lows]
    plan = plan_ranks(DIMS, None, None, resamples=DRAWS, rank_mode="noise-aware")
    assert [layer.rank for layer in plan.layers[1:]] == [math.ceil(lo) + 1 for lo in lows]
    # a resample's lower end is its Δd less the resamples' median Δd − lo
    deltas = np.diff(DRAWS, axis=1)
    shifted = deltas - (np.median(deltas, axis=0) - lows)
    by_hand = [block_ranks(np.maximum(row, 0).tolist(), *RULE) for row in shifted]
    share = (np.array(by_hand) == [layer.rank for layer in plan.layers[1:]]).mean(axis=0)
    assert [layer.rank_stability for layer in plan.layers[1:]] == share.tolist()
    with pytest.raises(ValueError, match="rank_mode='noise-aware' needs joint resamples"):
        plan_ranks(DIMS, None, None, rank_mode="noise-aware")


def test_identical_layers_have_identical_resamples() -> None:
    """The same rows are drawn from every layer: two equal layers never differ in a resample,
    so Δd is exactly 0 in each (independent resamples would scatter it)."""
    x = embedded_gaussian(300, 5, 16, seed=3, dtype=np.float32)
    draws = resample_dimensions([x, x.copy()], "twonn", {"random_state": 0}, 6, seed=1)
    assert draws.shape == (6, 2)
    np.testing.assert_array_equal(draws[:, 0], draws[:, 1])
    assert len(set(draws[:, 0])) == 6  # six different resamples
    assert delta_intervals(draws) == [(0.0, 0.0)]
    again = resample_dimensions([x, x], "twonn", {"random_state": 0}, 6, seed=1)
    np.testing.assert_array_equal(draws, again)  # seeded
    full = estimate_layers([x], "twonn")[0].dimension
    assert abs(np.median(draws[:, 0]) - full) < 1.0  # resamples scatter around the full ID


def test_noise_aware_plans_give_extra_rank_only_to_a_clear_increase() -> None:
    """IDs 4, 4, 12, 12 (Gaussians of known dimension): only block 2's increase is real."""
    layers = [
        embedded_gaussian(400, d, 32, seed=s, dtype=np.float32)
        for s, d in enumerate((4, 4, 12, 12))
    ]
    ids = estimate_layers(layers, "twonn")
    draws = resample_dimensions(layers, "twonn", {}, 20, seed=0)
    shapes = shapes_for([8, 8, 8])
    plan = plan_ranks(ids, shapes, None, resamples=draws, rank_mode="noise-aware")
    ranks = [layer.rank for layer in plan.layers[1:]]
    assert ranks[0] == ranks[2] == 1 and ranks[1] > 4
    lo, _ = plan.layers[2].delta_ci  # type: ignore[misc]
    assert lo > 4  # far from 0: the increase of 8 stands out of the noise
    plain = plan_ranks(ids, shapes, None, resamples=draws)
    assert plain.layers[1].rank != ranks[0]  # the plain rule turns block 1's noise into rank
    assert plan.stability > plain.stability  # type: ignore[operator]


def test_bad_resamples() -> None:
    with pytest.raises(ValueError, match=r"resamples must be a \[B, L \+ 1\] array"):
        plan_ranks(DIMS, None, None, resamples=DRAWS[:1])
    with pytest.raises(ValueError, match=r"resamples must be finite \[B, 3\]"):
        plan_ranks(DIMS, None, None, resamples=DRAWS[:, :2])
    with pytest.raises(ValueError, match="rank_mode must be one of 'plain', 'noise-aware'"):
        plan_ranks(DIMS, None, None, rank_mode="robust")
