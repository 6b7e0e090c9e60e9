"""The paired difference and its interval against scipy's t distribution."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from lorax_core.bench.report import paired_difference, verdict

accuracies = st.lists(st.floats(0.0, 1.0), min_size=2, max_size=40)


@settings(max_examples=60, deadline=None)
@given(accuracies, st.data())
def test_interval_is_the_t_interval_of_the_per_seed_differences(a: list[float], data) -> None:
    b = data.draw(st.lists(st.floats(0.0, 1.0), min_size=len(a), max_size=len(a)))
    d = np.array(a) - np.array(b)
    result = paired_difference(dict(enumerate(a)), dict(enumerate(b)))
    assert result is not None and result["n"] == len(a)
    assert result["mean"] == pytest.approx(d.mean(), abs=1e-12)
    half = (result["high"] - result["low"]) / 2
    if len(a) <= 31:
        expected = stats.t.ppf(0.975, len(a) - 1) * d.std(ddof=1) / np.sqrt(len(a))
        assert half == pytest.approx(expected, rel=2e-3, abs=1e-12)


def test_only_common_seeds_are_paired_and_one_seed_has_no_interval() -> None:
    assert paired_difference({0: 0.5}, {1: 0.4}) is None
    one = paired_difference({0: 0.5, 1: 0.7}, {1: 0.6, 2: 0.1})
    assert one == {"mean": pytest.approx(0.1), "low": None, "high": None, "n": 1}


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ({0: 0.8, 1: 0.81, 2: 0.79}, {0: 0.9, 1: 0.91, 2: 0.9}, "worse"),
        ({0: 0.9, 1: 0.91, 2: 0.9}, {0: 0.8, 1: 0.81, 2: 0.79}, "better"),
        ({0: 0.8, 1: 0.9, 2: 0.85}, {0: 0.85, 1: 0.85, 2: 0.86}, "within noise"),
        ({0: 0.8}, {0: 0.9}, "one seed"),
    ],
)
def test_verdict_reads_the_interval(a: dict, b: dict, expected: str) -> None:
    diff = paired_difference(a, b)
    assert diff is not None
    # The oracle: where 0 lies relative to scipy's t interval of the differences.
    if diff["n"] > 1:
        d = np.array([a[s] - b[s] for s in sorted(a)])
        low, high = stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d))
        assert (high < 0, low > 0) == (expected == "worse", expected == "better")
    assert verdict(diff) == expected
