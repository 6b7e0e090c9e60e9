"""The paired difference and its interval against scipy's t distribution."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from lorax_core.bench.report import paired_difference

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
